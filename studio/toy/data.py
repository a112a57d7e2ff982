"""Procedural image-caption data: one filled shape on a plain background.

"a red circle on a blue background", 32x32 pixels. Every sample is a pure
function of (seed, index), so any subset can be regenerated exactly.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
SUPERSAMPLE = 4  # draw large, then downsample: smooth edges like real photos
SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 50),
    "purple": (150, 60, 200),
    "white": (245, 245, 245),
}


@dataclass(frozen=True)
class ShapeSample:
    shape: str
    color: str
    background: str
    center: tuple[float, float]  # in pixels
    size: float  # side or diameter in pixels

    @property
    def caption(self) -> str:
        return caption(self.shape, self.color, self.background)


def caption(shape: str, color: str, background: str) -> str:
    return f"a {color} {shape} on a {background} background"


def sample_attributes(index: int, seed: int = 0) -> ShapeSample:
    rng = np.random.default_rng([seed, index])
    shape = SHAPES[rng.integers(len(SHAPES))]
    color, background = rng.choice(list(COLORS), size=2, replace=False)
    size = float(rng.uniform(12, 22))
    margin = size / 2 + 1
    center = (float(rng.uniform(margin, SIZE - margin)), float(rng.uniform(margin, SIZE - margin)))
    return ShapeSample(shape, str(color), str(background), center, size)


def render(sample: ShapeSample, palette: dict = COLORS) -> Image.Image:
    scale = SUPERSAMPLE
    image = Image.new("RGB", (SIZE * scale, SIZE * scale), palette[sample.background])
    draw = ImageDraw.Draw(image)
    cx, cy, half = sample.center[0] * scale, sample.center[1] * scale, sample.size * scale / 2
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = palette[sample.color]
    if sample.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif sample.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    return image.resize((SIZE, SIZE), Image.Resampling.BOX)


def make_example(index: int, seed: int = 0) -> tuple[Image.Image, str]:
    sample = sample_attributes(index, seed)
    return render(sample), sample.caption


def batch_tensors(indices, seed: int = 0):
    """Images in [-1, 1] (N, 3, 32, 32) and their captions, for training."""
    import torch

    images, captions = [], []
    for index in indices:
        image, text = make_example(int(index), seed)
        images.append(np.asarray(image, dtype=np.float32))
        captions.append(text)
    array = np.stack(images).transpose(0, 3, 1, 2) / 127.5 - 1.0
    return torch.from_numpy(array), captions


def export_imagefolder(n: int, out: "str | Path", seed: int = 0) -> Path:
    """Write n examples in the Hugging Face imagefolder layout (metadata.jsonl)."""
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metadata.jsonl", "w") as metadata:
        for index in range(n):
            image, text = make_example(index, seed)
            name = f"{index:06d}.png"
            image.save(out / name)
            metadata.write(json.dumps({"file_name": name, "text": text}) + "\n")
    return out


class ToyData:
    """The toy world as a distillation data source ("--data toy"): shapes drawn on the fly."""

    skipped: list[str] = []

    def __init__(self, resolution: int):
        from studio.distillation.data import DataError

        if resolution != SIZE:
            raise DataError(f"toy data is {SIZE}x{SIZE}; the teacher asks for {resolution}")
        self.resolution = resolution

    def __len__(self) -> int:
        return 2**31

    def batch(self, size: int, rng):
        return batch_tensors([rng.randrange(2**31) for _ in range(size)], seed=0)
