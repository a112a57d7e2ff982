"""The toy world's students: distilled from `toy-teacher`, shipped, and the KD ablation.

`python -m studio toy students` distills Base, Small and Tiny and ships them to
assets/toy/bk-{arch} (U-Net in fp16, card, metrics, last validation images).
`python -m studio toy ablation` reruns the paper's KD ablation at toy scale
(same student, steps and seed) and writes docs/toy-ablation.md. Runs live in
one work folder, so a finished run is reused, never redone.
"""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from studio.catalog import PROJECT_ROOT
from studio.distillation.config import DistillConfig
from studio.distillation.train import distill
from studio.loading import load_pipeline, load_unet, share_components
from studio.toy.evaluate import DEFAULT_GUIDANCE, FAMILY

ASSETS = PROJECT_ROOT / "assets" / "toy"
# (row label, run folder, loss weights (task, output KD, feature KD), initialisation); "small" doubles as full KD.
ABLATION = (
    ("task loss only", "small-task", (1.0, 0.0, 0.0), "teacher"),
    ("task + output KD", "small-task-out", (1.0, 1.0, 0.0), "teacher"),
    ("task + output KD + feature KD", "small", (1.0, 1.0, 1.0), "teacher"),
    ("task + output KD + feature KD, random init", "small-random", (1.0, 1.0, 1.0), "random"),
)


def toy_config(arch: str, work: Path, steps: int, batch_size: int, lr: float) -> DistillConfig:
    return DistillConfig(
        teacher="toy-teacher", arch=arch, data="toy", out=str(work / arch), steps=steps, batch_size=batch_size,
        lr=lr, checkpoint_every=max(1, steps // 4), log_every=10, validation_prompts=FAMILY.validation_prompts,
        validation_guidance=DEFAULT_GUIDANCE,
    )


def run_once(config: DistillConfig) -> Path:
    """Distill unless this exact run already finished in its folder."""
    out = Path(config.out)
    card = out / "card.json"
    if card.exists():
        done = json.loads(card.read_text())["config"]
        keys = ("steps", "init", "lambda_task", "lambda_out", "lambda_feat", "data")
        if all(done.get(key) == getattr(config, key) for key in keys):
            print(f"reusing finished run {out}")
            return out
    return distill(replace(config, resume=(out / "metrics.csv").exists()))


def export_student(run: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    load_unet(str(run / "unet")).to(torch.float16).save_pretrained(
        dest / "unet", safe_serialization=True
    )
    for name in ("card.json", "metrics.csv", "config.json"):
        shutil.copy(run / name, dest / name)
    validation = sorted((run / "validation").glob("*.png"))
    if validation:
        shutil.copy(validation[-1], dest / "validation.png")


def distill_toy_students(steps: int, batch_size: int, lr: float, work: Path,
                         archs=("base", "small", "tiny"), dest_root: Path = ASSETS) -> None:
    for arch in archs:
        run = run_once(toy_config(arch, work, steps, batch_size, lr))
        export_student(run, dest_root / f"bk-{arch}")
        print(f"shipped toy-bk-{arch} to {dest_root / f'bk-{arch}'}")


def run_ablation(steps: int, batch_size: int, lr: float, work: Path, n: int, report: Path) -> list[dict]:
    from studio.evaluation.metrics import psnr
    from studio.toy.evaluate import prompt_set_images
    from studio.toy.judge import judge_accuracy

    teacher = load_pipeline("toy-teacher")
    targets, teacher_images = prompt_set_images(teacher, n)
    teacher_accuracy = judge_accuracy(targets, teacher_images)  # judged once, and the reference for fidelity
    rows = []
    for label, folder, weights, init in ABLATION:
        config = replace(toy_config("small", work, steps, batch_size, lr), out=str(work / folder), init=init,
                         lambda_task=weights[0], lambda_out=weights[1], lambda_feat=weights[2])
        run = run_once(config)
        student = share_components(teacher, load_unet(str(run / "unet")))
        targets, images = prompt_set_images(student, n)
        accuracy = judge_accuracy(targets, images)
        fidelity = float(np.mean([psnr(a, b) for a, b in zip(teacher_images, images)]))
        rows.append({"variant": label, "init": init, **dict(zip(("weight_task", "weight_out", "weight_feat"), weights)),
                     "judge_all": accuracy["all"], "judge_color": accuracy["color"],
                     "judge_shape": accuracy["shape"], "psnr_to_teacher": fidelity})
    write_ablation_report(rows, teacher_accuracy, steps, batch_size, lr, n, report)
    return rows


def write_ablation_report(rows, teacher_accuracy, steps, batch_size, lr, n, report: Path) -> None:
    lines = [
        "# KD ablation on the toy world",
        "",
        f"Student: BK-Small of `toy-teacher`; {steps} steps, batch {batch_size}, lr {lr}, seed 0, toy data; "
        f"each model judged on the same {n} prompts and seeds (the toy defaults: 25 PNDM steps, guidance "
        f"{DEFAULT_GUIDANCE}). "
        "Fidelity is the mean PSNR of each student image against the teacher's image for the same prompt "
        "and seed. Produced by `python -m studio toy ablation`.",
        "",
        "| variant | judge: all three right | color | shape | PSNR to teacher (dB) |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| teacher | {teacher_accuracy['all']:.1%} | {teacher_accuracy['color']:.1%} | "
        f"{teacher_accuracy['shape']:.1%} | - |",
    ]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['judge_all']:.1%} | {row['judge_color']:.1%} | "
                     f"{row['judge_shape']:.1%} | {row['psnr_to_teacher']:.2f} |")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    report.with_suffix(".json").write_text(json.dumps({"teacher": teacher_accuracy, "rows": rows}, indent=2) + "\n")
    print("\n".join(lines))
