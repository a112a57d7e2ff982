"""`python -m studio precompute` and `python -m studio data shards`: preparing training data at scale. Building
the parsers imports no torch (the dataclasses below and features/config.py are plain)."""

from dataclasses import dataclass
from pathlib import Path

from studio.kinds.features.config import PrecomputeConfig
from studio.options import REQUIRED, add_arguments, check_fields, from_args, option


@dataclass
class ShardsConfig:
    source: str = option(REQUIRED, "an imagefolder (metadata.jsonl) or its zip; or a CSV or parquet of URLs and "
                                   "captions, downloaded by img2dataset", max_length=1000)
    out: str = option(REQUIRED, "an empty folder for the shards (NNNNN.tar)", max_length=1000)
    resolution: int = option(512, "the training resolution: images are resized and center-cropped to it",
                             min=8, max=4096)
    per_shard: int = option(1000, "samples per shard", label="samples per shard", min=1, max=1_000_000)
    url_column: str = option("url", "the URL list's URL column", label="URL column", max_length=200)
    caption_column: str = option("caption", "the URL list's caption column", label="caption column", max_length=200)
    processes: int = option(1, "img2dataset's download processes", min=1, max=256)
    threads: int = option(16, "img2dataset's download threads per process", min=1, max=1024)

    def check(self) -> None:
        check_fields(self)


def cmd_precompute(args) -> None:
    from studio.kinds.features.cache import precompute
    from studio.progress import TqdmProgress

    config = from_args(PrecomputeConfig, args)
    with TqdmProgress(unit="image") as progress:
        out = precompute(config.teacher, config.data, Path(config.out), config.batch_size, config.flips, config.dtype,
                         progress)
    print(f"features of {config.data} in {out}; train on them with --data {out}")


def cmd_shards(args) -> None:
    from studio.kinds.shards import make_shards
    from studio.progress import TqdmProgress

    config = from_args(ShardsConfig, args)
    with TqdmProgress(unit="image") as progress:
        counts = make_shards(config.source, Path(config.out), config.resolution, config.per_shard, config.url_column,
                             config.caption_column, config.processes, config.threads, progress)
    print(f"{counts['written']} samples in {counts['shards']} shards in {config.out}; {counts['failed']} could not "
          f"be used{': ' + str(counts['failures']) if counts.get('failures') else ''}; train with --data {config.out}")


def add_data_commands(commands) -> None:
    precompute = commands.add_parser("precompute", help="cache a dataset's latents and caption embeddings by a "
                                     "teacher's encoders, for distill and consistency --data")
    add_arguments(precompute, PrecomputeConfig)
    precompute.set_defaults(run=cmd_precompute)
    data = commands.add_parser("data", help="prepare training data: webdataset shards")
    actions = data.add_subparsers(dest="data_command", required=True)
    shards = actions.add_parser("shards", help="an imagefolder, a zip or a URL list (img2dataset) into webdataset "
                                "shards at the training resolution")
    add_arguments(shards, ShardsConfig)
    shards.set_defaults(run=cmd_shards)
