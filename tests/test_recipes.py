"""Recipes and the knobs that do less work: each is exact at its neutral value and does what it says otherwise."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny

from studio.inference.acceleration import StepCache, guidance_steps, token_merging
from studio.kinds.evaluation.metrics import psnr
from studio.kinds.evaluation.pareto import pareto_front
from studio.inference.generation import PipelineCache, Settings, compare, generate, make_scheduler
from studio.images import from_tensor, to_tensor
from studio.inference.recipes import PRESETS, parse_recipe, recipe_name
from studio.toy.data import make_example
from studio.toy.judge import read_scene

TOY_MODELS = ["toy-teacher", "toy-bk-base", "toy-bk-small", "toy-bk-tiny"]
PROMPT = "a blue circle on a white background"


def reads(image) -> tuple:
    """(the largest object's color, the background), as the judge reads them."""
    scene = read_scene(image)
    return (scene.objects[0].color if scene.objects else None), scene.background


@pytest.fixture(scope="module")
def cache(catalog):
    return PipelineCache(catalog)


def plain(pipeline, settings: Settings):
    """What diffusers makes with no knob of ours in the way."""
    pipeline.scheduler = make_scheduler(settings.scheduler, pipeline.scheduler.config)
    return pipeline(PROMPT, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                    generator=torch.Generator().manual_seed(settings.seed)).images[0]


def ours(pipeline, settings: Settings, decoder=None):
    return generate(pipeline, [PROMPT], [torch.Generator().manual_seed(settings.seed)], settings, 64, decoder)


@pytest.mark.parametrize("model", TOY_MODELS)
def test_interval_1_and_guidance_on_every_step_equal_plain_generation(cache, catalog, model):
    from studio.models.loading import load_pipeline

    settings = Settings(PROMPT, steps=6, guidance=1.5, scheduler="DPM++ 2M Karras", cache_interval=1,
                        guidance_stop=1.0)
    made = ours(cache.get(model), settings)
    reference = plain(load_pipeline(model, catalog), settings)
    assert np.array_equal(np.asarray(made.images[0]), np.asarray(reference))
    assert (made.full_calls, made.cached_calls) == (6, 0)


@pytest.mark.parametrize("model", TOY_MODELS)
def test_a_cached_call_on_the_inputs_of_the_full_call_gives_its_output(cache, model):
    """Base, Small (no mid block) and Tiny (no innermost stage) too: the shallow path recomputes the last layer
    from the kept features, so on the same inputs it must reproduce the full call."""
    unet = cache.get(model).unet
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 16, 16, generator=generator)
    context = torch.randn(2, 8, unet.config.cross_attention_dim, generator=generator)
    with torch.inference_mode(), StepCache(unet, interval=3) as step_cache:
        outputs = [unet(sample, torch.tensor([500]), encoder_hidden_states=context).sample for _ in range(4)]
        other = unet(sample + 1, torch.tensor([500]), encoder_hidden_states=context).sample  # call 5: cached
    assert (step_cache.full_calls, step_cache.cached_calls) == (2, 3)
    for output in outputs[1:]:
        torch.testing.assert_close(output, outputs[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(other, outputs[0], atol=1e-3)  # the shallow path does see its input
    assert "forward" not in vars(unet.up_blocks[-1])  # every patched block restored after the call


def test_step_caching_skips_calls_and_stays_close(cache):
    teacher = cache.get("toy-teacher")
    settings = Settings(PROMPT, steps=12, guidance=1.5, scheduler="DPM++ 2M Karras")
    full = ours(teacher, settings)
    cached = ours(teacher, Settings(**{**settings.__dict__, "cache_interval": 3}))
    assert (cached.full_calls, cached.cached_calls) == (4, 8)
    assert 20 < psnr(cached.images[0], full.images[0]) < float("inf")


def test_guidance_stops_after_its_fraction(cache):
    unet = cache.get("toy-teacher").unet
    batches = []
    handle = unet.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    try:
        made = ours(cache.get("toy-teacher"), Settings(PROMPT, steps=10, guidance=1.5, guidance_stop=0.3,
                                                       scheduler="UniPC", cache_interval=2))
    finally:
        handle.remove()
    assert batches == [2, 2, 2] + [1] * 7 and guidance_steps(0.3, 10) == 3
    # Step caching across the stop: the kept batch-2 features serve the conditional half.
    assert (made.full_calls, made.cached_calls) == (5, 5)
    assert reads(made.images[0])[0] == "blue"


def test_token_merging_changes_the_attention_and_is_removed_afterwards(cache):
    teacher = cache.get("toy-teacher")
    settings = Settings(PROMPT, steps=4, guidance=1.5, scheduler="DDIM")
    before = ours(teacher, settings).images[0]
    merged = ours(teacher, Settings(**{**settings.__dict__, "tome_ratio": 0.5})).images[0]
    after = ours(teacher, settings).images[0]
    assert np.array_equal(np.asarray(before), np.asarray(after))
    assert not np.array_equal(np.asarray(before), np.asarray(merged))
    def merging_blocks():
        return sum(type(m).__name__ == "ToMeBlock" for m in teacher.unet.modules())

    with token_merging(teacher.unet, 0.5):
        assert merging_blocks() > 0
    with token_merging(teacher.unet, 0.0):  # ratio 0: nothing is patched
        assert merging_blocks() == 0
    assert merging_blocks() == 0


def test_the_toy_tiny_decoder_loads_offline_and_decodes_like_the_vae(cache):
    decoder = cache.decoder("toy-bk-tiny", "tiny")
    assert isinstance(decoder, AutoencoderTiny) and cache.decoder("toy-teacher", "tiny") is decoder
    assert cache.decoder("toy-teacher", "vae") is None
    vae = cache.get("toy-teacher").vae
    image = make_example(7, seed=123)[0]
    with torch.inference_mode():
        latents = vae.encode(to_tensor(image)[None]).latent_dist.mean * vae.config.scaling_factor
        by_vae = from_tensor(vae.decode(latents / vae.config.scaling_factor).sample[0])
        by_tiny = from_tensor(decoder.decode(latents).sample[0])
    assert psnr(by_tiny, by_vae) > 25
    made = ours(cache.get("toy-teacher"), Settings(PROMPT, steps=12, guidance=1.5, scheduler="DPM++ 2M Karras"),
                decoder)
    assert reads(made.images[0])[0] == "blue"


def test_a_family_without_a_tiny_decoder_says_so(tiny_catalog):
    with pytest.raises(ValueError, match="decoder: the 'tiny' family has no tiny decoder; choose 'vae'"):
        compare(PipelineCache(tiny_catalog), ["tiny-teacher"], Settings("a cat", steps=1, decoder="tiny"))


@pytest.mark.parametrize("recipe", list(PRESETS))
def test_every_preset_runs_on_every_toy_model(cache, recipe):
    settings = PRESETS[recipe].apply(Settings(PROMPT), 1.5)
    results = compare(cache, TOY_MODELS, settings)
    for result in results:
        assert result.image.size == (64, 64) and result.settings.recipe == recipe
        calls, interval = len(result.unet_seconds), PRESETS[recipe].cache_interval
        assert calls == PRESETS[recipe].steps + (PRESETS[recipe].scheduler == "PNDM")  # PNDM: one extra call
        assert result.cached_calls == calls - -(-calls // interval)  # every interval-th call runs in full
    if PRESETS[recipe].scheduler != "LCM":  # those need a consistency-distilled model (test_toy_students.py)
        verdict = reads(results[0].image)  # the teacher draws the prompt with every other preset
        assert verdict == ("blue", "white"), (recipe, verdict)


def test_recipe_specs_and_names():
    fast = parse_recipe("fast")
    assert fast is PRESETS["fast"]
    custom = parse_recipe("paper:scheduler=DPM++ 2M Karras:steps=12:cache_interval=2:guidance=none")
    assert (custom.scheduler, custom.steps, custom.cache_interval, custom.guidance) == ("DPM++ 2M Karras", 12, 2, None)
    assert custom.name == "paper:scheduler=DPM++ 2M Karras:steps=12:cache_interval=2:guidance=none"
    for spec, message in [("quick", "unknown preset 'quick'"), ("paper:steps", "is not knob=value"),
                          ("paper:speed=2", "is not knob=value"), ("paper:steps=many", "steps must be a number")]:
        with pytest.raises(ValueError, match=message):
            parse_recipe(spec)
    base = Settings(PROMPT, seed=3)
    assert recipe_name(PRESETS["fast"].apply(base, 1.5), 1.5).recipe == "fast"
    assert recipe_name(Settings(**{**PRESETS["fast"].apply(base, 1.5).__dict__, "steps": 13}), 1.5).recipe == "custom"


def test_the_pareto_front_keeps_only_unbeaten_rows():
    rows = [{"s": 1, "q": 10}, {"s": 2, "q": 9}, {"s": 2, "q": 12}, {"s": 3, "q": 12}, {"s": 0.5, "q": 5}]
    assert pareto_front(rows, "s", "q") == [{"s": 0.5, "q": 5}, {"s": 1, "q": 10}, {"s": 2, "q": 12}]


def test_compare_shows_each_image_forming(catalog, tmp_path):
    from studio.ui.common import Studio
    from studio.ui.compare import compare_stream

    studio = Studio.create(catalog, "toy", "cpu", tmp_path)
    updates = list(compare_stream(studio, ["toy-teacher", "toy-bk-tiny"], Settings(PROMPT, steps=60, guidance=1.5),
                                  previews=True))
    previews = [items[-1] for items, _ in updates if items[-1][1].endswith("(preview)")]
    assert previews and all(image.size == (64, 64) for image, _ in previews)
    assert previews[0][1].startswith("toy-teacher: step ")
    assert [len(items) for items, _ in updates if not items[-1][1].endswith("(preview)")] == [1, 2]


def test_the_toy_preview_shows_the_colors_of_the_image(cache):
    """The toy family previews with its tiny decoder (a linear latent -> RGB map is off by about 68/255 on the
    toy VAE, whose latents are far from linear in color)."""
    vae = cache.get("toy-teacher").vae
    preview = cache.preview("toy-teacher")
    for index in range(5):
        image = make_example(index, seed=321)[0]
        with torch.inference_mode():
            latents = vae.encode(to_tensor(image)[None]).latent_dist.mean * vae.config.scaling_factor
        picture = np.asarray(preview(latents, 64), dtype=float)
        assert np.abs(picture - np.asarray(image, dtype=float)).mean() < 20, index


def test_without_a_tiny_decoder_the_preview_is_a_linear_map_of_the_vae(tiny_catalog):
    from studio.inference.acceleration import LatentPreview

    cache = PipelineCache(tiny_catalog)
    preview = cache.preview("tiny-small")
    assert isinstance(preview, LatentPreview) and preview is cache.preview("tiny-teacher")  # one per VAE
    assert preview.weights.shape == (5, 3) and preview(torch.randn(1, 4, 16, 16), 64).size == (64, 64)


def run_cli(*args) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "studio", *args, "--json"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_bench_pipeline_json():
    rows = run_cli("bench", "pipeline", "--teacher", "toy-teacher", "--arch", "tiny", "--recipes", "fast",
                   "paper:steps=4", "--repeats", "1")
    assert [(r["arch"], r["recipe"]) for r in rows] == [
        (arch, recipe) for arch in ("teacher", "tiny") for recipe in ("paper", "fast", "paper:steps=4")]
    for row in rows:
        assert row["seconds"] > 0 and row["speedup"] > 0 and row["resolution"] == 64
    teacher_paper = rows[0]
    assert teacher_paper["speedup"] == 1.0 and teacher_paper["unet_calls"] == 26  # PNDM: 25 steps, 26 calls
    fast = rows[1]
    assert (fast["unet_calls"], fast["cached_calls"]) == (12, 6) and fast["knobs"]["decoder"] == "tiny"


@pytest.mark.slow
def test_toy_recipes_json():
    recipes = ("paper", "fast", "lcm", "lcm-2")
    rows = run_cli("toy", "recipes", "--models", "toy-teacher", "toy-bk-tiny-lcm", "--recipes", *recipes,
                   "--n", "6", "--seeds", "0", "1")
    assert [(r["model"], r["recipe"], r["seed"]) for r in rows] == [
        (model, recipe, seed) for model in ("toy-teacher", "toy-bk-tiny-lcm") for recipe in recipes
        for seed in (0, 1)]
    assert rows[0]["psnr_to_reference"] is None and rows[1]["psnr_to_reference"] is None  # the reference itself
    for row in rows:
        assert 0 <= row["overall"] <= 1 and row["seconds"] > 0 and row["n"] == 6 and row["held_out"] is None
        assert all(0 <= row[task] <= 1 for task in ("single_object", "counting", "color_attr"))
    # the teacher was not consistency-distilled: its LCM images are drawn and scored, but far from its own `paper`
    assert all(15 < r["psnr_to_reference"] < 100 for r in rows[2:] if r["model"] != "toy-teacher" or r["recipe"] == "fast")
    assert all(5 < r["psnr_to_reference"] < 100 for r in rows[2:])
    paper, fast, lcm, lcm_2 = (rows[i]["unet_macs_per_image"] for i in (0, 2, 4, 6))
    assert paper / fast == pytest.approx(26 * 2 / (12 * 2 / 2))  # PNDM: 26 guided calls; 12 guided, half in full
    assert paper / lcm == pytest.approx(26 * 2 / 4) and paper / lcm_2 == pytest.approx(26 * 2 / 2)  # no CFG batch


def test_a_bad_recipe_is_refused_before_any_model_is_built():
    for command in (["bench", "pipeline", "--teacher", "toy-teacher", "--recipes", "fast:steps=0"],
                    ["toy", "recipes", "--recipes", "paper:cache_interval=99"]):
        done = subprocess.run([sys.executable, "-m", "studio", *command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "error:" in done.stderr, done.stderr[-2000:]
        assert "must be between" in done.stderr and "building" not in done.stdout + done.stderr


def test_the_app_starts_on_fast_only_where_the_tiny_decoder_is_at_hand(catalog, tiny_catalog):
    from studio.ui.common import default_recipe

    assert default_recipe(catalog.family("toy")).name == "fast"  # shipped in assets/toy/tiny-decoder
    assert default_recipe(catalog.family("v1")).name == "paper"  # TAESD is not in this machine's cache
    assert default_recipe(tiny_catalog.family("tiny")).name == "paper"  # no tiny decoder at all
