"""Prompt accuracy of a toy model, as the procedural judge sees it."""

import itertools

import torch

from studio.catalog import Catalog
from studio.loading import load_pipeline
from studio.toy.data import COLORS, SHAPES, caption
from studio.toy.judge import judge

# Every (shape, color, background) once: 3 x 6 x 5 = 90 prompts, in a fixed order.
PROMPT_SET = [
    (shape, color, background)
    for shape, color, background in itertools.product(SHAPES, COLORS, COLORS)
    if color != background
]


def judge_model(ref: str, n: int = len(PROMPT_SET), steps: int = 25, guidance: float = 7.5, seed: int = 0,
                batch: int = 30, catalog: Catalog | None = None, pipeline=None) -> dict:
    """Generate n images for the fixed prompt set and score them with the judge.

    Returns accuracies in [0, 1] for "color", "shape", "background" and "all"
    (all three right), and "n".
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    pipeline = pipeline or load_pipeline(ref, catalog)
    pipeline.set_progress_bar_config(disable=True)
    targets = [PROMPT_SET[i % len(PROMPT_SET)] for i in range(n)]
    generator = torch.Generator().manual_seed(seed)
    hits = {"color": 0, "shape": 0, "background": 0, "all": 0}
    for start in range(0, n, batch):
        chunk = targets[start:start + batch]
        images = pipeline(
            [caption(*t) for t in chunk], num_inference_steps=steps, guidance_scale=guidance, generator=generator,
        ).images
        for (shape, color, background), image in zip(chunk, images):
            verdict = judge(image)
            right = {"shape": verdict.shape == shape, "color": verdict.color == color,
                     "background": verdict.background == background}
            for key, ok in right.items():
                hits[key] += ok
            hits["all"] += all(right.values())
    return {**{key: count / n for key, count in hits.items()}, "n": n, "steps": steps, "guidance": guidance, "seed": seed}
