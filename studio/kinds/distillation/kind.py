"""Distillation as a job kind (studio/kinds/base.py): the block-removed student, distilled from its teacher."""

from pathlib import Path

from studio.budget import FLOAT_BYTES, METRICS_ROW_BYTES, TEACHER_BYTES, checkpoints_kept, image_bytes
from studio.kinds.base import JobKind
from studio.kinds.distillation.config import DistillConfig
from studio.limits import OPTIMIZER_STATE_BYTES


def run(config: DistillConfig, callback=None) -> str:
    from studio.kinds.distillation.train import distill
    from studio.kinds.launch import launch, needs_launch

    config.check()  # here, once, rather than in each of the processes
    if needs_launch(config):  # more than one process: accelerate launch runs this same command in each
        launch("distill", config)
        out = Path(config.out)
    else:
        out = distill(config, callback=callback)
    return f"student U-Net in {out / 'unet'}; metrics in {out / 'metrics.csv'}"


def estimate_bytes(config: DistillConfig, catalog) -> dict[str, int]:
    """Checkpoints (student, the optimizer's two moments, the EMA), the result, validation grids and metrics rows."""
    from studio.models.catalog import read_configs
    from studio.models.compression import student_config
    from studio.models.profiling import count_params, input_geometry, meta_unet

    configs = read_configs(config.teacher, catalog)
    params = count_params(meta_unet(student_config(configs["unet"], config.arch)))
    per_checkpoint = params * (FLOAT_BYTES * (1 + (1 if config.ema else 0)) + OPTIMIZER_STATE_BYTES[config.optimizer])
    resolution = input_geometry(configs).resolution
    grids = -(-config.steps // config.checkpoint_every) if config.validation_prompts else 0  # one per checkpoint
    return {"checkpoints": checkpoints_kept(config) * per_checkpoint, "result": params * FLOAT_BYTES,
            "images": grids * 2 * len(config.validation_prompts) * image_bytes(resolution),
            "logs": (config.steps // config.log_every + 1) * METRICS_ROW_BYTES}


def estimate_memory(config: DistillConfig, catalog) -> dict[str, int]:
    """The frozen teacher (U-Net, text encoder, VAE), the student training, its activations at the batch size."""
    from studio.budget import training_memory
    from studio.models.catalog import read_configs
    from studio.models.compression import student_config
    from studio.models.profiling import component_params, count_params, input_geometry, meta_unet, unet_activation_bytes

    configs = read_configs(config.teacher, catalog)
    student = meta_unet(student_config(configs["unet"], config.arch))
    geometry = input_geometry(configs)
    frozen = count_params(meta_unet(configs["unet"])) + sum(n or 0 for n in component_params(configs).values())
    activations = unet_activation_bytes(student, (geometry.latent,) * 2, config.batch_size, geometry.text_tokens,
                                        checkpointing=config.gradient_checkpointing)
    one = training_memory(frozen * TEACHER_BYTES[config.teacher_dtype], count_params(student), activations,
                          copies=1 if config.ema else 0, optimizer=config.optimizer)
    import torch

    if torch.cuda.is_available():  # one process per GPU: this is each GPU's share
        return one
    return {part: size * config.processes for part, size in one.items()}  # every process holds it all in RAM


KIND = JobKind(
    name="distill", config=DistillConfig, run=run, estimate_bytes=estimate_bytes, result="student",
    help="distill a block-removed student from its teacher (BK-SDM)",
    total=lambda config: config.steps, describe=lambda config: f"{config.arch} from {config.teacher}, "
                                                               f"{config.steps} steps",
    caps={"steps": "max_steps", "batch_size": "max_batch_size", "processes": "max_processes"}, student=lambda config: (config["teacher"], config["arch"]),
    estimate_memory=estimate_memory,
)
