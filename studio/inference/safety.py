"""The safety checker: diffusers' StableDiffusionSafetyChecker on every image the app shows or returns.

The pipelines run without it (generation decodes and times images itself), so
the app runs it on finished images: a flagged one is replaced by a placeholder,
and the readout says so. A family names its checker (`safety_checker` in
models.json): a repository or folder holding `safety_checker/` and
`feature_extractor/` (SD-v1.4's own), or one with the checker at its root
(CompVis/stable-diffusion-safety-checker). The toy world has none.
"""

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from studio.models.catalog import Family
from studio.models.loading import ModelUnavailableError

PLACEHOLDER_COLOR = (96, 96, 96)


class SafetyChecker:
    """A StableDiffusionSafetyChecker with its CLIP image processor; `flagged(images)` says which to withhold."""

    def __init__(self, checker, processor, device: str = "cpu"):
        self.checker, self.processor = checker.to(device).eval(), processor
        self.device = torch.device(device)

    @classmethod
    def load(cls, source: str, device: str = "cpu") -> "SafetyChecker":
        """From `source`'s safety_checker/ and feature_extractor/ folders, else its root (safetensors only)."""
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        if source.startswith("./"):
            from studio.models.catalog import PROJECT_ROOT

            source = str(PROJECT_ROOT / source)
        problems = []
        for checker_folder, processor_folder in (("safety_checker", "feature_extractor"), ("", "")):
            try:
                checker = StableDiffusionSafetyChecker.from_pretrained(
                    source, subfolder=checker_folder or None, use_safetensors=True, torch_dtype=torch.float32)
                processor = CLIPImageProcessor.from_pretrained(source, subfolder=processor_folder or "")
                return cls(checker, processor, device)
            except (OSError, ValueError) as error:
                problems.append(str(error).splitlines()[0][:200])
        raise ModelUnavailableError(
            f"safety checker: {source} could not be loaded ({problems[-1]}); it needs safety_checker/ and "
            "feature_extractor/ (or both at its root) with safetensors weights, in the Hugging Face cache or "
            "a local folder. Run with --no-safety-checker only where the images are not public")

    @torch.inference_mode()
    def flagged(self, images: list[Image.Image]) -> list[bool]:
        inputs = self.processor(images=[i.convert("RGB") for i in images], return_tensors="pt")
        pixels = np.stack([np.asarray(i.convert("RGB"), dtype=np.float32) / 255.0 for i in images])
        _, has_nsfw = self.checker(images=pixels, clip_input=inputs.pixel_values.to(self.device))
        return [bool(flag) for flag in has_nsfw]


def placeholder(size: tuple[int, int]) -> Image.Image:
    """What is shown instead of a flagged image."""
    image = Image.new("RGB", size, PLACEHOLDER_COLOR)
    if min(size) >= 64:
        ImageDraw.Draw(image).text((size[0] // 10, size[1] // 2 - 6), "withheld by the safety checker",
                                   fill=(230, 230, 230))
    return image


def family_checker(family: Family, device: str = "cpu") -> SafetyChecker | None:
    """The family's checker, or None where it has none (the toy world)."""
    return SafetyChecker.load(family.safety_checker, device) if family.safety_checker else None


def screen(checker: SafetyChecker | None, image: Image.Image) -> tuple[Image.Image, bool]:
    """(the image or its placeholder, whether it was withheld)."""
    if checker is None or not checker.flagged([image])[0]:
        return image, False
    return placeholder(image.size), True



def screen_file(checker: SafetyChecker | None, path: str | None, cache: dict) -> str | None:
    """An image file to show: `path`, or a placeholder file where the checker flags it; each version of a file is
    checked once (`cache` maps (path, mtime) to the answer)."""
    if checker is None or path is None:
        return path
    key = (path, Path(path).stat().st_mtime_ns)
    if key not in cache:
        with Image.open(path) as image:
            shown, withheld = screen(checker, image.convert("RGB"))
        if withheld:
            descriptor, name = tempfile.mkstemp(suffix=".png", prefix="withheld-")
            os.close(descriptor)
            shown.save(name)
        cache[key] = name if withheld else path
    return cache[key]
