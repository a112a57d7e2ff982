"""Parameters and MACs of U-Nets, on the meta device (no weights, no memory).

Two MAC conventions, always labelled:
- paper: convolutions and linear layers only, as BK-SDM reports
  (SD-v1.4 at 512x512, batch 1: 338.7 G per U-Net step);
- total: paper plus the attention matrix products (QK^T and attention x V),
  which `torch.utils.flop_counter.FlopCounterMode` misses when SDPA runs as
  a fused CPU kernel.
Bias additions, norms and activations are not counted in either.
"""

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from torch import nn

from studio.models.catalog import Catalog, load_catalog, read_configs
from studio.models.compression import plan_student

DEFAULT_TEXT_TOKENS = 77


@dataclass(frozen=True)
class MacCount:
    paper: int  # conv + linear
    attention: int  # QK^T and attention x V

    @property
    def total(self) -> int:
        return self.paper + self.attention


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_unet(config: dict) -> UNet2DConditionModel:
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def vae_scale_factor(vae_config: dict | None) -> int:
    """Pixels per latent cell; SD's 8 when no VAE config is at hand."""
    if not vae_config:
        return 8
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def _first(value):
    """Per-stage config values (lists) count by their first entry."""
    return value[0] if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class InputGeometry:
    """What one U-Net step sees for a given image size: latent side, text length, context width."""

    resolution: int
    latent: int
    text_tokens: int
    cross_dim: int


def input_geometry(configs: dict, resolution: int | None = None) -> InputGeometry:
    """U-Net inputs for `resolution` pixels (default: the model's native size)."""
    scale = vae_scale_factor(configs.get("vae"))
    resolution = resolution or _first(configs["unet"].get("sample_size", 64)) * scale
    if resolution % scale:
        raise ValueError(f"resolution must be a multiple of {scale} (the VAE's downsampling), got {resolution}")
    text_tokens = (configs.get("text_encoder") or {}).get("max_position_embeddings", DEFAULT_TEXT_TOKENS)
    return InputGeometry(resolution, resolution // scale, text_tokens, _first(configs["unet"]["cross_attention_dim"]))


def _conv_linear_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    per_output = module.in_channels // module.groups
    for k in module.kernel_size:
        per_output *= k
    return output.numel() * per_output


def _attention_macs(module: Attention, args: tuple, kwargs: dict) -> int:
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
    batch = hidden.shape[0]
    queries = hidden.shape[1] if hidden.ndim == 3 else hidden.shape[2] * hidden.shape[3]
    keys = queries if context is None else context.shape[1]
    # QK^T and (softmax) x V, each queries x keys x inner_dim per sample.
    return 2 * batch * queries * keys * module.inner_dim


@torch.no_grad()
def count_unet_macs(
    unet: UNet2DConditionModel, latent_size: tuple[int, int], batch: int = 1, text_tokens: int = DEFAULT_TEXT_TOKENS
) -> MacCount:
    """MACs of one U-Net forward, by running it on meta tensors with hooks."""
    totals = {"paper": 0, "attention": 0}

    def on_layer(module, _inputs, output):
        totals["paper"] += _conv_linear_macs(module, output)

    def on_attention(module, args, kwargs, _output):
        totals["attention"] += _attention_macs(module, args, kwargs)

    handles = []
    for module in unet.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(on_layer))
        elif isinstance(module, Attention):
            handles.append(module.register_forward_hook(on_attention, with_kwargs=True))
    _forward_with_hooks(unet, latent_size, batch, text_tokens, handles)
    return MacCount(paper=totals["paper"], attention=totals["attention"])


def _forward_with_hooks(unet: UNet2DConditionModel, latent_size: tuple[int, int], batch: int, text_tokens: int,
                        handles: list) -> None:
    """One forward of `unet` on zeros where its parameters are (the meta device: shapes only), then the hooks go."""
    device = next(unet.parameters()).device
    try:
        sample = torch.zeros(batch, unet.config.in_channels, *latent_size, device=device)
        context = torch.zeros(batch, text_tokens, _first(unet.config.cross_attention_dim), device=device)
        unet(sample, torch.tensor([1], device=device), encoder_hidden_states=context)
    finally:
        for handle in handles:
            handle.remove()


def unet_activation_bytes(unet: UNet2DConditionModel, latent_size: tuple[int, int], batch: int = 1,
                          text_tokens: int = DEFAULT_TEXT_TOKENS, bytes_per_value: int = 4,
                          checkpointing: bool = False) -> int:
    """What a training forward keeps for the backward pass, roughly: the output of every leaf module (convolutions,
    linears, norms, activations), counted on meta tensors. Attention probabilities are not leaf outputs and are
    left out (at 64x64 latents they would add batch x heads x 4096^2 values per attention layer).

    With gradient checkpointing, diffusers recomputes each resnet and transformer block in the backward pass: such a
    block keeps only its input, and the largest block's own activations exist once, while it is recomputed."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    checkpointed = (ResnetBlock2D, BasicTransformerBlock) if checkpointing else ()
    outside, inputs, inside = [0], [0], {}
    owner = {}  # leaf -> the checkpointed block it runs in
    for block in unet.modules():
        if isinstance(block, checkpointed):
            for leaf in block.modules():
                owner.setdefault(leaf, block)

    def on_leaf(module, _inputs, output):
        if isinstance(output, torch.Tensor):
            block = owner.get(module)
            if block is None:
                outside[0] += output.numel()
            else:
                inside[block] = inside.get(block, 0) + output.numel()

    def on_block(_module, args, _output):
        if args and isinstance(args[0], torch.Tensor):
            inputs[0] += args[0].numel()

    leaves = [m for m in unet.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(on_leaf) for m in leaves]
    handles += [m.register_forward_hook(on_block) for m in unet.modules() if isinstance(m, checkpointed)]
    _forward_with_hooks(unet, latent_size, batch, text_tokens, handles)
    return (outside[0] + inputs[0] + max(inside.values(), default=0)) * bytes_per_value


def component_params(configs: dict) -> dict:
    """Parameters of the text encoder and VAE whose configs are given (None if absent)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    counts = {"text_encoder": None, "vae": None}
    with torch.device("meta"):
        if configs.get("text_encoder"):
            counts["text_encoder"] = count_params(CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])))
        if configs.get("vae"):
            counts["vae"] = count_params(AutoencoderKL.from_config(configs["vae"]))
    return counts


def profile_students(
    teacher: str,
    archs: tuple[str, ...] = ("base", "small", "tiny"),
    resolution: int | None = None,
    batch: int = 1,
    catalog: Catalog | None = None,
) -> dict:
    """Parameters and MACs of a teacher and the students built from its config.

    teacher: a catalogue name or a local folder. resolution: image side in
    pixels (default: the teacher's native one). Returns {"resolution",
    "batch", "components": {...}, "rows": [{"arch", "unet_params",
    "macs_paper", "macs_total"}, ...]} with the teacher first.
    """
    configs = read_configs(teacher, catalog or load_catalog())
    geometry = input_geometry(configs, resolution)

    rows = []
    for arch in ("teacher", *archs):
        config = configs["unet"] if arch == "teacher" else plan_student(configs["unet"], arch).student_config
        unet = meta_unet(config)
        macs = count_unet_macs(unet, (geometry.latent, geometry.latent), batch, geometry.text_tokens)
        rows.append({
            "arch": arch, "unet_params": count_params(unet),
            "macs_paper": macs.paper, "macs_total": macs.total,
        })
    return {"resolution": geometry.resolution, "batch": batch, "components": component_params(configs), "rows": rows}
