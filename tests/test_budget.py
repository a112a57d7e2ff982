"""Job limits, the disk estimate, zip bombs and expiry: what keeps a public studio within its machine."""

import json
import os
import subprocess
import sys
import time
import zipfile

import psutil
import pytest
from conftest import stop_jobs
from PIL import Image

from studio.budget import JobLimits, QuotaError, check_disk, folder_bytes
from studio.models.catalog import load_catalog
from studio.kinds.registry import KINDS
from studio.kinds.distillation.config import DistillConfig
from studio.jobs import JobError, JobManager, extract_dataset_zip, write_json
from studio.ui.train import train_start
from studio.ui.workspaces import Workspaces, visitor_key

LONG = 100_000  # steps: a job that runs until it is stopped


def start(jobs, catalog, steps=LONG, batch_size=2):
    return train_start(jobs, catalog, "tiny-teacher", "tiny", "1", False, True, "toy", None, steps, 1e-4, 1.0, 1.0,
                       1.0, batch_size)


def test_workspaces_keep_visitors_apart_and_local_mode_has_one(tmp_path):
    public = Workspaces(tmp_path / "pub", public=True)
    a, b = public.get("token:" + "a" * 20), public.get("token:" + "b" * 20)
    assert a.root != b.root and a.root.parent == b.root.parent == (tmp_path / "pub" / "visitors").resolve()
    assert a.root.name == visitor_key("token:" + "a" * 20) and "aaaa" not in str(a.root)  # the token is not stored
    assert public.get("token:" + "a" * 20) is a
    with pytest.raises(ValueError, match="visitor: unknown"):
        public.get(None)
    local = Workspaces(tmp_path / "local")
    assert local.get("x").root == local.get(None).root == (tmp_path / "local").resolve()


def test_caps_and_running_quotas_refuse_with_what_is_allowed(tiny_catalog, tmp_path):
    capped = JobManager(tmp_path / "capped", JobLimits(max_steps=50, max_batch_size=4))
    with pytest.raises(QuotaError, match=r"steps: 100 is more than this host allows \(50\)"):
        start(capped, tiny_catalog, steps=100)
    with pytest.raises(QuotaError, match=r"batch size: 8 is more than this host allows \(4\)"):
        start(capped, tiny_catalog, steps=10, batch_size=8)
    assert capped.ids() == []

    others = {"running": 0}
    mine = JobManager(tmp_path / "mine", JobLimits(max_running=1, max_running_total=2), lambda: others["running"])
    try:
        first, _ = start(mine, tiny_catalog)
        assert mine.state(first)[0] == "running"
        with pytest.raises(QuotaError, match="at most 1 may run at once per visitor"):
            start(mine, tiny_catalog)
        mine.limits = JobLimits(max_running=5, max_running_total=2)
        others["running"] = 1
        with pytest.raises(QuotaError, match="2 jobs are running on this machine"):
            start(mine, tiny_catalog)
        assert len(mine.ids()) == 1  # refused requests leave no folder
        mine.cancel(first, grace=5)
        assert mine.wait(first, timeout=120) == "cancelled"
        mine.limits = JobLimits(max_running=1, max_running_total=1)
        others["running"] = 1
        with pytest.raises(QuotaError, match="running on this machine"):
            mine.resume(first)  # a resume counts like a start
    finally:
        stop_jobs(tmp_path / "mine")


def test_the_disk_estimate_bounds_what_a_job_writes(tiny_catalog, tmp_path):
    jobs = JobManager(tmp_path / "jobs")
    config = DistillConfig(teacher="tiny-teacher", arch="small", data="toy", out="-", steps=6, batch_size=2,
                           checkpoint_every=2, checkpoints_total_limit=2, log_every=1, ema=0.9,
                           validation_prompts=("a red circle",), validation_guidance=2.0)
    estimate = KINDS["distill"].estimate_bytes(config, tiny_catalog)
    job_id = jobs.create("distill", config, catalog=tiny_catalog)
    assert jobs.wait(job_id, timeout=300) == "finished", (jobs.folder(job_id) / "log.txt").read_text()[-2000:]
    written = folder_bytes(jobs.run_folder(job_id))
    assert written <= sum(estimate.values()) <= 2 * written, (written, estimate)

    with pytest.raises(QuotaError, match=r"disk: this job may write .* GB are free"):
        check_disk(estimate, tmp_path, JobLimits(min_free_bytes=10**18))
    with pytest.raises(QuotaError, match="each visitor may keep"):
        check_disk(estimate, tmp_path, JobLimits(max_owner_bytes=sum(estimate.values())), owner_bytes=1)


