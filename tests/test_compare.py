"""Compare and img2img: the library functions and the handlers the app wires to them."""

import numpy as np
import pytest
from PIL import Image

from studio.kinds.evaluation.metrics import psnr
from studio.inference.generation import SCHEDULERS, PipelineCache, Settings, compare
from studio.inference.history import read_settings
from studio.toy.data import make_example
from studio.toy.judge import read_scene
from studio.ui.common import Studio
from studio.ui.compare import compare_stream
from studio.ui.img2img import img2img_stream


@pytest.mark.parametrize("settings, message", [
    (Settings(""), "prompt is empty"),
    (Settings("a cat", steps=0), "steps must be between 1 and 100"),
    (Settings("a cat", guidance=21), "guidance must be between 0 and 20"),
    (Settings("a cat", scheduler="LMS"), "choose one of PNDM, DDIM, DPM-Solver++, DPM++ 2M Karras, UniPC, Euler"),
    (Settings("a cat", guidance_stop=0), "guidance stop must be a fraction of the steps in (0, 1], got 0"),
    (Settings("a cat", cache_interval=0), "cache interval must be between 1 (off) and 10, got 0"),
    (Settings("a cat", tome_ratio=0.9), "token merging ratio must be between 0 (off) and 0.75, got 0.9"),
    (Settings("a cat", decoder="taesd"), "unknown decoder 'taesd'; choose one of vae, tiny"),
    (Settings("a cat", dtype="int8"), "unknown dtype 'int8'; choose one of fp32, fp16, bf16"),
    (Settings("a cat", resolution=30), "positive multiple of 8"),
    (Settings("a cat", resolution=72), "the most is 64"),
    (Settings("a cat", strength=0), "strength must be in (0, 1]"),
    (Settings("a cat\x00"), "the prompt contains control characters"),
    (Settings("a" * 2001), "the prompt is 2,001 characters long; at most 2,000 are allowed"),
])
def test_bad_settings_name_what_is_allowed(settings, message):
    with pytest.raises(ValueError) as error:
        settings.check(native=32)
    assert message in str(error.value)


def test_compare_runs_every_model_on_the_same_settings(tiny_catalog, tmp_path):
    studio = Studio.create(tiny_catalog, "tiny", "cpu", tmp_path)
    cache, history = studio.cache, studio.workspace().history
    events = []
    settings = Settings("a cat", seed=7, steps=3, guidance=2.0, scheduler="DDIM")
    updates = list(compare_stream(studio, ["tiny-teacher", "tiny-small"], settings, callback=events.append))
    # One update per model, as soon as it is done: the first shows the teacher alone.
    assert [len(items) for items, _ in updates] == [1, 2] and "| tiny-small |" not in updates[0][1]
    items, readout = updates[-1]
    assert "tiny-teacher" in items[0][1] and "tiny-small" in items[1][1]
    assert "tokens long" not in readout
    student_row = next(line for line in readout.splitlines() if line.startswith("| tiny-small"))
    assert "x; -" in student_row and "| custom |" in student_row  # DDIM 3 steps: no preset; no paper teacher run
    assert " dB; 0." in student_row and "| reference |" in readout  # PSNR; SSIM to the teacher's same-recipe image
    # Progress events: both models loaded first, then every step of every model, in order.
    assert [(e.task, e.info["model"], e.done) for e in events] == \
        [("load", "tiny-teacher", 0), ("load", "tiny-small", 1)] + \
        [("generate", m, s) for m in ("tiny-teacher", "tiny-small") for s in (1, 2, 3)]
    # Each PNG carries its settings; the history lists both.
    settings = read_settings(items[1][0])
    assert settings["model"] == "tiny-small" and settings["seed"] == 7 and settings["scheduler"] == "DDIM"
    assert settings["steps"] == 3 and settings["prompt"] == "a cat" and settings["resolution"] == 32
    assert "Sampler: DDIM" in Image.open(items[1][0]).text["parameters"]
    assert {path for path, _ in history.recent()} == {path for path, _ in items}
    # Cached: the second run reports no loading and reuses the pipelines.
    first = cache.get("tiny-teacher")
    results = compare(cache, ["tiny-teacher"], Settings("a cat", seed=7, steps=3, guidance=2.0, scheduler="DDIM"))
    assert cache.get("tiny-teacher") is first and results[0].load_seconds == 0
    # Same seed, same model, same settings: the same image.
    assert np.array_equal(np.asarray(results[0].image), np.asarray(Image.open(items[0][0])))
    # A student shares its teacher's text encoder and VAE.
    assert cache.get("tiny-small").text_encoder is first.text_encoder and cache.get("tiny-small").vae is first.vae


def test_the_readout_says_when_a_prompt_is_cut(tiny_catalog, tmp_path):
    studio = Studio.create(tiny_catalog, "tiny", "cpu", tmp_path)
    _, readout = list(compare_stream(studio, ["tiny-small"], Settings("a cat " * 20, steps=1)))[-1]
    assert "tokens long; the text encoder reads the first 16, so the rest was cut" in readout


