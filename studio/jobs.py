"""Background jobs: a studio command in its own process, its whole state on disk.

A job is a folder under the jobs root:
    job.json    what to run (kind: the command; config: its config dataclass as JSON), name, created
    run/        the command's --out (checkpoints, metrics.csv, validation images, result)
    data/       an uploaded dataset, when the job has one
    log.txt     the command's stdout and stderr, across resumes
    runner.json the runner's pid and start time; exit.json when the command ended; cancel.json once cancelled
The runner (`python -m studio.jobs RUN JOB_DIR`) builds the command from the
stored config (studio/commands.py), starts it, waits for it and writes exit.json, so a job outlives the app (and a browser refresh), and an
app restarted later reads every job's state from the folder alone.
"""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psutil

from studio.budget import JobLimits, check_caps, check_disk, check_running, estimate_job_bytes, folder_bytes
from studio.catalog import (EXTRA_CATALOG_ENV, PROJECT_ROOT, Catalog, ModelEntry, entries_beyond_packaged, load_catalog,
                            write_catalog)
from studio.commands import config_from_json, job_argv

STATES = ("running", "finished", "cancelled", "failed", "interrupted")
CANCEL_GRACE_SECONDS = 60.0  # after SIGTERM, a job has this long to checkpoint and stop before SIGKILL
MAX_ZIP_MEMBERS = 100_000
JOB_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")  # what `create` makes: date-time-hex
_admission = threading.Lock()  # quota checks and launches, one at a time in this process


class JobError(ValueError):
    """A job request that can't be carried out; the message says why."""


