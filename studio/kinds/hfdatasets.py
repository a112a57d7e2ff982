"""A Hugging Face `datasets` dataset as training data.

`--data` is a folder written by `Dataset.save_to_disk`, parquet or arrow files (one file, a folder of them, or a
glob such as `laion/*.parquet`), or `hf:NAME` for a dataset on the hub (where the hub is reachable; command line and
local mode only). `--image-column` names the images (an Image feature, or bytes, or a path) and `--caption-column`
the captions.

As a memory-mapped table it is read at random like an imagefolder: each batch's rows and mirror flips are planned
from the trainer's rng, so loader workers, several processes and a resume read what one uninterrupted process
would. With `--streaming` it is read as a stream instead (for data larger than the disk): each process reads its
own part (datasets' `split_dataset_by_node`), the loader workers their shards of it, and a resumed run reads past
what its steps already took.
"""

import glob
import io
import random
from pathlib import Path

import torch
from PIL import Image

from studio.images import square, to_uint8_tensor, to_unit_range
from studio.kinds.data import DataError


def is_hf_dataset(source: str) -> bool:
    source = str(source)
    if source.startswith("hf:"):
        return True
    path = Path(source)
    if path.is_dir():
        return (path / "state.json").exists() or any(path.glob("*.parquet")) or any(path.glob("*.arrow"))
    return source.endswith((".parquet", ".arrow"))


def _load(source: str, streaming: bool):
    import datasets

    if source.startswith("hf:"):
        return datasets.load_dataset(source[3:], split="train", streaming=streaming)
    path = Path(source)
    if path.is_dir() and (path / "state.json").exists():
        table = datasets.load_from_disk(source)
        return table.to_iterable_dataset(num_shards=max(1, min(64, len(table)))) if streaming else table
    files = sorted(str(p) for p in path.glob("*.parquet")) or sorted(str(p) for p in path.glob("*.arrow")) \
        if path.is_dir() else sorted(glob.glob(source))
    if not files:
        raise DataError(f"--data {source}: no parquet or arrow files match")
    kind = "parquet" if files[0].endswith(".parquet") else "arrow"
    return datasets.load_dataset(kind, data_files=files, split="train", streaming=streaming)


def _pixels(value, resolution: int, flip: bool) -> torch.Tensor:
    """An image cell (a PIL image from an Image feature, {'bytes', 'path'}, bytes, or a path) as uint8 pixels."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        value = Image.open(io.BytesIO(value))
    elif isinstance(value, str):
        value = Image.open(value)
    with value as image:
        return to_uint8_tensor(square(image, resolution), flip=flip)


class HFDatasetData:
    """A memory-mapped dataset: plan, load and ready as the imagefolder's, so loader workers and processes read the
    same batches."""

    def __init__(self, source: str, resolution: int, image_column: str = "image", caption_column: str = "text"):
        self.source, self.resolution = source, resolution
        self.image_column, self.caption_column = image_column, caption_column
        self.table = _load(source, streaming=False)
        check_columns(source, self.table.column_names, image_column, caption_column)
        if len(self.table) == 0:
            raise DataError(f"--data {source}: the dataset has no rows")
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.table)

    def captions(self, size: int, rng: random.Random) -> list[str]:
        return [self.table[rng.randrange(len(self.table))][self.caption_column] for _ in range(size)]

    def plan(self, size: int, rng: random.Random) -> tuple[tuple[int, bool], ...]:
        rows = [rng.randrange(len(self.table)) for _ in range(size)]
        return tuple((row, rng.random() < 0.5) for row in rows)

    def load(self, plan):
        rows = self.table[[row for row, _ in plan]]  # one read of the planned rows, columns as lists
        images = [_pixels(value, self.resolution, flip) for value, (_, flip) in zip(rows[self.image_column], plan)]
        return torch.stack(images), [str(text) for text in rows[self.caption_column]]

    @staticmethod
    def ready(loaded):
        images, captions = loaded
        return to_unit_range(images), list(captions)

    def batch(self, size: int, rng: random.Random):
        return self.ready(self.load(self.plan(size, rng)))


def check_columns(source: str, columns, image_column: str, caption_column: str) -> None:
    for column, flag in ((image_column, "--image-column"), (caption_column, "--caption-column")):
        if columns is not None and column not in columns:
            raise DataError(f"--data {source}: the dataset has no column {column!r} ({flag}); its columns: "
                            f"{', '.join(columns)}")


class StreamedDataset:
    """A streamed dataset: each process reads its part, the next samples in order at every batch."""

    def __init__(self, source: str, resolution: int, image_column: str = "image", caption_column: str = "text",
                 rank: int = 0, world: int = 1):
        self.source, self.resolution, self.rank, self.world = source, resolution, rank, world
        self.image_column, self.caption_column = image_column, caption_column
        self.stream_table = _load(source, streaming=True)
        check_columns(source, self.stream_table.column_names, image_column, caption_column)
        self.skipped: list[str] = []
        self._samples, self._workers = None, 0

    def for_rank(self, rank: int, world: int) -> "StreamedDataset":
        from datasets.distributed import split_dataset_by_node

        mine = StreamedDataset.__new__(StreamedDataset)
        mine.__dict__.update({**self.__dict__, "rank": rank, "world": world, "_samples": None,
                              "stream_table": split_dataset_by_node(self.stream_table, rank, world)})
        return mine

    def start(self, workers: int, size: int, first_draw: int, pin_memory: bool = False) -> "StreamedDataset":
        resolution, image_column, caption_column = self.resolution, self.image_column, self.caption_column
        flips = random.Random(self.rank)

        def decode(row):
            return {"pixels": _pixels(row[image_column], resolution, flips.random() < 0.5),
                    "caption": str(row[caption_column])}

        table = self.stream_table.map(decode, remove_columns=self.stream_table.column_names)
        loader = torch.utils.data.DataLoader(table, batch_size=None, num_workers=workers, pin_memory=pin_memory)
        self._samples, self._workers = iter(loader), workers
        for _ in range(first_draw * size):  # resumed: the samples the steps before took
            next(self._samples)
        return self

    def batch(self, size: int, rng: random.Random | None = None):
        if self._samples is None:
            self.start(0, size, 0)
        taken = []
        for _ in range(size):
            try:
                taken.append(next(self._samples))
            except StopIteration:  # the end of a pass: the next one
                self.start(self._workers, size, 0)
                taken.append(next(self._samples))
        return (to_unit_range(torch.stack([s["pixels"] for s in taken])), [s["caption"] for s in taken])

    def captions(self, size: int, rng: random.Random) -> list[str]:
        from itertools import islice

        return [str(row[self.caption_column]) for row in islice(iter(self.stream_table), size)]
