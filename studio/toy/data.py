"""Training examples: a caption and a scene drawn to match it, 64x64.

A caption is drawn from the six task families of GenEval (studio/toy/prompts.py),
its scene from the toy world's shapes (studio/toy/scenes.py); every example is a
pure function of (seed, index), so any subset can be regenerated exactly. Held-out
color-shape pairs are never drawn here.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from studio.toy.prompts import random_prompt, scene_for
from studio.toy.scenes import SIZE, render


def make_example(index: int, seed: int = 0, mix=None) -> tuple[Image.Image, str]:
    """Training example `index`: a caption of a random task family (uniform, or by the probabilities `mix`, see
    prompts.task_mix) and a scene drawn to match it."""
    rng = np.random.default_rng([seed, index])
    prompt = random_prompt(rng, training=True, mix=mix)
    return render(scene_for(prompt, rng)), prompt.text


def batch_tensors(indices, seed: int = 0, size: int = SIZE, mix=None):
    """Images in [-1, 1] (N, 3, size, size) and their captions, for training; smaller sizes are the scenes
    scaled down (as a 32-pixel test teacher takes them); `mix` as in make_example."""
    import torch

    images, captions = [], []
    for index in indices:
        image, text = make_example(int(index), seed, mix)
        if size != SIZE:
            image = image.resize((size, size), Image.Resampling.BOX)
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
    """The toy world as a distillation data source ("--data toy"): scenes drawn on the fly."""

    skipped: list[str] = []

    def __init__(self, resolution: int):
        from studio.kinds.data import DataError

        if resolution > SIZE:
            raise DataError(f"toy data is {SIZE}x{SIZE} (or scaled down); the teacher asks for {resolution}")
        self.resolution = resolution

    def __len__(self) -> int:
        return 2**31

    def batch(self, size: int, rng):
        return batch_tensors([rng.randrange(2**31) for _ in range(size)], seed=0, size=self.resolution)

    def captions(self, size: int, rng) -> list[str]:
        return [random_prompt(np.random.default_rng([0, rng.randrange(2**31)]), training=True).text
                for _ in range(size)]
