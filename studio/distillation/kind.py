"""Distillation as a job kind (studio/kinds.py): the block-removed student, distilled from its teacher."""

from studio.budget import ADAMW_STATES, FLOAT_BYTES, METRICS_ROW_BYTES, checkpoints_kept, image_bytes
from studio.distillation.config import DistillConfig
from studio.kinds import JobKind


def run(config: DistillConfig, callback=None) -> str:
    from studio.distillation.train import distill

    out = distill(config, callback=callback)
    return f"student U-Net in {out / 'unet'}; metrics in {out / 'metrics.csv'}"


def estimate_bytes(config: DistillConfig, catalog) -> dict[str, int]:
    """Checkpoints (student, AdamW's two moments, the EMA), the result, validation grids and metrics rows."""
    from studio.catalog import read_configs
    from studio.compression import student_config
    from studio.profiling import count_params, input_geometry, meta_unet

    configs = read_configs(config.teacher, catalog)
    params = count_params(meta_unet(student_config(configs["unet"], config.arch)))
    per_checkpoint = params * FLOAT_BYTES * (1 + ADAMW_STATES + (1 if config.ema else 0))
    resolution = input_geometry(configs).resolution
    grids = -(-config.steps // config.checkpoint_every) if config.validation_prompts else 0  # one per checkpoint
    return {"checkpoints": checkpoints_kept(config) * per_checkpoint, "result": params * FLOAT_BYTES,
            "images": grids * 2 * len(config.validation_prompts) * image_bytes(resolution),
            "logs": (config.steps // config.log_every + 1) * METRICS_ROW_BYTES}


KIND = JobKind(
    name="distill", config=DistillConfig, run=run, estimate_bytes=estimate_bytes, result="student",
    help="distill a block-removed student from its teacher (BK-SDM)",
    total=lambda config: config.steps, describe=lambda config: f"{config.arch} from {config.teacher}, "
                                                               f"{config.steps} steps",
    caps={"steps": "max_steps", "batch_size": "max_batch_size"}, student=lambda config: (config["teacher"], config["arch"]),
)
