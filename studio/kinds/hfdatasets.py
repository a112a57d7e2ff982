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
import zlib
from pathlib import Path

import torch
from PIL import Image

from studio.images import ImageTooLarge, check_pixels, square, to_uint8_tensor, to_unit_range
from studio.kinds.data import DataError, plan_rows


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
        check_pixels(image, "image")
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
        return plan_rows(len(self.table), size, rng)

    def load(self, plan):
        rows = self.table[[row for row, _ in plan]]  # one read of the planned rows, columns as lists
        images = []
        for value, (row, flip) in zip(rows[self.image_column], plan):
            try:
                images.append(_pixels(value, self.resolution, flip))
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, ImageTooLarge) as error:
                raise DataError(f"--data {self.source}: row {row}'s image can't be used ({error})") from None
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
                 rank: int = 0, world: int = 1, seed: int = 0):
        self.source, self.resolution, self.rank, self.world, self.seed = source, resolution, rank, world, seed
        self.image_column, self.caption_column = image_column, caption_column
        self.stream_table = _load(source, streaming=True)
        check_columns(source, self.stream_table.column_names, image_column, caption_column)
        self.skipped: list[str] = []
        self._samples, self._workers, self._pin, self._pass, self._fresh = None, 0, False, 0, False

    def for_rank(self, rank: int, world: int) -> "StreamedDataset":
        from datasets.distributed import split_dataset_by_node

        mine = StreamedDataset.__new__(StreamedDataset)
        mine.__dict__.update({**self.__dict__, "rank": rank, "world": world, "_samples": None,
                              "stream_table": split_dataset_by_node(self.stream_table, rank, world)})
        return mine

    def _open_pass(self, skip: int = 0):
        """An iterator over one pass of this process's part, from row `skip` of it on, decoded by the loader's
        workers. Each image's mirror flip is a hash of (seed, process, pass, caption): the same however many workers
        decode it and whether the run was resumed."""
        resolution, image_column, caption_column = self.resolution, self.image_column, self.caption_column
        salt = f"{self.seed}/{self.rank}/{self._pass}/"

        def decode(row):
            caption = str(row[caption_column])
            flip = zlib.crc32((salt + caption).encode()) & 1 == 1
            return {"pixels": _pixels(row[image_column], resolution, flip), "caption": caption}

        table = self.stream_table.skip(skip) if skip else self.stream_table
        table = table.map(decode, remove_columns=self.stream_table.column_names)
        return iter(torch.utils.data.DataLoader(table, batch_size=None, num_workers=self._workers,
                                                pin_memory=self._pin))

    def start(self, workers: int, size: int, first_draw: int, pin_memory: bool = False) -> "StreamedDataset":
        """Begin at draw `first_draw` of `size` samples (a resumed run): the rows before are counted by caption only
        (no image is decoded) to find the pass and the row in it."""
        self._workers, self._pin, self._pass = workers, pin_memory, 0
        taken = first_draw * size
        if taken:
            captions = self.stream_table.select_columns([self.caption_column]).take(taken + 1)
            length = sum(1 for _ in captions)
            if length <= taken:
                self._pass, taken = divmod(taken, length)
        self._samples = self._open_pass(taken)
        return self

    def close(self) -> None:
        self._samples = None  # the loader's iterator goes, and with it its workers

    def batch(self, size: int, rng: random.Random | None = None):
        if self._samples is None:
            self.start(0, size, 0)
        taken = []
        while len(taken) < size:
            try:
                taken.append(next(self._samples))
                self._fresh = False
            except StopIteration:  # the end of a pass: the next one
                if self._fresh:
                    raise DataError(f"--data {self.source}: a whole pass of the dataset gave no rows") from None
                self._pass, self._fresh = self._pass + 1, True
                self._samples = self._open_pass()
        return to_unit_range(torch.stack([s["pixels"] for s in taken])), [s["caption"] for s in taken]

    def captions(self, size: int, rng: random.Random) -> list[str]:
        from itertools import islice

        return [str(row[self.caption_column]) for row in islice(iter(self.stream_table), size)]
