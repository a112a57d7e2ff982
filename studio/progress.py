"""One progress event for every long operation, k-diffusion style: `callback(event)`.

Generation, evaluation, compression, distillation and DreamBooth all call the
same `callback(Progress)`; the command line shows it as tqdm bars
(`TqdmProgress`), the app as `gr.Progress`.
"""

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Progress:
    task: str  # what is running: "generate", "evaluate", "compress", "distill", "dreambooth", ...
    done: int  # units finished (steps, images, tensors)
    total: int
    info: dict = field(default_factory=dict)  # e.g. {"model": ..., "loss": ...}
    preview: object = None  # generation: a rough PIL picture of the image so far, when asked for

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def describe(self) -> str:
        details = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.info.items())
        return f"{self.task} {self.done}/{self.total}" + (f" ({details})" if details else "")


Callback = Callable[[Progress], None]


def report(callback: Callback | None, task: str, done: int, total: int, preview=None, **info) -> None:
    if callback is not None:
        callback(Progress(task, done, total, info, preview))


class TqdmProgress:
    """A callback that keeps one tqdm bar per task (on stderr); use as a context manager to close them."""

    def __init__(self, unit: str = "step"):
        self.unit, self.bars = unit, {}

    def __call__(self, event: Progress) -> None:
        from tqdm import tqdm

        bar = self.bars.get(event.task)
        if bar is None:
            bar = self.bars[event.task] = tqdm(total=event.total, initial=0, desc=event.task, unit=self.unit)
        bar.total = event.total
        bar.update(event.done - bar.n)
        floats = {k: f"{v:.4g}" for k, v in event.info.items() if isinstance(v, float)}
        if floats:
            bar.set_postfix(floats, refresh=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for bar in self.bars.values():
            bar.close()
