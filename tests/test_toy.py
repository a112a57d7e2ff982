import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import pytest

from studio.cli import main
from studio.toy.data import make_example
from studio.toy.scenes import BACKGROUNDS, COLORS, HELD_OUT, SHAPES, Scene, Thing, render
from studio.toy.judge import judge_images, read_scene, score
from studio.toy.prompts import TASKS, Prompt, evaluation_set, parse, random_prompt, scene_for
from studio.toy.world import WORDS, tokenizer_files

ROOT = Path(__file__).resolve().parent.parent


def test_data_is_deterministic_and_captioned_in_every_task_family():
    image, text = make_example(7, seed=3)
    again, text_again = make_example(7, seed=3)
    assert np.array_equal(np.asarray(image), np.asarray(again)) and text == text_again
    assert image.size == (64, 64) and image.mode == "RGB"
    prompts = [parse(make_example(i)[1]) for i in range(600)]
    assert all(prompts) and Counter(p.task for p in prompts).keys() == set(TASKS)
    assert len(SHAPES) >= 5 and len(COLORS) >= 8


def test_a_task_mix_weights_the_training_captions_and_rejects_what_is_not_a_task():
    from studio.toy.prompts import parse_task_weights, task_mix

    mix = task_mix({"single_object": 3})
    assert mix[TASKS.index("single_object")] == pytest.approx(3 / 8) and mix.sum() == pytest.approx(1)
    counts = Counter(parse(make_example(i, seed=3, mix=mix)[1]).task for i in range(1600))
    assert 0.33 < counts["single_object"] / 1600 < 0.42  # 3/8 expected
    assert all(0.09 < counts[task] / 1600 < 0.16 for task in TASKS if task != "single_object")  # 1/8 each
    assert make_example(5, seed=3)[1] == make_example(5, seed=3, mix=None)[1]  # uniform stays as it was
    assert parse_task_weights(["single_object=3", "colors=2"]) == {"single_object": 3.0, "colors": 2.0}
    for bad, message in ((["single=3"], "unknown task single"), (["colors=x"], "not TASK=WEIGHT"),
                         (["colors=-1"], "must not be negative")):
        with pytest.raises(ValueError, match=message):
            parse_task_weights(bad)


def test_training_never_draws_a_held_out_pair_and_the_evaluation_set_asks_for_them_apart():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        prompt = random_prompt(rng)
        scene = scene_for(prompt, rng)
        assert not prompt.held_out and not {(t.color, t.shape) for t in scene.things} & HELD_OUT
    prompts = evaluation_set()
    assert len(prompts) >= 600 + 1 and parse(prompts[0].text) == prompts[0]
    regular = [p for p in prompts if not p.held_out]
    assert Counter(p.task for p in regular) == {task: 100 for task in TASKS}  # balanced
    assert [p.task for p in regular[:6]] == list(TASKS)  # interleaved: any prefix is balanced
    assert {p.task for p in prompts if p.held_out} == {"colors", "counting", "color_attr"}


def test_the_judge_reads_every_task_right_on_ground_truth_scenes():
    rng = np.random.default_rng(11)
    prompts = list(evaluation_set())
    verdict = judge_images(prompts, [render(scene_for(p, rng)) for p in prompts])
    assert verdict["tasks"] == {task: 1.0 for task in TASKS}, verdict
    assert verdict["overall"] == verdict["held_out"] == verdict["attributes"] == 1.0


def _scene(*things, background="white"):
    return render(Scene(background, tuple(Thing(*t) for t in things)))


def test_the_judge_finds_what_is_wrong():
    red, blue = ("circle", "red", (16.0, 32.0), 14.0), ("square", "blue", (48.0, 32.0), 22.0)
    two_left = _scene(red, blue)
    position = parse("a circle left of a square on a white background")
    assert score(position, read_scene(two_left)) == (True, 1.0)
    assert score(parse("a circle right of a square on a white background"), read_scene(two_left)) == (False, 0.75)
    assert score(parse("a square above a circle on a white background"), read_scene(two_left))[0] is False
    counting = parse("two red circles on a white background")
    assert score(counting, read_scene(two_left))[0] is False  # one red circle, not two
    three = _scene(("circle", "red", (12.0, 12.0), 14.0), ("circle", "red", (50.0, 12.0), 14.0),
                   ("circle", "red", (30.0, 50.0), 22.0))
    assert score(counting, read_scene(three)) == (False, 0.75)  # three: shape and color right, the count wrong
    assert score(parse("three red circles on a white background"), read_scene(three)) == (True, 1.0)
    swapped = parse("a blue circle and a red square on a white background")
    right, fraction = score(swapped, read_scene(two_left))
    assert not right and fraction == 0.6  # background and both shapes right, both colors wrong
    assert score(parse("a red circle on a black background"), read_scene(two_left)) == (True, 2 / 3)


