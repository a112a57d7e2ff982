"""The launcher: admits a job (caps, running-job quotas, disk), starts its runner, cancels and resumes it.

The runner (`python -m studio.jobs RUN JOB_DIR`, studio/jobs/runner.py) starts the
job's process, waits for it and writes exit.json, so a job outlives the app (and a
browser refresh). The job's process reads its config from job.json, the JSON that
was checked here.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path

import psutil

from studio.budget import JobLimits, check_caps, check_disk, check_memory, check_running, folder_bytes
from studio.jobs.cpu import CpuBudget
from studio.jobs.store import JobError, JobStore, read_json, group_alive, write_json
from studio.kinds.registry import job_kind
from studio.models.catalog import EXTRA_CATALOG_ENV, PROJECT_ROOT, Catalog, entries_beyond_packaged, load_catalog, write_catalog

CANCEL_GRACE_SECONDS = 60.0  # after SIGTERM, a job has this long to checkpoint and stop before SIGKILL
_admission = threading.Lock()  # quota checks and launches, one at a time in this process


class JobManager(JobStore):
    """The store of one folder's jobs, and their processes, within `limits`.

    `running_elsewhere()` counts the running jobs of other managers (other visitors) for the total quota.
    The owner's disk use is everything under the folder's parent (its jobs and images). With a `cpu` budget, a job
    gets its share of the threads when it starts (studio/jobs/cpu.py); without, torch's default (all cores). With
    `memory_reserved`, a job whose kind estimates its peak memory starts only if that fits in what is free less
    what the app reserves (its model memory budget's unused part).
    """

    def __init__(self, root: Path | str, limits: JobLimits = JobLimits(), running_elsewhere=lambda: 0,
                 cpu: CpuBudget | None = None, memory_reserved=None):
        super().__init__(root)
        self.limits, self.running_elsewhere, self.cpu = limits, running_elsewhere, cpu
        self.memory_reserved = memory_reserved  # () -> bytes the app keeps beside jobs; None: memory not checked
        self._children: dict[str, subprocess.Popen] = {}  # runners this process started, reaped on poll

    @property
    def launched(self) -> bool:
        """Whether this manager has started (or resumed) a job since it was made."""
        return bool(self._children)

    def _reap(self, job_id: str) -> None:
        child = self._children.get(job_id)
        if child is not None:
            child.poll()

    def create(self, kind: str, config, extra: dict | None = None, prepare=None, catalog: Catalog | None = None,
               name: str | None = None, prepared_bytes: dict[str, int] | None = None) -> str:
        """A new job of `kind` running `config` (its `out` becomes the job's run/ folder; intervals left at their
        default suit the run's length, JobKind.for_job).

        `prepare(folder)` may fill the folder (unpack data, copy photos) and returns config fields to
        set (e.g. {"data": path}); `prepared_bytes` is what it will write (a dataset's unpacked size), counted with
        the job's own estimate. The job sees the models of `catalog` beyond the packaged ones
        (the job's catalog.json, as $STUDIO_MODELS). If preparing or checking fails, the new folder is
        removed and nothing else is touched. Caps, running-job quotas and the disk estimate are checked first.
        """
        job = job_kind(kind)
        if not isinstance(config, job.config):
            raise JobError(f"a {kind} job runs a {job.config.__name__}, not a {type(config).__name__}")
        config = job.for_job(config)
        config.check()
        catalog = catalog or load_catalog()
        check_caps(self.limits, config, job.caps)
        self.check_room(1)
        check_disk({**job.estimate_bytes(config, catalog), **(prepared_bytes or {})}, self.root, self.limits,
                   folder_bytes(self.root.parent) if self.limits.max_owner_bytes is not None else 0)
        if job.estimate_memory is not None and self.memory_reserved is not None:
            check_memory(job.estimate_memory(config, catalog), self.memory_reserved())
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        folder = self.root / job_id
        folder.mkdir(parents=True)
        try:
            config = replace(config, out=str(folder / "run"), **(prepare(folder) if prepare else {}))
            config.check()
            write_catalog(entries_beyond_packaged(catalog), folder / "catalog.json")
            spec = {"id": job_id, "kind": kind, "name": name or job.describe(config), "config": asdict(config),
                    "steps": job.total(config), "created": time.time(), **(extra or {})}
            teacher = job.student(spec["config"])[0] if job.student is not None else None
            if teacher in catalog:  # the student joins its teacher's family
                spec["family"] = catalog.get(teacher).family
            with _admission:  # two starts at once can't both take the last slot
                self.check_room(1)
                write_json(folder / "job.json", spec)
                self._launch(folder)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return job_id

    def check_room(self, new: int) -> None:
        """Raise QuotaError when `new` more jobs would pass the running-job quotas."""
        if self.limits.max_running is None and self.limits.max_running_total is None:
            return
        mine = self.running()
        check_running(self.limits, new, mine, mine + self.running_elsewhere())

    def _launch(self, folder: Path) -> None:
        (folder / "exit.json").unlink(missing_ok=True)
        (folder / "cancel.json").unlink(missing_ok=True)
        env = {**os.environ, EXTRA_CATALOG_ENV: str(folder / "catalog.json"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        threads = self.cpu.job_share(self.running() + self.running_elsewhere()) if self.cpu else None
        if threads:
            env.update(CpuBudget.job_environment(threads))
        runner = subprocess.Popen(
            [sys.executable, "-m", "studio.jobs", "RUN", str(folder)], cwd=PROJECT_ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: cancel signals runner and job together
        )
        self._children[folder.name] = runner
        write_json(folder / "runner.json", {"pid": runner.pid, "create_time": psutil.Process(runner.pid).create_time(),
                                            "threads": threads})

    def cancel(self, job_id: str, grace: float = CANCEL_GRACE_SECONDS) -> str:
        """SIGTERM to the job's process group (the trainer checkpoints the step it is on, then stops); whatever
        still runs after `grace` seconds gets SIGKILL."""
        state, _ = self.state(job_id)
        if state != "running":
            raise JobError(f"job {job_id} is {state}, not running; nothing to cancel")
        runner = read_json(self.folder(job_id) / "runner.json")
        write_json(self.folder(job_id) / "cancel.json", {"requested": time.time()})
        os.killpg(runner["pid"], signal.SIGTERM)

        def escalate():
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if not group_alive(runner):
                    return
                time.sleep(0.5)
            try:
                os.killpg(runner["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass

        threading.Thread(target=escalate, daemon=True, name=f"cancel-{job_id}").start()
        return f"cancelling {job_id}: it saves a checkpoint of the current step, then stops"

    def resume(self, job_id: str) -> str:
        folder, spec = self.folder(job_id), self.spec(job_id)
        with _admission:  # two resumes at once: the second sees the first's runner and is refused
            state, _ = self.state(job_id)
            if state not in ("cancelled", "failed", "interrupted"):
                raise JobError(f"job {job_id} is {state}; only cancelled, failed or interrupted jobs resume")
            self.check_room(1)
            if "resume" in spec["config"] and not spec["config"]["resume"]:  # the job runs what job.json says
                spec["config"]["resume"] = True
                write_json(folder / "job.json", spec)
            self._launch(folder)
        return f"resumed {job_id}"
