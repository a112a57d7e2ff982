"""The loader, memory and speed switches every U-Net training kind takes, once: a kind's config inherits them, so
its flags, the app's checks and a job's saved config carry them like its own fields."""

from dataclasses import dataclass

from studio.limits import OPTIMIZERS
from studio.options import option


@dataclass(kw_only=True)
class TrainingSwitches:
    data_workers: int = option(0, "processes that decode an imagefolder's batches ahead of the training loop (0: in "
                                  "the loop); the images are the same either way", label="data workers", min=0, max=32)
    image_column: str = option("image", "a datasets dataset's image column (an Image feature, bytes or a path)",
                               label="image column", max_length=200)
    caption_column: str = option("text", "a datasets dataset's caption column", label="caption column",
                                 max_length=200)
    streaming: bool = option(False, "read a datasets dataset as a stream (each process its part) rather than a "
                                    "memory-mapped table")
    gradient_checkpointing: bool = option(False, "recompute the training U-Net's block activations in the backward "
                                          "pass: less memory, more compute", label="gradient checkpointing")
    optimizer: str = option("adamw", "adamw, or adamw8bit (bitsandbytes, CUDA only: 8-bit moments, a quarter of "
                                     "AdamW's state memory)", choices=OPTIMIZERS)
    tf32: bool = option(False, "TF32 matmuls and convolutions on CUDA (Ampere and newer); no effect elsewhere")
