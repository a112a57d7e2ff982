import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import pytest

from studio.cli import main
from studio.toy.data import COLORS, SHAPES, make_example, sample_attributes
from studio.toy.judge import judge
from studio.toy.world import WORDS, tokenizer_files

ROOT = Path(__file__).resolve().parent.parent


def test_data_is_deterministic_and_captioned():
    image, text = make_example(7, seed=3)
    again, text_again = make_example(7, seed=3)
    assert np.array_equal(np.asarray(image), np.asarray(again)) and text == text_again
    assert image.size == (32, 32) and image.mode == "RGB"
    s = sample_attributes(7, seed=3)
    assert text == f"a {s.color} {s.shape} on a {s.background} background"
    assert make_example(7, seed=4)[1] != text or not np.array_equal(np.asarray(make_example(7, seed=4)[0]), np.asarray(image))


def test_data_covers_every_shape_and_color_with_jitter():
    samples = [sample_attributes(i) for i in range(600)]
    assert {s.shape for s in samples} == set(SHAPES) and len(SHAPES) >= 3
    assert {s.color for s in samples} == set(COLORS) and len(COLORS) >= 6
    assert all(s.color != s.background for s in samples)
    assert len({round(s.size) for s in samples}) > 5 and len({round(s.center[0]) for s in samples}) > 5


def test_judge_reads_data_images_at_least_98_percent_right():
    wrong = Counter()
    n = 600
    for i in range(n):
        s = sample_attributes(i, seed=11)
        v = judge(make_example(i, seed=11)[0])
        wrong.update(k for k in ("shape", "color", "background") if getattr(v, k) != getattr(s, k))
    for key in ("shape", "color", "background"):
        assert wrong[key] / n <= 0.02, wrong


def test_judge_on_a_blank_image_finds_no_shape():
    verdict = judge(Image.new("RGB", (32, 32), COLORS["blue"]))
    assert verdict.background == "blue" and verdict.shape is None


def test_export_in_imagefolder_layout(tmp_path, capsys):
    assert main(["toy", "data", "--n", "5", "--out", str(tmp_path / "d")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "d" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and set(rows[0]) == {"file_name", "text"}
    for row in rows:
        assert Image.open(tmp_path / "d" / row["file_name"]).size == (32, 32)
        assert row["text"].endswith("background")
    assert main(["toy", "data", "--n", "0", "--out", str(tmp_path / "e")]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err


def test_tokenizer_keeps_toy_words_whole_and_spells_out_others(tmp_path):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_files(tmp_path / "tok"))
    for word in WORDS:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    assert tokenizer.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]
    ids = tokenizer("a red circle on a blue background").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == 9


def test_a_few_training_steps_write_a_loadable_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    from studio.toy.train import ToyTrainConfig, train_toy_teacher

    out = train_toy_teacher(ToyTrainConfig(out=str(tmp_path / "t"), dataset_size=64, batch_size=4, vae_batch_size=4,
                                           vae_steps=2, unet_steps=3, log_every=1))
    pipe = StableDiffusionPipeline.from_pretrained(out, use_safetensors=True, torch_dtype=torch.float32)
    image = pipe("a red circle on a blue background", num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))
    # The run format every trainer shares: the app's loss plot reads it.
    from studio.jobs import read_metrics

    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [("loss_vae_recon" in r, "loss_denoise" in r) for r in rows] == [(True, False)] * 2 + [(False, True)] * 3
    card = json.loads((out / "card.json").read_text())
    assert card["kind"] == "toy-teacher" and card["config"]["unet_steps"] == 3 and card["steps"] == 5


def test_the_time_budget_stops_the_unet_stage_early(tmp_path):
    import json

    from studio.toy.train import ToyTrainConfig, train_toy_teacher

    # A budget already spent once the VAE is trained: the U-Net stage stops at once and says so.
    out = train_toy_teacher(ToyTrainConfig(out=str(tmp_path / "t"), dataset_size=64, batch_size=4, vae_batch_size=4,
                                           vae_steps=2, unet_steps=50, log_every=1, max_minutes=0.4))
    card = json.loads((out / "card.json").read_text())
    assert card["result"]["unet_steps_done"] < 50 and card["steps"] == 2 + card["result"]["unet_steps_done"]


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
    rows = run_ablation(2, 2, 3e-4, work, n=3, report=tmp_path / "ablation.md")
    assert [r["variant"] for r in rows][2] == "task + output KD + feature KD" and len(rows) == 4
    assert rows[0]["weight_out"] == 0.0 and rows[3]["init"] == "random"
    table = (tmp_path / "ablation.md").read_text()
    assert table.count("\n| ") == 7 and "PSNR to teacher" in table  # header, rule, teacher, 4 variants