@pytest.mark.slow
def test_the_memory_estimate_bounds_a_jobs_peak_and_a_job_that_cannot_fit_is_refused(tmp_path):
    """A toy distillation job at its usual batch: the estimate (process, frozen teacher, what trains, activations)
    is above its measured peak RSS and not far above it; a job that can't fit beside the app is refused."""
    config = DistillConfig(teacher="toy-teacher", arch="tiny", data="toy", out="-", steps=3, batch_size=32)
    estimate = KINDS["distill"].estimate_memory(config, load_catalog())
    jobs = JobManager(tmp_path / "jobs", memory_reserved=lambda: 0)
    job_id = jobs.create("distill", config)
    assert jobs.wait(job_id, timeout=300) == "finished", (jobs.folder(job_id) / "log.txt").read_text()[-2000:]
    peak = json.loads((jobs.run_folder(job_id) / "card.json").read_text())["peak_memory_mb"] * 1024**2
    print(f"toy distillation, batch 32: peak RSS {peak / 2**20:.0f} MB, estimate {sum(estimate.values()) / 2**20:.0f}"
          f" MB ({', '.join(f'{k} {v / 2**20:.0f}' for k, v in estimate.items())})")
    assert peak <= sum(estimate.values()) <= 1.5 * peak, (peak, estimate)

    crowded = JobManager(tmp_path / "crowded", memory_reserved=lambda: psutil.virtual_memory().total)
    with pytest.raises(QuotaError, match=r"memory: this job may need .* \(process 768.0 MB, .*activations .*\) and "
                                         r"0.0 MB are free beside the app's models"):
        crowded.create("distill", config)
    assert not crowded.root.exists()  # refused before it had a folder


def test_a_zip_bomb_is_refused_before_unpacking(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.jsonl", "")
        archive.writestr("zeros.png", bytes(50 * 1024**2))
    assert bomb.stat().st_size < 1024**2
    with pytest.raises(JobError, match=r"data: the zip unpacks to \d+ times its size; at most 100 times"):
        extract_dataset_zip(bomb, tmp_path / "out")
    with pytest.raises(JobError, match="data: the zip unpacks to 50.0 MB; at most 9.5 MB"):
        extract_dataset_zip(bomb, tmp_path / "out", JobLimits(max_zip_bytes=10**7, max_zip_ratio=10**6))
    assert not (tmp_path / "out").exists()


def _job(root, name, ended=True, age=0.0):
    folder = root / name
    (folder / "run").mkdir(parents=True)
    write_json(folder / "job.json", {"id": name, "kind": "distill", "name": name, "config": {}, "steps": 1,
                                     "created": time.time() - age})
    if ended:
        write_json(folder / "exit.json", {"returncode": 0, "cancelled": False})
    old = time.time() - age
    for path in [folder / "run", *folder.iterdir(), folder]:
        os.utime(path, (old, old))
    return folder


def test_old_work_expires_but_running_jobs_and_recent_work_stay(tmp_path):
    workspaces = Workspaces(tmp_path, public=True, expire_seconds=3600)
    alive = workspaces.get("token:" + "a" * 20)
    gone = workspaces.get("token:" + "b" * 20)
    day = 86400.0
    old_finished = _job(alive.jobs.root, "20260101-000000-aaaaaa", age=day)
    recent = _job(alive.jobs.root, "20260101-000000-bbbbbb", age=60)
    running = _job(alive.jobs.root, "20260101-000000-cccccc", ended=False, age=day)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    write_json(running / "runner.json", {"pid": sleeper.pid, "create_time": psutil.Process(sleeper.pid).create_time()})
    os.utime(running / "runner.json", (time.time() - day,) * 2)
    os.utime(running, (time.time() - day,) * 2)
    corrupt = _job(alive.jobs.root, "20260101-000000-dddddd", age=day)
    (corrupt / "job.json").write_text("{cut sho")
    os.utime(corrupt / "job.json", (time.time() - day,) * 2)
    os.utime(corrupt, (time.time() - day,) * 2)
    image = alive.history.save(Image.new("RGB", (8, 8)), {"prompt": "p", "steps": 1, "scheduler": "PNDM",
                                                          "guidance": 1, "seed": 0, "resolution": 8, "model": "m"})
    os.utime(image, (time.time() - day,) * 2)
    _job(gone.jobs.root, "20260101-000000-eeeeee", age=day)
    workspaces._used[gone.key] = time.time() - day  # the second visitor last came a day ago
    try:
        removed = workspaces.expire()
    finally:
        sleeper.kill()
    assert not old_finished.exists() and not corrupt.exists() and not image.exists()
    assert recent.exists() and running.exists()
    assert not gone.root.exists() and alive.root.exists()
    assert removed == {"jobs": 3, "images": 1, "visitors": 1}
    assert json.loads((recent / "job.json").read_text())["id"] == recent.name
