"""Text-to-image and img2img with catalogue models: cached pipelines, every speed knob, honest timings.

`generate` is the one way the studio calls a pipeline: it applies the
scheduler, steps and guidance of its `Settings` and the knobs that do less work
(guidance that stops early, step caching, token merging, a tiny decoder; see
acceleration.py), and decodes the latents itself so the decoder can be chosen.
`compare` runs several models (and several settings, for a grid) on the same
prompt and seed, one after the other, and times each: the whole call, every
U-Net call on its own, and the decode (device synchronized around each).
Models are loaded and warmed up before the clock starts; loading time is
reported separately.
"""

import time
from dataclasses import asdict, dataclass
from statistics import median

import torch
from diffusers import (
    DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler, PNDMScheduler,
    StableDiffusionImg2ImgPipeline, StableDiffusionPipeline, UniPCMultistepScheduler,
)
from PIL import Image

from studio.images import square
from studio.inference.acceleration import (
    StepCache, pipeline_guidance, stop_guidance, token_merging,
)
from studio.inference.devices import DTYPES, parse_dtype, synchronize
from studio.inference.pipeline_cache import PipelineCache  # noqa: F401  (callers import it from here too)
from studio.limits import MAX_GUIDANCE, MAX_SAMPLING_STEPS, MAX_SEED
from studio.models.catalog import Catalog
from studio.models.loading import check_at_hand
from studio.options import check_text
from studio.progress import Callback, report

MAX_UPSCALE = 2  # largest resolution: twice the model's native size
MAX_PROMPT_CHARS = 2000  # CLIP reads 77 tokens (a few hundred characters); the rest is cut, and the readout says so
MAX_CACHE_INTERVAL = 10
MAX_TOME_RATIO = 0.75
DECODERS = ("vae", "tiny")  # the model's own VAE decoder, or its family's tiny one (TAESD)
# Every scheduler is built from the model's own scheduler config (its betas and
# prediction type). DDIM: PNDM configs carry clip_sample=True, which ruins v-prediction samples.
SCHEDULERS = {
    "PNDM": (PNDMScheduler, {"skip_prk_steps": True}),
    "DDIM": (DDIMScheduler, {"clip_sample": False}),
    "DPM-Solver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "DPM++ 2M Karras": (DPMSolverMultistepScheduler,
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "UniPC": (UniPCMultistepScheduler, {}),
    "Euler": (EulerDiscreteScheduler, {}),
    "LCM": (LCMScheduler, {}),  # for consistency-distilled models (studio/kinds/consistency)
}


def make_scheduler(name: str, config):
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(config, **overrides)


def native_resolution(pipeline: StableDiffusionPipeline) -> int:
    return pipeline.unet.config.sample_size * pipeline.vae_scale_factor


def smallest_resolution(vae_scale: int, unet_stages: int) -> int:
    """The smallest image a U-Net draws: a latent that its stages can halve down to one cell at the innermost stage
    (smaller crashes inside the U-Net, e.g. the toy's at 8 px)."""
    return vae_scale * 2 ** (unet_stages - 1)


