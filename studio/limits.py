"""Limits and choices defined once: generation, the app and every job kind import them.

No torch here, so a config dataclass (and the command line that builds flags
from it) can use them without loading diffusers.
"""

MAX_SAMPLING_STEPS = 100
MAX_GUIDANCE = 20.0
MAX_TRAINING_STEPS = 1_000_000  # optimizer steps of any training kind
MAX_SEED = 2**32 - 1  # torch.Generator seeds are 64-bit; the UI keeps to 32 like other SD tools
MAX_TRAINING_SEED = 2**31 - 1  # trainers mix it with steps (studio.training.derive_seed)
# DreamBooth uploads: photos per job and bytes per photo.
MAX_PHOTOS = 50
MAX_PHOTO_BYTES = 20 * 1024 * 1024
# The samplers studio.generation builds (its SCHEDULERS table must list exactly these).
SCHEDULER_NAMES = ("PNDM", "DDIM", "DPM-Solver++", "DPM++ 2M Karras", "UniPC", "Euler", "LCM")
# Experiment trackers a training run can report to beside metrics.csv (studio/trackers.py).
TRACKERS = ("tensorboard", "trackio", "wandb")