def test_the_judge_reads_every_shape_color_and_background_alone():
    for background in BACKGROUNDS:
        for shape in SHAPES:
            for color in COLORS:
                for size in (14.0, 22.0):
                    reading = read_scene(_scene((shape, color, (30.5, 33.0), size), background=background))
                    assert reading.background == background
                    assert [(o.shape, o.color) for o in reading.objects] == [(shape, color)], (shape, color, size)


def test_the_judge_on_a_blank_image_finds_nothing():
    reading = read_scene(Image.new("RGB", (64, 64), BACKGROUNDS["gray"]))
    assert reading.background == "gray" and reading.objects == ()
    assert score(Prompt("single_object", "gray", (("circle", None),)), reading) == (False, 0.5)


def test_export_in_imagefolder_layout(tmp_path, capsys):
    assert main(["toy", "data", "--n", "5", "--out", str(tmp_path / "d")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "d" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and set(rows[0]) == {"file_name", "text"}
    for row in rows:
        assert Image.open(tmp_path / "d" / row["file_name"]).size == (64, 64)
        assert row["text"].endswith("background")
    assert main(["toy", "data", "--n", "0", "--out", str(tmp_path / "e")]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err


def test_tokenizer_keeps_toy_words_whole_and_spells_out_others(tmp_path):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_files(tmp_path / "tok"))
    for word in WORDS:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    assert tokenizer.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]
    ids = tokenizer("an orange circle and a blue cross on a white background").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == 13
    longest = max(len(tokenizer(p.text).input_ids) for p in evaluation_set())
    assert longest <= tokenizer.model_max_length


def test_a_few_training_steps_write_a_loadable_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    from studio.toy.train import ToyTrainConfig, train_toy_teacher

    out = train_toy_teacher(ToyTrainConfig(out=str(tmp_path / "t"), dataset_size=64, batch_size=4, vae_batch_size=4,
                                           vae_steps=2, unet_steps=3, log_every=1))
    pipe = StableDiffusionPipeline.from_pretrained(out, use_safetensors=True, torch_dtype=torch.float32)
    image = pipe("a red circle on a white background", num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))
    # The run format every trainer shares: the app's loss plot reads it.
    from studio.jobs import read_metrics

    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [("loss_vae_recon" in r, "loss_denoise" in r) for r in rows] == [(True, False)] * 2 + [(False, True)] * 3
    card = json.loads((out / "card.json").read_text())
    assert card["kind"] == "toy-teacher" and card["config"]["unet_steps"] == 3 and card["steps"] == 5


