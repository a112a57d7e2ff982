"""Doing less work per image: step caching, guidance that stops early, token merging, live previews.

Each piece wraps a diffusers pipeline call from the outside and undoes itself
afterwards; with its knob at the neutral value (interval 1, fraction 1.0,
ratio 0) the pipeline computes exactly what it computes without it.

Step caching follows DeepCache (arXiv 2312.00858) at its shallowest branch:
a full U-Net call every `interval` calls keeps the features entering the last
layer of the last up block; the calls in between compute only `conv_in`, the
time embedding, that last layer (fed the kept features and `conv_in`'s skip
connection) and `conv_out`. The DeepCache package (0.1.1) wraps `mid_block`
unconditionally and fails on BK-SDM Small and Tiny, which have none; this hook
never touches the blocks it skips, so it works on every student.
"""

import math
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image


class StepCache:
    """DeepCache's uniform schedule: a full U-Net call every `interval` calls, the shallow path in between.

    Use as a context manager around one pipeline call; `full_calls` and `cached_calls` count what ran.
    """

    def __init__(self, unet, interval: int):
        if interval < 1:
            raise ValueError(f"cache interval must be at least 1, got {interval}")
        self.unet, self.interval = unet, interval
        self.last_block = unet.up_blocks[-1]
        self.skip_channels = unet.conv_in.out_channels  # the last layer's skip connection is conv_in's output
        self.feature = None
        self.full_calls = self.cached_calls = 0
        self._patched = []

    def __enter__(self):
        self.handles = [self.unet.register_forward_pre_hook(self._before, with_kwargs=True),
                        self.unet.register_forward_hook(self._after)]
        if self.interval > 1:
            self.handles.append(self.last_block.resnets[-1].register_forward_pre_hook(self._keep_feature))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self._unpatch()
        self.feature = None

    def _keep_feature(self, _resnet, args):
        if not self._patched:  # a full call: the input is cat([features, skip]); keep the features
            self.feature = args[0][:, :-self.skip_channels]

    def _before(self, _unet, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        batch = sample.shape[0]
        calls = self.full_calls + self.cached_calls
        # A kept feature of batch 2B serves batch B after guidance stopped: diffusers puts the conditional half last.
        usable = self.feature is not None and self.feature.shape[0] in (batch, 2 * batch)
        if self.interval == 1 or calls % self.interval == 0 or not usable:
            self.full_calls += 1
            return
        self.cached_calls += 1
        feature = self.feature if self.feature.shape[0] == batch else self.feature.chunk(2)[1]
        for block in self.unet.down_blocks:
            outputs = len(block.resnets) + (1 if block.downsamplers else 0)
            self._patch(block, lambda hidden_states, *_, _n=outputs, **__: (hidden_states, (hidden_states,) * _n))
        if self.unet.mid_block is not None:
            self._patch(self.unet.mid_block, lambda hidden_states, *_, **__: hidden_states)
        for block in self.unet.up_blocks[:-1]:
            self._patch(block, lambda hidden_states, *_, **__: hidden_states)
        self._patch(self.last_block, self._last_layer(feature))

    def _last_layer(self, feature):
        block = self.last_block

        def forward(hidden_states, res_hidden_states_tuple, temb=None, encoder_hidden_states=None,
                    cross_attention_kwargs=None, attention_mask=None, encoder_attention_mask=None, **_):
            hidden = block.resnets[-1](torch.cat([feature, res_hidden_states_tuple[0]], dim=1), temb)
            if getattr(block, "attentions", None):
                hidden = block.attentions[-1](
                    hidden, encoder_hidden_states=encoder_hidden_states, cross_attention_kwargs=cross_attention_kwargs,
                    attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask, return_dict=False,
                )[0]
            return hidden
        return forward

    def _after(self, *_):
        self._unpatch()

    def _patch(self, module, forward):
        module.forward = forward  # an instance attribute shadows the class's forward until removed
        self._patched.append(module)

    def _unpatch(self):
        for module in self._patched:
            del module.forward
        self._patched = []


def guidance_steps(fraction: float, steps: int) -> int:
    """How many of `steps` steps run with classifier-free guidance when it stops after `fraction` of them."""
    return steps if fraction >= 1 else max(1, math.ceil(fraction * steps)) if fraction > 0 else 0


def stop_guidance(pipeline, step: int, fraction: float, callback_kwargs: dict) -> dict:
    """For `callback_on_step_end`: after the guided steps, drop the unconditional half (as diffusers documents
    for dynamic guidance); the pipeline then runs the U-Net on the conditional half alone."""
    if pipeline.do_classifier_free_guidance and step + 1 >= guidance_steps(fraction, pipeline.num_timesteps):
        pipeline._guidance_scale = 0.0
        callback_kwargs["prompt_embeds"] = callback_kwargs["prompt_embeds"].chunk(2)[1]
    return callback_kwargs


def pipeline_guidance(settings, unet) -> float:
    """The guidance scale the pipeline is called with. LCM sampling never runs a second, unconditional batch: a
    U-Net with a guidance embedding (time_cond_proj_dim) takes the scale as an input, one with an LCM-LoRA
    merged in has it folded into its weights, so it gets 1 (at or below 1 the pipeline skips the batch)."""
    if settings.scheduler == "LCM" and unet.config.time_cond_proj_dim is None:
        return min(settings.guidance, 1.0)
    return settings.guidance


@contextmanager
def token_merging(unet, ratio: float):
    """tomesd's token merging on the U-Net's attention for the duration of one call (ratio 0: untouched)."""
    if ratio <= 0:
        yield
        return
    import tomesd

    tomesd.apply_patch(unet, ratio=ratio)
    try:
        yield
    finally:
        tomesd.remove_patch(unet)


class TinyDecoderPreview:
    """A picture of the image so far from a tiny decoder (TAESD), on latents pooled to at most `max_cells` a side
    so that a preview costs a fraction of a step."""

    def __init__(self, decoder, max_cells: int = 32):
        self.decoder, self.max_cells = decoder, max_cells

    @torch.inference_mode()
    def __call__(self, latents: torch.Tensor, size: int) -> Image.Image:
        latent = latents[:1]
        if latent.shape[-1] > self.max_cells:
            latent = torch.nn.functional.adaptive_avg_pool2d(latent, self.max_cells)
        pixels = self.decoder.decode(latent.to(self.decoder.dtype) / self.decoder.config.scaling_factor).sample[0]
        rgb = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), Image.BILINEAR)


