"""The job store: every job's state, read from its folder alone (no process of ours needs to be alive).

A job is a folder under the jobs root:
    job.json    kind (a registered job kind, studio/kinds/registry.py), config (its config dataclass as the JSON that was
                checked), name, steps (the progress total), created
    run/        the run's --out (checkpoints, metrics.csv, validation images, result)
    data/       an uploaded dataset, when the job has one
    log.txt     the job's stdout and stderr, across resumes
    runner.json the runner's pid, start time and CPU threads; exit.json when the job ended; cancel.json once cancelled
An app restarted later, or `python -m studio jobs`, reads every job's state from here.
"""

import csv
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from studio.kinds.registry import KINDS
from studio.models.catalog import Catalog, ModelEntry

STATES = ("running", "finished", "cancelled", "failed", "interrupted")
JOB_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")  # what the launcher makes: date-time-hex
CANCELLED = "cancelled; its checkpoints and logs are kept, and it can be resumed"


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
    unit: str = "step"  # what step and steps count (the kind's unit: optimizer steps, images)
    data_wait: float | None = None  # the share of the training loop's time spent waiting for batches
    bad_rows: int = 0  # unreadable data rows passed over so far

    @property
    def data_note(self) -> str:
        """The data path's cost, where the run logged it: its wait share and the unreadable rows passed over."""
        wait = "" if self.data_wait is None else f"; waiting for data {self.data_wait:.0%} of the time"
        return wait + (f"; {self.bad_rows} unreadable data rows passed over" if self.bad_rows else "")


def read_json(path: Path) -> dict | None:
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
    return [row for row in numbers if "step" in row and "seconds" in row]  # seconds comes after the losses


class JobStore:
    """The jobs under one folder: ids, specs, states and statuses, results. Starting and stopping them is the
    launcher's (studio/jobs/launcher.py)."""

    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()  # made by the first job (a visitor who only looks writes nothing)

    def folder(self, job_id: str) -> Path:
        """The job's folder; any id that is not one of this store's jobs is "no such job"."""
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            shown = repr(job_id) if len(repr(job_id)) <= 60 else repr(job_id)[:57] + "..."
            raise JobError(f"job: {shown} is not a job id (like 20261123-101500-1a2b3c)")
        folder = self.root / job_id
        if not (folder / "job.json").is_file():
            raise JobError(f"job: no job {job_id!r}; jobs: {', '.join(self.ids()) or 'none yet'}")
        return folder

    def ids(self, kind: str | None = None) -> list[str]:
        """Job ids, newest first; only those of `kind` (a registered job kind's name) when given."""
        if not self.root.is_dir():
            return []
        specs = [(p.name, read_json(p / "job.json")) for p in self.root.iterdir() if (p / "job.json").is_file()]
        specs = [(name, spec) for name, spec in specs if spec and (kind is None or spec.get("kind") == kind)]
        return [name for name, spec in sorted(specs, key=lambda item: item[1].get("created", 0), reverse=True)]

    def spec(self, job_id: str) -> dict:
        spec = read_json(self.folder(job_id) / "job.json")
        if spec is None:
            raise JobError(f"job {job_id}: its job.json is unreadable (cut short or corrupt); its files are kept")
        return spec

    def run_folder(self, job_id: str) -> Path:
        return self.folder(job_id) / "run"

    def _reap(self, job_id: str) -> None:
        """The launcher reaps the runners it started here, so an ended one is no zombie."""

    def state(self, job_id: str) -> tuple[str, str]:
        """(state, message) from the folder alone."""
        folder = self.folder(job_id)
        self._reap(job_id)
        ended = read_json(folder / "exit.json")
        if ended is not None:
            if ended.get("cancelled"):
                return "cancelled", CANCELLED
            if ended.get("returncode") == 0:
                return "finished", ""
            return "failed", self._last_error(folder)
        if group_alive(read_json(folder / "runner.json") or {}):
            return "running", ""
        if (folder / "run" / "card.json").is_file():  # the command finished, but its runner was killed
            return "finished", ""
        if (folder / "cancel.json").is_file():  # cancelled before the runner could record it (or SIGKILLed)
            return "cancelled", CANCELLED
        return "interrupted", "the job's process is gone (machine or app restart?); it can be resumed"

    @staticmethod
    def _last_error(folder: Path) -> str:
        try:
            lines = [line for line in (folder / "log.txt").read_text().splitlines() if line.strip()]
        except OSError:
            return "failed"
        errors = [line for line in lines if "Error" in line or "error:" in line]
        return (errors or lines or ["failed"])[-1][:500]

    def running(self) -> int:
        return sum(1 for job_id in self.ids() if self.state(job_id)[0] == "running")

    def running_threads(self, default: int) -> list[int]:
        """The CPU threads each running job was given (`default` for one started without a budget)."""
        return [(read_json(self.root / job_id / "runner.json") or {}).get("threads") or default
                for job_id in self.ids() if self.state(job_id)[0] == "running"]

    def status(self, job_id: str) -> JobStatus:
        spec = self.spec(job_id)
        state, message = self.state(job_id)
        rows = read_metrics(self.run_folder(job_id))
        last = rows[-1] if rows else {}
        speed = None
        if len(rows) >= 2 and rows[-1]["seconds"] > rows[0]["seconds"]:
            speed = (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["seconds"] - rows[0]["seconds"])
        losses = {k: v for k, v in last.items() if k.startswith("loss")}
        kind = KINDS.get(spec["kind"])
        wait = last["data_seconds"] / last["seconds"] if last.get("data_seconds") is not None and last.get("seconds") \
            else None
        return JobStatus(id=job_id, kind=spec["kind"], name=spec["name"], state=state, step=int(last.get("step", 0)),
                         steps=spec["steps"], steps_per_second=speed, losses=losses, created=spec["created"],
                         message=message, unit=kind.unit if kind else "step", data_wait=wait,
                         bad_rows=int(last.get("bad_rows") or 0))

    def wait(self, job_id: str, timeout: float = 60.0, poll: float = 0.2) -> str:
        """Block until the job is no longer running (tests and scripts); returns the state."""
        deadline = time.monotonic() + timeout
        while (state := self.state(job_id)[0]) == "running" and time.monotonic() < deadline:
            time.sleep(poll)
        return state

    def catalog_with_students(self, catalog: Catalog) -> Catalog:
        """`catalog` plus the students these jobs made (job-<id>) whose teacher it holds: what the app's model
        lists and a job started from the command line may use."""
        extra = [e for e in self.finished_students() if e.name not in catalog and e.teacher in catalog]
        return catalog.with_entries(extra) if extra else catalog

    def finished_students(self) -> list[ModelEntry]:
        """Students made by finished jobs of the kinds whose result is a student, as catalogue entries job-<id>."""
        entries = []
        for job_id in self.ids():
            spec = self.spec(job_id)
            kind = KINDS.get(spec["kind"])
            if kind is None or kind.result != "student" or self.state(job_id)[0] != "finished":
                continue
            try:
                teacher, arch = kind.student(spec["config"])
            except (KeyError, TypeError):
                continue  # a job.json without them names no student
            entries.append(ModelEntry(
                name=f"job-{job_id}", source=str(self.run_folder(job_id)), role="student",
                family=spec.get("family", ""), teacher=teacher, arch=arch,
                description=f"made by a {kind.name} job in the studio: {spec['name']}",
            ))
        return entries