def test_zero_terminal_snr_betas_leave_almost_no_signal_at_t_and_every_sampler_runs_on_them(tmp_path):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from studio.inference.generation import make_scheduler
    from studio.toy.train import ToyTrainConfig, train_toy_teacher
    from studio.toy.world import SCHEDULE, TERMINAL_ALPHA_BAR, zero_terminal_snr_betas

    sd = DDPMScheduler(**SCHEDULE).alphas_cumprod.double()
    zero = DDPMScheduler(**SCHEDULE, trained_betas=zero_terminal_snr_betas()).alphas_cumprod.double()
    assert sd[-1].item() > 4e-3 and zero[-1].item() == pytest.approx(TERMINAL_ALPHA_BAR, rel=1e-3)  # SD: 0.0047
    assert zero[0].item() == pytest.approx(sd[0].item(), rel=1e-4) and bool((zero[1:] < zero[:-1]).all())
    out = train_toy_teacher(ToyTrainConfig(out=str(tmp_path / "t"), dataset_size=64, batch_size=4, vae_batch_size=4,
                                           vae_steps=2, unet_steps=2, log_every=1, zero_terminal_snr=True))
    pipe = StableDiffusionPipeline.from_pretrained(out, use_safetensors=True, torch_dtype=torch.float32)
    assert pipe.scheduler.config.trained_betas == pytest.approx(zero_terminal_snr_betas())
    assert json.loads((out / "card.json").read_text())["config"]["zero_terminal_snr"] is True
    config = pipe.scheduler.config
    for name in ("PNDM", "DDIM", "Euler", "DPM++ 2M Karras", "UniPC", "LCM"):  # each starts near t = T
        pipe.scheduler = make_scheduler(name, config)
        images = pipe("a red circle on a white background", num_inference_steps=3, guidance_scale=3.0,
                      output_type="np", generator=torch.Generator().manual_seed(0)).images
        assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all(), name
    with pytest.raises(ValueError, match="pass --zero-terminal-snr"):  # not silently back on SD's schedule
        train_toy_teacher(ToyTrainConfig(out=str(tmp_path / "u"), dataset_size=64, batch_size=4, unet_steps=1,
                                         unet_from=str(out)))


def test_the_time_budget_stops_the_unet_stage_early(tmp_path):
    import json

    from studio.toy.train import ToyTrainConfig, train_toy_teacher

    # A budget already spent once the VAE is trained: the U-Net stage stops at once and says so.
    out = train_toy_teacher(ToyTrainConfig(out=str(tmp_path / "t"), dataset_size=64, batch_size=4, vae_batch_size=4,
                                           vae_steps=2, unet_steps=50, log_every=1, max_minutes=0.4))
    card = json.loads((out / "card.json").read_text())
    assert card["result"]["unet_steps_done"] < 50 and card["steps"] == 2 + card["result"]["unet_steps_done"]


def test_a_teacher_can_reuse_a_trained_vae_whose_posterior_is_then_deterministic(tmp_path):
    import json

    from diffusers import AutoencoderKL

    from studio.toy.train import ToyTrainConfig, train_toy_teacher

    small = dict(dataset_size=64, batch_size=4, vae_batch_size=4, vae_steps=2, unet_steps=2, log_every=1)
    first = train_toy_teacher(ToyTrainConfig(out=str(tmp_path / "a"), **small))
    second = train_toy_teacher(ToyTrainConfig(out=str(tmp_path / "b"), vae_from=str(first), **small))
    card = json.loads((second / "card.json").read_text())
    assert card["config"]["vae_steps"] == 0 and card["steps"] == 2  # no VAE stage
    a, b = (AutoencoderKL.from_pretrained(folder / "vae").state_dict() for folder in (first, second))
    assert all(torch.equal(a[k], b[k]) for k in a)
    from studio.toy.data import batch_tensors

    images, _ = batch_tensors(range(4), seed=0)
    with torch.no_grad():
        posterior = AutoencoderKL.from_pretrained(second / "vae").encode(images).latent_dist
    assert posterior.std.max() < 1e-5
    with pytest.raises(ValueError, match="--vae-from"):
        train_toy_teacher(ToyTrainConfig(out=str(tmp_path / "c"), vae_from=str(tmp_path / "nowhere"), **small))


@pytest.mark.slow
def test_the_lcm_command_distills_and_ships_the_few_step_tiny(tmp_path):
    from diffusers import UNet2DConditionModel

    from studio.toy.students import distill_toy_lcm

    distill_toy_lcm(2, 2, 1e-4, tmp_path / "runs", dest_root=tmp_path / "ship")
    shipped = tmp_path / "ship" / "bk-tiny-lcm"
    assert UNet2DConditionModel.from_pretrained(shipped / "unet").config.time_cond_proj_dim == 256
    assert {"card.json", "metrics.csv", "config.json", "validation.png"} <= {p.name for p in shipped.iterdir()}


