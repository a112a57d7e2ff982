"""Jobs that survive faults: reused PIDs, killed runners, trainers that ignore a cancel, corrupt or cut-short files."""

import json
import os
import signal
import threading
import time

import psutil
import pytest
from conftest import stop_jobs

from studio.jobs import JobError, JobManager, group_alive, write_json
from studio.kinds.training import latest_checkpoint, save_checkpoint
from studio.ui.common import job_rows
from studio.ui.train import train_start


def fake_job(jobs: JobManager, job_id: str, runner: dict | None = None, exit_code: int | None = None) -> None:
    folder = jobs.root / job_id
    (folder / "run").mkdir(parents=True)
    write_json(folder / "job.json", {"id": job_id, "kind": "distill", "name": job_id, "steps": 10, "created": 1.0,
                                     "config": {}})
    if runner is not None:
        write_json(folder / "runner.json", runner)
    if exit_code is not None:
        write_json(folder / "exit.json", {"returncode": exit_code, "cancelled": False})


def test_a_reused_pid_is_not_a_running_job(tmp_path):
    import subprocess

    jobs = JobManager(tmp_path / "jobs")
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)  # an unrelated process, leading its group
    try:
        started = psutil.Process(other.pid).create_time()
        fake_job(jobs, "ours", {"pid": other.pid, "create_time": started})
        # The same PID recorded by a job whose runner started an hour earlier: the PID was reused since.
        fake_job(jobs, "reused", {"pid": other.pid, "create_time": started - 3600})
        assert jobs.state("ours")[0] == "running" and jobs.state("reused")[0] == "interrupted"
        with pytest.raises(JobError, match="not running"):
            jobs.cancel("reused")
        assert other.poll() is None  # no signal reached the unrelated process
    finally:
        other.kill()
        other.wait()


def test_cut_short_and_corrupt_files_degrade_one_job_only(tmp_path):
    jobs = JobManager(tmp_path / "jobs")
    fake_job(jobs, "a-truncated", exit_code=0)
    (jobs.root / "a-truncated" / "run" / "metrics.csv").write_text(
        "step,loss_total,lr,seconds\n1,0.5,0.1,1.0\n2,0.4,0.1,2.0\n3,0.")
    fake_job(jobs, "b-corrupt", exit_code=0)
    (jobs.root / "b-corrupt" / "job.json").write_text('{"id": "b-corr')
    status = jobs.status("a-truncated")
    assert status.step == 2 and status.losses == {"loss_total": 0.4} and status.state == "finished"
    assert jobs.ids() == ["a-truncated"] and [row[0] for row in job_rows(jobs, "distill")] == ["a-truncated"]
    with pytest.raises(JobError, match="b-corrupt.*unreadable"):
        jobs.status("b-corrupt")


def test_a_stale_partial_checkpoint_is_ignored(tmp_path):
    import torch

    save_checkpoint(tmp_path, 2, {"w.safetensors": {"w": torch.ones(2)}}, {})
    (tmp_path / "checkpoints" / "step-000004.partial").mkdir()  # disk full or a kill mid-write
    (tmp_path / "checkpoints" / "step-000006").mkdir()  # a folder with no state.json is not a checkpoint
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint.step == 2 and torch.equal(checkpoint.tensors("w.safetensors")["w"], torch.ones(2))


def wait_for_rows(jobs, job_id, step: int, timeout: float = 240) -> None:
    """Until metrics.csv has a row at `step` or later."""
    deadline = time.monotonic() + timeout
    while jobs.status(job_id).step < step:
        assert time.monotonic() < deadline and jobs.state(job_id)[0] == "running", jobs.state(job_id)
        time.sleep(0.2)


def processes_of(runner: dict) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == runner["pid"] and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def start_long_job(tiny_catalog, jobs) -> tuple[str, dict]:
    job_id, _ = train_start(jobs, tiny_catalog, "tiny-teacher", "tiny", "1", False, True, "toy", None, 100_000, 1e-4,
                            1.0, 1.0, 1.0, 2)
    return job_id, json.loads((jobs.folder(job_id) / "runner.json").read_text())


