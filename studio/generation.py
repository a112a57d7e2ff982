"""Text-to-image and img2img with catalogue models: cached pipelines, honest timings.

`compare` runs several models on the same prompt, seed and scheduler, one after
the other, and times each: the whole call, and every U-Net call on its own
(device synchronized around it). Models are loaded and warmed up before the
clock starts; loading time is reported separately.
"""

import time
from dataclasses import asdict, dataclass
from statistics import median

import torch
from diffusers import (
    DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler,
    StableDiffusionImg2ImgPipeline, StableDiffusionPipeline,
)
from PIL import Image

from studio.bench import synchronize
from studio.catalog import Catalog
from studio.images import square
from studio.loading import load_pipeline
from studio.options import check_text
from studio.profiling import count_unet_macs, meta_unet
from studio.progress import Callback, report

MAX_STEPS = 100
MAX_SEED = 2**32 - 1  # torch.Generator seeds are 64-bit; the UI keeps to 32 like other SD tools
MAX_GUIDANCE = 20.0
MAX_UPSCALE = 2  # largest resolution: twice the model's native size
MAX_PROMPT_CHARS = 2000  # CLIP reads 77 tokens (a few hundred characters); the rest is cut, and the readout says so
# Every scheduler is built from the model's own scheduler config (its betas and
# prediction type). DDIM: PNDM configs carry clip_sample=True, which ruins v-prediction samples.
SCHEDULERS = {
    "PNDM": (PNDMScheduler, {"skip_prk_steps": True}),
    "DDIM": (DDIMScheduler, {"clip_sample": False}),
    "DPM-Solver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "Euler": (EulerDiscreteScheduler, {}),
}


def make_scheduler(name: str, config):
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(config, **overrides)


