"""Distillation at scale (issue 35): cached features and more than one process.

- a feature cache trains the same losses and student as the images it was made of (distillation with caption
  dropout and feature KD; consistency distillation), with loader workers too; a cache of another teacher or
  resolution is refused naming both;
- two "machines" (two accelerate launches with num_machines 2 on 127.0.0.1, gloo, one process each) end with the
  student one process trains with the same global batch, and a resumed two-machine run continues exactly.
"""

import csv
import json
import socket
import subprocess
import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from studio.kinds.consistency.config import ConsistencyConfig
from studio.kinds.data import DataError
from studio.kinds.distillation.config import DistillConfig
from studio.kinds.distillation.train import distill
from studio.kinds.features.cache import CachedFeatures, precompute
from studio.kinds.launch import accelerate_command

ROOT = Path(__file__).resolve().parent.parent


def image_folder(folder: Path, n: int = 12) -> str:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"a thing numbered {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return str(folder)


def metrics(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def unet_difference(a: Path, b: Path) -> float:
    first = UNet2DConditionModel.from_pretrained(a / "unet").state_dict()
    second = UNet2DConditionModel.from_pretrained(b / "unet").state_dict()
    return max((first[k] - second[k]).abs().max().item() for k in first)


def distill_config(teacher, data, out, **changes) -> DistillConfig:
    values = dict(teacher=str(teacher), arch="tiny", data=str(data), out=str(out), steps=4, batch_size=3, lr=1e-3,
                  checkpoint_every=2, log_every=1)
    return DistillConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def images_and_cache(tiny_pipeline_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    folder = image_folder(root / "images")
    return folder, precompute(str(tiny_pipeline_dir), folder, root / "cache", batch_size=5)


def test_a_cache_holds_every_row_and_what_made_it(images_and_cache, tiny_pipeline_dir):
    folder, cache = images_and_cache
    data = CachedFeatures(cache)
    assert len(data) == 12 and data.index["teacher"] == str(Path(tiny_pipeline_dir).resolve())
    batch = data.load([(0, False), (0, True), (11, False)])
    assert batch.mean.shape == (3, 4, 16, 16) and batch.context.shape[0] == 3
    assert not torch.equal(batch.mean[0], batch.mean[1])  # the mirrored image's own latents
    assert torch.equal(batch.context[0], batch.context[1]) and (batch.std > 0).all()


def test_cached_features_train_the_same_student_as_the_images(images_and_cache, tiny_pipeline_dir, tmp_path):
    """Same seed: the loss sequence from the cache equals the one computed from the images (caption dropout and
    feature KD on), and so does the student; loader workers read the cache too."""
    folder, cache = images_and_cache
    changes = dict(caption_dropout=0.3, grad_accum=2)
    from_images = distill(distill_config(tiny_pipeline_dir, folder, tmp_path / "images", **changes))
    from_cache = distill(distill_config(tiny_pipeline_dir, cache, tmp_path / "cache", **changes))
    with_workers = distill(distill_config(tiny_pipeline_dir, cache, tmp_path / "workers", data_workers=2, **changes))
    for run in (from_cache, with_workers):
        for a, b in zip(metrics(from_images), metrics(run), strict=True):
            for term in ("loss_total", "loss_task", "loss_out_kd", "loss_feat_kd"):
                assert float(a[term]) == pytest.approx(float(b[term]), rel=1e-5, abs=1e-7), (run, term)
        # Adam scales each weight's step to about the learning rate, so float-level gradient differences (the VAE
        # run on batches of 5 there, of 3 here) can move a weight by a few hundredths of one step.
        assert unet_difference(from_images, run) < 0.1 * 1e-3


def test_consistency_distillation_reads_a_cache_the_same(images_and_cache, tiny_pipeline_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    from studio.kinds.consistency.train import consistency_distill
    from studio.models.compression import build_student

    folder, cache = images_and_cache
    student = tmp_path / "student"
    build_student(UNet2DConditionModel.from_pretrained(Path(tiny_pipeline_dir) / "unet"), "small").save_pretrained(
        student / "unet", safe_serialization=True)
    runs = []
    for name, data in (("images", folder), ("cache", cache)):
        runs.append(consistency_distill(ConsistencyConfig(
            teacher=str(tiny_pipeline_dir), student=str(student), arch="small", data=str(data), out=str(tmp_path / name),
            steps=3, batch_size=2, solver_steps=10, checkpoint_every=3, log_every=1)))
    for a, b in zip(metrics(runs[0]), metrics(runs[1]), strict=True):
        assert float(a["loss_total"]) == pytest.approx(float(b["loss_total"]), rel=1e-5, abs=1e-7)


def test_a_cache_of_another_teacher_or_resolution_is_refused(images_and_cache, tiny_pipeline_dir, tmp_path):
    folder, cache = images_and_cache
    other = tmp_path / "other-teacher"
    import shutil

    shutil.copytree(tiny_pipeline_dir, other)
    with pytest.raises(DataError, match=r"cached by teacher .*tiny-teacher.* at 32 px; this run's teacher is "
                                        r".*other-teacher at 32 px"):
        distill(distill_config(other, cache, tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.csv").exists()
    data = CachedFeatures(cache)
    with pytest.raises(DataError, match="at 32 px; this run's teacher is .* at 64 px"):
        data.check_for(str(tiny_pipeline_dir), 64)
    with pytest.raises(DataError, match="feature cache, which has no images"):
        distill(distill_config(tiny_pipeline_dir, cache, tmp_path / "synthetic", synthetic=4))


def test_an_unfinished_cache_is_refused_and_finished_by_the_same_command(tiny_pipeline_dir, tmp_path, monkeypatch):
    import studio.kinds.features.cache as features

    folder = image_folder(tmp_path / "images", n=7)
    monkeypatch.setattr(features, "SHARD_ROWS", 3)
    calls = []
    original = features.save_file

    def fail_on_the_second_shard(tensors, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        original(tensors, path)

    monkeypatch.setattr(features, "save_file", fail_on_the_second_shard)
    with pytest.raises(OSError):
        precompute(str(tiny_pipeline_dir), folder, tmp_path / "cache")
    with pytest.raises(DataError, match="unfinished feature cache; run the same precompute command again"):
        CachedFeatures(tmp_path / "cache")
    monkeypatch.setattr(features, "save_file", original)
    first = (tmp_path / "cache" / "features-00000.safetensors").stat().st_mtime_ns
    precompute(str(tiny_pipeline_dir), folder, tmp_path / "cache")
    assert (tmp_path / "cache" / "features-00000.safetensors").stat().st_mtime_ns == first  # kept, not redone
    assert len(CachedFeatures(tmp_path / "cache")) == 7


def test_the_launch_command_is_accelerates(tiny_pipeline_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    config = distill_config(tiny_pipeline_dir, "toy", "/tmp/run", processes=2, num_machines=3, machine_rank=1,
                            main_process_ip="10.0.0.5", main_process_port=29600)
    command = accelerate_command("distill", config)
    flags = dict(zip(command[3::2], command[4::2]))
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in command
    assert command[command.index("--num_processes") + 1] == "6"  # accelerate counts the processes of all machines
    assert command[command.index("--machine_rank") + 1] == "1"
    assert command[command.index("--main_process_ip") + 1] == "10.0.0.5"
    assert command[command.index("--num_cpu_threads_per_process") + 1] == "2"  # the job's 4 threads, 2 processes
    tail = command[command.index("studio"):]
    assert tail[:2] == ["studio", "distill"] and "--machine-rank" in tail and "--processes" in tail
    assert flags  # the command is flag, value pairs up to the module
    with pytest.raises(ValueError, match=r"machine rank \(--machine-rank\) is 3, but the run has 3 machine"):
        distill_config(tiny_pipeline_dir, "toy", "/tmp/run", num_machines=3, machine_rank=3).check()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_machines(tiny_pipeline_dir, data, out, steps, resume=False):
    """Two launches with num_machines 2 on 127.0.0.1, one process each (gloo), batch 2 each."""
    port = free_port()
    base = [sys.executable, "-m", "studio", "distill", "--teacher", str(tiny_pipeline_dir), "--arch", "tiny",
            "--data", str(data), "--out", str(out), "--steps", str(steps), "--batch-size", "2",
            "--checkpoint-every", "5", "--log-every", "1", "--num-machines", "2", "--main-process-port", str(port),
            "--caption-dropout", "0.3"] + (["--resume"] if resume else [])
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    machines = [subprocess.Popen(base + ["--machine-rank", str(rank)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    try:
        outputs = [machine.communicate(timeout=600)[0] for machine in machines]
    finally:
        for machine in machines:
            machine.kill()
    for machine, output in zip(machines, outputs):
        assert machine.returncode == 0, output[-3000:]
    return outputs


@pytest.mark.slow
def test_two_machines_train_what_one_process_trains_and_resume_exactly(tiny_pipeline_dir, tmp_path):
    """One process with batch 4 against two machines with batch 2 each: the same global batches (planned from the
    shared rng, each machine loading its half), the same losses (the mean over the processes), and the same student
    after 10 steps, reached by the two machines as 5 steps, then a resumed run to 10. Feature KD (Tiny's pairs) runs
    through DDP's wrapper."""
    folder = image_folder(tmp_path / "images")
    single = distill(distill_config(tiny_pipeline_dir, folder, tmp_path / "one", steps=10, batch_size=4, lr=5e-5,
                                    checkpoint_every=5, caption_dropout=0.3))  # the paper's learning rate
    out = tmp_path / "two"
    two_machines(tiny_pipeline_dir, folder, out, steps=5)
    assert [int(r["step"]) for r in metrics(out)] == [1, 2, 3, 4, 5]
    two_machines(tiny_pipeline_dir, folder, out, steps=10, resume=True)
    assert [int(r["step"]) for r in metrics(out)] == list(range(1, 11))
    for a, b in zip(metrics(single), metrics(out), strict=True):
        for term in ("loss_total", "loss_task", "loss_out_kd", "loss_feat_kd"):
            assert float(a[term]) == pytest.approx(float(b[term]), rel=1e-5, abs=1e-7), (term, a["step"])
    assert float(metrics(out)[0]["loss_feat_kd"]) > 0
    difference = unet_difference(single, out)
    print(f"two machines against one process, max abs weight difference after 10 steps: {difference:.2e}")
    assert difference <= 1e-5
    card = json.loads((out / "card.json").read_text())
    assert card["config"]["num_machines"] == 2 and card["result"]["processes"] == 2


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("deepspeed-zero2", "DEEPSPEED"), ("fsdp", "FSDP")])
def test_the_shipped_accelerate_configs_are_accelerates_own(name, kind, tiny_pipeline_dir):
    from accelerate.commands.config.config_args import load_config_from_file

    from studio.kinds.launch import CONFIG_DIR

    path = CONFIG_DIR / f"{name}.yaml"
    assert load_config_from_file(str(path)).distributed_type.name == kind
    config = distill_config(tiny_pipeline_dir, "toy", "/tmp/run", processes=8, accelerate_config=str(path))
    command = accelerate_command("distill", config)
    assert command[command.index("--config_file") + 1] == str(path) and "--multi_gpu" not in command
    assert command[command.index("--num_processes") + 1] == "8"  # the flags set the counts the file leaves at 1
    with pytest.raises(ValueError, match=r"accelerate config \(--accelerate-config\): .* is not a file; shipped ones: "
                                         r"ddp.yaml, deepspeed-zero2.yaml, fsdp.yaml"):
        distill_config(tiny_pipeline_dir, "toy", "/tmp/run", accelerate_config="/nowhere.yaml").check()


def test_a_public_host_runs_one_process_a_job(tiny_pipeline_dir):
    from studio.budget import QuotaError, check_caps
    from studio.kinds.registry import KINDS
    from studio.ui.hosting import Hosting

    limits = Hosting(public=True).limits()
    with pytest.raises(QuotaError, match=r"processes: 2 is more than this host allows \(1\)"):
        check_caps(limits, distill_config(tiny_pipeline_dir, "toy", "-", processes=2), KINDS["distill"].caps)


def test_an_imagefolder_is_checked_lazily_and_bad_rows_are_met_and_counted(tmp_path):
    """Start-up opens a sample of the images; an unreadable one outside it is passed over when a batch meets it (the
    next row takes its place, the same in every run) and counted; too many stop the run naming the folder."""
    import random

    from studio.kinds.data import SAMPLE_CHECKED, ImageFolderData, check_bad_rows

    folder = Path(image_folder(tmp_path / "images", n=200))
    sampled = set(random.Random(0).sample(range(200), SAMPLE_CHECKED))
    junk = next(row for row in range(200) if row not in sampled and row + 1 not in sampled)
    (folder / f"{junk}.png").write_bytes(b"not a picture")
    data = ImageFolderData(folder, 32)
    assert len(data) == 200 and data.skipped == []  # the sample did not meet it
    images, captions = data.ready(data.load([(junk, False), (3, True)]))
    assert captions == [f"a thing numbered {junk + 1}", "a thing numbered 3"] and images.shape == (2, 3, 32, 32)
    assert (data.bad_met, data.rows_met) == (1, 3)
    for row in range(0, 200, 2):
        if row not in sampled:
            (folder / f"{row}.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"of the \d+ rows met so far could not be read \(more than 10%\)"):
        for start in range(0, 200, 8):  # as a trainer does after each batch
            data.ready(data.load([(row, False) for row in range(start, start + 8)]))
            check_bad_rows(data.bad_met, data.rows_met, folder)


def write_shards(folder: Path, shards: int = 4, per_shard: int = 6) -> Path:
    import webdataset as wds

    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for shard in range(shards):
        with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as sink:
            for i in range(per_shard):
                picture = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
                sink.write({"__key__": f"{shard:05d}{i:04d}", "png": picture, "txt": f"sample {shard}-{i}"})
    return folder


def test_shards_split_by_process_and_worker_read_each_sample_once_a_pass(tmp_path):
    from studio.kinds.shards import ShardData

    folder = write_shards(tmp_path / "shards")
    every = {f"sample {s}-{i}" for s in range(4) for i in range(6)}
    for workers in (0, 2):
        seen = []
        for rank in (0, 1):
            data = ShardData(str(folder), 32).for_rank(rank, 2)
            seen.append([caption for _, caption in islice(data.stream(workers), 12)])  # one pass: 2 shards of 6
        assert len(set(seen[0])) == 12 and len(set(seen[1])) == 12, workers
        assert set(seen[0]) | set(seen[1]) == every and not set(seen[0]) & set(seen[1]), workers
    pattern = ShardData(str(folder / "{00000..00003}.tar"), 32)
    assert [c for _, c in islice(pattern.stream(0), 30)][24:] == [f"sample 0-{i}" for i in range(6)]  # next pass


def test_distillation_streams_shards_and_resumes_where_it_stopped(tiny_pipeline_dir, tmp_path):
    folder = write_shards(tmp_path / "shards")
    straight = distill(distill_config(tiny_pipeline_dir, folder, tmp_path / "straight", data_workers=2))
    part = tmp_path / "part"
    distill(distill_config(tiny_pipeline_dir, folder, part, data_workers=2, steps=2))
    distill(distill_config(tiny_pipeline_dir, folder, part, data_workers=2, resume=True))
    assert [r["loss_total"] for r in metrics(part)] == [r["loss_total"] for r in metrics(straight)]
    assert unet_difference(straight, part) == 0


def test_bad_shards_are_named_before_the_first_step(tiny_pipeline_dir, tmp_path):
    from studio.kinds.shards import ShardData

    with pytest.raises(DataError, match=r"the pattern matches no shard"):
        distill(distill_config(tiny_pipeline_dir, tmp_path / "none-{00000..00003}.tar", tmp_path / "a"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "00000.tar").write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(DataError, match=r"shard .*00000.tar is not a readable tar file"):
        distill(distill_config(tiny_pipeline_dir, tmp_path / "junk", tmp_path / "b"))
    import webdataset as wds

    (tmp_path / "nocaption").mkdir()
    with wds.TarWriter(str(tmp_path / "nocaption" / "00000.tar")) as sink:
        sink.write({"__key__": "a", "png": Image.new("RGB", (8, 8)), "json": {"x": 1}})
    with pytest.raises(DataError, match=r"holds \['json', 'png'\]; each sample needs an image .* and a caption"):
        distill(distill_config(tiny_pipeline_dir, tmp_path / "nocaption", tmp_path / "c"))
    with pytest.raises(DataError, match=r"4 shards for 2 processes x 3 loader workers"):
        ShardData(str(write_shards(tmp_path / "few")), 32).for_rank(0, 2).dataset(3)
    assert not any((tmp_path / name / "metrics.csv").exists() for name in "abc")


def write_dataset(folder: Path, n: int = 10) -> Path:
    import datasets

    rng = np.random.default_rng(2)
    pictures = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]
    table = datasets.Dataset.from_dict({"picture": pictures, "caption": [f"row {i}" for i in range(n)]},
                                       features=datasets.Features({"picture": datasets.Image(),
                                                                   "caption": datasets.Value("string")}))
    table.save_to_disk(str(folder / "saved"))
    table.to_parquet(str(folder / "table.parquet"))
    return folder


def test_a_datasets_dataset_trains_by_its_columns_with_workers_and_streamed(tiny_pipeline_dir, tmp_path):
    from studio.kinds.hfdatasets import StreamedDataset

    folder = write_dataset(tmp_path / "ds")
    columns = dict(image_column="picture", caption_column="caption")
    saved = distill(distill_config(tiny_pipeline_dir, folder / "saved", tmp_path / "saved", **columns))
    parquet = distill(distill_config(tiny_pipeline_dir, folder / "table.parquet", tmp_path / "parquet",
                                     data_workers=2, **columns))
    assert [r["loss_total"] for r in metrics(saved)] == [r["loss_total"] for r in metrics(parquet)]
    streamed = distill(distill_config(tiny_pipeline_dir, folder / "saved", tmp_path / "streamed", streaming=True,
                                      **columns))
    assert len(metrics(streamed)) == 4
    parts = [StreamedDataset(str(folder / "saved"), 32, "picture", "caption").for_rank(rank, 2) for rank in (0, 1)]
    seen = [set(part.batch(5)[1]) for part in parts]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == {f"row {i}" for i in range(10)}
    with pytest.raises(DataError, match=r"has no column 'image' \(--image-column\); its columns: picture, caption"):
        distill(distill_config(tiny_pipeline_dir, folder / "table.parquet", tmp_path / "bad"))


@pytest.mark.parametrize("name, engine", [("fsdp", "FSDP"), ("deepspeed-zero2", "DEEPSPEED")])
def test_gpu_engines_are_refused_where_accelerate_would_run_plain_ddp(name, engine, tiny_pipeline_dir, monkeypatch):
    """On a CPU accelerate runs an FSDP or DeepSpeed config as plain data parallel (measured: the card said
    MULTI_CPU); the studio says so before launching rather than run something else than asked."""
    from studio.kinds.launch import CONFIG_DIR

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = distill_config(tiny_pipeline_dir, "toy", "/tmp/run", processes=2,
                            accelerate_config=str(CONFIG_DIR / f"{name}.yaml"))
    with pytest.raises(ValueError, match=rf"{name}.yaml asks for {engine}, which accelerate runs on CUDA GPUs only"):
        config.check()


@pytest.mark.cuda
@pytest.mark.parametrize("name, engine", [("deepspeed-zero2", "DEEPSPEED"), ("fsdp", "FSDP")])
def test_deepspeed_and_fsdp_train_on_a_gpu(name, engine, tiny_pipeline_dir, tmp_path):
    """On CUDA (not run on the CPU machines of CI): the shipped config drives the run, one process."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if engine == "DEEPSPEED":
        pytest.importorskip("deepspeed")
    from studio.kinds.launch import CONFIG_DIR

    out = tmp_path / name
    command = [sys.executable, "-m", "studio", "distill", "--teacher", str(tiny_pipeline_dir), "--arch", "tiny",
               "--data", "toy", "--out", str(out), "--steps", "3", "--batch-size", "2", "--checkpoint-every", "3",
               "--accelerate-config", str(CONFIG_DIR / f"{name}.yaml"), "--main-process-port", str(free_port())]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "card.json").read_text())["result"]["distributed"] == engine


def test_loader_workers_count_in_the_jobs_cpu_budget(monkeypatch):
    from studio.kinds.training import share_threads_with_workers

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "4")
        share_threads_with_workers(2)
        assert torch.get_num_threads() == 2  # 4 threads for the job: 2 workers, 2 for the loop
        share_threads_with_workers(8)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_streamed_dataset_resumes_where_it_stopped_even_past_a_pass(tiny_pipeline_dir, tmp_path):
    """10 rows, batch 3: a run resumed after 4 steps (12 rows, into the second pass) gives the losses of 5 straight."""
    folder = write_dataset(tmp_path / "ds")
    columns = dict(image_column="picture", caption_column="caption", streaming=True, data_workers=2, steps=5)
    straight = distill(distill_config(tiny_pipeline_dir, folder / "saved", tmp_path / "straight", **columns))
    part = tmp_path / "part"
    distill(distill_config(tiny_pipeline_dir, folder / "saved", part, **{**columns, "steps": 4}))
    distill(distill_config(tiny_pipeline_dir, folder / "saved", part, resume=True, **columns))
    assert [r["loss_total"] for r in metrics(part)] == [r["loss_total"] for r in metrics(straight)]
