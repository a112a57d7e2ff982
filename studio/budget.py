"""What a job may use: caps on its size, how many jobs run at once, and the disk it will write.

A `JobLimits` travels with a job folder's manager (studio/jobs.py). The defaults
are a local, single-user studio's: no caps beyond the configs' own ranges, no
running-job quota, only the safety limits on uploads and the free-disk check.
A public host sets the rest (studio/ui/workspaces.py).

Each job kind estimates what it writes (its `estimate_bytes`, studio/kinds/base.py), an
upper bound from the configs alone (models counted on the meta device, nothing
loaded), with the sizes defined here; `check_disk` weighs it against the disk.
"""

import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

from studio.limits import MAX_PHOTO_BYTES, MAX_PHOTOS, OPTIMIZER_STATE_BYTES

GB = 1024**3
FLOAT_BYTES = 4  # fp32 weights and optimizer states
TEACHER_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}  # a frozen model's weights by its dtype
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, one float each per trainable parameter
METRICS_ROW_BYTES = 200


# A job's process before its models: Python, torch, diffusers, transformers, the data. Toy distillation jobs
# (batch 32) peaked at 0.85 GB RSS in all, of which their models, optimizer and activations were under 0.25 GB.
PROCESS_BYTES = 768 * 1024**2


class QuotaError(ValueError):
    """A job this host won't start now (too many running, too big, no disk); the message says what is allowed."""


@dataclass(frozen=True)
class JobLimits:
    max_running: int | None = None  # jobs of one owner running at once
    max_running_total: int | None = None  # jobs of all owners running at once
    max_steps: int | None = None  # training steps (distillation, DreamBooth)
    max_batch_size: int | None = None
    max_processes: int | None = None  # training processes of one job (accelerate launch)
    max_class_images: int | None = None
    max_eval_images: int | None = None  # images per model
    max_photos: int = MAX_PHOTOS
    max_photo_bytes: int = MAX_PHOTO_BYTES
    max_zip_bytes: int = 2 * GB  # a dataset zip, unpacked
    max_zip_ratio: float = 100.0  # unpacked / packed size; a zip of zeros reaches 1000
    max_owner_bytes: int | None = None  # what one owner's folder may hold, jobs and images together
    min_free_bytes: int = GB // 2  # left free on the disk after a job's estimate


def check_caps(limits: JobLimits, config, caps: dict[str, str]) -> None:
    """Refuse a config whose size fields go beyond this host's caps, naming the field. `caps` maps a config field
    to the JobLimits attribute that caps it (each job kind says which, studio/kinds/base.py)."""
    for f in fields(config):
        cap = getattr(limits, caps[f.name]) if f.name in caps else None
        value = getattr(config, f.name)
        if cap is not None and value is not None and value > cap:
            name = f.metadata.get("label", f.name.replace("_", " "))
            raise QuotaError(f"{name}: {value} is more than this host allows ({cap}); choose at most {cap}")


def check_running(limits: JobLimits, new: int, mine: int, total: int) -> None:
    """Refuse `new` jobs when the owner's (`mine`) or everyone's (`total`) running jobs would pass the quotas."""
    if limits.max_running is not None and mine + new > limits.max_running:
        raise QuotaError(f"jobs: you have {mine} running and asked for {new} more; at most {limits.max_running} may "
                         "run at once per visitor. Wait for one to finish, or cancel one")
    if limits.max_running_total is not None and total + new > limits.max_running_total:
        raise QuotaError(f"jobs: {total} jobs are running on this machine and {new} more would pass its limit of "
                         f"{limits.max_running_total}; try again when one has finished")


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under `folder` (0 if it does not exist)."""
    total = 0
    for path, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(path, name)).st_size
            except OSError:
                continue
    return total


def size_text(size: float) -> str:
    """Bytes for people: GB from a gigabyte up, MB below (a 0.05 GB budget is not "0.0 GB")."""
    return f"{size / GB:.2f} GB" if size >= GB else f"{size / 1024**2:.1f} MB"


def check_disk(estimate: dict[str, int], folder: Path, limits: JobLimits, owner_bytes: int = 0) -> None:
    """Refuse a job whose estimate (what it writes, and what its upload unpacks to) would leave less than
    `min_free_bytes` on the disk, or pass the owner's budget."""
    need = sum(estimate.values())
    parts = ", ".join(f"{name} {size_text(size)}" for name, size in estimate.items() if size)
    existing = next(p for p in (folder, *folder.parents) if p.exists())  # the job folder may not exist yet
    free = shutil.disk_usage(existing).free
    if free - need < limits.min_free_bytes:
        raise QuotaError(f"disk: this job may write {size_text(need)} ({parts}) and {size_text(free)} are free "
                         f"(keeping {size_text(limits.min_free_bytes)} spare); fewer steps or a lower "
                         "checkpoint limit write less, or delete old jobs")
    if limits.max_owner_bytes is not None and owner_bytes + need > limits.max_owner_bytes:
        raise QuotaError(f"disk: your jobs and images hold {size_text(owner_bytes)} and this job may write "
                         f"{size_text(need)} ({parts}); each visitor may keep {size_text(limits.max_owner_bytes)}. "
                         "Old jobs expire, or choose a smaller job")


def training_memory(frozen_bytes: int, trainable_params: int, activation_bytes: int, copies: int = 0,
                    optimizer: str = "adamw") -> dict:
    """A training job's peak memory, an estimate: the process, its frozen models, what trains (weights, gradients,
    the optimizer's two moments, and `copies` more, e.g. an EMA or a target network) and the activations kept for
    the backward pass."""
    training = trainable_params * (FLOAT_BYTES * (2 + copies) + OPTIMIZER_STATE_BYTES[optimizer])
    return {"process": PROCESS_BYTES, "frozen models": frozen_bytes, "training": training,
            "activations": activation_bytes}


def check_memory(estimate: dict[str, int], reserved: int) -> None:
    """Refuse a job whose estimated peak memory does not fit in what is free, less `reserved` (what the app's
    model memory budget may still take, and a margin)."""
    import psutil

    need = sum(estimate.values())
    free = psutil.virtual_memory().available - reserved
    if need > free:
        parts = ", ".join(f"{name} {size_text(size)}" for name, size in estimate.items() if size)
        raise QuotaError(f"memory: this job may need {size_text(need)} ({parts}) and {size_text(max(free, 0))} are "
                         "free beside the app's models and running jobs; a smaller batch size or model needs less, "
                         "or start it when a running job has finished")


def checkpoints_kept(config) -> int:
    """How many checkpoints exist at once at most (a new one is complete before the oldest goes)."""
    written = -(-config.steps // config.checkpoint_every)
    kept = config.checkpoints_total_limit
    return written if kept is None else min(written, kept + 1)


def image_bytes(resolution: int) -> int:
    """One image as raw RGB."""
    return resolution * resolution * 3
