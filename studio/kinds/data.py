"""Image-caption data for the training kinds (distillation, consistency): an imagefolder, or a data source registered
by name.

A registered source (the toy world registers "toy") is a factory
`factory(resolution)` returning an object with `batch(size, rng)` and
`skipped`; the trainer knows sources only by name.

An imagefolder is a folder with `metadata.jsonl`, one JSON object per line
with `file_name` and `text` (the Hugging Face imagefolder layout). It is
checked before training starts: a missing or empty folder, missing captions,
or mostly unreadable images stop the run with a message; a few bad rows are
skipped and counted.
"""

import json
import random
from pathlib import Path

from typing import Callable

import torch
from PIL import Image, UnidentifiedImageError

from studio.images import ImageTooLarge, check_pixels, square, to_uint8_tensor, to_unit_range

MAX_BAD_FRACTION = 0.1


class DataError(ValueError):
    """A data source that can't be trained on."""


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
            raise DataError("metadata.jsonl is empty: no image-caption pairs to train on")
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
                    check_pixels(image, f"line {number}: {name}")
                    image.verify()
            except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError):
                skipped.append(f"line {number}: {name} is missing or not a readable image")
                continue
            except ImageTooLarge as problem:
                skipped.append(str(problem))
                continue
            rows.append({"path": path, "text": text})
        if len(skipped) > MAX_BAD_FRACTION * len(lines) or not rows:
            raise DataError(f"{len(skipped)} of {len(lines)} rows of metadata.jsonl are unusable, e.g. "
                            + "; ".join(skipped[:3]))
        return rows, skipped

    def __len__(self) -> int:
        return len(self.rows)

    def captions(self, size: int, rng: random.Random) -> list[str]:
        return [self.rows[rng.randrange(len(self.rows))]["text"] for _ in range(size)]

    def plan(self, size: int, rng: random.Random) -> tuple[tuple[int, bool], ...]:
        """Which rows a batch holds and which are mirrored: all of `rng`'s draws for it, none of the decoding."""
        rows = [rng.randrange(len(self.rows)) for _ in range(size)]
        return tuple((row, rng.random() < 0.5) for row in rows)

    def load(self, plan) -> tuple[torch.Tensor, list[str]]:
        """Decode a planned batch: (uint8 images, captions), what crosses from a loader worker."""
        images = []
        for row, flip in plan:
            with Image.open(self.rows[row]["path"]) as image:
                images.append(to_uint8_tensor(square(image, self.resolution), flip=flip))
        return torch.stack(images), [self.rows[row]["text"] for row, _ in plan]

    @staticmethod
    def ready(loaded) -> tuple[torch.Tensor, list[str]]:
        """A loaded batch as the trainer takes it: images in the model's [-1, 1]."""
        images, captions = loaded
        return to_unit_range(images), list(captions)

    def batch(self, size: int, rng: random.Random) -> tuple[torch.Tensor, list[str]]:
        return self.ready(self.load(self.plan(size, rng)))


class _PlannedBatches(torch.utils.data.Dataset):
    """A DataLoader's view of a source: item `plan` is that batch, decoded in a worker."""

    def __init__(self, data):
        self.data = data

    def __getitem__(self, plan):
        return plan, self.data.load(plan)


class _Plans(torch.utils.data.Sampler):
    """The plans of draws `first`, `first + 1`, ...: draw k's rows come from the rng the trainer will pass for it."""

    def __init__(self, data, size: int, rng_for_draw: Callable[[int], random.Random], first: int):
        self.data, self.size, self.rng_for_draw, self.first = data, size, rng_for_draw, first

    def __iter__(self):
        draw = self.first
        while True:
            yield self.data.plan(self.size, self.rng_for_draw(draw))
            draw += 1


class Prefetched:
    """A source whose batches are decoded ahead of the training loop by `workers` DataLoader processes. The trainer
    asks as before (`batch(size, rng)`): the rng is drawn from exactly as the source would (its `plan`), and the
    batch decoded for that plan is handed over, so a run's images do not depend on the number of workers.
    `wait_seconds` adds up the time the loop waited for data."""

    def __init__(self, data, workers: int, size: int, rng_for_draw: Callable[[int], random.Random], first: int,
                 pin_memory: bool = False):
        self.data, self.skipped, self.wait_seconds = data, data.skipped, 0.0
        loader = torch.utils.data.DataLoader(_PlannedBatches(data), sampler=_Plans(data, size, rng_for_draw, first),
                                             batch_size=None, num_workers=workers, prefetch_factor=2,
                                             pin_memory=pin_memory, persistent_workers=True)
        self._batches = iter(loader)

    def captions(self, size: int, rng: random.Random) -> list[str]:
        return self.data.captions(size, rng)

    def batch(self, size: int, rng: random.Random) -> tuple[torch.Tensor, list[str]]:
        import time

        plan = self.data.plan(size, rng)
        started = time.perf_counter()
        made, loaded = next(self._batches)
        self.wait_seconds += time.perf_counter() - started
        if tuple(map(tuple, made)) != tuple(map(tuple, plan)):
            raise RuntimeError("data loader: the prefetched batch is not the one the run asked for (the draws "
                               "went out of step)")
        return self.data.ready(loaded)


