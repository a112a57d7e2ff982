"""Text-to-image with catalogue models: lazy, cached pipelines and timed generation."""

import time
from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from studio.bench import synchronize
from studio.catalog import Catalog
from studio.loading import load_pipeline

MAX_STEPS = 100
MAX_GUIDANCE = 20.0


class PipelineCache:
    """Pipelines loaded on first use and kept; a student shares its teacher's components."""

    def __init__(self, catalog: Catalog, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.catalog = catalog
        self.device = torch.device(device)
        self.dtype = dtype
        self._pipelines: dict[str, StableDiffusionPipeline] = {}

    def get(self, name: str) -> StableDiffusionPipeline:
        if name not in self._pipelines:
            entry = self.catalog.get(name)
            teacher = self.get(entry.teacher) if entry.role == "student" else None
            pipeline = load_pipeline(name, self.catalog, self.dtype, teacher=teacher).to(self.device)
            pipeline.set_progress_bar_config(disable=True)
            self._pipelines[name] = pipeline
        return self._pipelines[name]


@dataclass(frozen=True)
class Generation:
    image: Image.Image
    seconds: float


def check_settings(prompt: str, steps: int, guidance: float) -> None:
    if not prompt or not prompt.strip():
        raise ValueError("the prompt is empty; describe the image to generate")
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    if not 0 <= guidance <= MAX_GUIDANCE:
        raise ValueError(f"guidance must be between 0 and {MAX_GUIDANCE:g}, got {guidance}")


@torch.inference_mode()
def generate(pipeline: StableDiffusionPipeline, prompt: str, seed: int, steps: int = 25, guidance: float = 7.5,
             negative_prompt: str | None = None) -> Generation:
    """One image, seeded on the CPU so every device draws the same noise."""
    check_settings(prompt, steps, guidance)
    generator = torch.Generator().manual_seed(int(seed))
    synchronize(pipeline.device)
    start = time.perf_counter()
    image = pipeline(prompt, negative_prompt=negative_prompt or None, num_inference_steps=int(steps),
                     guidance_scale=float(guidance), generator=generator).images[0]
    synchronize(pipeline.device)
    return Generation(image=image, seconds=time.perf_counter() - start)
