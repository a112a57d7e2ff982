"""Background jobs: any registered job kind (studio/kinds/registry.py) in its own process, its whole state on disk.

store.py reads state from the job folders, launcher.py starts, cancels and resumes
jobs, runner.py is what runs in their processes, datasets.py unpacks uploads.
"""

from studio.jobs.datasets import extract_dataset_zip, unpacked_bytes
from studio.jobs.launcher import CANCEL_GRACE_SECONDS, JobManager
from studio.jobs.store import STATES, JobError, JobStatus, JobStore, group_alive, read_json, read_metrics, write_json

__all__ = ["CANCEL_GRACE_SECONDS", "STATES", "JobError", "JobManager", "JobStatus", "JobStore", "extract_dataset_zip",
           "group_alive", "read_json", "read_metrics", "unpacked_bytes", "write_json"]
