"""DreamBooth as a job kind (studio/kinds/base.py): LoRA (peft) or full finetuning of a teacher or student."""

from studio.budget import ADAMW_STATES, FLOAT_BYTES, METRICS_ROW_BYTES, checkpoints_kept, image_bytes
from studio.kinds.base import JobKind
from studio.kinds.personalization.config import DreamBoothConfig
from studio.limits import MAX_PHOTOS


def run(config: DreamBoothConfig, callback=None) -> str:
    from studio.kinds.personalization.dreambooth import dreambooth

    out = dreambooth(config, callback=callback)
    result = out / ("lora" if config.lora else "unet")
    return f"personalized weights in {result}; metrics in {out / 'metrics.csv'}; card in {out / 'card.json'}"


def lora_params(unet, rank: int) -> int:
    """Parameters of rank-`rank` LoRA on every to_q and to_v (A: in x r, B: r x out)."""
    return sum(rank * (m.in_features + m.out_features) for name, m in unet.named_modules()
               if name.rsplit(".", 1)[-1] in ("to_q", "to_v"))


def estimate_bytes(config: DreamBoothConfig, catalog) -> dict[str, int]:
    """Checkpoints of what trains (with AdamW's moments), the result, class and validation images, metrics rows."""
    from studio.models.catalog import read_configs
    from studio.models.profiling import count_params, input_geometry, meta_unet

    configs = read_configs(config.model, catalog)
    unet = meta_unet(configs["unet"])
    trainable = count_params(unet) if config.mode == "full" else lora_params(unet, config.rank)
    if config.mode == "lora" and config.train_text_encoder:
        text = configs.get("text_encoder") or {}
        trainable += 2 * text.get("num_hidden_layers", 12) * config.text_rank * 2 * text.get("hidden_size", 768)
    resolution = input_geometry(configs).resolution
    grids = -(-config.steps // config.checkpoint_every) if config.validation_prompts else 0
    return {"checkpoints": checkpoints_kept(config) * trainable * FLOAT_BYTES * (1 + ADAMW_STATES),
            "result": trainable * FLOAT_BYTES,
            "images": (config.class_images + MAX_PHOTOS + grids * len(config.validation_prompts))
            * image_bytes(resolution),
            "logs": (config.steps // config.log_every + 1) * METRICS_ROW_BYTES}


def estimate_memory(config: DreamBoothConfig, catalog) -> dict[str, int]:
    """The model (frozen under LoRA), what trains, and the U-Net's activations for an instance and a class image
    (prior preservation doubles the batch; gradient checkpointing, on by default, keeps block inputs only)."""
    from studio.budget import training_memory
    from studio.models.catalog import read_configs
    from studio.models.profiling import component_params, count_params, input_geometry, meta_unet, unet_activation_bytes

    configs = read_configs(config.model, catalog)
    unet = meta_unet(configs["unet"])
    geometry = input_geometry(configs)
    others = sum(n or 0 for n in component_params(configs).values())
    lora = config.mode == "lora"
    trainable = lora_params(unet, config.rank) if lora else count_params(unet)
    frozen = others + (count_params(unet) if lora else 0)
    batch = 2 if config.class_images else 1
    return training_memory(frozen * FLOAT_BYTES, trainable,
                           unet_activation_bytes(unet, (geometry.latent,) * 2, batch, geometry.text_tokens,
                                                 checkpointing=config.gradient_checkpointing))


KIND = JobKind(
    name="dreambooth", config=DreamBoothConfig, run=run, estimate_bytes=estimate_bytes, result="adapter",
    help="personalize a teacher or student from a few photos",
    total=lambda config: config.steps,
    describe=lambda config: f"{config.model}: {config.instance_prompt}, {config.steps} steps, {config.mode}",
    caps={"steps": "max_steps", "class_images": "max_class_images"}, estimate_memory=estimate_memory,
)
