import json

import pytest
import torch
from diffusers import UNet2DConditionModel

from studio.models.catalog import load_catalog
from studio.models.compression import build_student
from studio.models.loading import ModelUnavailableError, load_pipeline, load_unet


@pytest.fixture(scope="module")
def catalog(tiny_pipeline_dir, tmp_path_factory):
    """A teacher and a Small student in the hub layout, named in a catalogue."""
    root = tmp_path_factory.mktemp("catalog")
    teacher_unet = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir, subfolder="unet")
    build_student(teacher_unet, "small").save_pretrained(root / "student" / "unet", safe_serialization=True)
    file = root / "models.json"
    file.write_text(json.dumps({"models": [
        {"name": "tiny-teacher", "source": str(tiny_pipeline_dir), "role": "teacher", "family": "toy"},
        {"name": "tiny-small", "source": str(root / "student"), "role": "student", "family": "toy",
         "teacher": "tiny-teacher", "arch": "small"},
        {"name": "gone", "source": str(root / "missing"), "role": "teacher", "family": "toy"},
    ]}))
    return load_catalog(file)


def test_student_shares_the_teachers_components(catalog):
    teacher = load_pipeline("tiny-teacher", catalog)
    student = load_pipeline("tiny-small", catalog, teacher=teacher)
    for part in ("text_encoder", "tokenizer", "vae", "scheduler"):
        assert getattr(student, part) is getattr(teacher, part), part
    assert student.unet is not teacher.unet
    assert student.unet.config.mid_block_type is None and len(student.unet.up_blocks[0].resnets) == 2


def test_teacher_and_student_generate(catalog):
    teacher = load_pipeline("tiny-teacher", catalog)
    student = load_pipeline("tiny-small", catalog, teacher=teacher)
    images = [
        pipe("a red circle", num_inference_steps=2, height=32, width=32, output_type="np",
             generator=torch.Generator().manual_seed(0)).images
        for pipe in (teacher, student)
    ]
    assert images[0].shape == images[1].shape == (1, 32, 32, 3)
    assert not (images[0] == images[1]).all()  # different U-Nets, different images


def test_unet_loads_from_pipeline_folder_catalogue_name_and_unet_folder(catalog, tiny_pipeline_dir):
    by_folder = load_unet(str(tiny_pipeline_dir))
    by_name = load_unet("tiny-teacher", catalog)
    bare = load_unet(str(tiny_pipeline_dir / "unet"))
    for unet in (by_name, bare):
        assert all(torch.equal(a, b) for a, b in zip(by_folder.state_dict().values(), unet.state_dict().values()))


def test_missing_local_model_says_where_and_how(catalog):
    with pytest.raises(ModelUnavailableError) as error:
        load_pipeline("gone", catalog)
    message = str(error.value)
    assert "'gone'" in message and "missing" in message and "does not exist" in message
    assert "local folder" in message


def test_hub_model_not_in_cache_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelUnavailableError) as error:
        load_unet("bk-sdm-tiny")
    message = str(error.value)
    for expected in ("'bk-sdm-tiny'", "nota-ai/bk-sdm-tiny", str(tmp_path), "not in the cache", "HF_HOME", "HF_HUB_OFFLINE"):
        assert expected in message


def test_pickled_weights_are_never_loaded(tiny_pipeline_dir, tmp_path):
    unet = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir, subfolder="unet")
    unet.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert (tmp_path / "pickled" / "diffusion_pytorch_model.bin").exists()
    with pytest.raises(ModelUnavailableError, match="only pickled weights .*safetensors only"):
        load_unet(str(tmp_path / "pickled"))