@dataclass(frozen=True)
class Settings:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 25
    guidance: float = 7.5
    scheduler: str = "PNDM"
    resolution: int | None = None  # None: each model's native size
    strength: float = 0.75  # img2img only
    guidance_stop: float = 1.0  # the fraction of the steps that use classifier-free guidance
    cache_interval: int = 1  # step caching: a full U-Net call every N calls (1: off)
    tome_ratio: float = 0.0  # token merging: the fraction of tokens merged (0: off)
    decoder: str = "vae"  # "vae" (the model's own) or "tiny" (its family's tiny decoder)
    dtype: str = "fp32"
    recipe: str = "custom"  # the recipe these came from (studio/inference/recipes.py), for readouts

    def check(self, native: int | None = None, smallest: int = 8) -> None:
        """Raise ValueError naming what is wrong and what is allowed (the resolution once `native` and `smallest`
        are known)."""
        if not self.prompt or not self.prompt.strip():
            raise ValueError("the prompt is empty; describe the image to generate")
        check_text("the prompt", self.prompt, MAX_PROMPT_CHARS)
        check_text("the negative prompt", self.negative_prompt, MAX_PROMPT_CHARS)
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")
        if not 1 <= self.steps <= MAX_SAMPLING_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_SAMPLING_STEPS}, got {self.steps}")
        if not 0 <= self.guidance <= MAX_GUIDANCE:  # NaN fails this too
            raise ValueError(f"guidance must be between 0 and {MAX_GUIDANCE:g}, got {self.guidance}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if not 0 < self.strength <= 1:  # and NaN
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if not 0 < self.guidance_stop <= 1:
            raise ValueError(f"guidance stop must be a fraction of the steps in (0, 1], got {self.guidance_stop}")
        if not 1 <= self.cache_interval <= MAX_CACHE_INTERVAL:
            raise ValueError(f"cache interval must be between 1 (off) and {MAX_CACHE_INTERVAL}, "
                             f"got {self.cache_interval}")
        if not 0 <= self.tome_ratio <= MAX_TOME_RATIO:
            raise ValueError(f"token merging ratio must be between 0 (off) and {MAX_TOME_RATIO}, got {self.tome_ratio}")
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {self.decoder!r}; choose one of {', '.join(DECODERS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.resolution is not None:
            if self.resolution % 8 or self.resolution < 8:
                raise ValueError(f"resolution must be a positive multiple of 8, got {self.resolution}")
            if self.resolution < smallest:
                raise ValueError(f"resolution {self.resolution} is too small for this model; the smallest it draws "
                                 f"is {smallest} (native {native})")
            if native is not None and self.resolution > MAX_UPSCALE * native:
                raise ValueError(f"resolution {self.resolution} is too large for this model (native {native}); "
                                 f"the most is {MAX_UPSCALE * native}")


@dataclass
class Result:
    model: str
    image: Image.Image
    seconds: float  # the whole call: text encoding, denoising, decoding
    unet_seconds: list[float]  # every U-Net call (one per step; CFG runs both halves in one batch)
    settings: Settings
    resolution: int
    unet_params: int
    macs_paper: int  # one U-Net call at this resolution, batch 1, conv + linear
    macs_total: int  # ... plus attention matrix products
    load_seconds: float = 0.0  # set by compare_iter; 0 when the model was already loaded
    prompt_tokens: int = 0  # the prompt's length in tokens (with start and end) ...
    max_tokens: int = 0  # ... and how many the text encoder reads; beyond that the prompt was cut
    decode_seconds: float = 0.0  # the decoder alone (part of `seconds`)
    cached_calls: int = 0  # U-Net calls that ran only the shallow path (step caching)
    note: str = ""  # what the readout should say about how this image was made (e.g. an adapter's coverage)

    @property
    def unet_step_seconds(self) -> float:
        return median(self.unet_seconds) if self.unet_seconds else float("nan")

    def metadata(self) -> dict:
        return {"model": self.model, **asdict(self.settings), "resolution": self.resolution,
                "seconds": round(self.seconds, 4), "unet_step_seconds": round(self.unet_step_seconds, 5),
                "decode_seconds": round(self.decode_seconds, 4)}


@dataclass
class Generated:
    """What one `generate` call made and did."""

    images: list[Image.Image]
    full_calls: int
    cached_calls: int
    decode_seconds: float


@torch.inference_mode()
def generate(pipeline: StableDiffusionPipeline, prompts: list[str], generators: list[torch.Generator],
             settings: Settings, resolution: int, decoder=None, init_image: Image.Image | None = None,
             on_step=None) -> Generated:
    """Images for `prompts` (image i from generators[i]) with every knob of `settings`; `decoder` replaces the
    pipeline's VAE decoder (a tiny one); img2img when `init_image` is given. `on_step(done, steps, latents)`
    is called after every step. The pipeline's dtype is the caller's choice (`settings.dtype` is not applied)."""
    # A fresh pipeline object over the cached components: its own scheduler, no weights copied.
    components = {**pipeline.components, "scheduler": make_scheduler(settings.scheduler, pipeline.scheduler.config)}
    pipeline_class = StableDiffusionImg2ImgPipeline if init_image is not None else StableDiffusionPipeline
    run = pipeline_class(**components, requires_safety_checker=False)
    run.set_progress_bar_config(disable=True)

    def on_step_end(pipe, step, _timestep, kwargs):
        if on_step is not None:
            on_step(step + 1, pipe.num_timesteps, kwargs["latents"])
        return stop_guidance(pipe, step, settings.guidance_stop, kwargs)

    arguments = dict(prompt=prompts, negative_prompt=[settings.negative_prompt] * len(prompts)
                     if settings.negative_prompt else None,
                     num_inference_steps=settings.steps, guidance_scale=pipeline_guidance(settings, run.unet),
                     generator=generators,
                     output_type="latent", callback_on_step_end=on_step_end,
                     callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    if init_image is not None:
        arguments.update(image=[square(init_image, resolution)] * len(prompts), strength=settings.strength)
    else:
        arguments.update(height=resolution, width=resolution)
    with StepCache(run.unet, settings.cache_interval) as cache, token_merging(run.unet, settings.tome_ratio):
        latents = run(**arguments).images
    decoder = decoder or run.vae
    synchronize(latents.device)
    started = time.perf_counter()
    pixels = decoder.decode(latents / decoder.config.scaling_factor, return_dict=False)[0]
    images = run.image_processor.postprocess(pixels, output_type="pil")
    synchronize(latents.device)
    return Generated(images, cache.full_calls, cache.cached_calls, time.perf_counter() - started)


class _UNetTimer:
    """Times every U-Net forward, synchronizing the device before and after it."""

    def __init__(self, unet):
        self.unet, self.seconds = unet, []

    def __enter__(self):
        device = self.unet.device

        def before(*_):
            synchronize(device)
            self._start = time.perf_counter()

        def after(*_):
            synchronize(device)
            self.seconds.append(time.perf_counter() - self._start)

        self.handles = [self.unet.register_forward_pre_hook(before), self.unet.register_forward_hook(after)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


@torch.inference_mode()
def run_model(cache: PipelineCache, name: str, settings: Settings, init_image: Image.Image | None = None,
              callback: Callback | None = None, index: int = 0, models: int = 1, catalog: Catalog | None = None,
              previews: float = 0.0) -> Result:
    """One image from one model; img2img when `init_image` is given. With `previews` (seconds), a progress
    event carries a rough picture of the image so far, at most that often (0: never)."""
    dtype = parse_dtype(settings.dtype)
    base, note = cache.for_lcm(name, catalog, dtype) if settings.scheduler == "LCM" else \
        (cache.get(name, catalog, dtype), "")
    native = native_resolution(base)
    settings.check(native)
    resolution = settings.resolution or native
    decoder = cache.decoder(name, settings.decoder, catalog, dtype)
    preview = cache.preview(name, catalog, dtype) if previews else None
    last_preview = [0.0]

    def on_step(done, steps, latents):
        picture = None
        if preview is not None and time.perf_counter() - last_preview[0] >= previews:
            picture, last_preview[0] = preview(latents, min(resolution, 256)), time.perf_counter()
        report(callback, "generate", done, steps, preview=picture, model=name, index=index, models=models)

    with _UNetTimer(base.unet) as timer:
        synchronize(cache.device)
        started = time.perf_counter()
        made = generate(base, [settings.prompt], [torch.Generator().manual_seed(settings.seed)],  # CPU noise
                        settings, resolution, decoder, init_image, on_step)
        synchronize(cache.device)
        seconds = time.perf_counter() - started
    macs_paper, macs_total = cache.macs(name, resolution, catalog)
    return Result(model=name, image=made.images[0], seconds=seconds, unet_seconds=timer.seconds, settings=settings,
                  resolution=resolution, unet_params=sum(p.numel() for p in base.unet.parameters()),
                  macs_paper=macs_paper, macs_total=macs_total,
                  prompt_tokens=len(base.tokenizer(settings.prompt).input_ids),
                  max_tokens=base.tokenizer.model_max_length, decode_seconds=made.decode_seconds,
                  cached_calls=made.cached_calls, note=note)


def compare(cache: PipelineCache, models: list[str], settings: Settings | list[Settings],
            init_image: Image.Image | None = None, callback: Callback | None = None) -> list[Result]:
    """The same prompt and seed on every model (and every settings, for a grid), one after the other."""
    return list(compare_iter(cache, models, settings, init_image, callback))


def compare_iter(cache: PipelineCache, models: list[str], settings: Settings | list[Settings],
                 init_image: Image.Image | None = None, callback: Callback | None = None,
                 catalog: Catalog | None = None, previews: float = 0.0):
    """`compare`, one result at a time, model by model and within a model settings by settings (a grid's row).
    Every model is loaded before the first image: a model that can't be had stops the comparison before any
    generation time is spent. Where they don't fit the cache's memory budget together, each is checked to be at
    hand, then loaded for its row (others evicted). Only models of `catalog` (default: the cache's) can be
    chosen, even when the cache holds others."""
    catalog = catalog or cache.catalog
    columns = settings if isinstance(settings, list) else [settings]
    if not models:
        raise ValueError("models: none chosen; pick at least one")
    if not columns:
        raise ValueError("recipes: none chosen; pick at least one")
    for column in columns:
        column.check()
    unknown = [m for m in models if m not in catalog]
    if unknown:
        raise ValueError(f"models: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(catalog.names())}")
    cells = [(name, column) for name in models for column in columns]
    dtypes = list(dict.fromkeys(parse_dtype(column.dtype) for column in columns))
    together = len(dtypes) == 1 and cache.fits(models, catalog, dtypes[0])
    if not together:  # over the memory budget: a model at a time, each checked to be at hand first
        for name in models:
            check_at_hand(name, catalog)
    cache.events.clear()
    load_seconds = {}

    def load(i, name, column):
        report(callback, "load", i, len(cells), model=name)
        dtype = parse_dtype(column.dtype)
        started, was_loaded = time.perf_counter(), cache.loaded(name, dtype)
        pipeline = cache.get(name, catalog, dtype, callback)
        column.check(native_resolution(pipeline), smallest_resolution(pipeline.vae_scale_factor,
                                                                      len(pipeline.unet.config.block_out_channels)))
        cache.decoder(name, column.decoder, catalog, dtype)
        load_seconds.setdefault((name, dtype), 0.0 if was_loaded else time.perf_counter() - started)

    with cache.hold(models if together else [], dtypes[0]):
        if together:
            for i, (name, column) in enumerate(cells):
                load(i, name, column)
        for i, (name, column) in enumerate(cells):
            with cache.hold([name], parse_dtype(column.dtype)):
                if not together:
                    load(i, name, column)
                result = run_model(cache, name, column, init_image, callback, i, len(cells), catalog, previews)
            result.load_seconds = load_seconds.pop((name, parse_dtype(column.dtype)), 0.0)
            if cache.events:
                result.note = "; ".join(filter(None, [result.note, "model memory: " + ", ".join(cache.events)]))
                cache.events.clear()
            yield result


def sample(pipeline: StableDiffusionPipeline, prompts: list[str], seeds: list[int], steps: int = 25,
           guidance: float = 7.5, batch: int = 32, callback: Callback | None = None,
           settings: Settings | None = None, decoder=None) -> list[Image.Image]:
    """Untimed images for validation grids, class images and prompt sets: image i from its own seed,
    so it is the same image whatever the batch it was drawn in. `settings` (its knobs; the prompt and seed
    are ignored) replaces `steps` and `guidance`; `decoder`: a tiny decoder instead of the pipeline's VAE."""
    pipeline.set_progress_bar_config(disable=True)
    settings = settings or Settings("-", steps=steps, guidance=guidance)
    resolution = native_resolution(pipeline)
    images = []
    for start in range(0, len(prompts), batch):
        generators = [torch.Generator().manual_seed(seed) for seed in seeds[start:start + batch]]
        images += generate(pipeline, prompts[start:start + batch], generators, settings, resolution, decoder).images
        report(callback, "generate", len(images), len(prompts))
    return images
