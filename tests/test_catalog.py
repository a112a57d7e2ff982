import json

import pytest

from studio.catalog import CatalogError, UnknownModelError, load_catalog, read_configs
from studio.compression import student_config

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


def test_hub_students_get_configs_derived_from_their_teacher():
    configs = read_configs("bk-sdm-v2-tiny")
    assert configs["unet"] == student_config(read_configs("sd-v2.1-base")["unet"], "tiny")
    assert configs["text_encoder"]["hidden_size"] == 1024


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
