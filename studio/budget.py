"""What a job may use: caps on its size, how many jobs run at once, and the disk it will write.

A `JobLimits` travels with a job folder's manager (studio/jobs.py). The defaults
are a local, single-user studio's: no caps beyond the configs' own ranges, no
running-job quota, only the safety limits on uploads and the free-disk check.
A public host sets the rest (studio/workspaces.py).

The disk estimate is an upper bound, from the configs alone (models counted on
the meta device, nothing loaded): every kept checkpoint (weights, AdamW's two
moments, the EMA), the result, images (as raw RGB, PNG only shrinks them) and logs.
"""

import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

from studio.catalog import Catalog, read_configs
from studio.personalization.photos import MAX_BYTES as MAX_PHOTO_BYTES, MAX_PHOTOS

GB = 1024**3
FLOAT_BYTES = 4  # fp32 weights and optimizer states
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, one float each per trainable parameter
METRICS_ROW_BYTES = 200


class QuotaError(ValueError):
    """A job this host won't start now (too many running, too big, no disk); the message says what is allowed."""


@dataclass(frozen=True)
class JobLimits:
    max_running: int | None = None  # jobs of one owner running at once
    max_running_total: int | None = None  # jobs of all owners running at once
    max_steps: int | None = None  # training steps (distillation, DreamBooth) and sampling steps (evaluation)
    max_batch_size: int | None = None
    max_class_images: int | None = None
    max_eval_images: int | None = None  # images per model
    max_photos: int = MAX_PHOTOS
    max_photo_bytes: int = MAX_PHOTO_BYTES
    max_zip_bytes: int = 2 * GB  # a dataset zip, unpacked
    max_zip_ratio: float = 100.0  # unpacked / packed size; a zip of zeros reaches 1000
    max_owner_bytes: int | None = None  # what one owner's folder may hold, jobs and images together
    min_free_bytes: int = GB // 2  # left free on the disk after a job's estimate


CAPS = {"steps": "max_steps", "batch_size": "max_batch_size", "class_images": "max_class_images",
        "n": "max_eval_images"}  # config field -> the limit on it


def check_caps(limits: JobLimits, config) -> None:
    """Refuse a config whose size fields go beyond this host's caps, naming the field."""
    for f in fields(config):
        cap = getattr(limits, CAPS.get(f.name, ""), None)
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


def check_disk(estimate: dict[str, int], folder: Path, limits: JobLimits, owner_bytes: int = 0) -> None:
    """Refuse a job whose estimate would leave less than `min_free_bytes` on the disk, or pass the owner's budget."""
    need = sum(estimate.values())
    parts = ", ".join(f"{name} {size / GB:.2f} GB" for name, size in estimate.items() if size)
    free = shutil.disk_usage(folder).free
    if free - need < limits.min_free_bytes:
        raise QuotaError(f"disk: this job may write {need / GB:.2f} GB ({parts}) and {free / GB:.2f} GB are free "
                         f"(keeping {limits.min_free_bytes / GB:.1f} GB spare); fewer steps or a lower "
                         "checkpoint limit write less, or delete old jobs")
    if limits.max_owner_bytes is not None and owner_bytes + need > limits.max_owner_bytes:
        raise QuotaError(f"disk: your jobs and images hold {owner_bytes / GB:.2f} GB and this job may write "
                         f"{need / GB:.2f} GB ({parts}); each visitor may keep {limits.max_owner_bytes / GB:.1f} GB. "
                         "Old jobs expire, or choose a smaller job")


def _checkpoints(config) -> int:
    """How many checkpoints exist at once at most (a new one is complete before the oldest goes)."""
    written = -(-config.steps // config.checkpoint_every)
    kept = config.checkpoints_total_limit
    return written if kept is None else min(written, kept + 1)


def _image_bytes(resolution: int) -> int:
    return resolution * resolution * 3


def _lora_params(unet, rank: int) -> int:
    """Parameters of rank-`rank` LoRA on every to_q and to_v (A: in x r, B: r x out)."""
    return sum(rank * (m.in_features + m.out_features) for name, m in unet.named_modules()
               if name.rsplit(".", 1)[-1] in ("to_q", "to_v"))


def estimate_job_bytes(kind: str, config, catalog: Catalog) -> dict[str, int]:
    """Upper bound of what a job writes, by part (bytes): checkpoints, result, images, logs."""
    from studio.compression import student_config  # torch: not for the job runner, which imports this module
    from studio.profiling import count_params, input_geometry, meta_unet

    if kind == "distill":
        configs = read_configs(config.teacher, catalog)
        params = count_params(meta_unet(student_config(configs["unet"], config.arch)))
        per_checkpoint = params * FLOAT_BYTES * (1 + ADAMW_STATES + (1 if config.ema else 0))
        resolution = input_geometry(configs).resolution
        grids = -(-config.steps // config.checkpoint_every) if config.validation_prompts else 0  # one per checkpoint
        return {"checkpoints": _checkpoints(config) * per_checkpoint, "result": params * FLOAT_BYTES,
                "images": grids * 2 * len(config.validation_prompts) * _image_bytes(resolution),
                "logs": (config.steps // config.log_every + 1) * METRICS_ROW_BYTES}
    if kind == "dreambooth":
        configs = read_configs(config.model, catalog)
        unet = meta_unet(configs["unet"])
        trainable = count_params(unet) if config.mode == "full" else _lora_params(unet, config.rank)
        if config.mode == "lora" and config.train_text_encoder:
            text = configs.get("text_encoder") or {}
            trainable += 2 * text.get("num_hidden_layers", 12) * config.text_rank * 2 * text.get("hidden_size", 768)
        resolution = input_geometry(configs).resolution
        grids = -(-config.steps // config.checkpoint_every) if config.validation_prompts else 0
        return {"checkpoints": _checkpoints(config) * trainable * FLOAT_BYTES * (1 + ADAMW_STATES),
                "result": trainable * FLOAT_BYTES,
                "images": (config.class_images + MAX_PHOTOS + grids * len(config.validation_prompts))
                * _image_bytes(resolution),
                "logs": (config.steps // config.log_every + 1) * METRICS_ROW_BYTES}
    if kind == "evaluate":
        resolution = config.resolution or max(input_geometry(read_configs(m, catalog)).resolution
                                              for m in config.models)
        return {"images": config.n * len(config.models) * _image_bytes(resolution), "logs": 1024 * 1024}
    raise ValueError(f"no disk estimate for jobs of kind {kind!r}")
