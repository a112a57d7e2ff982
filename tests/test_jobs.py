"""Background training jobs: start, live status, cancel (with a checkpoint), resume, finish."""

import json
import re
import zipfile

import pytest
import torch

from studio.jobs.cpu import CpuBudget
from studio.jobs import JobError, JobManager, extract_dataset_zip
from studio.ui.common import Studio, job_rows, job_view
from studio.ui.train import train_start


def start(jobs, catalog, **overrides):
    values = dict(teacher="tiny-teacher", preset="small", layers="1", keep_mid=False, keep_innermost=True,
                  data_source="toy", upload=None, steps=4, lr=1e-4, lambda_task=1.0, lambda_out=1.0,
                  lambda_feat=1.0, batch_size=2)
    values.update(overrides)
    return train_start(jobs, catalog, *values.values())


def test_bad_training_requests_are_refused_and_touch_nothing(tiny_catalog, tmp_path):
    jobs = JobManager(tmp_path / "jobs")
    for overrides, message in [
        ({"teacher": "nope"}, "teacher: 'nope' is not a teacher in the catalogue; choose one of"),
        ({"teacher": "tiny-small"}, "teacher: 'tiny-small' is not a teacher"),
        ({"steps": 0}, "--steps must be at least 1, got 0"),
        ({"steps": None}, "steps must be a number, got None"),
        ({"lr": -1}, "learning rate (--lr) must be above 0, got -1.0"),
        ({"lr": float("nan")}, "learning rate (--lr) must be a finite number, got nan"),
        ({"lambda_feat": float("inf")}, "λ feature KD (--lambda-feat) must be a finite number"),
        ({"lambda_task": 0, "lambda_out": 0, "lambda_feat": 0}, "are all 0"),
        ({"preset": "custom", "layers": "9"}, "layers"),
        ({"data_source": "upload"}, "no dataset uploaded"),
        ({"data_source": "s3"}, "data: must be one of toy, upload, got 's3'"),
        ({"teacher": "sd-v1.4"}, "toy data is 64x64 (or scaled down); the teacher asks for 512"),
    ]:
        with pytest.raises(ValueError) as error:
            start(jobs, tiny_catalog, **overrides)
        assert message in str(error.value), (overrides, str(error.value))
    # Uploads: not a zip, a zip without metadata, a zip of junk images.
    not_zip = tmp_path / "data.zip"
    not_zip.write_text("hello")
    no_meta = tmp_path / "nometa.zip"
    with zipfile.ZipFile(no_meta, "w") as archive:
        archive.writestr("a.png", b"x")
    junk = tmp_path / "junk.zip"
    with zipfile.ZipFile(junk, "w") as archive:
        archive.writestr("metadata.jsonl", "\n".join(json.dumps({"file_name": f"{i}.png", "text": "a"}) for i in range(3)))
        for i in range(3):
            archive.writestr(f"{i}.png", b"junk")
    for upload, message in [(not_zip, "not a valid zip"), (no_meta, "no metadata.jsonl"), (junk, "can't be trained on")]:
        with pytest.raises(JobError, match=message):
            start(jobs, tiny_catalog, data_source="upload", upload=str(upload))
    assert jobs.ids() == []  # no half-made job folders left behind


