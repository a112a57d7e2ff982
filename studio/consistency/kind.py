"""Consistency distillation as a job kind (studio/kinds.py): a student that samples in 1-4 steps (LCM)."""

from studio.budget import ADAMW_STATES, FLOAT_BYTES, METRICS_ROW_BYTES, checkpoints_kept, image_bytes
from studio.consistency.config import VALIDATION_STEPS, ConsistencyConfig
from studio.kinds import JobKind


def run(config: ConsistencyConfig, callback=None) -> str:
    from studio.consistency.train import consistency_distill

    out = consistency_distill(config, callback=callback)
    adapter = f"; the adapter alone in {out / 'lora'}" if config.lora else ""
    return f"student U-Net in {out / 'unet'}{adapter}; metrics in {out / 'metrics.csv'}"


def estimate_bytes(config: ConsistencyConfig, catalog) -> dict[str, int]:
    """Checkpoints (what trains with AdamW's moments, and the target network), the result (a whole U-Net either
    way, and the adapter), teacher images, validation grids and metrics rows."""
    from studio.catalog import read_configs
    from studio.compression import student_config
    from studio.adapters import lora_params
    from studio.profiling import count_params, input_geometry, meta_unet

    configs = read_configs(config.teacher, catalog)
    unet_config = read_configs(config.student, catalog)["unet"] if config.student else \
        student_config(configs["unet"], config.arch)
    unet = meta_unet(unet_config)
    params = count_params(unet)
    trainable = lora_params(unet, config.rank) if config.lora else params
    per_checkpoint = trainable * FLOAT_BYTES * (1 + ADAMW_STATES) + (0 if config.lora else params * FLOAT_BYTES)
    resolution = input_geometry(configs).resolution
    grids = -(-config.steps // config.checkpoint_every) if config.validation_prompts else 0
    return {"checkpoints": checkpoints_kept(config) * per_checkpoint,
            "result": (params + (trainable if config.lora else 0)) * FLOAT_BYTES,
            "images": (config.synthetic + grids * len(VALIDATION_STEPS) * len(config.validation_prompts))
            * image_bytes(resolution),
            "logs": (config.steps // config.log_every + 1) * METRICS_ROW_BYTES}


KIND = JobKind(
    name="consistency", config=ConsistencyConfig, run=run, estimate_bytes=estimate_bytes, result="student",
    help="consistency-distill a student so it samples in 1-4 steps (LCM)",
    total=lambda config: config.steps,
    describe=lambda config: f"{config.student or config.arch} of {config.teacher}, LCM {config.mode}, "
                            f"{config.steps} steps",
    caps={"steps": "max_steps", "batch_size": "max_batch_size", "synthetic": "max_class_images"},
    student=lambda config: (config["teacher"], config["arch"]),
)
