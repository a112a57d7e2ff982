import json

import pytest

from studio.models.catalog import CatalogError, UnknownModelError, load_catalog, read_configs

REQUIRED = {
    "sd-v1.4": ("teacher", "v1", "CompVis/stable-diffusion-v1-4"),
    "sd-v2.1-base": ("teacher", "v2-base", "stabilityai/stable-diffusion-2-1-base"),
    **{f"bk-sdm-{a}{s}": ("student", "v1", f"nota-ai/bk-sdm-{a}{s}") for a in ("base", "small", "tiny") for s in ("", "-2m")},
    **{f"bk-sdm-v2-{a}": ("student", "v2-base", f"nota-ai/bk-sdm-v2-{a}") for a in ("base", "small", "tiny")},
}


def test_catalogue_names_roles_families_and_sources():
    catalog = load_catalog()
    for name, (role, family, source) in REQUIRED.items():
        entry = catalog.get(name)
        assert (entry.role, entry.family, entry.source) == (role, family, source)
        assert name == name.lower()
    assert {e.name for e in catalog.students_of("sd-v1.4")} == {n for n, v in REQUIRED.items() if v[:2] == ("student", "v1")}
    assert all(e.teacher == "sd-v2.1-base" for e in catalog.students_of("sd-v2.1-base"))


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownModelError, match="unknown model 'sd-v9'.*bk-sdm-tiny"):
        load_catalog().get("sd-v9")


def test_every_hub_student_reads_the_published_unet_config():
    """What the catalogue gives for each nota-ai student (derived from its teacher, offline) is the U-Net config
    nota-ai published for it (tests/data keeps copies), field for field."""
    from test_compression import PUBLISHED, architecture

    catalog = load_catalog()
    students = [e for e in catalog if e.role == "student" and e.source.startswith("nota-ai/")]
    assert len(students) == 9
    for entry in students:
        family = {"v1": "unet_config", "v2-base": "unet_config_v2-base"}[entry.family]
        published = json.loads((PUBLISHED / f"{family}__bk_{entry.arch}.json").read_text())
        assert architecture(read_configs(entry.name)["unet"]) == architecture(published), entry.name
    assert read_configs("bk-sdm-v2-tiny")["text_encoder"]["hidden_size"] == 1024  # the teacher's OpenCLIP-H encoder


def test_extra_catalogue_from_environment(tmp_path, monkeypatch, tiny_pipeline_dir):
    extra = tmp_path / "mine.json"
    extra.write_text(json.dumps({"models": [
        {"name": "my-teacher", "source": str(tiny_pipeline_dir), "role": "teacher", "family": "toy"},
    ]}))
    monkeypatch.setenv("STUDIO_MODELS", str(extra))
    catalog = load_catalog()
    assert catalog.get("my-teacher").is_local and "sd-v1.4" in catalog
    assert read_configs("my-teacher", catalog)["unet"]["block_out_channels"] == [16, 32, 32, 32]


@pytest.mark.parametrize("entry, message", [
    ({"name": "x", "source": "a/b", "role": "teacher"}, "lacks family"),
    ({"name": "x", "source": "a/b", "role": "judge", "family": "v1"}, "allowed: teacher, student"),
    ({"name": "x", "source": "a/b", "role": "student", "family": "v1"}, "must name its teacher"),
    ({"name": "x", "source": "a/b", "role": "student", "family": "v1", "teacher": "nope"}, "not in the catalogue"),
    ({"name": "sd-v1.4", "source": "a/b", "role": "teacher", "family": "v1"}, "appears twice"),
    ({"name": "x", "source": "a/b", "role": "teacher", "family": "v1", "colour": "red"}, "unknown fields"),
])
def test_malformed_catalogue_entries_are_refused(tmp_path, entry, message):
    extra = tmp_path / "bad.json"
    extra.write_text(json.dumps({"models": [entry]}))
    with pytest.raises(CatalogError, match=message):
        load_catalog(extra)


def test_neither_name_nor_folder():
    with pytest.raises(UnknownModelError, match="neither a catalogue model"):
        read_configs("no/such/folder")