def test_zip_entries_outside_the_archive_are_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../escape.txt", "x")
    with pytest.raises(JobError, match="outside the archive"):
        extract_dataset_zip(evil, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.slow
def test_a_job_runs_in_the_background_and_its_student_joins_the_catalogue(tiny_catalog, tmp_path):
    jobs = JobManager(tmp_path / "jobs", cpu=CpuBudget(2))
    job_id, text = start(jobs, tiny_catalog, steps=4)
    assert jobs.running_threads(2) == [1] and CpuBudget(2).generation_share([1]) == 1
    assert job_id and "started" in text
    assert jobs.wait(job_id, timeout=240) == "finished", (tmp_path / "jobs" / job_id / "log.txt").read_text()
    rows = job_rows(jobs, "distill")
    curves, status, validation = job_view(jobs, job_id)
    assert rows[0][:5] == [job_id, "small from tiny-teacher, 4 steps", "finished", 4, 4]
    assert validation.endswith("step-000004.png")  # teacher vs student on the family's validation prompts
    assert {c["term"] for c in curves} == {"loss_total", "loss_task", "loss_out_kd", "loss_feat_kd"}
    assert "finished" in status and f"job-{job_id}" in status
    assert re.search(r"waiting for data \d+% of the time", status)  # from metrics.csv's data_seconds
    assert 0 <= jobs.status(job_id).data_wait < 1 and jobs.status(job_id).bad_rows == 0
    card = json.loads((jobs.run_folder(job_id) / "card.json").read_text())
    assert card["threads"] == 1  # its share of a 2-thread budget (studio/jobs/cpu.py), not every core
    # A fresh manager (an app restart) reads the same state from disk.
    assert JobManager(tmp_path / "jobs").status(job_id).state == "finished"
    catalog = Studio.create(tiny_catalog, "tiny", "cpu", tmp_path).current_catalog()
    entry = catalog.get(f"job-{job_id}")
    assert entry.teacher == "tiny-teacher" and entry.arch == "small"


@pytest.mark.slow
def test_cancel_keeps_a_checkpoint_and_resume_finishes(tiny_catalog, tmp_path):
    import time

    jobs = JobManager(tmp_path / "jobs")
    job_id, _ = start(jobs, tiny_catalog, steps=100_000)
    run = jobs.run_folder(job_id)
    deadline = time.monotonic() + 240
    while not (run / "metrics.csv").exists() or len((run / "metrics.csv").read_text().splitlines()) < 3:
        assert time.monotonic() < deadline and jobs.state(job_id)[0] == "running", jobs.state(job_id)
        time.sleep(0.2)
    assert "cancelling" in jobs.cancel(job_id)
    assert jobs.wait(job_id, timeout=120) == "cancelled"
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    assert checkpoints, "a cancelled run keeps a checkpoint of where it stopped"
    stopped_at = int(checkpoints[-1].name.split("-")[1])
    assert stopped_at >= 10 and (run / "metrics.csv").exists()
    with pytest.raises(JobError, match="not running"):
        jobs.cancel(job_id)
    # Resume continues from the checkpoint; cancel again, and the log has no duplicated steps.
    assert jobs.resume(job_id).startswith("resumed")
    assert jobs.spec(job_id)["config"]["resume"] is True  # the runner builds its command from the stored config
    deadline = time.monotonic() + 240
    while jobs.status(job_id).step <= stopped_at:
        assert time.monotonic() < deadline and jobs.state(job_id)[0] == "running", jobs.state(job_id)
        time.sleep(0.2)
    jobs.cancel(job_id)
    assert jobs.wait(job_id, timeout=120) == "cancelled"
    steps = [int(float(line.split(",")[0])) for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] > stopped_at
    assert "$ " in (tmp_path / "jobs" / job_id / "log.txt").read_text()


@pytest.mark.slow
def test_dreambooth_and_evaluation_jobs_run_in_the_background(tiny_catalog, tmp_path):
    from PIL import Image

    from studio.ui.dreambooth import dreambooth_results, dreambooth_start
    from studio.ui.evaluate import evaluate_start, evaluate_status

    studio = Studio.create(tiny_catalog, "tiny", "cpu", tmp_path)
    jobs = studio.workspace().jobs
    photos = []
    for i in range(2):
        photos.append(tmp_path / f"upload-{i}.jpg")
        Image.new("RGB", (40, 40), (250, 140, 20 * i)).save(photos[-1])
    ids, message = dreambooth_start(jobs, tiny_catalog, [str(p) for p in photos], "sks", "cat",
                                    ["tiny-teacher", "tiny-small"], 3, class_images=1)
    assert len(ids) == 2, message
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    eval_id, message = evaluate_start(jobs, tiny_catalog, ["tiny-teacher", "tiny-small"], str(prompts), 2,
                                      steps=2)
    assert eval_id, message
    for job_id in ids + [eval_id]:
        assert jobs.wait(job_id, timeout=300) == "finished", (tmp_path / "jobs" / job_id / "log.txt").read_text()
    # The uploads were copied into each job under names the studio chose.
    assert sorted(p.name for p in (jobs.folder(ids[0]) / "photos").iterdir()) == ["photo-00.png", "photo-01.png"]
    items, readout = dreambooth_results(studio, ids, "a sks cat", 0, 2, 2.0)
    assert len(items) == 2 and "| tiny-small |" in readout and "MB" in readout
    text, plot = evaluate_status(jobs, eval_id)
    assert "finished, 4 of 4 images" in text and "| tiny-small |" in text and plot is not None


def test_text_encoder_lora_is_saved_and_loaded(tiny_pipeline_dir, tmp_path):
    from PIL import Image

    from studio.kinds.personalization.dreambooth import DreamBoothConfig, dreambooth, load_personalized

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 40), (10, 200, 30)).save(photos / "a.png")
    config = DreamBoothConfig(model=str(tiny_pipeline_dir), photos=str(photos), instance_prompt="a sks cat",
                              class_prompt="a cat", out=str(tmp_path / "out"), steps=2, class_images=1,
                              sample_steps=2, train_text_encoder=True, lr=1e-2)
    out = dreambooth(config)
    from safetensors.torch import load_file

    keys = load_file(out / "lora" / "pytorch_lora_weights.safetensors")
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    from studio.models.loading import load_pipeline
    from studio.kinds.training import tokenize

    base, tuned = load_pipeline(str(tiny_pipeline_dir)), load_personalized(str(tiny_pipeline_dir), out)
    ids = tokenize(base.tokenizer, ["a sks cat"])
    with torch.no_grad():  # the text encoder's LoRA loaded and changes what the prompt means to the U-Net
        assert not torch.allclose(base.text_encoder(ids)[0], tuned.text_encoder(ids)[0], atol=1e-5)


@pytest.mark.slow
def test_the_contention_bench_measures_both_settings_in_one_run(tiny_catalog):
    from studio.bench.contention import bench_contention, format_report

    report = bench_contention(["tiny-teacher", "tiny-small"], "paper", threads=2, arch="small", batch_size=2,
                              repeats=1, window=2.0, log=lambda message: None, catalog=tiny_catalog)
    budgeted, unplanned = report["rows"]
    assert (budgeted["job_threads"], budgeted["generation_threads"]) == (1, 1)
    assert unplanned["job_threads"] is None
    for row in report["rows"]:
        assert row["compare_alone_s"] > 0 and row["job_alone_steps_s"] > 0 and row["job_with_compare_steps_s"] > 0
        assert row["compare_slowdown"] == pytest.approx(row["compare_with_job_s"] / row["compare_alone_s"])
    table = format_report(report)
    assert "| with the CPU budget | 1 / 1 |" in table and "without a budget" in table
