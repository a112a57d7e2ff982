"""The shipped toy teacher (assets/toy/teacher): size, offline loading, prompt following."""

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

import pytest

from studio.catalog import load_catalog, read_configs
from studio.compression import build_student
from studio.loading import load_pipeline
from studio.toy.evaluate import judge_model

TOY = Path(__file__).resolve().parent.parent / "assets" / "toy"
MB = 1024 * 1024


def test_weights_are_small_safetensors():
    files = [p for p in TOY.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert len(weights) >= 3  # text encoder, VAE, U-Net
    assert all(p.stat().st_size < 10 * MB for p in files), [(p.name, p.stat().st_size) for p in files]
    assert sum(p.stat().st_size for p in files) < 40 * MB
    assert not [p for p in files if p.suffix in (".bin", ".ckpt", ".pt", ".pth")]


def test_loads_offline_as_an_ordinary_pipeline():
    entry = load_catalog().get("toy-teacher")
    assert entry.role == "teacher" and entry.family == "toy"
    pipe = StableDiffusionPipeline.from_pretrained(entry.source_path, use_safetensors=True)
    image = pipe("a red square on a white background", num_inference_steps=5,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)


def test_papers_removals_apply_unchanged():
    config = read_configs("toy-teacher")["unet"]
    assert config["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert config["layers_per_block"] == 2 and config["mid_block_type"] == "UNetMidBlock2DCrossAttn"
    teacher = load_pipeline("toy-teacher").unet
    for arch in ("base", "small", "tiny"):
        student = build_student(teacher, arch)
        assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())


@pytest.mark.slow
def test_follows_its_prompts():
    """At the default sampling settings, the issue's bar: 90% color, 80% shape (chance: 17%, 33%).
    The shipped teacher measures 100% color and 84.4% shape (seed 0)."""
    report = judge_model("toy-teacher")
    assert report["n"] == 90
    assert report["color"] >= 0.90 and report["background"] >= 0.90 and report["shape"] >= 0.80, report


def test_the_judge_reads_the_teachers_vae_reconstructions():
    """Labelled data through the shipped VAE: the judge must still read shapes (a guard on both)."""
    from studio.toy.data import batch_tensors
    from studio.images import from_tensor
    from studio.toy.judge import judge_accuracy

    vae = load_pipeline("toy-teacher").vae
    images, captions = batch_tensors(range(50_000, 50_300), seed=0)
    with torch.no_grad():
        decoded = vae.decode(vae.encode(images).latent_dist.mean).sample
    pictures = [from_tensor(x) for x in decoded]
    targets = [(c.split()[2], c.split()[1], c.split()[5]) for c in captions]
    accuracy = judge_accuracy(targets, pictures)
    assert accuracy["shape"] >= 0.95 and accuracy["color"] >= 0.98, accuracy