@pytest.mark.slow
def test_a_killed_runner_leaves_one_trainer_and_no_second_resume(tiny_catalog, tmp_path):
    jobs = JobManager(tmp_path / "jobs")
    job_id, runner = start_long_job(tiny_catalog, jobs)
    wait_for_rows(jobs, job_id, 20)
    os.kill(runner["pid"], signal.SIGKILL)  # the runner dies; the trainer, in its process group, goes on
    time.sleep(1)
    assert jobs.state(job_id)[0] == "running" and group_alive(runner)
    with pytest.raises(JobError, match="is running"):
        jobs.resume(job_id)  # a second trainer on the same folder is refused
    jobs.cancel(job_id, grace=120)  # the trainer checkpoints and stops; nobody is left to write exit.json
    deadline = time.monotonic() + 150
    while group_alive(runner):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    # The cancel was asked for (cancel.json), so it reads as cancelled though no runner wrote exit.json.
    assert jobs.state(job_id)[0] == "cancelled" and latest_checkpoint(jobs.run_folder(job_id)) is not None
    stopped = latest_checkpoint(jobs.run_folder(job_id)).step
    jobs.resume(job_id)
    wait_for_rows(jobs, job_id, stopped + 10)
    jobs.cancel(job_id)
    assert jobs.wait(job_id, timeout=150) == "cancelled"
    steps = [int(r.split(",")[0]) for r in (jobs.run_folder(job_id) / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] > stopped  # no duplicated or lost rows


@pytest.mark.slow
def test_a_trainer_that_ignores_cancel_is_killed_after_the_grace_period(tiny_catalog, tmp_path):
    jobs = JobManager(tmp_path / "jobs")
    job_id, runner = start_long_job(tiny_catalog, jobs)
    wait_for_rows(jobs, job_id, 1)
    trainer = next(p for p in processes_of(runner) if p.pid != runner["pid"])
    trainer.suspend()  # SIGSTOP: a stopped process handles no SIGTERM, as a trainer hung in a kernel would
    started = time.monotonic()
    jobs.cancel(job_id, grace=2)
    deadline = time.monotonic() + 30
    while processes_of(runner):
        assert time.monotonic() < deadline, processes_of(runner)
        time.sleep(0.2)
    assert time.monotonic() - started >= 2  # not before the grace period
    assert jobs.state(job_id)[0] in ("interrupted", "cancelled")


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    import torch

    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"w.safetensors": {"w": torch.full((2,), float(step))}}, {}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000004", "step-000005"]
    assert latest_checkpoint(tmp_path).tensors("w.safetensors")["w"][0] == 5.0


@pytest.mark.slow
def test_a_killed_trainer_fails_the_job_and_two_resumes_after_a_restart_start_one(tiny_catalog, tmp_path):
    jobs = JobManager(tmp_path / "jobs")
    try:
        job_id, runner = start_long_job(tiny_catalog, jobs)
        wait_for_rows(jobs, job_id, 20)
        [trainer] = [p for p in processes_of(runner) if p.pid != runner["pid"]]
        trainer.kill()  # SIGKILL: no checkpoint, no goodbye; the runner records how it ended
        assert jobs.wait(job_id, timeout=60) == "failed"
        assert json.loads((jobs.folder(job_id) / "exit.json").read_text())["returncode"] == -signal.SIGKILL

        restarted = JobManager(tmp_path / "jobs")  # an app started again reads the state from the folder alone
        assert restarted.state(job_id)[0] == "failed"
        outcomes = []

        def resume():
            try:
                outcomes.append(restarted.resume(job_id))
            except JobError as refused:
                outcomes.append(str(refused))

        threads = [threading.Thread(target=resume) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(o.split()[0] for o in outcomes) == ["job", "resumed"], outcomes  # one resumes, one is refused
        new_runner = json.loads((jobs.folder(job_id) / "runner.json").read_text())
        deadline = time.monotonic() + 120
        while not [p for p in processes_of(new_runner) if p.pid != new_runner["pid"]]:  # the trainer starts
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert len([p for p in processes_of(new_runner) if p.pid != new_runner["pid"]]) == 1  # one trainer
        restarted.cancel(job_id)
        assert restarted.wait(job_id, timeout=150) == "cancelled"
        deadline = time.monotonic() + 10  # the runner writes exit.json, then exits
        while processes_of(new_runner):
            assert time.monotonic() < deadline, processes_of(new_runner)
            time.sleep(0.2)
        assert not processes_of(runner)  # no stray process of either run
    finally:
        stop_jobs(tmp_path)
