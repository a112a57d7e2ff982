"""Experiment trackers beside metrics.csv (`--report-to tensorboard,trackio,wandb`), through accelerate's trackers.

metrics.csv stays the studio's own record (the app's live plot reads it); a
tracker gets the same rows (loss terms, learning rate), the steps per second
between rows, the run's config once, and every validation image. TensorBoard
and trackio write into the run's folder (`trackers/`), offline; wandb logs as
its own settings say (WANDB_MODE=offline keeps it local).
"""

import importlib.util
import os
from dataclasses import asdict
from pathlib import Path

from studio.limits import TRACKERS

PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}


def check_trackers(names) -> None:
    """Refuse an unknown tracker or one whose package is missing, before a run loads anything."""
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"--report-to: {', '.join(unknown)} is not a tracker; choose from {', '.join(TRACKERS)}")
    missing = [n for n in names if importlib.util.find_spec(PACKAGES[n]) is None]
    if missing:
        raise ValueError(f"--report-to {','.join(missing)}: the package is not installed; "
                         f"pip install {' '.join(PACKAGES[n] for n in missing)}")


class Trackers:
    """The trackers a run reports to; with none chosen, every method does nothing."""

    def __init__(self, names, out: Path, kind: str, config):
        self.trackers, self.last = [], None
        check_trackers(names)
        if not names:
            return
        from accelerate.tracking import TensorBoardTracker, TrackioTracker, WandBTracker

        folder = Path(out) / "trackers"
        os.environ.setdefault("TRACKIO_DIR", str(folder / "trackio"))  # read when trackio is first imported
        run = Path(out).name
        made = {"tensorboard": lambda: TensorBoardTracker(kind, folder / "tensorboard"),
                "trackio": lambda: TrackioTracker(kind, name=run, auto_log_cpu=False, auto_log_gpu=False),
                "wandb": lambda: WandBTracker(kind, name=run, dir=str(folder))}
        values = {k: v if isinstance(v, (bool, int, float, str)) or v is None else str(v)
                  for k, v in asdict(config).items()}
        for name in dict.fromkeys(names):
            tracker = made[name]()
            tracker.start()
            tracker.store_init_configuration(values)
            self.trackers.append(tracker)

    def log(self, row: dict) -> None:
        """One metrics.csv row (step, loss terms, lr, seconds), with the steps per second since the last row."""
        if not self.trackers:
            return
        step = int(row["step"])
        values = {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self.last is not None and row["seconds"] > self.last[1]:
            values["steps_per_second"] = (step - self.last[0]) / (row["seconds"] - self.last[1])
        self.last = (step, row["seconds"])
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def image(self, tag: str, image, step: int) -> None:
        """A validation image (PIL) at `step`."""
        import numpy as np

        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({tag: np.asarray(image.convert("RGB"))[None]}, step=step, dataformats="NHWC")
            elif tracker.name == "trackio":
                import trackio

                tracker.log({tag: trackio.Image(image)}, step=step)
            else:
                tracker.log_images({tag: [image]}, step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
