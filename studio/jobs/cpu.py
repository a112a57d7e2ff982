"""One CPU budget for the app and its background jobs.

Every torch process asks for all the cores by default. Two of them side by side
on a 2-core machine run a U-Net call 2.4x (real size) to 4.6x (toy) slower than
alone, where one thread each loses little (issue 21). So the app and its jobs
share the machine's threads by a plan:

- a job starting beside k running jobs gets threads // (k + 2): an equal part for
  generation and for each job (at least one); it keeps that share for its life
  (OMP_NUM_THREADS in its environment, which torch follows);
- generation gets what the running jobs leave (at least one thread), recomputed
  before every request, so it has the whole machine again once they end.
"""

import os
from dataclasses import dataclass

# Set in a job's environment: torch's intra-op pool, OpenMP and MKL all read them at start.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def machine_threads() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class CpuBudget:
    threads: int  # what the app and its jobs share

    def job_share(self, running_jobs: int) -> int:
        """Threads for a job that starts while `running_jobs` others run."""
        return max(1, self.threads // (running_jobs + 2))

    def generation_share(self, job_threads: list[int]) -> int:
        """Threads for generation while jobs with these shares run."""
        return max(1, self.threads - sum(job_threads))

    @staticmethod
    def job_environment(threads: int) -> dict[str, str]:
        return {name: str(threads) for name in THREAD_VARIABLES}


def use_threads(threads: int | None) -> int:
    """Make this process's torch calls use `threads` intra-op threads (None: leave them); returns them."""
    import torch

    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
