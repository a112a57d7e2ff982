"""The data a trainer reads, from its `--data` string: a feature cache (studio/kinds/features/cache.py), webdataset
shards (studio/kinds/shards.py), a datasets dataset (studio/kinds/hfdatasets.py), a registered source or an
imagefolder (studio/kinds/data.py), or the teacher's own images for captions of one of them."""

from pathlib import Path

from studio.kinds.data import DATA_SOURCES, DataError, open_data, teacher_images
from studio.kinds.features.cache import CachedFeatures, is_cache
from studio.kinds.hfdatasets import HFDatasetData, StreamedDataset, is_hf_dataset
from studio.kinds.shards import ShardData, is_shards


def open_source(source: str, resolution: int, teacher_name: str | None = None, seed: int = 0,
                columns: tuple[str, str] = ("image", "text"), streaming: bool = False):
    """`--data` opened and checked, before any training: a feature cache must be `teacher_name`'s at `resolution`.
    A registered name, then a folder with metadata.jsonl (an imagefolder, as every upload is: whatever else its zip
    held, it is read as one), come before the other kinds."""
    if source in DATA_SOURCES or (Path(source) / "metadata.jsonl").is_file():
        return open_data(source, resolution)
    if is_cache(source):
        data = CachedFeatures(source)
        data.check_for(teacher_name, resolution)
        return data
    if is_shards(source):
        return ShardData(source, resolution, seed)
    if is_hf_dataset(source):
        if streaming:
            return StreamedDataset(source, resolution, *columns, seed=seed)
        return HFDatasetData(source, resolution, *columns)
    return open_data(source, resolution)


def open_training_data(source: str, teacher, out: Path, synthetic: int = 0, seed: int = 0, steps: int = 25,
                       guidance: float = 7.5, callback=None, teacher_name: str | None = None,
                       columns: tuple[str, str] = ("image", "text"), streaming: bool = False):
    """The data a trainer reads: `source` itself, or (`synthetic` > 0) the teacher's images for that many of its
    captions, drawn once into OUT/synthetic."""
    data = open_source(source, teacher.unet.config.sample_size * teacher.vae_scale_factor, teacher_name, seed, columns,
                       streaming)
    if synthetic <= 0:
        return data
    if isinstance(data, CachedFeatures):
        raise DataError(f"--data {source} is a feature cache, which has no images to replace by the teacher's; "
                        "draw the teacher's images first, then precompute a cache of them")
    if not hasattr(data, "captions"):
        raise DataError(f"--data {source}: this source gives no captions to draw teacher images for")
    return teacher_images(data, teacher, Path(out) / "synthetic", synthetic, seed, steps, guidance, callback)