def prefetched(data, workers: int, size: int, rng_for_draw: Callable[[int], random.Random], first: int,
               pin_memory: bool = False):
    """`data` with its batches decoded ahead in `workers` processes where it can be (a source with `plan` and
    `load`, such as an imagefolder); as it is otherwise, or with no workers."""
    if workers <= 0 or not (hasattr(data, "plan") and hasattr(data, "load")):
        return data
    return Prefetched(data, workers, size, rng_for_draw, first, pin_memory)


class _PlannedSlice:
    """This process's part of each global batch (processes ranked `rank` of `world`), of a source with plans: the
    global batch is planned from the rng every process shares, and only this process's rows are loaded."""

    def __init__(self, data, rank: int, world: int):
        self.data, self.rank, self.world, self.skipped = data, rank, world, data.skipped

    def plan(self, size: int, rng: random.Random):
        return self.data.plan(size * self.world, rng)[self.rank * size:(self.rank + 1) * size]

    def load(self, plan):
        return self.data.load(plan)

    def ready(self, loaded):
        return self.data.ready(loaded)

    def batch(self, size: int, rng: random.Random):
        return self.ready(self.load(self.plan(size, rng)))

    def captions(self, size: int, rng: random.Random) -> list[str]:
        return self.data.captions(size, rng)


class _DrawnSlice:
    """This process's part of each global batch, of a source that only draws whole batches (the toy world's)."""

    def __init__(self, data, rank: int, world: int):
        self.data, self.rank, self.world, self.skipped = data, rank, world, data.skipped

    def batch(self, size: int, rng: random.Random):
        images, captions = self.data.batch(size * self.world, rng)
        mine = slice(self.rank * size, (self.rank + 1) * size)
        return images[mine], captions[mine]

    def captions(self, size: int, rng: random.Random) -> list[str]:
        return self.data.captions(size, rng)


def rank_slice(data, rank: int, world: int):
    """`data` as process `rank` of `world` reads it: its slice of the batch all processes draw together."""
    if world == 1:
        return data
    return (_PlannedSlice if hasattr(data, "plan") else _DrawnSlice)(data, rank, world)


DATA_SOURCES: dict[str, Callable] = {}


def register_data_source(name: str, factory: Callable) -> None:
    """Make `--data NAME` mean `factory(resolution)`."""
    DATA_SOURCES[name] = factory


def open_data(source: str, resolution: int):
    """A registered source by name, a feature cache (studio/kinds/features.py) or an imagefolder path; checked before
    any training."""
    from studio.kinds.features import CachedFeatures, is_cache

    if source in DATA_SOURCES:
        return DATA_SOURCES[source](resolution)
    if is_cache(source):
        return CachedFeatures(source)
    return ImageFolderData(source, resolution)


SYNTHETIC_BATCH = 8


def teacher_images(source, teacher, folder: Path, n: int, seed: int, steps: int, guidance: float,
                   callback=None) -> ImageFolderData:
    """`n` captions drawn from `source`, each drawn by `teacher` (a pipeline) into `folder` in the imagefolder
    layout; training then reads these instead of the source's own images. EdgeFusion (arXiv 2404.11925) found
    a teacher's own images the data that made consistency distillation of BK-SDM work. Images already in the
    folder are kept, so a resumed run draws only the rest."""
    from studio.progress import report

    folder.mkdir(parents=True, exist_ok=True)
    captions = source.captions(n, random.Random(seed))
    teacher.set_progress_bar_config(disable=True)
    for start in range(0, n, SYNTHETIC_BATCH):
        names = [f"{i:06d}.png" for i in range(start, min(n, start + SYNTHETIC_BATCH))]
        if all((folder / name).is_file() for name in names):
            continue
        generators = [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(len(names))]
        with torch.no_grad():
            images = teacher(captions[start:start + len(names)], num_inference_steps=steps, guidance_scale=guidance,
                             generator=generators).images
        for name, image in zip(names, images):
            image.save(folder / name)
        report(callback, "teacher images", start + len(names), n)
    rows = [json.dumps({"file_name": f"{i:06d}.png", "text": text}) for i, text in enumerate(captions)]
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return ImageFolderData(folder, teacher.unet.config.sample_size * teacher.vae_scale_factor)


def open_training_data(source: str, teacher, out: Path, synthetic: int = 0, seed: int = 0, steps: int = 25,
                       guidance: float = 7.5, callback=None, teacher_name: str | None = None):
    """The data a trainer reads: `source` itself, or (`synthetic` > 0) the teacher's images for that many of its
    captions, drawn once into OUT/synthetic. A feature cache must be `teacher_name`'s at its resolution."""
    resolution = teacher.unet.config.sample_size * teacher.vae_scale_factor
    data = open_data(source, resolution)
    if hasattr(data, "check_for"):
        data.check_for(teacher_name, resolution)
        if synthetic > 0:
            raise DataError(f"--data {source} is a feature cache, which has no images to replace by the teacher's; "
                            "draw the teacher's images first, then precompute a cache of them")
    if synthetic <= 0:
        return data
    if not hasattr(data, "captions"):
        raise DataError(f"--data {source}: this source gives no captions to draw teacher images for")
    return teacher_images(data, teacher, Path(out) / "synthetic", synthetic, seed, steps, guidance, callback)


def family_sampling(teacher: str) -> tuple[int, float]:
    """(steps, guidance) the teacher's family samples with (the paper's 25 and 7.5 for a folder)."""
    from studio.models.catalog import load_catalog

    catalog = load_catalog()
    if teacher not in catalog:
        return 25, 7.5
    family = catalog.family(catalog.get(teacher).family)
    return family.steps, family.guidance
