"""DreamBooth: photo uploads, the LoRA and full trainers, resume, and the app's handlers."""

import csv
import io
import json

import pytest
import torch
from PIL import Image

from studio.jobs import JobManager
from studio.kinds.personalization.config import DreamBoothConfig
from studio.kinds.personalization.dreambooth import dreambooth, load_personalized
from studio.kinds.personalization.photos import PhotoError, PhotoLimits, check_photos, import_photos
from studio.ui.dreambooth import dreambooth_start, prompts


def save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_photos_are_normalized_to_rgb_squares(tmp_path):
    rgba = save(Image.new("RGBA", (60, 40), (255, 0, 0, 0)), tmp_path / "a.png")
    palette = save(Image.new("P", (40, 50)), tmp_path / "b.png")
    gray = save(Image.new("L", (48, 48), 128), tmp_path / "c.webp", format="WEBP")
    # A JPEG stored sideways with an EXIF orientation tag: it must come out upright (wide, not tall).
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    tall = Image.new("RGB", (40, 80), (0, 0, 255))
    tall.paste((255, 255, 0), (0, 0, 40, 40))  # the top half of the stored image is yellow
    rotated = save(tall, tmp_path / "d.jpg", exif=exif.tobytes())
    saved = import_photos([rgba, palette, gray, rotated], tmp_path / "job" / "photos", 32)
    assert [p.name for p in saved] == ["photo-00.png", "photo-01.png", "photo-02.png", "photo-03.png"]
    for path in saved:
        image = Image.open(path)
        assert image.mode == "RGB" and image.size == (32, 32)
    assert Image.open(saved[0]).getpixel((16, 16)) == (255, 255, 255)  # transparent became white
    upright = Image.open(saved[3])
    # Displayed upright, the yellow half is on the right: yellow at the right, blue at the left.
    assert upright.getpixel((28, 8))[2] < 100 and upright.getpixel((4, 8))[2] > 150


def test_bad_uploads_are_listed_in_one_message_and_nothing_is_written(tmp_path):
    good = save(Image.new("RGB", (64, 64)), tmp_path / "good.png")
    small = save(Image.new("RGB", (16, 16)), tmp_path / "small.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buffer, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[:60])
    big = save(Image.new("RGB", (300, 300)), tmp_path / "big.png")
    dest = tmp_path / "job" / "photos"
    with pytest.raises(PhotoError) as error:
        import_photos([good, small, text, truncated, big], dest, 32, PhotoLimits(min_side=32, max_pixels=200 * 200))
    message = str(error.value)
    assert "small.png: 16x16, smaller than 32" in message
    assert "notes.png: not an image" in message
    assert "truncated.png: " in message and ("corrupt" in message or "not an image" in message)
    assert "big.png: 300x300 pixels, over the 40,000 pixel limit" in message
    assert "good.png" not in message and not dest.exists()
    with pytest.raises(PhotoError, match="1 files uploaded; between 2 and 3"):
        check_photos([good], PhotoLimits(min_side=32, min_photos=2, max_photos=3))
    with pytest.raises(PhotoError, match="over the 0 MB limit"):
        check_photos([good], PhotoLimits(min_side=32, max_bytes=10))


def test_prompts_from_identifier_and_class():
    assert prompts("sks", "dog") == ("a sks dog", "a dog")
    with pytest.raises(ValueError, match="one rare word"):
        prompts("s k s", "dog")
    with pytest.raises(ValueError, match="class: empty"):
        prompts("sks", " ")


def photos_folder(tmp_path, n=3):
    folder = tmp_path / "photos"
    folder.mkdir(parents=True)
    for i in range(n):
        save(Image.new("RGB", (40, 40), (200, 100 + 40 * i, 20)), folder / f"p{i}.jpg")
    return folder


def config(tiny_pipeline_dir, tmp_path, **overrides):
    values = dict(model=str(tiny_pipeline_dir), photos=str(photos_folder(tmp_path)), instance_prompt="a sks cat",
                  class_prompt="a cat", out=str(tmp_path / "out"), steps=4, class_images=2, sample_steps=2,
                  checkpoint_every=2, log_every=1, validation_prompts=("a sks cat",))
    values.update(overrides)
    return DreamBoothConfig(**values)


def test_lora_run_saves_diffusers_lora_that_changes_the_model(tiny_pipeline_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = dreambooth(config(tiny_pipeline_dir, tmp_path, lr=1e-2))
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert sorted(p.name for p in (out / "class_images").glob("*.png")) == ["class-0000.png", "class-0001.png"]
    assert len(list((out / "instance").glob("photo-*.png"))) == 3
    with open(out / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["step", "loss_total", "loss_instance", "loss_prior", "lr", "seconds"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    card = json.loads((out / "card.json").read_text())
    assert card["result"]["mode"] == "lora" and card["peak_memory_mb"] > 0 and card["memory_kind"] == "process peak RSS"
    # LoRA on to_q/to_v only, rank 16.
    assert 0 < card["trainable_params"] < 0.5 * sum(p.numel() for p in
                                                    StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir).unet.parameters())
    base = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    tuned = load_personalized(str(tiny_pipeline_dir), out)
    kwargs = dict(prompt="a sks cat", num_inference_steps=2, output_type="np")
    a = base(**kwargs, generator=torch.Generator().manual_seed(0)).images
    b = tuned(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert abs(a - b).max() > 1e-4  # the LoRA weights loaded and matter
    with pytest.raises(ValueError, match="already holds a run"):
        dreambooth(config(tiny_pipeline_dir, tmp_path / "again", out=str(out)))


def test_resume_and_full_finetuning(tiny_pipeline_dir, tmp_path):
    first = config(tiny_pipeline_dir, tmp_path, steps=2, mode="full")
    dreambooth(first)
    resumed = config(tiny_pipeline_dir, tmp_path / "x", out=first.out, photos=first.photos, steps=4, mode="full",
                     resume=True)
    out = dreambooth(resumed)
    with open(out / "metrics.csv") as file:
        assert [int(r["step"]) for r in csv.DictReader(file)] == [1, 2, 3, 4]
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((out / "card.json").read_text())["result"]["mode"] == "full"


def test_dreambooth_start_checks_photos_before_making_jobs(tiny_catalog, tmp_path):
    jobs = JobManager(tmp_path / "jobs")
    small = save(Image.new("RGB", (8, 8)), tmp_path / "tiny.png")
    with pytest.raises(PhotoError, match="tiny.png: 8x8, smaller than 32"):
        dreambooth_start(jobs, tiny_catalog, [str(small)], "sks", "cat", ["tiny-teacher"], 4)
    assert jobs.ids() == []
    for models, steps, class_images, message in [
        ([], 4, 1, "models: none chosen"),
        (["tiny-teacher"], 0, 1, r"steps must be at least 1, got 0"),
        (["tiny-teacher"], 4, -1, r"class images \(--class-images\) must be at least 0, got -1"),
        (["tiny-teacher"], None, 1, "steps must be a number, got None"),
    ]:
        with pytest.raises(ValueError, match=message):
            dreambooth_start(jobs, tiny_catalog, [str(small)], "sks", "cat", models, steps, class_images=class_images)
    assert jobs.ids() == []
