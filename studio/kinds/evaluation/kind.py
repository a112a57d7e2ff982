"""Evaluation as a job kind (studio/kinds/base.py): the paper's protocol on chosen models, a results table and plot."""

from studio.kinds.base import JobKind
from studio.kinds.evaluation.config import EvalConfig


def run(config: EvalConfig, callback=None) -> str:
    from pathlib import Path

    from studio.kinds.evaluation.protocol import evaluate

    rows = evaluate(config, callback=callback)
    out = Path(config.out)
    return f"{(out / 'results.md').read_text()}\n{len(rows)} models; results in {out / 'results.csv'}"


def estimate_bytes(config: EvalConfig, catalog) -> dict[str, int]:
    """Every image (as raw RGB; PNG only shrinks it) and a megabyte of tables and logs."""
    from studio.budget import image_bytes
    from studio.models.catalog import read_configs
    from studio.models.profiling import input_geometry

    resolution = config.resolution or max(input_geometry(read_configs(m, catalog)).resolution for m in config.models)
    return {"images": config.n * len(config.models) * image_bytes(resolution), "logs": 1024 * 1024}


KIND = JobKind(
    name="evaluate", config=EvalConfig, run=run, estimate_bytes=estimate_bytes, result="table",
    help="CLIP score, FID, IS, fidelity and judge accuracy of models",
    unit="image", total=lambda config: config.n * len(config.models),
    describe=lambda config: f"evaluate {', '.join(config.models)} on {config.n} prompts",
    caps={"n": "max_eval_images"},
)
