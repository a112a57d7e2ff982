"""The shipped toy teacher (assets/toy/teacher): size, offline loading, prompt following."""

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

import pytest

from studio.models.catalog import load_catalog, read_configs
from studio.models.compression import build_student
from studio.models.loading import load_pipeline
from studio.toy.evaluate import prompt_set_images
from studio.toy.judge import judge_images
from studio.toy.prompts import TASKS

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
    assert image.size == (64, 64)


def test_papers_removals_apply_unchanged():
    config = read_configs("toy-teacher")["unet"]
    assert config["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert config["layers_per_block"] == 2 and config["mid_block_type"] == "UNetMidBlock2DCrossAttn"
    teacher = load_pipeline("toy-teacher").unet
    for arch in ("base", "small", "tiny"):
        student = build_student(teacher, arch)
        assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())


@pytest.mark.slow
def test_follows_its_prompts_in_every_task():
    """A slice of each task (20 prompts each, `paper`, seed 0), and the same images judged against other prompts
    of the same tasks as the control. Over the whole set and three seeds the shipped teacher scores 86.7% on
    single objects and 93.3% on colors (docs/toy-recipes.md; the issue asks 90%). Measured on this slice: single
    objects 80%, colors 90%, attributes 78.6% against the control's 23.0%."""
    teacher = load_pipeline("toy-teacher")
    prompts, images = prompt_set_images(teacher, 120)
    verdict = judge_images(prompts, images)
    control = judge_images(prompts[6:] + prompts[:6], images)  # shifted by 6: the same task at every place
    assert set(verdict["tasks"]) == set(TASKS)
    assert verdict["tasks"]["single_object"] >= 0.65 and verdict["tasks"]["colors"] >= 0.7, verdict
    assert verdict["attributes"] >= control["attributes"] + 0.3, (verdict, control)


def test_the_judge_reads_the_teachers_vae_reconstructions():
    """Labelled scenes through the shipped VAE: the judge must still read them (a guard on both). Measured: 97.0%
    of attributes, tasks 85-100% (single objects 94%, colors 98%), since `toy vae-decoder` sharpened the decoder;
    before it, 91.3% and 76-88%: 16x16x4 latents for 64x64 pixels blurred a 14-pixel cross into a 14-pixel
    diamond (the judge is exact on the rendered scenes)."""
    from studio.images import from_tensor
    from studio.toy.data import batch_tensors
    from studio.toy.judge import judge_images
    from studio.toy.prompts import parse

    vae = load_pipeline("toy-teacher").vae
    images, captions = batch_tensors(range(50_000, 50_300), seed=0)
    with torch.no_grad():
        decoded = vae.decode(vae.encode(images).latent_dist.mean).sample
    verdict = judge_images([parse(c) for c in captions], [from_tensor(x) for x in decoded])
    assert verdict["attributes"] >= 0.94 and all(v >= 0.75 for v in verdict["tasks"].values()), verdict


def test_the_vae_posterior_is_deterministic():
    """`toy train` sets the encoder's log-variance to its floor (studio/toy/train.py): sampled latents are the
    means, so no trainer sees noise the decoder ignores."""
    from studio.toy.data import batch_tensors

    vae = load_pipeline("toy-teacher").vae
    images, _ = batch_tensors(range(8), seed=0)
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
    assert posterior.std.max() < 1e-5 and posterior.mean.std() > 0.1
