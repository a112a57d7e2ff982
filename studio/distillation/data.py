"""Image-caption data for distillation: imagefolder layout, or the toy world's generator.

An imagefolder is a folder with `metadata.jsonl`, one JSON object per line
with `file_name` and `text` (the Hugging Face imagefolder layout). It is
checked before training starts: a missing or empty folder, missing captions,
or mostly unreadable images stop the run with a message; a few bad rows are
skipped and counted.
"""

import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

MAX_BAD_FRACTION = 0.1


class DataError(ValueError):
    """A data source that can't be trained on."""


def image_to_tensor(image: Image.Image, resolution: int, flip: bool) -> torch.Tensor:
    """RGB, resized and center-cropped to a square, optionally flipped, in [-1, 1] (C, H, W)."""
    image = image.convert("RGB")
    scale = resolution / min(image.size)
    if scale != 1:
        size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return torch.from_numpy(array)


class ImageFolderData:
    def __init__(self, folder: "str | Path", resolution: int):
        self.folder = Path(folder)
        self.resolution = resolution
        self.rows, self.skipped = self._check()

    def _check(self) -> tuple[list[dict], list[str]]:
        metadata = self.folder / "metadata.jsonl"
        if not self.folder.is_dir():
            raise DataError(f"data folder {self.folder} does not exist")
        if not metadata.is_file():
            raise DataError(f"{self.folder} has no metadata.jsonl; expected one line per image with "
                            '{"file_name": ..., "text": ...} (the imagefolder layout)')
        rows, skipped = [], []
        lines = [line for line in metadata.read_text().splitlines() if line.strip()]
        if not lines:
            raise DataError(f"{metadata} is empty: no image-caption pairs to train on")
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
                name, text = row["file_name"], row["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                skipped.append(f"line {number}: not a JSON object with file_name and text")
                continue
            path = (self.folder / name).resolve()
            if self.folder.resolve() not in path.parents:
                skipped.append(f"line {number}: {name!r} points outside the data folder")
                continue
            if not isinstance(text, str) or not text.strip():
                skipped.append(f"line {number}: empty caption")
                continue
            try:
                with Image.open(path) as image:
                    image.verify()
            except (OSError, UnidentifiedImageError):
                skipped.append(f"line {number}: {name} is missing or not a readable image")
                continue
            rows.append({"path": path, "text": text})
        if len(skipped) > MAX_BAD_FRACTION * len(lines) or not rows:
            raise DataError(f"{len(skipped)} of {len(lines)} rows in {metadata} are unusable, e.g. "
                            + "; ".join(skipped[:3]))
        return rows, skipped

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, size: int, rng: random.Random) -> tuple[torch.Tensor, list[str]]:
        rows = [self.rows[rng.randrange(len(self.rows))] for _ in range(size)]
        images = [image_to_tensor(Image.open(r["path"]), self.resolution, rng.random() < 0.5) for r in rows]
        return torch.stack(images), [r["text"] for r in rows]


class ToyData:
    """The toy world's procedural shapes, drawn on the fly."""

    skipped: list[str] = []

    def __init__(self, resolution: int):
        from studio.toy.data import SIZE

        if resolution != SIZE:
            raise DataError(f"toy data is {SIZE}x{SIZE}; the teacher asks for {resolution}")
        self.resolution = resolution

    def __len__(self) -> int:
        return 2**31

    def batch(self, size: int, rng: random.Random) -> tuple[torch.Tensor, list[str]]:
        from studio.toy.data import batch_tensors

        return batch_tensors([rng.randrange(2**31) for _ in range(size)], seed=0)


def open_data(source: str, resolution: int):
    return ToyData(resolution) if source == "toy" else ImageFolderData(source, resolution)
