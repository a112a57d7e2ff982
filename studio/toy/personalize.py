"""DreamBooth on the toy world: teach a model a subject it has never drawn, and check with the judge.

The subject is a red circle in 5 procedural photos on a black background. Red
circles are one of the held-out color-shape pairs (studio/toy/data.py): no
training scene has one, so the teacher never drew one, and its circles come in
the other seven colors. After personalization, "a sks circle on a black
background" should draw the circle red, while the class prompt "a circle on a
black background" keeps drawing circles in the other colors (prior
preservation). `python -m studio toy dreambooth` runs it on the teacher and a
student, each in its own process (so peak memory is per run), and writes
docs/toy-dreambooth.md and .json.

The subject used to be a white circle, a color the toy world only ever uses as a
background. Its identifier was never learned (0% white after training), and the
trainer was not at fault: the toy VAE cannot hold a white object. All five white
photos, encoded and decoded, read as pink or red circles (max R/G/B about
255/100/170), so the U-Net learned just what the VAE showed it, and drew pink.
"""

import json
import subprocess
from dataclasses import fields
import sys
from pathlib import Path

import numpy as np

from studio.inference.generation import sample
from studio.kinds.evaluation.sweep import write_table
from studio.kinds.personalization.config import DreamBoothConfig
from studio.kinds.training import derive_seed
from studio.models.catalog import PROJECT_ROOT
from studio.options import to_argv
from studio.toy.judge import read_scene
from studio.toy.scenes import OBJECT_SIZES, Scene, Thing, place, render

SUBJECT = "red"
IDENTIFIER = "sks"
INSTANCE_PROMPT = f"a {IDENTIFIER} circle on a black background"
CLASS_PROMPT = "a circle on a black background"


def subject_photos(folder: Path, n: int = 5, seed: int = 0) -> list[Path]:
    """n photos of the subject: a red circle on black, at different places and of both sizes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        size = OBJECT_SIZES[i % len(OBJECT_SIZES)]
        scene = Scene("black", (Thing("circle", SUBJECT, place([size], rng)[0], size),))
        path = folder / f"subject-{i}.png"
        render(scene).save(path)
        paths.append(path)
    return paths


def judge_prompts(pipeline, n: int, guidance: float, steps: int = 25, seed: int = 1000) -> dict:
    """Share of images whose largest object is the subject's color, and of images with a circle, for each
    prompt."""
    report = {}
    for label, prompt in (("instance", INSTANCE_PROMPT), ("class", CLASS_PROMPT)):
        images = sample(pipeline, [prompt] * n, [derive_seed(seed, i) for i in range(n)], steps, guidance)
        readings = [read_scene(image) for image in images]
        report[label] = {SUBJECT: sum(bool(r.objects) and r.objects[0].color == SUBJECT for r in readings) / n,
                         "circle": sum(any(o.shape == "circle" for o in r.objects) for r in readings) / n}
    return report


def run_dreambooth_process(model: str, photos: Path, out: Path, steps: int, class_images: int, lr: float,
                           guidance: float) -> dict:
    """`python -m studio dreambooth` in a subprocess (its own peak memory); returns its card."""
    if not (out / "card.json").exists():
        config = DreamBoothConfig(
            model=model, photos=str(photos), instance_prompt=INSTANCE_PROMPT, class_prompt=CLASS_PROMPT,
            out=str(out), steps=steps, class_images=class_images, lr=lr, guidance=guidance, train_text_encoder=True,
            checkpoint_every=max(1, steps // 2), validation_prompts=(INSTANCE_PROMPT, CLASS_PROMPT),
            resume=(out / "metrics.csv").exists())
        subprocess.run([sys.executable, "-m", "studio", "dreambooth", *to_argv(config)], check=True, cwd=PROJECT_ROOT)
    return json.loads((out / "card.json").read_text())


def toy_dreambooth_report(models: list[str], work: Path, steps: int, class_images: int, lr: float, n: int,
                          report: Path) -> list[dict]:
    from studio.kinds.personalization.dreambooth import load_personalized
    from studio.models.loading import load_pipeline
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
    lora = {f.name: f.default for f in fields(DreamBoothConfig)}  # the runs take DreamBoothConfig's LoRA defaults
    intro = (f"Subject: a {SUBJECT} circle (a held-out pair: no training scene has one), 5 procedural photos; "
             f"instance prompt \"{INSTANCE_PROMPT}\", class prompt \"{CLASS_PROMPT}\". LoRA on the U-Net (rank "
             f"{lora['rank']}, alpha {lora['alpha']:g}, to_q/to_v) and the text encoder (rank {lora['text_rank']}, "
             f"alpha {lora['text_alpha']:g}, q_proj/v_proj), {steps} "
             f"steps, lr {lr}, batch 1 + 1 class image, prior weight 1.0, {class_images} class images made by each "
             f"model. Judged on {n} images per prompt (seed 1000, 25 PNDM steps, toy guidance); \"{SUBJECT}\" is the "
             f"share of images whose largest object the judge reads as {SUBJECT}. "
             "Produced by `python -m studio toy dreambooth`.")
    columns = [("model", lambda r: r["model"]),
               (f"instance prompt: {SUBJECT} before", lambda r: f"{r['before']['instance'][SUBJECT]:.0%}"),
               ("after", lambda r: f"{r['after']['instance'][SUBJECT]:.0%}"),
               (f"class prompt: {SUBJECT} before", lambda r: f"{r['before']['class'][SUBJECT]:.0%}"),
               ("after", lambda r: f"{r['after']['class'][SUBJECT]:.0%}"),
               ("class prompt: circles after", lambda r: f"{r['after']['class']['circle']:.0%}"),
               ("train time", lambda r: f"{r['train_seconds']:.0f} s"),
               ("peak memory", lambda r: f"{r['peak_memory_mb']:.0f} MB ({r['memory_kind']})")]
    print(write_table(report, "DreamBooth on the toy world", intro, columns, rows))
