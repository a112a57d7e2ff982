"""Webdataset tar shards as training data, streamed with the `webdataset` library (what LAION's img2dataset writes).

`--data` is a folder of .tar shards, a brace pattern (`shards/{00000..00099}.tar`) or `pipe:` URLs (e.g.
`pipe:curl -s https://host/shards/{00000..00099}.tar`; command line and local mode only). Each sample is an image
(jpg, jpeg, png or webp) with its caption (txt).

Each process reads its own shards (shard i goes to process i mod P) and within a process each loader worker its
own (worker w of W: every W-th of them), so one pass over the shards reads every sample once; the stream then
starts its next pass (an endless stream for any number of steps). Mirroring is drawn per sample from an rng seeded
by (seed, process, worker, pass). A resumed run passes over the samples its steps already took without decoding
them, so it continues the stream where the run stopped (with the same number of workers; an image among them that
fails to decode would shift it by one).
"""

import io
import random
import tarfile
from itertools import islice
from pathlib import Path

import torch
from PIL import Image

from studio.images import check_pixels, square, to_uint8_tensor, to_unit_range
from studio.kinds.data import DataError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def is_shards(source: str) -> bool:
    source = str(source)
    if source.startswith("pipe:") or (source.endswith(".tar") and ("{" in source or Path(source).is_file())):
        return True
    folder = Path(source)
    return folder.is_dir() and not (folder / "metadata.jsonl").exists() and any(folder.glob("*.tar"))


def shard_urls(source: str) -> list[str]:
    import braceexpand

    urls = sorted(str(p) for p in Path(source).glob("*.tar")) if Path(source).is_dir() else \
        list(braceexpand.braceexpand(source))
    missing = [] if source.startswith("pipe:") else [url for url in urls if not Path(url).is_file()]
    if not urls or len(missing) == len(urls):
        raise DataError(f"--data {source}: the pattern matches no shard; give a folder of .tar files or a brace "
                        "pattern such as shards/{00000..00009}.tar")
    if missing:
        raise DataError(f"--data {source}: {len(missing)} of {len(urls)} shards are not files, e.g. {missing[0]}")
    return urls


def _check_shard(url: str) -> None:
    """The first shard opens as a tar with an image and a caption in its first sample."""
    try:
        with tarfile.open(url) as tar:
            names = [m.name for m in islice(tar, 8)]
    except (tarfile.TarError, OSError) as error:
        raise DataError(f"--data: shard {url} is not a readable tar file ({error})") from None
    extensions = {name.rsplit(".", 1)[-1].lower() for name in names if "." in name}
    if not extensions & set(IMAGE_KEYS) or "txt" not in extensions:
        raise DataError(f"--data: shard {url} holds {sorted(extensions) or 'nothing'}; each sample needs an image "
                        f"({', '.join(IMAGE_KEYS)}) and a caption (txt)")


