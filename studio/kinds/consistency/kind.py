"""Consistency distillation as a job kind (studio/kinds/base.py): a student that samples in 1-4 steps (LCM)."""

from studio.budget import FLOAT_BYTES, METRICS_ROW_BYTES, checkpoints_kept, image_bytes
from studio.kinds.base import JobKind
from studio.kinds.consistency.config import VALIDATION_STEPS, ConsistencyConfig
from studio.limits import OPTIMIZER_STATE_BYTES


def run(config: ConsistencyConfig, callback=None) -> str:
    from studio.kinds.consistency.train import consistency_distill

    out = consistency_distill(config, callback=callback)
    adapter = f"; the adapter alone in {out / 'lora'}" if config.lora else ""
    return f"student U-Net in {out / 'unet'}{adapter}; metrics in {out / 'metrics.csv'}"


def estimate_bytes(config: ConsistencyConfig, catalog) -> dict[str, int]:
    """Checkpoints (what trains with the optimizer's moments, and the target network), the result (a whole U-Net either
    way, and the adapter), teacher images, validation grids and metrics rows."""
    from studio.models.adapters import lora_params
    from studio.models.catalog import read_configs
    from studio.models.compression import student_config
    from studio.models.profiling import count_params, input_geometry, meta_unet

    configs = read_configs(config.teacher, catalog)
    unet_config = read_configs(config.student, catalog)["unet"] if config.student else \
        student_config(configs["unet"], config.arch)
    unet = meta_unet(unet_config)
    params = count_params(unet)
    trainable = lora_params(unet, config.rank) if config.lora else params
    per_checkpoint = trainable * (FLOAT_BYTES + OPTIMIZER_STATE_BYTES[config.optimizer]) + \
        (0 if config.lora else params * FLOAT_BYTES)
    resolution = input_geometry(configs).resolution
    grids = -(-config.steps // config.checkpoint_every) if config.validation_prompts else 0
    return {"checkpoints": checkpoints_kept(config) * per_checkpoint,
            "result": (params + (trainable if config.lora else 0)) * FLOAT_BYTES,
            "images": (config.synthetic + grids * len(VALIDATION_STEPS) * len(config.validation_prompts))
            * image_bytes(resolution),
            "logs": (config.steps // config.log_every + 1) * METRICS_ROW_BYTES}


def estimate_memory(config: ConsistencyConfig, catalog) -> dict[str, int]:
    """The frozen teacher (its ODE, text encoder, VAE), the student training and its target network (full) or the
    adapter (LoRA, over the frozen student), and the student's activations at the batch size."""
    from studio.budget import training_memory
    from studio.models.adapters import lora_params
    from studio.models.catalog import read_configs
    from studio.models.compression import student_config
    from studio.models.profiling import component_params, count_params, input_geometry, meta_unet, unet_activation_bytes

    configs = read_configs(config.teacher, catalog)
    student = meta_unet(read_configs(config.student, catalog)["unet"] if config.student else
                        student_config(configs["unet"], config.arch))
    geometry = input_geometry(configs)
    frozen = count_params(meta_unet(configs["unet"])) + sum(n or 0 for n in component_params(configs).values())
    frozen += count_params(student) if config.lora else 0
    trainable = lora_params(student, config.rank) if config.lora else count_params(student)
    activations = unet_activation_bytes(student, (geometry.latent,) * 2, config.batch_size, geometry.text_tokens,
                                        checkpointing=config.gradient_checkpointing)
    return training_memory(frozen * FLOAT_BYTES, trainable, activations, copies=0 if config.lora else 1,
                           optimizer=config.optimizer)


KIND = JobKind(
    name="consistency", config=ConsistencyConfig, run=run, estimate_bytes=estimate_bytes, result="student",
    help="consistency-distill a student so it samples in 1-4 steps (LCM)",
    total=lambda config: config.steps,
    describe=lambda config: f"{config.student or config.arch} of {config.teacher}, LCM {config.mode}, "
                            f"{config.steps} steps",
    caps={"steps": "max_steps", "batch_size": "max_batch_size", "synthetic": "max_class_images"},
    student=lambda config: (config["teacher"], config["arch"]), estimate_memory=estimate_memory,
)