def native_resolution(pipeline: StableDiffusionPipeline) -> int:
    return pipeline.unet.config.sample_size * pipeline.vae_scale_factor


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

    def check(self, native: int | None = None) -> None:
        """Raise ValueError naming what is wrong and what is allowed (the resolution once `native` is known)."""
        if not self.prompt or not self.prompt.strip():
            raise ValueError("the prompt is empty; describe the image to generate")
        check_text("the prompt", self.prompt, MAX_PROMPT_CHARS)
        check_text("the negative prompt", self.negative_prompt, MAX_PROMPT_CHARS)
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if not 0 <= self.guidance <= MAX_GUIDANCE:  # NaN fails this too
            raise ValueError(f"guidance must be between 0 and {MAX_GUIDANCE:g}, got {self.guidance}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if not 0 < self.strength <= 1:  # and NaN
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if self.resolution is not None:
            if self.resolution % 8 or self.resolution < 8:
                raise ValueError(f"resolution must be a positive multiple of 8, got {self.resolution}")
            if native is not None and self.resolution > MAX_UPSCALE * native:
                raise ValueError(f"resolution {self.resolution} is too large for this model (native {native}); "
                                 f"the most is {MAX_UPSCALE * native}")


@dataclass
class Result:
    model: str
    image: Image.Image
    seconds: float  # the whole pipeline call: text encoding, denoising, decoding
    unet_seconds: list[float]  # every U-Net call (one per step; CFG runs both halves in one batch)
    settings: Settings
    resolution: int
    unet_params: int
    macs_paper: int  # one U-Net call at this resolution, batch 1, conv + linear
    macs_total: int  # ... plus attention matrix products
    load_seconds: float = 0.0  # set by compare_iter; 0 when the model was already loaded
    prompt_tokens: int = 0  # the prompt's length in tokens (with start and end) ...
    max_tokens: int = 0  # ... and how many the text encoder reads; beyond that the prompt was cut

    @property
    def unet_step_seconds(self) -> float:
        return median(self.unet_seconds) if self.unet_seconds else float("nan")

    def metadata(self) -> dict:
        return {"model": self.model, **asdict(self.settings), "resolution": self.resolution,
                "seconds": round(self.seconds, 4), "unet_step_seconds": round(self.unet_step_seconds, 5)}


class PipelineCache:
    """Pipelines loaded on first use and kept; a student shares its teacher's components."""

    def __init__(self, catalog: Catalog, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.catalog = catalog
        self.device = torch.device(device)
        self.dtype = dtype
        self._pipelines: dict[str, StableDiffusionPipeline] = {}
        self._macs: dict[tuple[str, int], tuple[int, int]] = {}

    def loaded(self, name: str) -> bool:
        return name in self._pipelines

    def get(self, name: str, catalog: Catalog | None = None) -> StableDiffusionPipeline:
        """The pipeline of `name`, looked up in `catalog` (default: the cache's) when it is not loaded yet."""
        catalog = catalog or self.catalog
        if name not in self._pipelines:
            entry = catalog.get(name)
            teacher = self.get(entry.teacher, catalog) if entry.role == "student" else None
            pipeline = load_pipeline(name, catalog, self.dtype, teacher=teacher).to(self.device)
            pipeline.set_progress_bar_config(disable=True)
            _warm_up(pipeline)
            self._pipelines[name] = pipeline
        return self._pipelines[name]

    def macs(self, name: str, resolution: int) -> tuple[int, int]:
        """(conv + linear, with attention) MACs of one U-Net call, batch 1, counted on the meta device."""
        key = (name, resolution)
        if key not in self._macs:
            pipeline = self.get(name)
            latent = resolution // pipeline.vae_scale_factor
            count = count_unet_macs(meta_unet(dict(pipeline.unet.config)), (latent, latent), 1,
                                    pipeline.tokenizer.model_max_length)
            self._macs[key] = (count.paper, count.total)
        return self._macs[key]


@torch.inference_mode()
def _warm_up(pipeline: StableDiffusionPipeline) -> None:
    """One tiny run, so first-call costs (allocations, kernel selection) stay out of the timings."""
    pipeline("warm up", num_inference_steps=1, guidance_scale=1.0, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    synchronize(pipeline.device)


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
              callback: Callback | None = None, index: int = 0, models: int = 1) -> Result:
    """One image from one model; img2img when `init_image` is given."""
    base = cache.get(name)
    native = native_resolution(base)
    settings.check(native)
    resolution = settings.resolution or native
    # A fresh pipeline object over the cached components: its own scheduler, no weights copied.
    components = {**base.components, "scheduler": make_scheduler(settings.scheduler, base.scheduler.config)}
    pipeline_class = StableDiffusionImg2ImgPipeline if init_image is not None else StableDiffusionPipeline
    pipeline = pipeline_class(**components, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)

    def on_step_end(_pipe, step, _timestep, kwargs):
        report(callback, "generate", step + 1, _pipe.num_timesteps, model=name, index=index, models=models)
        return kwargs

    arguments = dict(prompt=settings.prompt, negative_prompt=settings.negative_prompt or None,
                     num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                     generator=torch.Generator().manual_seed(settings.seed),  # CPU noise: same on every device
                     callback_on_step_end=on_step_end)
    if init_image is not None:
        arguments.update(image=square(init_image, resolution), strength=settings.strength)
    else:
        arguments.update(height=resolution, width=resolution)
    with _UNetTimer(pipeline.unet) as timer:
        synchronize(cache.device)
        started = time.perf_counter()
        image = pipeline(**arguments).images[0]
        synchronize(cache.device)
        seconds = time.perf_counter() - started
    macs_paper, macs_total = cache.macs(name, resolution)
    return Result(model=name, image=image, seconds=seconds, unet_seconds=timer.seconds, settings=settings,
                  resolution=resolution, unet_params=sum(p.numel() for p in base.unet.parameters()),
                  macs_paper=macs_paper, macs_total=macs_total,
                  prompt_tokens=len(base.tokenizer(settings.prompt).input_ids),
                  max_tokens=base.tokenizer.model_max_length)


def compare(cache: PipelineCache, models: list[str], settings: Settings, init_image: Image.Image | None = None,
            callback: Callback | None = None) -> list[Result]:
    """The same prompt, seed and scheduler on every model, one after the other."""
    return list(compare_iter(cache, models, settings, init_image, callback))


def compare_iter(cache: PipelineCache, models: list[str], settings: Settings, init_image: Image.Image | None = None,
                 callback: Callback | None = None, catalog: Catalog | None = None):
    """`compare`, one result at a time. Every model is loaded before the first image: a model that can't be
    had stops the comparison before any generation time is spent. Only models of `catalog` (default: the
    cache's) can be chosen, even when the cache holds others."""
    catalog = catalog or cache.catalog
    if not models:
        raise ValueError("models: none chosen; pick at least one")
    settings.check()
    unknown = [m for m in models if m not in catalog]
    if unknown:
        raise ValueError(f"models: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(catalog.names())}")
    load_seconds = {}
    for i, name in enumerate(models):
        report(callback, "load", i, len(models), model=name)
        started, was_loaded = time.perf_counter(), cache.loaded(name)
        settings.check(native_resolution(cache.get(name, catalog)))
        load_seconds[name] = 0.0 if was_loaded else time.perf_counter() - started
    for i, name in enumerate(models):
        result = run_model(cache, name, settings, init_image, callback, i, len(models))
        result.load_seconds = load_seconds[name]
        yield result


@torch.inference_mode()
def sample(pipeline: StableDiffusionPipeline, prompts: list[str], seeds: list[int], steps: int = 25,
           guidance: float = 7.5, batch: int = 32, callback: Callback | None = None) -> list[Image.Image]:
    """Untimed images for validation grids, class images and prompt sets: image i from its own seed,
    so it is the same image whatever the batch it was drawn in."""
    pipeline.set_progress_bar_config(disable=True)
    images = []
    for start in range(0, len(prompts), batch):
        generators = [torch.Generator().manual_seed(seed) for seed in seeds[start:start + batch]]
        images += pipeline(prompts[start:start + batch], num_inference_steps=steps, guidance_scale=guidance,
                           generator=generators).images
        report(callback, "generate", len(images), len(prompts))
    return images


def speedups(results: list[Result], teacher: str | None) -> dict[str, tuple[float, float] | None]:
    """Per model: (total latency, U-Net step) speed-up against the teacher, when the teacher ran too."""
    reference = next((r for r in results if r.model == teacher), None)
    return {r.model: None if reference is None else
            (reference.seconds / r.seconds, reference.unet_step_seconds / r.unet_step_seconds) for r in results}
