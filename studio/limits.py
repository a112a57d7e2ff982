"""Limits and choices defined once: generation, the app and every job kind import them.

No torch here, so a config dataclass (and the command line that builds flags
from it) can use them without loading diffusers.
"""

MAX_SAMPLING_STEPS = 100
MAX_GUIDANCE = 20.0
MAX_TRAINING_STEPS = 1_000_000  # optimizer steps of any training kind
MAX_SEED = 2**32 - 1  # torch.Generator seeds are 64-bit; the UI keeps to 32 like other SD tools
MAX_TRAINING_SEED = 2**31 - 1  # trainers mix it with steps (studio.kinds.training.derive_seed)
# DreamBooth uploads: photos per job and bytes per photo.
MAX_PHOTOS = 50
MAX_PHOTO_BYTES = 20 * 1024 * 1024
# Every image the studio takes (img2img, DreamBooth photos, dataset images), read from its header before any
# pixel is decoded: far above any camera's, far below a decompression bomb's (13000x13000 in 328 kB of PNG).
MAX_IMAGE_PIXELS = 40_000_000
# The samplers studio.inference.generation builds (its SCHEDULERS table must list exactly these).
SCHEDULER_NAMES = ("PNDM", "DDIM", "DPM-Solver++", "DPM++ 2M Karras", "UniPC", "Euler", "LCM")
# Experiment trackers a training run can report to beside metrics.csv (studio/kinds/trackers.py).
TRACKERS = ("tensorboard", "trackio", "wandb")
# A training kind's optimizer: AdamW, or bitsandbytes' 8-bit AdamW (CUDA only); its moments' bytes per parameter.
OPTIMIZERS = ("adamw", "adamw8bit")
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2}
