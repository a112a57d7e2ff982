"""Job kinds: what the studio can run as a background job, each declared once, in its own package.

Like peft's one folder and config per method: a kind's package (studio/kinds/distillation,
studio/kinds/personalization, studio/kinds/evaluation, ...) holds its config dataclass (the one
source of its flags, limits, choices and defaults, studio/options.py) and a
`kind.py` with a `KIND = JobKind(...)`. The registry (studio/kinds/registry.py) lists
the kinds; the command line, the job store and launcher, the budget and the app
loop over it and name no kind themselves.

    KIND = JobKind(name="distill", config=DistillConfig, run=run, help="...", estimate_bytes=estimate_bytes,
                   result="student", unit="step", total=lambda c: c.steps, describe=describe,
                   caps={"steps": "max_steps", "batch_size": "max_batch_size"}, student=lambda c: (c["teacher"], c["arch"]))
"""

from dataclasses import dataclass, field, fields, replace
from typing import Callable

RESULTS = ("student", "adapter", "table")  # a U-Net the catalogue can load; LoRA or finetuned weights; a results table


@dataclass(frozen=True)
class JobKind:
    name: str  # the command (python -m studio NAME) and job.json's "kind"
    config: type  # its config dataclass
    run: Callable  # run(config, callback) -> a line saying where the result is; imports the trainer when called
    help: str
    estimate_bytes: Callable  # estimate_bytes(config, catalog) -> {part: bytes}, an upper bound of what it writes
    result: str  # one of RESULTS
    total: Callable  # total(config) -> how many `unit`s the run counts to (its progress bar)
    describe: Callable  # describe(config) -> the job's name in lists
    unit: str = "step"  # what the progress counts: optimizer steps, or images
    caps: dict = field(default_factory=dict)  # config field -> the JobLimits attribute that caps it on a host
    student: Callable | None = None  # student(stored config JSON) -> (teacher, arch), for kinds that make a student
    checkpoints: int = 4  # a background job checkpoints at least this often over its run ...
    log_rows: int = 20  # ... and writes at least this many metrics rows
    # estimate_memory(config, catalog) -> {part: bytes}, its peak memory (budget.training_memory); None: not checked
    estimate_memory: Callable | None = None

    def __post_init__(self):
        if self.result not in RESULTS:
            raise ValueError(f"job kind {self.name}: result must be one of {', '.join(RESULTS)}, got {self.result!r}")
        if (self.result == "student") != (self.student is not None):
            raise ValueError(f"job kind {self.name}: a kind whose result is a student says whose (student=...)")

    def for_job(self, config):
        """`config` with a background job's intervals: fields left at their default checkpoint and log at least
        `checkpoints` and `log_rows` times over the run (a 40-step job in the app checkpoints every 10 steps)."""
        defaults = {f.name: f.default for f in fields(config)}
        steps = getattr(config, "steps", None)
        changes = {}
        for name, times in (("checkpoint_every", self.checkpoints), ("log_every", self.log_rows)):
            if steps is not None and name in defaults and getattr(config, name) == defaults[name]:
                changes[name] = max(1, min(defaults[name], steps // times))
        return replace(config, **changes)
