import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from conftest import TINY_UNET
from studio.models.catalog import read_configs
from studio.cli import main
from studio.models.compression import build_student, plan_student
from studio.kinds.data import DataError, ImageFolderData
from studio.kinds.distillation.config import DistillConfig, KDWeights
from studio.kinds.distillation.objective import capture_outputs, feature_pairs, kd_loss
from studio.kinds.distillation.train import distill
from studio.kinds.training import TrainingError

ROOT = Path(__file__).resolve().parent.parent


def test_feature_pairs_follow_the_paper():
    teacher = read_configs("sd-v1.4")["unet"]
    base = feature_pairs(plan_student(teacher, "base"))
    assert base == [(f"down_blocks.{i}", f"down_blocks.{i}") for i in range(4)] + \
                   [(f"up_blocks.{i}", f"up_blocks.{i}") for i in range(4)]
    assert feature_pairs(plan_student(teacher, "small")) == base
    tiny = feature_pairs(plan_student(teacher, "tiny"))
    assert tiny == [("down_blocks.0", "down_blocks.0"), ("down_blocks.1", "down_blocks.1"),
                    ("down_blocks.2.attentions.0.proj_out", "down_blocks.2.attentions.1.proj_out"),
                    ("up_blocks.0", "up_blocks.1"), ("up_blocks.1", "up_blocks.2"), ("up_blocks.2", "up_blocks.3")]


@pytest.mark.parametrize("arch", ["base", "small", "tiny", "custom:2,1,1:no-innermost", "custom:1,2,1,2:no-mid"])
def test_paired_features_have_matching_shapes(arch):
    torch.manual_seed(0)
    teacher = UNet2DConditionModel.from_config(TINY_UNET).eval()
    student = build_student(teacher, arch)
    pairs = feature_pairs(plan_student(teacher.config, arch))
    args = (torch.randn(2, 4, 16, 16), torch.tensor([3, 500]))
    context = torch.randn(2, 5, 16)
    with torch.no_grad(), capture_outputs(teacher, [t for _, t in pairs]) as t_out, \
            capture_outputs(student, [s for s, _ in pairs]) as s_out:
        teacher(*args, encoder_hidden_states=context)
        student(*args, encoder_hidden_states=context)
    for s, t in pairs:
        assert s_out[s].shape == t_out[t].shape, (s, t)


def test_kd_loss_terms_and_weights():
    a, b, c = torch.zeros(2, 3), torch.ones(2, 3), torch.full((2, 3), 3.0)
    feats_s, feats_t = {"x": torch.zeros(4)}, {"y": torch.full((4,), 2.0)}
    terms = kd_loss(a, b, c, feats_s, feats_t, [("x", "y")], KDWeights(task=1.0, out=2.0, feat=0.5))
    assert terms["loss_task"].item() == 9.0 and terms["loss_out_kd"].item() == 1.0
    assert terms["loss_feat_kd"].item() == 4.0 and terms["loss_total"].item() == 9.0 + 2.0 + 2.0


def config(tiny_pipeline_dir, out, **changes) -> DistillConfig:
    values = dict(teacher=str(tiny_pipeline_dir), arch="small", data="toy", out=str(out), steps=4, batch_size=2,
                  lr=1e-3, checkpoint_every=2, log_every=1)
    return DistillConfig(**{**values, **changes})


