"""What every training run shares: derived randomness, metrics.csv, checkpoints, and cancel.

Distillation and DreamBooth both use these, so their runs resume, log and stop
the same way, and the app's live plot reads either.
"""

import csv
import json
import random
import shutil
import signal
import threading
from pathlib import Path

import torch
from safetensors.torch import save_file


def step_generator(seed: int, step: int, rank: int = 0) -> tuple[random.Random, torch.Generator]:
    """The randomness of one step, derived from (seed, step, process): a resumed run draws what an
    uninterrupted one would have."""
    mixed = (seed * 1_000_003 + step) * 1_009 + rank
    return random.Random(mixed), torch.Generator().manual_seed(mixed)


def latest_checkpoint(out: Path) -> Path | None:
    checkpoints = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(out: Path, step: int, tensors: dict[str, dict], states: dict[str, dict]) -> Path:
    """checkpoints/step-NNNNNN with safetensors files (`tensors`), optimizer-like states (`states`,
    torch.save, read back with weights_only=True) and state.json; written beside and renamed into place,
    so a kill mid-write never leaves a broken "latest"."""
    final = out / "checkpoints" / f"step-{step:06d}"
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, tensor_dict in tensors.items():
        save_file({k: v.detach().contiguous() for k, v in tensor_dict.items()}, partial / name)
    for name, state in states.items():
        torch.save(state, partial / name)
    (partial / "state.json").write_text(json.dumps({"step": step}))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final


class MetricsLog:
    """metrics.csv, one row per logged step, flushed per row so a live plot can tail it.

    Columns: step, then loss_total and the run's other loss_* terms, then lr and seconds.
    """

    def __init__(self, path: Path, resume_step: int, columns: list[str]):
        rows = []
        if resume_step and path.exists():  # drop rows past the checkpoint: they will be redone
            with open(path, newline="") as file:
                rows = [r for r in csv.DictReader(file) if int(r["step"]) <= resume_step]
        self.seconds_before = float(rows[-1]["seconds"]) if rows else 0.0  # seconds count across resumes
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, columns)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()

    def write(self, row: dict) -> None:
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class StopOnSigterm:
    """Turns SIGTERM into a flag the loop checks between steps, so a cancel loses no work.

    Only for single-process runs: ranks could see the signal at different steps
    and wait for each other forever at the checkpoint barrier.
    """

    def __init__(self, enabled: bool = True):
        self.requested = False
        self.enabled = enabled and threading.current_thread() is threading.main_thread()

    def __enter__(self):
        if self.enabled:
            self.previous = signal.signal(signal.SIGTERM, self._request)
        return self

    def _request(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGTERM, self.previous)
