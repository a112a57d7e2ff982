"""The commands a background job can run, each named by its config dataclass.

A job stores its command and config as JSON; `job_argv` turns them back into
the `python -m studio COMMAND --flags` the runner starts (flags from
studio/options.py), so no argv is ever written by hand.
"""

import sys

from studio.distillation.config import DistillConfig
from studio.evaluation.config import EvalConfig
from studio.options import from_dict, to_argv
from studio.personalization.config import DreamBoothConfig

CONFIGS = {"distill": DistillConfig, "dreambooth": DreamBoothConfig, "evaluate": EvalConfig}


def config_from_json(command: str, data: dict):
    if command not in CONFIGS:
        raise ValueError(f"unknown command {command!r}; jobs run: {', '.join(CONFIGS)}")
    return from_dict(CONFIGS[command], data)


def job_argv(command: str, config) -> list[str]:
    return [sys.executable, "-m", "studio", command, *to_argv(config)]