@dataclass(frozen=True)
class JobStatus:
    id: str
    kind: str
    name: str
    state: str
    step: int
    steps: int
    steps_per_second: float | None
    losses: dict
    created: float
    message: str = ""


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_json(path: Path, data: dict) -> None:
    """Written beside and renamed into place: a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


def group_alive(runner: dict) -> bool:
    """Whether any process of the job's process group still runs. The group is the runner's session, so the
    trainer counts even when the runner was killed; a PID reused by an unrelated process does not (its start
    time differs from the runner's, and it is not in the group)."""
    pgid, started = runner.get("pid"), runner.get("create_time")
    if not pgid or started is None:
        return False
    for process in psutil.process_iter(["pid", "create_time", "status"]):
        try:
            info = process.info
            if info["status"] == psutil.STATUS_ZOMBIE or info["create_time"] < started - 1:
                continue
            if info["pid"] == pgid and abs(info["create_time"] - started) > 1:
                continue  # the runner's PID, reused by a later process
            if os.getpgid(info["pid"]) == pgid:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def read_metrics(run: Path) -> list[dict]:
    """metrics.csv rows as numbers (empty when the run has not logged yet); a row cut short is skipped."""
    try:
        with open(run / "metrics.csv", newline="") as file:
            rows = list(csv.DictReader(file))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []
    numbers = []
    for row in rows:
        try:
            numbers.append({k: float(v) for k, v in row.items() if k is not None and v not in ("", None)})
        except (TypeError, ValueError):
            continue  # a partial line from a kill mid-write
    return [row for row in numbers if "step" in row and "seconds" in row]  # seconds is written last


def extract_dataset_zip(upload: Path, dest: Path, limits: JobLimits = JobLimits()) -> Path:
    """Unpack an uploaded imagefolder zip into `dest`; refuses unsafe, oversized or bomb-like archives.

    Returns the folder holding metadata.jsonl (the zip's root or its single top folder).
    """
    try:
        archive = zipfile.ZipFile(upload)
    except (zipfile.BadZipFile, OSError) as error:
        raise JobError(f"the upload {Path(upload).name} is not a valid zip file ({error})") from None
    with archive:
        members = archive.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise JobError(f"the zip holds {len(members)} entries; the most allowed is {MAX_ZIP_MEMBERS}")
        total, packed = sum(m.file_size for m in members), sum(m.compress_size for m in members)
        if total > limits.max_zip_bytes:
            raise JobError(f"data: the zip unpacks to {total / 1e9:.2f} GB; at most "
                           f"{limits.max_zip_bytes / 1e9:.2f} GB is allowed")
        if total > limits.max_zip_ratio * max(packed, 1) and total > 1024**2:
            raise JobError(f"data: the zip unpacks to {total / max(packed, 1):.0f} times its size; at most "
                           f"{limits.max_zip_ratio:.0f} times is allowed (images barely compress; is it a zip bomb?)")
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for member in members:
            target = (dest / member.filename).resolve()
            if not target.is_relative_to(root) or member.filename.startswith("/"):
                raise JobError(f"the zip entry {member.filename!r} points outside the archive; refused")
        archive.extractall(dest)
    candidates = [dest] + [p for p in dest.iterdir() if p.is_dir()]
    for folder in candidates:
        if (folder / "metadata.jsonl").is_file():
            return folder
    raise JobError("the zip has no metadata.jsonl (at its root or in one top folder); the imagefolder layout needs "
                   "one line per image with file_name and text")


class JobManager:
    """Start, list, cancel and resume jobs under one folder, within `limits`.

    `running_elsewhere()` counts the running jobs of other managers (other visitors) for the total quota.
    The owner's disk use is everything under the folder's parent (its jobs and images).
    """

    def __init__(self, root: Path | str, limits: JobLimits = JobLimits(), running_elsewhere=lambda: 0):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.limits, self.running_elsewhere = limits, running_elsewhere
        self._children: dict[str, subprocess.Popen] = {}  # runners this process started, reaped on poll

    def folder(self, job_id: str) -> Path:
        """The job's folder; any id that is not one of this manager's jobs is "no such job"."""
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            shown = repr(job_id) if len(repr(job_id)) <= 60 else repr(job_id)[:57] + "..."
            raise JobError(f"job: {shown} is not a job id (like 20261123-101500-1a2b3c)")
        folder = self.root / job_id
        if not (folder / "job.json").is_file():
            raise JobError(f"job: no job {job_id!r}; jobs: {', '.join(self.ids()) or 'none yet'}")
        return folder

    def ids(self, kind: str | None = None) -> list[str]:
        """Job ids, newest first; only those of `kind` ("distill", "dreambooth") when given."""
        specs = [(p.name, _read_json(p / "job.json")) for p in self.root.iterdir() if (p / "job.json").is_file()]
        specs = [(name, spec) for name, spec in specs if spec and (kind is None or spec.get("kind") == kind)]
        return [name for name, spec in sorted(specs, key=lambda item: item[1].get("created", 0), reverse=True)]

    def create(self, command: str, config, name: str, total_steps: int, extra: dict | None = None,
               prepare=None, catalog: Catalog | None = None) -> str:
        """A new job running `command` with `config` (its `out` becomes the job's run/ folder).

        `prepare(folder)` may fill the folder (unpack data, copy photos) and returns config fields to
        set (e.g. {"data": path}). The command sees the models of `catalog` beyond the packaged ones
        (the job's catalog.json, as $STUDIO_MODELS). If preparing or checking fails, the new folder is
        removed and nothing else is touched. Caps, running-job quotas and the disk estimate are checked first.
        """
        config.check()
        check_caps(self.limits, config)
        self.check_room(1)
        check_disk(estimate_job_bytes(command, config, catalog or load_catalog()), self.root, self.limits,
                   folder_bytes(self.root.parent) if self.limits.max_owner_bytes is not None else 0)
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        folder = self.root / job_id
        folder.mkdir()
        try:
            config = replace(config, out=str(folder / "run"), **(prepare(folder) if prepare else {}))
            config.check()
            write_catalog(entries_beyond_packaged(catalog) if catalog else [], folder / "catalog.json")
            spec = {"id": job_id, "kind": command, "name": name, "config": asdict(config), "steps": total_steps,
                    "created": time.time(), **(extra or {})}
            with _admission:  # two starts at once can't both take the last slot
                self.check_room(1)
                write_json(folder / "job.json", spec)
                self._launch(folder)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return job_id

    def running(self) -> int:
        return sum(1 for job_id in self.ids() if self.state(job_id)[0] == "running")

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
        runner = subprocess.Popen(
            [sys.executable, "-m", "studio.jobs", "RUN", str(folder)], cwd=PROJECT_ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: cancel signals runner and command together
        )
        self._children[folder.name] = runner
        write_json(folder / "runner.json", {"pid": runner.pid, "create_time": psutil.Process(runner.pid).create_time()})

    def spec(self, job_id: str) -> dict:
        spec = _read_json(self.folder(job_id) / "job.json")
        if spec is None:
            raise JobError(f"job {job_id}: its job.json is unreadable (cut short or corrupt); its files are kept")
        return spec

    def run_folder(self, job_id: str) -> Path:
        return self.folder(job_id) / "run"

    def state(self, job_id: str) -> tuple[str, str]:
        """(state, message) from the folder alone."""
        folder = self.folder(job_id)
        child = self._children.get(job_id)
        if child is not None:
            child.poll()  # reap, so a finished runner is not a zombie
        ended = _read_json(folder / "exit.json")
        if ended is not None:
            if ended.get("cancelled"):
                return "cancelled", "cancelled; its checkpoints and logs are kept, and it can be resumed"
            if ended.get("returncode") == 0:
                return "finished", ""
            return "failed", self._last_error(folder)
        if group_alive(_read_json(folder / "runner.json") or {}):
            return "running", ""
        if (folder / "run" / "card.json").is_file():  # the command finished, but its runner was killed
            return "finished", ""
        if (folder / "cancel.json").is_file():  # cancelled before the runner could record it (or SIGKILLed)
            return "cancelled", "cancelled; its checkpoints and logs are kept, and it can be resumed"
        return "interrupted", "the job's process is gone (machine or app restart?); it can be resumed"

    @staticmethod
    def _last_error(folder: Path) -> str:
        try:
            lines = [line for line in (folder / "log.txt").read_text().splitlines() if line.strip()]
        except OSError:
            return "failed"
        errors = [line for line in lines if "Error" in line or "error:" in line]
        return (errors or lines or ["failed"])[-1][:500]

    def status(self, job_id: str) -> JobStatus:
        spec = self.spec(job_id)
        state, message = self.state(job_id)
        rows = read_metrics(self.run_folder(job_id))
        last = rows[-1] if rows else {}
        speed = None
        if len(rows) >= 2 and rows[-1]["seconds"] > rows[0]["seconds"]:
            speed = (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["seconds"] - rows[0]["seconds"])
        losses = {k: v for k, v in last.items() if k.startswith("loss")}
        return JobStatus(id=job_id, kind=spec["kind"], name=spec["name"], state=state, step=int(last.get("step", 0)),
                         steps=spec["steps"], steps_per_second=speed, losses=losses, created=spec["created"],
                         message=message)

    def statuses(self) -> list[JobStatus]:
        return [self.status(job_id) for job_id in self.ids()]

    def cancel(self, job_id: str, grace: float = CANCEL_GRACE_SECONDS) -> str:
        """SIGTERM to the job's process group (the trainer checkpoints the step it is on, then stops); whatever
        still runs after `grace` seconds gets SIGKILL."""
        state, _ = self.state(job_id)
        if state != "running":
            raise JobError(f"job {job_id} is {state}, not running; nothing to cancel")
        runner = _read_json(self.folder(job_id) / "runner.json")
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
            if not spec["config"].get("resume"):  # the runner runs what job.json says
                spec["config"]["resume"] = True
                write_json(folder / "job.json", spec)
            self._launch(folder)
        return f"resumed {job_id}"

    def wait(self, job_id: str, timeout: float = 60.0, poll: float = 0.2) -> str:
        """Block until the job is no longer running (tests and scripts); returns the state."""
        deadline = time.monotonic() + timeout
        while (state := self.state(job_id)[0]) == "running" and time.monotonic() < deadline:
            time.sleep(poll)
        return state

    def finished_students(self) -> list[ModelEntry]:
        """Students made by finished distillation jobs, as catalogue entries named job-<id>."""
        entries = []
        for job_id in self.ids():
            spec = self.spec(job_id)
            if spec["kind"] == "distill" and self.state(job_id)[0] == "finished":
                entries.append(ModelEntry(
                    name=f"job-{job_id}", source=str(self.run_folder(job_id)), role="student",
                    family=spec.get("family", ""), teacher=spec["config"]["teacher"], arch=spec["config"]["arch"],
                    description=f"distilled in the studio: {spec['name']}",
                ))
        return entries


def _run(folder: Path) -> int:
    """The runner: start the job's command, forward a cancel, record how it ended."""
    spec = json.loads((folder / "job.json").read_text())
    argv = job_argv(spec["kind"], config_from_json(spec["kind"], spec["config"]))
    cancelled = False

    def on_term(signum, frame):  # the command, in our process group, got the same signal
        nonlocal cancelled
        cancelled = True

    signal.signal(signal.SIGTERM, on_term)
    with open(folder / "log.txt", "a") as log:
        log.write(f"\n$ {' '.join(argv)}\n")
        log.flush()
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
        while True:
            try:
                returncode = process.wait()
                break
            except InterruptedError:
                continue
    write_json(folder / "exit.json", {"returncode": returncode, "cancelled": cancelled, "ended": time.time()})
    return returncode


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "RUN":
        sys.exit("usage: python -m studio.jobs RUN JOB_DIR")
    sys.exit(_run(Path(sys.argv[2])))