class LatentPreview:
    """A cheap latent -> RGB picture while an image forms: a linear map (with offset) fitted once per VAE by
    least squares, from what its encoder makes of mosaics of random colors (one color per latent cell)."""

    def __init__(self, vae, cells: int = 8, samples: int = 16):
        generator = torch.Generator().manual_seed(0)
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        colors = torch.rand(samples, 3, cells, cells, generator=generator) * 2 - 1
        mosaics = torch.nn.functional.interpolate(colors, scale_factor=scale, mode="nearest")
        parameter = next(vae.parameters())
        with torch.inference_mode():
            latents = vae.encode(mosaics.to(parameter.device, parameter.dtype)).latent_dist.mean.float().cpu()
        channels = latents.shape[1]
        x = torch.cat([latents.permute(0, 2, 3, 1).reshape(-1, channels), torch.ones(samples * cells * cells, 1)], 1)
        y = colors.permute(0, 2, 3, 1).reshape(-1, 3)
        self.weights = torch.linalg.lstsq(x, y).solution  # (channels + 1) x 3
        self.scaling = vae.config.scaling_factor

    def __call__(self, latents: torch.Tensor, size: int) -> Image.Image:
        """The first latent of a batch (scaled as the pipeline holds it) as an RGB picture `size` pixels wide."""
        latent = latents[0].float().cpu() / self.scaling
        flat = torch.cat([latent.permute(1, 2, 0), torch.ones(*latent.shape[1:], 1)], -1) @ self.weights
        rgb = ((flat.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        return Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), Image.NEAREST)
