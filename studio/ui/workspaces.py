"""Where each visitor's work lives, and when it goes.

    DATA/jobs, DATA/history                       local mode: one user, one workspace
    DATA/visitors/KEY/jobs, DATA/visitors/KEY/history   public mode: KEY is a hash of the visitor's identity

A workspace is a job manager and an image history over one folder; nothing in
it names or reaches another. A visitor's folders are made when they first write
(a job, an image): looking around, or a status call, leaves nothing on disk. In
public mode the running-job quotas count every visitor's jobs (only the folders
of visitors who have jobs are read, not every visitor's), and work expires: a job
that is not running and has not changed for `expire_seconds`, history images as
old, then empty visitor folders.
"""

import hashlib
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from studio.budget import JobLimits
from studio.inference.history import History
from studio.jobs import JobManager
from studio.jobs.cpu import CpuBudget

VISITORS = "visitors"


@dataclass(frozen=True)
class Workspace:
    key: str  # "" locally; a hash of the identity in public mode (the identity itself is never stored)
    root: Path
    jobs: JobManager
    history: History


def visitor_key(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def last_change(folder: Path) -> float:
    """The newest modification time of a folder, its entries and its run/ entries (logs and checkpoints land there)."""
    times = [folder.stat().st_mtime]
    for entries in (folder.iterdir(), (folder / "run").iterdir() if (folder / "run").is_dir() else ()):
        for entry in entries:
            try:
                times.append(entry.stat().st_mtime)
            except OSError:
                continue
    return max(times)


def _empty(folder: Path) -> bool:
    return not folder.is_dir() or not any(folder.iterdir())


class Workspaces:
    """The workspace of each identity under one data folder; public mode gives every identity its own."""

    def __init__(self, data_dir: Path | str, public: bool = False, limits: JobLimits = JobLimits(),
                 expire_seconds: float | None = None, cpu: CpuBudget | None = None, memory_reserved=None):
        self.data_dir = Path(data_dir).resolve()
        self.public, self.limits, self.expire_seconds, self.cpu = public, limits, expire_seconds, cpu
        self.memory_reserved = memory_reserved
        self._workspaces: dict[str, Workspace] = {}
        self._used: dict[str, float] = {}  # key -> when this process last handed its workspace out
        self._lock = threading.Lock()
        self._owners_on_disk: set[str] | None = None  # visitors with a jobs folder when first counted

    def get(self, identity: str | None) -> Workspace:
        """The identity's workspace (made on first use). Locally there is one, whatever the identity."""
        if not self.public:
            key, root = "", self.data_dir
        elif not identity:
            raise ValueError("visitor: unknown; this public studio keeps each visitor's work apart and could not "
                             "tell who you are (allow cookies, or send an X-Studio-Visitor header)")
        else:
            key = visitor_key(identity)
            root = self.data_dir / VISITORS / key
        with self._lock:
            self._used[key] = time.time()
            if key not in self._workspaces:
                jobs = JobManager(root / "jobs", self.limits, lambda: self.running(exclude=key), self.cpu,
                                  self.memory_reserved)
                self._workspaces[key] = Workspace(key, root, jobs, History(root / "history"))
            return self._workspaces[key]

    def keys(self) -> list[str]:
        if not self.public:
            return [""]
        folder = self.data_dir / VISITORS
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def _by_key(self, key: str) -> Workspace:
        with self._lock:
            if key in self._workspaces:
                return self._workspaces[key]
        root = self.data_dir / VISITORS / key if self.public else self.data_dir
        return Workspace(key, root, JobManager(root / "jobs", self.limits), History(root / "history"))

    def _job_owners(self) -> set[str]:
        """Keys with jobs: those found on disk once (jobs of an earlier run of the app, while their folder lasts), and
        those whose manager in this process launched one since; nothing walks every visitor's folder."""
        if not self.public:
            return {""}
        visitors = self.data_dir / VISITORS
        if self._owners_on_disk is None:
            self._owners_on_disk = {p.parent.name for p in visitors.glob("*/jobs")}
        self._owners_on_disk = {key for key in self._owners_on_disk if (visitors / key / "jobs").is_dir()}  # expired
        with self._lock:
            launched = {key for key, w in self._workspaces.items() if w.jobs.launched}
        return self._owners_on_disk | launched

    def running(self, exclude: str | None = None) -> int:
        """Running jobs of every workspace but `exclude`."""
        return sum(self._by_key(key).jobs.running() for key in self._job_owners() if key != exclude)

    def generation_threads(self) -> int | None:
        """Generation's share of the CPU budget beside every running job (all of it without a budget: None)."""
        if self.cpu is None:
            return None
        shares = [t for key in self._job_owners() for t in self._by_key(key).jobs.running_threads(self.cpu.threads)]
        return self.cpu.generation_share(shares)

    def expire(self, now: float | None = None) -> dict[str, int]:
        """Delete what has not changed for `expire_seconds` (public mode only); returns counts of what went."""
        removed = {"jobs": 0, "images": 0, "visitors": 0}
        if not self.public or self.expire_seconds is None:
            return removed
        cutoff = (now or time.time()) - self.expire_seconds
        for key in self.keys():
            workspace = self._by_key(key)
            ids = set(workspace.jobs.ids())
            job_folders = workspace.jobs.root.iterdir() if workspace.jobs.root.is_dir() else ()
            for folder in sorted(p for p in job_folders if p.is_dir()):
                try:  # a job, or a folder half made or with a corrupt job.json
                    running = folder.name in ids and workspace.jobs.state(folder.name)[0] == "running"
                    if not running and last_change(folder) < cutoff:
                        shutil.rmtree(folder, ignore_errors=True)
                        removed["jobs"] += 1
                except (OSError, ValueError):
                    continue
            for path in workspace.history.paths():
                if path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
                    removed["images"] += 1
            with self._lock:
                idle = self._used.get(key, 0) < cutoff
                if idle and _empty(workspace.jobs.root) and _empty(workspace.history.folder):
                    self._workspaces.pop(key, None)
                    self._used.pop(key, None)
                    shutil.rmtree(workspace.root, ignore_errors=True)
                    removed["visitors"] += 1
        with self._lock:  # visitors who never wrote anything: forgotten once idle
            forgotten = [k for k, used in self._used.items()
                         if used < cutoff and not (self.data_dir / VISITORS / k).exists()]
            for key in forgotten:
                self._workspaces.pop(key, None)
                self._used.pop(key, None)
        return removed

    def clean_periodically(self, interval: float = 3600.0) -> threading.Thread:
        """Expire now, then every `interval` seconds, on a daemon thread."""
        def loop():
            while True:
                self.expire()
                time.sleep(interval)

        thread = threading.Thread(target=loop, daemon=True, name="studio-expiry")
        thread.start()
        return thread
