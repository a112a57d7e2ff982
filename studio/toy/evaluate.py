"""Prompt accuracy of toy models (by the procedural judge), on the fixed 90-prompt set."""

import itertools
import json
from pathlib import Path

from studio.catalog import Catalog, packaged_family
from studio.generation import sample
from studio.loading import load_pipeline
from studio.toy.data import COLORS, SHAPES, caption
from studio.toy.judge import judge_accuracy
from studio.training import derive_seed

# The toy family's sampling defaults live in the catalogue (studio/models.json): 25 PNDM steps and guidance 1.5.
# A small v-prediction model over-saturates at SD's 7.5; the value was chosen by judging seed 1, and figures are
# reported on seed 0.
FAMILY = packaged_family("toy")
DEFAULT_STEPS = FAMILY.steps
DEFAULT_GUIDANCE = FAMILY.guidance

# Every (shape, color, background) once: 3 x 6 x 5 = 90 prompts, in a fixed order.
PROMPT_SET = [
    (shape, color, background)
    for shape, color, background in itertools.product(SHAPES, COLORS, COLORS)
    if color != background
]


def prompt_set_images(pipeline, n: int = len(PROMPT_SET), steps: int = DEFAULT_STEPS,
                      guidance: float = DEFAULT_GUIDANCE, seed: int = 0) -> tuple[list, list]:
    """(targets, images) for the first n prompts of the set (cycling); image i is seeded with
    derive_seed(seed, i), as in `python -m studio evaluate`, so both judge the same images of a model."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    targets = [PROMPT_SET[i % len(PROMPT_SET)] for i in range(n)]
    images = sample(pipeline, [caption(*t) for t in targets], [derive_seed(seed, i) for i in range(n)], steps,
                    guidance)
    return targets, images


def judge_model(ref: str, n: int = len(PROMPT_SET), steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
                seed: int = 0, catalog: Catalog | None = None, pipeline=None) -> dict:
    """Generate n images for the fixed prompt set and score them with the judge.

    Returns accuracies in [0, 1] for "color", "shape", "background" and "all"
    (all three right), and "n".
    """
    pipeline = pipeline or load_pipeline(ref, catalog)
    targets, images = prompt_set_images(pipeline, n, steps, guidance, seed)
    return {**judge_accuracy(targets, images), "n": n, "steps": steps, "guidance": guidance, "seed": seed}


def write_table_and_rows(report: Path, lines: list[str], rows) -> None:
    """A toy report: the markdown `lines` at `report`, and `rows` as JSON beside it (same stem)."""
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    report.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
