"""What an evaluation run is: every option, its help text and its checks, in one place (see studio/options.py).

Defaults follow the paper: 25 PNDM steps, guidance 7.5, images downsampled to
256x256 for the metrics; a model family's catalogue defaults (the toy world's
guidance and prompt set) fill what is left unset.
"""

from dataclasses import dataclass

from studio.limits import MAX_GUIDANCE, MAX_SAMPLING_STEPS, MAX_TRAINING_SEED, SCHEDULER_NAMES
from studio.options import REQUIRED, check_fields, option

MAX_IMAGES = 30_000


@dataclass
class EvalConfig:
    models: list[str] = option(REQUIRED, "catalogue names, comma-separated (e.g. toy-teacher,toy-bk-tiny)",
                               max_length=200)
    out: str = option(REQUIRED, "the run's folder: images, results.csv, results.md, quality_vs_speed.png",
                      max_length=1000)
    prompts: str | None = option(None, "BK-SDM metadata.csv or one prompt per line (default: the family's prompt "
                                       "set, e.g. assets/toy/prompts.txt)", max_length=1000)
    n: int = option(90, "images per model (prompts cycle if fewer)", label="images per model", min=1, max=MAX_IMAGES)
    steps: int = option(25, "sampling steps", min=1, max=MAX_SAMPLING_STEPS)
    scheduler: str = option("PNDM", "sampler", choices=SCHEDULER_NAMES)
    guidance: float | None = option(None, "default: the family's (7.5, the paper's; 1.5 for toy models)",
                                    min=0, max=MAX_GUIDANCE)
    seed: int = option(0, "image i is seeded with derive_seed(seed, i)", min=0, max=MAX_TRAINING_SEED)
    resolution: int | None = option(None, "default: each model's native size", min=8, max=4096)
    metric_size: int = option(256, "images are downsampled to this for the metrics", min=8, max=4096)
    clip_model: str = option("ViT-g-14", "open_clip architecture", max_length=200)
    clip_pretrained: str | None = option("laion2b_s34b_b88k", "open_clip pretrained tag (from the HF cache)",
                                         max_length=200)
    clip_weights: str | None = option(None, "a local .safetensors file for the CLIP model", max_length=1000)
    inception_weights: str | None = option(None, "torch-fidelity's InceptionV3 weights as .safetensors (FID, IS)",
                                           max_length=1000)
    real: str | None = option(None, "a folder of real images, for FID", max_length=1000)
    device: str = option("cpu", "cpu, cuda, cuda:1, mps", max_length=20)

    def check(self) -> None:
        check_fields(self)
        if not self.models:
            raise ValueError("no models given; --models takes catalogue names separated by commas")