@pytest.mark.slow
def test_students_and_ablation_commands_run_end_to_end(tmp_path):
    """Two steps each: the plumbing, not the quality (that is what the real runs report)."""
    from diffusers import UNet2DConditionModel

    from studio.toy.students import distill_toy_students, run_ablation

    work = tmp_path / "runs"
    distill_toy_students(2, 2, 3e-4, work, archs=("tiny",), dest_root=tmp_path / "ship")
    shipped = tmp_path / "ship" / "bk-tiny"
    assert UNet2DConditionModel.from_pretrained(shipped / "unet").dtype == torch.float32
    assert {"card.json", "metrics.csv", "config.json", "validation.png"} <= {p.name for p in shipped.iterdir()}
    rows = run_ablation(2, 2, 3e-4, work, n=6, seeds=(0, 1), report=tmp_path / "ablation.md")
    assert [r["model"] for r in rows][::3] == ["toy-teacher", "task + output KD + feature KD"] and len(rows) == 5
    assert rows[1]["weight_out"] == 0.0 and rows[4]["init"] == "random" and rows[1]["seeds"] == [0, 1]
    assert rows[0]["psnr_to_reference"] is None and all(r["psnr_to_reference"] > 5 for r in rows[1:])
    table = (tmp_path / "ablation.md").read_text()
    assert table.count("\n| ") == 7 and "PSNR to teacher" in table  # header, rule, teacher, 4 variants


def test_a_teacher_can_train_on_from_an_earlier_one(tmp_path):
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel

    from studio.toy.train import ToyTrainConfig, train_toy_teacher

    small = dict(dataset_size=64, batch_size=4, vae_batch_size=4, vae_steps=2, unet_steps=2, log_every=1)
    first = train_toy_teacher(ToyTrainConfig(out=str(tmp_path / "a"), **small))
    # At a learning rate of zero the U-Net it writes is the one it started from, not a fresh one.
    second = train_toy_teacher(ToyTrainConfig(out=str(tmp_path / "b"), unet_from=str(first), lr=0.0, seed=1, **small))
    a, b = (UNet2DConditionModel.from_pretrained(folder / "unet").state_dict() for folder in (first, second))
    assert all(torch.equal(a[k], b[k]) for k in a)
    card = json.loads((second / "card.json").read_text())
    assert card["config"]["unet_from"] == str(first) and card["config"]["vae_steps"] == 0  # its VAE came along
    assert card["result"]["continued_from"] == json.loads((first / "card.json").read_text())
    scales = [AutoencoderKL.load_config(folder / "vae")["scaling_factor"] for folder in (first, second)]
    assert scales[0] == scales[1]  # other scenes (seed 1), the same latent scale the U-Net learned
    with pytest.raises(ValueError, match="--unet-from"):
        train_toy_teacher(ToyTrainConfig(out=str(tmp_path / "c"), unet_from=str(tmp_path / "nowhere"), **small))


def test_the_vae_decoder_trains_on_with_the_encoder_frozen(tmp_path, capsys):
    import json

    from diffusers import AutoencoderKL

    from studio.toy.decoder import finetune_vae_decoder
    from studio.toy.train import ToyTrainConfig, train_toy_teacher

    source = train_toy_teacher(ToyTrainConfig(out=str(tmp_path / "a"), dataset_size=64, batch_size=4, vae_batch_size=4,
                                              vae_steps=2, unet_steps=1, log_every=1))
    out = tmp_path / "b"
    entry = finetune_vae_decoder(source, out, steps=3, batch_size=4, pool_size=16, judge_n=12, log=lambda _: None)
    old, new = (AutoencoderKL.from_pretrained(folder / "vae").state_dict() for folder in (source, out))
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith(("encoder.", "quant_conv.")))
    assert not all(torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))
    assert (out / "unet").is_dir() and json.loads((out / "card.json").read_text())["vae_decoder_finetunes"] == [
        json.loads(json.dumps(entry))]
    assert set(entry["judge_after"]["tasks"]) <= {"single_object", "two_object", "counting", "colors", "position",
                                                  "color_attr"} and entry["judge_after"]["n"] == 12
    with pytest.raises(ValueError, match="--out"):
        finetune_vae_decoder(source, out, steps=1, pool_size=4, judge_n=4)
    assert main(["toy", "vae-decoder", "--pipeline", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")]) == 2
    assert "--pipeline" in capsys.readouterr().err and not (tmp_path / "c").exists()
