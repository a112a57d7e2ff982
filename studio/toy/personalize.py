"""DreamBooth on the toy world: teach a model a color it has never seen, and check with the judge.

The subject is an orange circle ("sks" stands for its color) in 5 procedural
photos on a blue background. After personalization, "a sks circle on a blue
background" should draw it orange, while the class prompt "a circle on a blue
background" keeps drawing circles in the toy palette's colors (prior
preservation). `python -m studio toy dreambooth` runs it on the teacher and a
student, each in its own process (so peak memory is per run), and writes
docs/toy-dreambooth.md and .json.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from studio.catalog import PROJECT_ROOT
from studio.generation import sample
from studio.options import to_argv
from studio.personalization.config import DreamBoothConfig
from studio.toy.data import COLORS, SIZE, ShapeSample, render
from studio.toy.evaluate import write_table_and_rows
from studio.toy.judge import Palette, judge
from studio.training import derive_seed

SUBJECT_RGB = (250, 140, 20)
PALETTE_WITH_SUBJECT = Palette({**COLORS, "orange": SUBJECT_RGB})
IDENTIFIER = "sks"
INSTANCE_PROMPT = f"a {IDENTIFIER} circle on a blue background"
CLASS_PROMPT = "a circle on a blue background"


def subject_photos(folder: Path, n: int = 5, seed: int = 0) -> list[Path]:
    """n photos of the subject: an orange circle on blue, at different places and sizes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        size = float(rng.uniform(13, 20))
        margin = size / 2 + 1
        center = (float(rng.uniform(margin, SIZE - margin)), float(rng.uniform(margin, SIZE - margin)))
        image = render(ShapeSample("circle", "orange", "blue", center, size), {**COLORS, "orange": SUBJECT_RGB})
        path = folder / f"subject-{i}.png"
        image.save(path)
        paths.append(path)
    return paths


def judge_prompts(pipeline, n: int, guidance: float, steps: int = 25, seed: int = 1000) -> dict:
    """Share of orange (the subject's color) and of circles among n images, for each prompt."""
    report = {}
    for label, prompt in (("instance", INSTANCE_PROMPT), ("class", CLASS_PROMPT)):
        images = sample(pipeline, [prompt] * n, [derive_seed(seed, i) for i in range(n)], steps, guidance)
        verdicts = [judge(image, PALETTE_WITH_SUBJECT) for image in images]
        report[label] = {"orange": sum(v.color == "orange" for v in verdicts) / n,
                         "circle": sum(v.shape == "circle" for v in verdicts) / n}
    return report


def run_dreambooth_process(model: str, photos: Path, out: Path, steps: int, class_images: int, lr: float,
                           guidance: float) -> dict:
    """`python -m studio dreambooth` in a subprocess (its own peak memory); returns its card."""
    if not (out / "card.json").exists():
        config = DreamBoothConfig(
            model=model, photos=str(photos), instance_prompt=INSTANCE_PROMPT, class_prompt=CLASS_PROMPT,
            out=str(out), steps=steps, class_images=class_images, lr=lr, guidance=guidance,
            checkpoint_every=max(1, steps // 2), validation_prompts=(INSTANCE_PROMPT, CLASS_PROMPT),
            resume=(out / "metrics.csv").exists())
        subprocess.run([sys.executable, "-m", "studio", "dreambooth", *to_argv(config)], check=True, cwd=PROJECT_ROOT)
    return json.loads((out / "card.json").read_text())


def toy_dreambooth_report(models: list[str], work: Path, steps: int, class_images: int, lr: float, n: int,
                          report: Path) -> list[dict]:
    from studio.loading import load_pipeline
    from studio.personalization.dreambooth import load_personalized
    from studio.toy.evaluate import DEFAULT_GUIDANCE

    photos = subject_photos(work / "photos")[0].parent
    rows = []
    for model in models:
        before = judge_prompts(load_pipeline(model).to("cpu"), n, DEFAULT_GUIDANCE)
        card = run_dreambooth_process(model, photos, work / model, steps, class_images, lr, DEFAULT_GUIDANCE)
        after = judge_prompts(load_personalized(model, work / model), n, DEFAULT_GUIDANCE)
        rows.append({"model": model, "before": before, "after": after, "train_seconds": card["train_seconds"],
                     "peak_memory_mb": card["peak_memory_mb"], "memory_kind": card["memory_kind"],
                     "trainable_params": card["trainable_params"]})
    write_report(rows, steps, class_images, lr, n, report)
    return rows


def write_report(rows, steps, class_images, lr, n, report: Path) -> None:
    lines = [
        "# DreamBooth on the toy world",
        "",
        f"Subject: an orange circle (a color the toy world never saw), 5 procedural photos; instance prompt "
        f"\"{INSTANCE_PROMPT}\", class prompt \"{CLASS_PROMPT}\". LoRA (rank 16, alpha 27, to_q/to_v), {steps} "
        f"steps, lr {lr}, batch 1 + 1 class image, prior weight 1.0, {class_images} class images made by each "
        f"model. Judged on {n} images per prompt (seed 1000, 25 PNDM steps, toy guidance); \"orange\" is the "
        "judge's verdict with orange added to its palette. Produced by `python -m studio toy dreambooth`.",
        "",
        "| model | instance prompt: orange before | after | class prompt: orange before | after | "
        "class prompt: circles after | train time | peak memory |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        b, a = row["before"], row["after"]
        lines.append(f"| {row['model']} | {b['instance']['orange']:.0%} | {a['instance']['orange']:.0%} | "
                     f"{b['class']['orange']:.0%} | {a['class']['orange']:.0%} | {a['class']['circle']:.0%} | "
                     f"{row['train_seconds']:.0f} s | {row['peak_memory_mb']:.0f} MB ({row['memory_kind']}) |")
    write_table_and_rows(report, lines, rows)
    print("\n".join(lines))
