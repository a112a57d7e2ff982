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
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from typing import Callable

import torch
from PIL import Image, UnidentifiedImageError

from studio.images import ImageTooLarge, check_pixels, square, to_uint8_tensor, to_unit_range

MAX_BAD_FRACTION = 0.1
SAMPLE_CHECKED = 64  # images opened at start-up; the rest are checked when a batch meets them
MAX_ROWS_PASSED_OVER = 100


class DataError(ValueError):
    """A data source that can't be trained on."""


def plan_rows(rows: int, size: int, rng: random.Random, flips: bool = True) -> tuple[tuple[int, bool], ...]:
    """Which of `rows` rows a batch holds and which are mirrored: all of `rng`'s draws for it, none of the decoding.
    Every random-access source plans with this, so a feature cache draws the batches of the images it was made of."""
    chosen = [rng.randrange(rows) for _ in range(size)]
    return tuple((row, rng.random() < 0.5 and flips) for row in chosen)


class ImageFolderData:
    """An imagefolder, checked lazily: start-up reads metadata.jsonl (JSON, captions, names inside the folder) and
    opens a sample of SAMPLE_CHECKED images; any other image that can't be read is skipped when a batch meets it
    (the next readable row takes its place, so the batch is the same in every run) and counted in `bad_met`. More
    than MAX_BAD_FRACTION bad rows, in the metadata, the sample or the rows met so far, stops the run with examples.
    Rows are kept as two lists of strings: about 0.2 kB a row in memory."""

    def __init__(self, folder: "str | Path", resolution: int):
        self.folder = Path(folder)
        self.resolution = resolution
        self.names, self.texts, self.skipped = self._read_metadata()
        self._check_sample()
        self.bad_met, self.rows_met = 0, 0

    def _read_metadata(self) -> tuple[list[str], list[str], list[str]]:
        metadata = self.folder / "metadata.jsonl"
        if not self.folder.is_dir():
            raise DataError(f"data folder {self.folder} does not exist")
        if not metadata.is_file():
            raise DataError(f"{self.folder} has no metadata.jsonl; expected one line per image with "
                            '{"file_name": ..., "text": ...} (the imagefolder layout)')
        names, texts, skipped, lines = [], [], [], 0
        with open(metadata, encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                lines += 1
                try:
                    row = json.loads(line)
                    name, text = row["file_name"], row["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    skipped.append(f"line {number}: not a JSON object with file_name and text")
                    continue
                parts = PurePosixPath(str(name)).parts
                if not parts or PurePosixPath(str(name)).is_absolute() or ".." in parts:
                    skipped.append(f"line {number}: {name!r} points outside the data folder")
                    continue
                if not isinstance(text, str) or not text.strip():
                    skipped.append(f"line {number}: empty caption")
                    continue
                names.append(str(name))
                texts.append(text)
        if not lines:
            raise DataError("metadata.jsonl is empty: no image-caption pairs to train on")
        if len(skipped) > MAX_BAD_FRACTION * lines or not names:
            raise DataError(f"{len(skipped)} of {lines} rows of metadata.jsonl are unusable, e.g. "
                            + "; ".join(skipped[:3]))
        return names, texts, skipped

    def _problem(self, row: int) -> str | None:
        """Why row `row`'s image can't be trained on, or None."""
        try:
            with Image.open(self.folder / self.names[row]) as image:
                check_pixels(image, self.names[row])
                image.verify()
        except ImageTooLarge as problem:  # first: it is a ValueError too
            return str(problem)
        except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError, ValueError):
            return f"{self.names[row]} is missing or not a readable image"
        return None

    def _check_sample(self) -> None:
        sample = sorted(random.Random(0).sample(range(len(self.names)), min(SAMPLE_CHECKED, len(self.names))))
        bad = [row for row in sample if self._problem(row) is not None]
        if len(bad) > MAX_BAD_FRACTION * len(sample):
            raise DataError(f"{len(bad)} of the {len(sample)} images checked are unusable, e.g. "
                            + "; ".join(self._problem(row) for row in bad[:3]))
        if bad:  # the few found are dropped now; the rest are met in training
            self.skipped += [self._problem(row) for row in bad]
            dropped = set(bad)
            keep = [row for row in range(len(self.names)) if row not in dropped]
            self.names, self.texts = [self.names[r] for r in keep], [self.texts[r] for r in keep]

    def __len__(self) -> int:
        return len(self.names)

    def captions(self, size: int, rng: random.Random) -> list[str]:
        return [self.texts[rng.randrange(len(self.texts))] for _ in range(size)]

    def plan(self, size: int, rng: random.Random) -> tuple[tuple[int, bool], ...]:
        return plan_rows(len(self.names), size, rng)

    def _decode(self, row: int, flip: bool) -> tuple[torch.Tensor, int, int]:
        """(pixels, the row decoded, bad rows passed over): a row that can't be read gives way to the next one."""
        for offset in range(min(len(self.names), MAX_ROWS_PASSED_OVER)):
            at = (row + offset) % len(self.names)
            try:
                with Image.open(self.folder / self.names[at]) as image:
                    check_pixels(image, self.names[at])
                    return to_uint8_tensor(square(image, self.resolution), flip=flip), at, offset
            except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError, ValueError,
                    ImageTooLarge):
                continue
        raise DataError(f"data: {MAX_ROWS_PASSED_OVER} rows in a row from {self.names[row]} on can't be read; is "
                        f"the folder {self.folder} still there?")

    def load(self, plan) -> tuple[torch.Tensor, list[str], int]:
        """Decode a planned batch: (uint8 images, captions, bad rows passed over), what crosses from a loader
        worker."""
        decoded = [self._decode(row, flip) for row, flip in plan]
        return (torch.stack([pixels for pixels, _, _ in decoded]), [self.texts[at] for _, at, _ in decoded],
                sum(bad for _, _, bad in decoded))

    def ready(self, loaded) -> tuple[torch.Tensor, list[str]]:
        """A loaded batch as the trainer takes it: images in the model's [-1, 1]. Counts the bad rows it passed
        over; the trainer checks the counts (of all its processes together) with check_bad_rows every step."""
        images, captions, bad = loaded
        self.bad_met, self.rows_met = self.bad_met + bad, self.rows_met + len(captions) + bad
        return to_unit_range(images), list(captions)

    def batch(self, size: int, rng: random.Random) -> tuple[torch.Tensor, list[str]]:
        return self.ready(self.load(self.plan(size, rng)))