def test_resolution_changes_the_image_and_the_macs(tiny_catalog, tmp_path):
    cache = PipelineCache(tiny_catalog)
    native = compare(cache, ["tiny-teacher"], Settings("a cat", steps=2, scheduler="DDIM"))[0]
    larger = compare(cache, ["tiny-teacher"], Settings("a cat", steps=2, resolution=48))[0]
    assert native.image.size == (32, 32) and larger.image.size == (48, 48)
    assert larger.macs_paper > native.macs_paper and larger.macs_total > larger.macs_paper
    assert len(native.unet_seconds) == 2 and native.unet_step_seconds > 0  # DDIM: one U-Net call per step


def test_compare_bad_input_is_refused_before_any_image(tiny_catalog, tmp_path):
    studio = Studio.create(tiny_catalog, "tiny", "cpu", tmp_path)
    for models, prompt, resolution, message in [
        ([], "a cat", None, "models: none chosen"),
        (["tiny-teacher"], " ", None, "prompt is empty"),
        (["tiny-teacher"], "a cat", 36, "multiple of 8"),
        (["tiny-teacher", "nope"], "a cat", None, "models: unknown"),
    ]:
        with pytest.raises(ValueError, match=message):
            list(compare_stream(studio, models, Settings(prompt, steps=2, resolution=resolution)))
    assert studio.workspace().history.recent() == []


def test_a_model_that_cannot_be_loaded_stops_compare_before_generation(tiny_catalog, tmp_path):
    from studio.models.loading import ModelUnavailableError

    broken = tiny_catalog.with_entries([type(tiny_catalog.get("tiny-small"))(
        name="tiny-missing", source=str(tmp_path / "nowhere"), role="student", family="tiny",
        teacher="tiny-teacher", arch="small")])
    studio = Studio.create(broken, "tiny", "cpu", tmp_path)
    events = []
    with pytest.raises(ModelUnavailableError, match="tiny-missing"):
        list(compare_stream(studio, ["tiny-teacher", "tiny-missing"], Settings("a cat", steps=2),
                            callback=events.append))
    assert [e.task for e in events] == ["load", "load"] and studio.workspace().history.recent() == []


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_scheduler_draws_what_the_toy_prompt_asks(catalog, scheduler):
    cache = PipelineCache(catalog)
    result = compare(cache, ["toy-teacher"], Settings("a yellow circle on a black background", seed=0, steps=20,
                                                      guidance=1.5, scheduler=scheduler))[0]
    scene = read_scene(result.image)
    assert scene.background == "black" and scene.objects[0].color == "yellow", (scheduler, scene)


def test_img2img_keeps_the_input_at_low_strength(catalog, tmp_path):
    studio = Studio.create(catalog, "toy", "cpu", tmp_path)
    history = studio.workspace().history
    source = make_example(3, seed=5)[0]
    path = tmp_path / "input.png"
    source.save(path)
    items, readout = list(img2img_stream(studio, ["toy-teacher"], str(path), 0.3, source_caption(3), "", 0, 20, 1.5,
                                         "DDIM", 0))[-1]
    assert len(items) == 1, readout
    image = Image.open(items[0][0])
    assert image.size == source.size and psnr(image, source) > 15
    assert read_settings(items[0][0])["mode"] == "img2img"
    # Not an image: a message, and nothing written.
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    before = len(history.recent())
    with pytest.raises(ValueError, match="not a readable image"):
        list(img2img_stream(studio, ["toy-teacher"], str(junk), 0.3, "a cat", "", 0, 5, 1.5, "DDIM", 0))
    assert len(history.recent()) == before


def source_caption(index: int) -> str:
    return make_example(index, seed=5)[1]


def test_the_model_memory_budget_evicts_the_least_recently_used_and_refuses_what_cannot_fit(tiny_catalog):
    from studio.inference.pipeline_cache import ModelMemoryError, PipelineCache

    probe = PipelineCache(tiny_catalog)
    probe.get("tiny-teacher")
    teacher_bytes = probe.used_bytes()
    probe.get("tiny-small")
    both = probe.used_bytes()
    small_alone = PipelineCache(tiny_catalog)
    small_alone.get("tiny-small")  # the teacher's components without its U-Net
    assert both < teacher_bytes + small_alone.used_bytes()  # shared components count once
    assert probe.estimate_bytes("tiny-teacher") == 0 and PipelineCache(tiny_catalog).estimate_bytes("tiny-teacher") \
        == pytest.approx(teacher_bytes, rel=0.05)

    # A budget for one model at a time: the compare of both completes, a model at a time, and says what it evicted.
    cache = PipelineCache(tiny_catalog, memory_budget=max(teacher_bytes, small_alone.used_bytes()) + 1024)
    assert not cache.fits(["tiny-teacher", "tiny-small"])
    results = compare(cache, ["tiny-teacher", "tiny-small"], Settings("a cat", steps=2))
    assert [r.model for r in results] == ["tiny-teacher", "tiny-small"]
    assert "model memory: " in results[1].note and "evicted tiny-teacher" in results[1].note
    assert cache.used_bytes() <= cache.memory_budget and not cache.loaded("tiny-teacher")
    with pytest.raises(ModelMemoryError, match="models: tiny-teacher needs .* GB model memory budget"):
        PipelineCache(tiny_catalog, memory_budget=1024).get("tiny-teacher")