class ShardData:
    """A shard stream as a training source: `batch(size, rng)` takes the next `size` samples of this process's
    stream (the rng is not used: the stream's order is fixed by its shards, seed, process and workers)."""

    def __init__(self, source: str, resolution: int, seed: int = 0, rank: int = 0, world: int = 1):
        self.source, self.resolution, self.seed, self.rank, self.world = source, resolution, seed, rank, world
        self.urls = shard_urls(source)
        if not source.startswith("pipe:"):
            _check_shard(self.urls[0])
        self.skipped: list[str] = []
        self._stream = None

    def for_rank(self, rank: int, world: int) -> "ShardData":
        mine = ShardData.__new__(ShardData)
        mine.__dict__.update({**self.__dict__, "rank": rank, "world": world, "_stream": None})
        if len(self.urls) < world:
            raise DataError(f"--data {self.source}: {len(self.urls)} shards for {world} processes; each process "
                            "needs at least one shard, so make more (smaller) shards")
        return mine

    def dataset(self, workers: int, skip: int = 0):
        """The webdataset pipeline of this process's shards: samples (uint8 image, caption), from sample `skip` of the
        stream on (the ones before are passed over undecoded)."""
        import webdataset as wds

        if len(self.urls) < self.world * max(workers, 1):
            raise DataError(f"--data {self.source}: {len(self.urls)} shards for {self.world} processes x "
                            f"{max(workers, 1)} loader workers; each needs at least one shard")
        rank, world, seed, resolution = self.rank, self.world, self.seed, self.resolution
        state = {"pass": 0, "skip": None}  # per loader worker (each has its own copy)

        def my_shards(urls):
            return islice(urls, rank, None, world)

        def usable(sample) -> str | None:
            return next((k for k in IMAGE_KEYS if k in sample), None) if "txt" in sample else None

        def samples(stream):
            info = torch.utils.data.get_worker_info()
            worker, workers_ = (info.id, info.num_workers) if info else (0, 1)
            if state["skip"] is None:  # the loader takes sample k of the stream from worker k mod W
                state["skip"] = max(0, (skip - worker + workers_ - 1) // workers_)
            flips = random.Random(((seed * 1_000_003 + rank) * 1_000_003 + worker) * 1_000_003 + state["pass"])
            state["pass"] += 1
            for sample in stream:
                image_key = usable(sample)
                if image_key is None:
                    continue
                if state["skip"] > 0:  # resumed: taken by the steps before (their mirror draw too)
                    state["skip"] -= 1
                    flips.random()
                    continue
                try:
                    with Image.open(io.BytesIO(sample[image_key])) as image:
                        check_pixels(image, sample.get("__key__", "a sample"))  # from the header: no bomb decoded
                        pixels = to_uint8_tensor(square(image, resolution), flip=flips.random() < 0.5)
                except (OSError, SyntaxError, Image.DecompressionBombError, ValueError):  # ImageTooLarge too
                    continue  # a damaged image: the next sample takes its place
                yield pixels, sample["txt"].decode("utf-8")

        return wds.WebDataset(self.urls, nodesplitter=my_shards, workersplitter=wds.split_by_worker,
                              shardshuffle=False, handler=wds.warn_and_continue).compose(samples).repeat()

    def stream(self, workers: int, first_sample: int = 0, pin_memory: bool = False):
        """An iterator over this process's samples from sample `first_sample` on, decoded by `workers` processes."""
        loader = torch.utils.data.DataLoader(self.dataset(workers, first_sample), batch_size=None,
                                             num_workers=workers, pin_memory=pin_memory,
                                             persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
        return iter(loader)

    def start(self, workers: int, size: int, first_draw: int, pin_memory: bool = False) -> "ShardData":
        """Begin the stream at draw `first_draw` of `size` samples (a resumed run), decoded by `workers`."""
        self._stream = self.stream(workers, first_draw * size, pin_memory)
        return self

    def close(self) -> None:
        self._stream = None  # the loader's iterator goes, and with it its workers and open shards

    def batch(self, size: int, rng: random.Random | None = None):
        if self._stream is None:
            self._stream = self.stream(0)
        try:
            taken = [next(self._stream) for _ in range(size)]
        except StopIteration:
            raise DataError(f"--data {self.source}: the shards gave no usable sample (each needs an image and a txt "
                            "caption that can be read)") from None
        return to_unit_range(torch.stack([pixels for pixels, _ in taken])), [caption for _, caption in taken]

    def captions(self, size: int, rng: random.Random) -> list[str]:
        """Captions of the stream's first samples (for --synthetic: the teacher draws them)."""
        stream = self.stream(0)
        return [caption for _, caption in islice(stream, size)]


def make_shards(source: str, out: Path, resolution: int, per_shard: int = 1000, url_column: str = "url",
                caption_column: str = "caption", processes: int = 1, threads: int = 16, callback=None) -> dict:
    """Webdataset shards of `source` in `out` (NNNNN.tar, each sample jpg + txt), images resized (shorter side) and
    center-cropped to `resolution`: an imagefolder or its zip, written here; a CSV or parquet of URLs and captions,
    downloaded by img2dataset. Returns the counts: {"written", "failed", "shards"}."""
    out = Path(out)
    if out.exists() and any(out.glob("*.tar")):
        raise DataError(f"--out {out} already holds shards; choose an empty folder")
    if str(source).endswith((".csv", ".parquet")):
        return _download_shards(source, out, resolution, per_shard, url_column, caption_column, processes, threads)
    return _imagefolder_shards(source, out, resolution, per_shard, callback)


def _imagefolder_shards(source: str, out: Path, resolution: int, per_shard: int, callback=None) -> dict:
    import tempfile
    import zipfile

    import webdataset as wds

    from studio.kinds.data import ImageFolderData
    from studio.progress import report

    with tempfile.TemporaryDirectory(prefix="shards-") as unpacked:
        if str(source).endswith(".zip"):
            with zipfile.ZipFile(source) as archive:
                archive.extractall(unpacked)  # the operator's own file: the command line, not an upload
            candidates = [Path(unpacked)] + [p for p in Path(unpacked).iterdir() if p.is_dir()]
            source = next((str(p) for p in candidates if (p / "metadata.jsonl").is_file()), unpacked)
        data = ImageFolderData(source, resolution)
        out.mkdir(parents=True, exist_ok=True)
        written = failed = 0
        with wds.ShardWriter(str(out / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
            for row in range(len(data)):
                try:
                    with Image.open(data.folder / data.names[row]) as image:
                        picture = square(image.convert("RGB"), resolution)
                except (OSError, SyntaxError, Image.DecompressionBombError, ValueError):
                    failed += 1
                    continue
                sink.write({"__key__": f"{row:09d}", "jpg": picture, "txt": data.texts[row]})
                written += 1
                report(callback, "shards", row + 1, len(data))
    return {"written": written, "failed": failed + len(data.skipped), "shards": len(list(out.glob("*.tar")))}


def _download_shards(source: str, out: Path, resolution: int, per_shard: int, url_column: str, caption_column: str,
                     processes: int, threads: int) -> dict:
    import json

    import img2dataset

    columns = _table_columns(source)
    for column, flag in ((url_column, "--url-column"), (caption_column, "--caption-column")):
        if column not in columns:
            raise DataError(f"--source {source}: no column {column!r} ({flag}); its columns: {', '.join(columns)}")
    img2dataset.download(url_list=str(source), input_format="csv" if str(source).endswith(".csv") else "parquet",
                         url_col=url_column, caption_col=caption_column, output_folder=str(out),
                         output_format="webdataset", image_size=resolution, resize_mode="center_crop",
                         number_sample_per_shard=per_shard, processes_count=processes, thread_count=threads,
                         encode_format="jpg", timeout=10, retries=0, enable_wandb=False)
    stats = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    written = sum(s.get("successes", 0) for s in stats)
    return {"written": written, "failed": sum(s.get("count", 0) for s in stats) - written,
            "shards": len(list(out.glob("*.tar"))),
            "failures": {k: v for s in stats for k, v in s.get("status_dict", {}).items() if k != "success"}}


def _table_columns(source: str) -> list[str]:
    if str(source).endswith(".csv"):
        import csv

        with open(source, newline="") as file:
            return next(csv.reader(file), [])
    import pyarrow.parquet

    return pyarrow.parquet.read_schema(source).names