def check_bad_rows(bad: int, met: int, folder) -> None:
    """Stop when more than MAX_BAD_FRACTION of the rows met (after a first sample's worth) could not be read."""
    if met >= SAMPLE_CHECKED and bad > MAX_BAD_FRACTION * met:
        raise DataError(f"data: {bad} of the {met} rows met so far could not be read (more than "
                        f"{MAX_BAD_FRACTION:.0%}); stopped. Check the images of {folder}")


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

    def close(self) -> None:
        self._batches = None  # the loader's iterator goes, and with it its worker processes

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


@contextmanager
def reading(data):
    """`data` for a run: its loader workers and open files are let go when the run ends, however it ends."""
    try:
        yield data
    finally:
        if hasattr(data, "close"):
            data.close()


def prefetched(data, workers: int, size: int, rng_for_draw: Callable[[int], random.Random], first: int,
               pin_memory: bool = False):
    """`data` with its batches decoded ahead in `workers` processes where it can be (a source with `plan` and
    `load`, such as an imagefolder); as it is otherwise, or with no workers."""
    if hasattr(data, "start"):  # a stream (shards): decoded by its own loader, begun where a resumed run was
        return data.start(workers, size, first, pin_memory)
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
    """`data` as process `rank` of `world` reads it: its slice of the batch all processes draw together, or for a
    stream (shards), its own shards."""
    if world == 1:
        return data
    if hasattr(data, "for_rank"):
        return data.for_rank(rank, world)
    return (_PlannedSlice if hasattr(data, "plan") else _DrawnSlice)(data, rank, world)


DATA_SOURCES: dict[str, Callable] = {}


def register_data_source(name: str, factory: Callable) -> None:
    """Make `--data NAME` mean `factory(resolution)`."""
    DATA_SOURCES[name] = factory


def open_data(source: str, resolution: int):
    """A registered source by name, or an imagefolder path; checked before any training."""
    if source in DATA_SOURCES:
        return DATA_SOURCES[source](resolution)
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


def family_sampling(teacher: str) -> tuple[int, float]:
    """(steps, guidance) the teacher's family samples with (the paper's 25 and 7.5 for a folder)."""
    from studio.models.catalog import load_catalog

    catalog = load_catalog()
    if teacher not in catalog:
        return 25, 7.5
    family = catalog.family(catalog.get(teacher).family)
    return family.steps, family.guidance
