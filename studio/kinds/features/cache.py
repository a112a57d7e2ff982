"""Cached features: a dataset's VAE latent distributions and caption embeddings, computed once by the teacher's own
encoders (`python -m studio precompute`), so distillation and consistency distillation train without running the
VAE encoder or the text encoder at every step (MosaicML's SD-2 training read precomputed latents 1.4x faster than it
computed them).

A cache is a folder: features.json (what made it: teacher, resolution, rows, shards), captions.jsonl, empty.safetensors
(the empty caption's embedding, for caption dropout) and shards features-NNNNN.safetensors of up to SHARD_ROWS rows,
each with the latent distribution's `mean` and `std` (and `mean_flipped`, `std_flipped` of the mirrored image), and
the text encoder's hidden states `context`. The distribution, not a sample of it, is kept: the trainer still draws
the latent sample with its own per-step randomness, so a run from the cache is the run from the images.

The cache keeps the imagefolder's usable rows in order and plans batches as the imagefolder does (a row and a mirror
flip per sample, from the same rng), so with the same seed the two give the same batches.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from studio.kinds.data import DataError, ImageFolderData, open_data, plan_rows
from studio.kinds.training import encode_latents, sample_latents, tokenize

FORMAT = "studio-features/1"
INDEX = "features.json"
SHARD_ROWS = 512
STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class CachedBatch:
    """A batch from a cache: the latent distributions (mean, std) and the caption embeddings."""

    mean: torch.Tensor
    std: torch.Tensor
    context: torch.Tensor


def teacher_key(teacher: str) -> str:
    """How a cache names its teacher: a catalogue name as it is, a folder by its absolute path."""
    path = Path(teacher)
    return str(path.resolve()) if path.exists() else teacher


def is_cache(source: str) -> bool:
    return (Path(source) / INDEX).is_file()


class CachedFeatures:
    """A cache as a training data source (plan, load, ready, batch), checked against the run's teacher."""

    def __init__(self, folder: "str | Path"):
        self.folder = Path(folder)
        try:
            self.index = json.loads((self.folder / INDEX).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(f"{self.folder / INDEX} can't be read ({error}); precompute the cache again") from None
        if self.index.get("format") != FORMAT:
            raise DataError(f"{self.folder} is a feature cache of format {self.index.get('format')!r}; this studio "
                            f"reads {FORMAT!r}; precompute it again")
        if not self.index.get("done"):
            raise DataError(f"{self.folder} is an unfinished feature cache; run the same precompute command again "
                            "to finish it (complete shards are kept)")
        self.rows, self.shard_rows = self.index["rows"], self.index["shard_rows"]
        self.skipped = self.index.get("skipped", [])
        self._open: dict[int, object] = {}  # shard number -> safe_open handle, per process

    def __getstate__(self):  # a loader worker opens the shards itself
        return {**self.__dict__, "_open": {}}

    def __len__(self) -> int:
        return self.rows

    def check_for(self, teacher: str, resolution: int) -> None:
        made = (self.index["teacher"], self.index["resolution"])
        if made != (teacher_key(teacher), resolution):
            raise DataError(f"--data {self.folder}: these features were cached by teacher {made[0]} at {made[1]} px; "
                            f"this run's teacher is {teacher_key(teacher)} at {resolution} px. Precompute a cache "
                            f"for it: python -m studio precompute --teacher {teacher} --data SOURCE --out FOLDER")

    def captions(self, size: int, rng: random.Random) -> list[str]:
        texts = (self.folder / "captions.jsonl").read_text().splitlines()
        return [json.loads(texts[rng.randrange(self.rows)]) for _ in range(size)]

    def plan(self, size: int, rng: random.Random) -> tuple[tuple[int, bool], ...]:
        """As the imagefolder plans (the flips kept only where the cache has them)."""
        return plan_rows(self.rows, size, rng, self.index["flips"])

    def _shard(self, number: int):
        if number not in self._open:
            self._open[number] = safe_open(self.folder / f"features-{number:05d}.safetensors", "pt")
        return self._open[number]

    def load(self, plan) -> CachedBatch:
        parts = {"mean": [], "std": [], "context": []}
        for row, flip in plan:
            shard, at = self._shard(row // self.shard_rows), row % self.shard_rows
            suffix = "_flipped" if flip else ""
            parts["mean"].append(shard.get_slice("mean" + suffix)[at:at + 1])
            parts["std"].append(shard.get_slice("std" + suffix)[at:at + 1])
            parts["context"].append(shard.get_slice("context")[at:at + 1])
        return CachedBatch(**{name: torch.cat(tensors).float() for name, tensors in parts.items()})

    def close(self) -> None:
        self._open.clear()  # the shards' handles

    @staticmethod
    def ready(loaded: CachedBatch) -> CachedBatch:
        return loaded

    def batch(self, size: int, rng: random.Random) -> CachedBatch:
        return self.load(self.plan(size, rng))

    def empty_context(self) -> torch.Tensor:
        return load_file(self.folder / "empty.safetensors")["context"].float()


def batch_inputs(batch, teacher, draws, device, dropout: float | None = None, empty_context=None):
    """(latents, caption embeddings) of a batch, images and captions or cached: the latent sample is drawn from
    `draws` either way. With `dropout` (a share), that many captions are replaced by the empty one; the draw for it
    comes after the latents' (None: no draw)."""
    if isinstance(batch, CachedBatch):
        latents = sample_latents(batch.mean.to(device), batch.std.to(device), draws, teacher.vae.config.scaling_factor)
        context = batch.context.to(device)
        if dropout is not None:
            context[draws.rand(len(context)) < dropout] = empty_context.to(device)
        return latents, context
    images, captions = batch
    latents = encode_latents(teacher.vae, images.to(device), draws)
    ids = tokenize(teacher.tokenizer, captions)
    if dropout is not None:
        ids[draws.rand(len(ids)) < dropout] = tokenize(teacher.tokenizer, [""])
    with torch.no_grad():
        return latents, teacher.text_encoder(ids.to(device))[0]


@torch.no_grad()
def precompute(teacher: str, data: str, out: Path, batch_size: int = 16, flips: bool = True, dtype: str = "fp32",
               callback=None) -> Path:
    """Cache `data`'s features by `teacher`'s VAE encoder and text encoder into `out`. Complete shards already in
    `out` (an interrupted run of the same cache) are kept."""
    from studio.models.loading import load_pipeline
    from studio.progress import report

    pipe = load_pipeline(teacher)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe.to(device)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    source = open_data(data, resolution)
    if not isinstance(source, ImageFolderData):
        raise DataError(f"--data {data}: a cache is made of an imagefolder (metadata.jsonl), a finite set of rows; "
                        "this source is not one")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = {"format": FORMAT, "teacher": teacher_key(teacher), "resolution": resolution, "rows": len(source),
             "shard_rows": SHARD_ROWS, "flips": flips, "dtype": dtype, "source": str(data),
             "skipped": source.skipped[:20], "scaling_factor": pipe.vae.config.scaling_factor}
    previous = out / INDEX
    if previous.is_file() and {k: v for k, v in json.loads(previous.read_text()).items() if k != "done"} != index:
        raise DataError(f"--out {out} holds another cache (other teacher, data or settings); choose another --out")
    previous.write_text(json.dumps(index, indent=2) + "\n")  # written first: a rerun knows what the shards are
    storage = STORAGE_DTYPES[dtype]

    def encode(rows, flip):
        """The latent distributions of `rows` and their captions (a row that can't be read gives way to the next,
        as in training)."""
        images, captions = source.ready(source.load([(row, flip) for row in rows]))
        distribution = pipe.vae.encode(images.to(device)).latent_dist
        return distribution.mean, distribution.std, captions

    for number, start in enumerate(range(0, len(source), SHARD_ROWS)):
        path = out / f"features-{number:05d}.safetensors"
        rows = list(range(start, min(start + SHARD_ROWS, len(source))))
        if not path.is_file():
            parts: dict[str, list] = {}
            for at in range(0, len(rows), batch_size):
                chunk = rows[at:at + batch_size]
                mean, std, captions = encode(chunk, False)
                tensors = {"mean": mean, "std": std}
                if flips:
                    tensors["mean_flipped"], tensors["std_flipped"], _ = encode(chunk, True)
                ids = tokenize(pipe.tokenizer, captions)
                tensors["context"] = pipe.text_encoder(ids.to(device))[0]
                for name, tensor in tensors.items():
                    parts.setdefault(name, []).append(tensor.to("cpu", storage))
                report(callback, "precompute", start + at + len(chunk), len(source))
            partial = path.with_suffix(".partial")
            save_file({name: torch.cat(tensors).contiguous() for name, tensors in parts.items()}, partial)
            partial.rename(path)
    captions = [json.dumps(text) for text in source.texts]
    (out / "captions.jsonl").write_text("\n".join(captions) + "\n")
    empty = pipe.text_encoder(tokenize(pipe.tokenizer, [""]).to(device))[0]
    save_file({"context": empty.to("cpu", storage).contiguous()}, out / "empty.safetensors")
    previous.write_text(json.dumps({**index, "done": True}, indent=2) + "\n")
    return out
