"""What `python -m studio precompute` takes: its flags and checks, from this dataclass (studio/options.py)."""

from dataclasses import dataclass

from studio.options import REQUIRED, check_fields, option


@dataclass
class PrecomputeConfig:
    teacher: str = option(REQUIRED, "the teacher whose VAE encoder and text encoder make the features: catalogue "
                                    "name or pipeline folder", max_length=1000)
    data: str = option(REQUIRED, "an imagefolder (metadata.jsonl)", max_length=1000)
    out: str = option(REQUIRED, "the cache's folder; run the same command again to finish an interrupted cache",
                      max_length=1000)
    batch_size: int = option(16, "images per encoder call", label="batch size", min=1, max=1024)
    flips: bool = option(True, "also cache each image mirrored (the trainers flip half the images)")
    dtype: str = option("fp32", "storage precision (fp16 halves the cache; fp32 trains exactly as from the images)",
                        choices=("fp32", "fp16", "bf16"))

    def check(self) -> None:
        check_fields(self)