def metrics(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_short_run_writes_student_metrics_checkpoints_and_card(tiny_pipeline_dir, tmp_path):
    out = distill(config(tiny_pipeline_dir, tmp_path / "run", validation_prompts=("a red circle",)))
    rows = metrics(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert set(rows[0]) == {"step", "loss_total", "loss_task", "loss_out_kd", "loss_feat_kd", "lr", "seconds",
                            "data_seconds", "bad_rows"}
    assert all(float(r["loss_feat_kd"]) > 0 for r in rows)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    student = UNet2DConditionModel.from_pretrained(out / "unet")
    assert student.config.mid_block_type is None
    card = json.loads((out / "card.json").read_text())
    assert card["kind"] == "distill" and card["result"]["arch"] == "small" and card["steps"] == 4
    assert "loss_total" in card["final_losses"] and card["config"]["teacher"] == str(tiny_pipeline_dir)
    assert Image.open(out / "validation" / "step-000004.png").size == (32, 64)  # teacher row, student row


@pytest.mark.parametrize("ema", [None, 0.9], ids=["plain", "ema"])
def test_resume_continues_exactly(tiny_pipeline_dir, tmp_path, ema):
    """N steps straight and N/2 + resume + N/2 give the same weights; with --ema the average's step count (and so
    its decay) must come back too, or the first resumed step overwrites the average."""
    whole = distill(config(tiny_pipeline_dir, tmp_path / "whole", ema=ema))
    part = tmp_path / "part"
    distill(config(tiny_pipeline_dir, part, steps=2, ema=ema))
    distill(config(tiny_pipeline_dir, part, resume=True, ema=ema))
    assert [int(r["step"]) for r in metrics(part)] == [1, 2, 3, 4]
    a = UNet2DConditionModel.from_pretrained(whole / "unet").state_dict()
    b = UNet2DConditionModel.from_pretrained(part / "unet").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("teacher_dtype", ["fp16", "bf16"])
def test_a_half_precision_teacher_trains_and_draws_validation_images(tiny_pipeline_dir, tmp_path, teacher_dtype):
    """The frozen U-Net in fp16/bf16 behind the fp32 text encoder and VAE: training steps and the validation grid
    (which samples the teacher through its pipeline) both work."""
    out = distill(config(tiny_pipeline_dir, tmp_path / "run", steps=2, teacher_dtype=teacher_dtype,
                         validation_prompts=("a red circle",)))
    assert [int(r["step"]) for r in metrics(out)] == [1, 2]
    assert all(torch.isfinite(torch.tensor(float(r["loss_total"]))) for r in metrics(out))
    assert Image.open(out / "validation" / "step-000002.png").size == (32, 64)


def test_trackers_get_the_loss_terms_speed_config_and_validation_images_offline(tiny_pipeline_dir, tmp_path):
    """--report-to tensorboard,trackio: both write into the run's trackers/ folder with no network (HF_HUB_OFFLINE);
    metrics.csv is still written as before."""
    import sqlite3

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    command = ["distill", "--teacher", str(tiny_pipeline_dir), "--arch", "tiny", "--data", "toy", "--out", str(out),
               "--steps", "4", "--batch-size", "2", "--checkpoint-every", "2", "--log-every", "1",
               "--validation-prompt", "a red circle", "--report-to", "tensorboard,trackio"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "studio", *command], cwd=ROOT, env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [int(r["step"]) for r in metrics(out)] == [1, 2, 3, 4]
    events = EventAccumulator(str(next((out / "trackers" / "tensorboard").rglob("events.out.*")).parent),
                              size_guidance={"images": 0})
    events.Reload()
    assert {"loss_total", "loss_task", "loss_out_kd", "loss_feat_kd", "lr", "steps_per_second"} <= set(
        events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss_total")] == [1, 2, 3, 4]
    assert [e.step for e in events.Images("validation")] == [2, 4]
    database = next((out / "trackers" / "trackio").glob("*.db"))
    with sqlite3.connect(database) as db:
        rows = [(step, bytes(m).decode() if isinstance(m, bytes) else m)
                for step, m in db.execute("select step, metrics from metrics order by step")]
    assert [step for step, _ in rows if "loss_total" in _] == [1, 2, 3, 4]
    assert any("validation" in m for _, m in rows)
    refused = subprocess.run([sys.executable, "-m", "studio", *command[:-1], "tensorboard,mlflow"], cwd=ROOT,
                             env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--report-to" in refused.stderr and "mlflow" in refused.stderr


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "studio", "distill", "--teacher", str(tiny_pipeline_dir), "--arch", "tiny",
               "--data", "toy", "--out", str(out), "--steps", "200", "--batch-size", "2",
               "--checkpoint-every", "3", "--log-every", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoints" / "step-000006").exists():
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / "checkpoints" / "step-000006").exists()
    last = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-??????"))
    assert main(["distill", "--teacher", str(tiny_pipeline_dir), "--arch", "tiny", "--data", "toy",
                 "--out", str(out), "--steps", str(last + 2), "--batch-size", "2", "--checkpoint-every", "3",
                 "--log-every", "1", "--resume"]) == 0
    assert [int(r["step"]) for r in metrics(out)] == list(range(1, last + 3))


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tiny_pipeline_dir, tmp_path, monkeypatch):
    import studio.kinds.distillation.train as train

    real = train.kd_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            terms["loss_total"] = terms["loss_total"] * float("nan")
        return terms

    monkeypatch.setattr(train, "kd_loss", poisoned)
    with pytest.raises(TrainingError, match="loss became nan at step 2.*step-000002"):
        distill(config(tiny_pipeline_dir, tmp_path / "nan"))
    assert (tmp_path / "nan" / "checkpoints" / "step-000002" / "student.safetensors").exists()


def write_folder(folder: Path, rows: list, images: dict) -> Path:
    folder.mkdir(parents=True)
    for name, content in images.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            content.save(folder / name)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_data_problems_are_reported_before_training(tmp_path):
    red = Image.new("RGB", (40, 30), (255, 0, 0))
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderData(tmp_path / "nowhere", 32)
    (tmp_path / "nometa").mkdir()
    with pytest.raises(DataError, match="no metadata.jsonl"):
        ImageFolderData(tmp_path / "nometa", 32)
    with pytest.raises(DataError, match="is empty"):
        ImageFolderData(write_folder(tmp_path / "empty", [], {}), 32)
    rows = [{"file_name": f"{i}.png", "text": ""} for i in range(3)]
    with pytest.raises(DataError, match="3 of 3 rows .* empty caption"):
        ImageFolderData(write_folder(tmp_path / "nocaps", rows, {f"{i}.png": red for i in range(3)}), 32)
    rows = [{"file_name": f"{i}.png", "text": "red"} for i in range(3)]
    with pytest.raises(DataError, match="not a readable image"):
        ImageFolderData(write_folder(tmp_path / "junk", rows, {f"{i}.png": b"junk" for i in range(3)}), 32)


def test_a_few_bad_rows_are_skipped_and_counted(tmp_path):
    red = Image.new("RGB", (40, 30), (255, 0, 0))
    rows = [{"file_name": f"{i}.png", "text": "a red thing"} for i in range(20)]
    rows.append({"file_name": "../outside.png", "text": "escape"})
    data = ImageFolderData(write_folder(tmp_path / "ok", rows, {f"{i}.png": red for i in range(20)}), 32)
    assert len(data) == 20 and len(data.skipped) == 1 and "outside the data folder" in data.skipped[0]
    import random

    images, captions = data.batch(3, random.Random(0))
    assert images.shape == (3, 3, 32, 32) and captions == ["a red thing"] * 3
    assert images.min() >= -1 and images.max() <= 1


def test_bad_flags_get_clear_errors(tiny_pipeline_dir, tmp_path, capsys):
    base = ["distill", "--teacher", str(tiny_pipeline_dir), "--data", "toy", "--out", str(tmp_path / "x")]
    assert main(base + ["--arch", "huge"]) == 2
    assert "allowed: base, small, tiny" in capsys.readouterr().err
    assert main(base + ["--arch", "tiny", "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    assert main(base + ["--arch", "tiny", "--lambda-feat", "-1"]) == 2
    assert "λ feature KD (--lambda-feat) must be at least 0, got -1.0" in capsys.readouterr().err
    assert main(["distill", "--teacher", str(tiny_pipeline_dir), "--data", str(tmp_path / "none"),
                 "--out", str(tmp_path / "y"), "--arch", "tiny"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_on_one_machine(tiny_pipeline_dir, tmp_path):
    """--processes 2: accelerate launch starts two ranks (gloo on a CPU) that share the CPU budget. (Before issue 35
    this test ran `accelerate launch --cpu --num_processes 2`, which starts one process on a machine without CUDA.)"""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "studio", "distill", "--teacher", str(tiny_pipeline_dir), "--arch", "small",
               "--data", "toy", "--out", str(out), "--steps", "3", "--batch-size", "2", "--checkpoint-every", "3",
               "--log-every", "1", "--processes", "2", "--main-process-port", "29517"]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--num_cpu_threads_per_process 1" in result.stdout  # the 2 threads of the budget, split
    assert [int(r["step"]) for r in metrics(out)] == [1, 2, 3]
    assert json.loads((out / "card.json").read_text())["result"]["processes"] == 2
    assert UNet2DConditionModel.from_pretrained(out / "unet").config.layers_per_block == 1


def test_gradient_checkpointing_trains_the_same_student_with_feature_kd(tiny_pipeline_dir, tmp_path, monkeypatch):
    """Recomputed activations in the backward pass: the feature-KD hooks still see the forward's features, and the
    losses and the student come out as without it (Tiny's pairs include an attention's proj_out)."""
    import torch.utils.checkpoint

    plain = distill(config(tiny_pipeline_dir, tmp_path / "plain", arch="tiny", steps=3))
    calls, checkpoint = [], torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    saving = distill(config(tiny_pipeline_dir, tmp_path / "saving", arch="tiny", steps=3, gradient_checkpointing=True))
    assert calls  # the student's blocks ran checkpointed
    for a, b in zip(metrics(plain), metrics(saving), strict=True):
        for term in ("loss_total", "loss_task", "loss_out_kd", "loss_feat_kd"):
            assert float(a[term]) == pytest.approx(float(b[term]), rel=1e-5, abs=1e-7), (term, a, b)
    assert float(metrics(saving)[0]["loss_feat_kd"]) > 0
    a = UNet2DConditionModel.from_pretrained(plain / "unet").state_dict()
    b = UNet2DConditionModel.from_pretrained(saving / "unet").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_eight_bit_adamw_is_refused_where_it_cannot_run(tiny_pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"optimizer: adamw8bit \(bitsandbytes' 8-bit AdamW\) needs a CUDA GPU"):
        distill(config(tiny_pipeline_dir, tmp_path / "run", optimizer="adamw8bit"))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_the_memory_estimate_follows_the_switches(catalog):
    from studio.kinds.distillation.kind import estimate_bytes, estimate_memory

    base = dict(teacher="sd-v1.4", arch="small", data="toy", out="-", batch_size=64)
    plain = estimate_memory(DistillConfig(**base), catalog)
    saving = estimate_memory(DistillConfig(**base, gradient_checkpointing=True), catalog)
    eight_bit = estimate_memory(DistillConfig(**base, optimizer="adamw8bit"), catalog)
    # Checkpointing keeps block inputs and one block's insides: at SD-v1.4 Small, batch 64, well under half.
    assert saving["activations"] < plain["activations"] / 2 and saving["training"] == plain["training"]
    params = plain["training"] // (4 * 2 + 8)  # weights and gradients in fp32, AdamW's two fp32 moments
    assert plain["training"] - eight_bit["training"] == params * 6  # 8-bit moments: 2 bytes a parameter, not 8
    disk = estimate_bytes(DistillConfig(**base), catalog)["checkpoints"]
    assert estimate_bytes(DistillConfig(**base, optimizer="adamw8bit"), catalog)["checkpoints"] < disk


def test_loader_workers_decode_ahead_and_train_the_same_student(tiny_pipeline_dir, tmp_path):
    """--data-workers 2 decodes an imagefolder's batches in DataLoader processes, from the same draws as the loop
    does: the losses and the student equal those of decoding in the loop, and a resumed run picks the draws up where
    it stopped."""
    import numpy as np

    rng = np.random.default_rng(0)
    pictures = {f"{i}.png": Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for i in range(12)}
    rows = [{"file_name": name, "text": f"thing {i}"} for i, name in enumerate(pictures)]
    folder = str(write_folder(tmp_path / "data", rows, pictures))
    in_loop = distill(config(tiny_pipeline_dir, tmp_path / "loop", data=folder, grad_accum=2))
    workers = distill(config(tiny_pipeline_dir, tmp_path / "workers", data=folder, grad_accum=2, data_workers=2))
    part = tmp_path / "part"
    distill(config(tiny_pipeline_dir, part, data=folder, grad_accum=2, data_workers=2, steps=2))
    distill(config(tiny_pipeline_dir, part, data=folder, grad_accum=2, data_workers=2, resume=True))
    for run in (workers, part):
        assert [r["loss_total"] for r in metrics(run)] == [r["loss_total"] for r in metrics(in_loop)]
        a = UNet2DConditionModel.from_pretrained(in_loop / "unet").state_dict()
        b = UNet2DConditionModel.from_pretrained(run / "unet").state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), run


def test_the_prefetcher_refuses_a_batch_out_of_step(tmp_path):
    import random

    from studio.kinds.data import prefetched

    red = Image.new("RGB", (40, 30), (255, 0, 0))
    rows = [{"file_name": f"{i}.png", "text": f"thing {i}"} for i in range(8)]
    data = ImageFolderData(write_folder(tmp_path / "ok", rows, {f"{i}.png": red for i in range(8)}), 32)
    loader = prefetched(data, 1, 3, lambda draw: random.Random(draw), first=0)
    images, captions = loader.batch(3, random.Random(0))
    assert captions == data.batch(3, random.Random(0))[1] and images.shape == (3, 3, 32, 32)
    with pytest.raises(RuntimeError, match="the prefetched batch is not the one the run asked for"):
        loader.batch(3, random.Random(99))  # the loader decoded draw 1's rows
