"""The runner (`python -m studio.jobs RUN JOB_DIR`): the process that outlives the app for one job.

It starts the job itself (`python -m studio jobs exec JOB_DIR`, which reads its kind
and config from job.json, the JSON the launcher checked), notes a cancel (both are
in one process group), waits and records how the job ended in exit.json.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

from studio.jobs.store import write_json
from studio.models.catalog import PROJECT_ROOT


def run_runner(folder: Path) -> int:
    """The runner: start the job, note a cancel, record how it ended."""
    argv = [sys.executable, "-m", "studio", "jobs", "exec", str(folder)]
    cancelled = False

    def on_term(signum, frame):  # the job, in our process group, got the same signal
        nonlocal cancelled
        cancelled = True

    signal.signal(signal.SIGTERM, on_term)
    with open(folder / "log.txt", "a") as log:
        log.write(f"\n$ {' '.join(argv)}\n")
        log.flush()
        returncode = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT).wait()
    write_json(folder / "exit.json", {"returncode": returncode, "cancelled": cancelled, "ended": time.time()})
    return returncode


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "RUN":
        sys.exit("usage: python -m studio.jobs RUN JOB_DIR")
    return run_runner(Path(argv[1]))
