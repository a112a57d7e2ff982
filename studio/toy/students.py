"""The toy world's students: distilled from `toy-teacher`, shipped, and the KD ablation.

`python -m studio toy students` distills Base, Small and Tiny and ships them to
assets/toy/bk-{arch} (U-Net in fp16, card, metrics, last validation images).
`python -m studio toy ablation` reruns the paper's KD ablation at toy scale
(same student, steps and seed) and writes docs/toy-ablation.md. `python -m
studio toy lcm` consistency-distills the shipped Tiny into toy-bk-tiny-lcm
(studio/kinds/consistency). Runs live in one work folder, so a finished run is
reused, never redone.
"""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from studio.kinds.distillation.config import DistillConfig
from studio.kinds.distillation.train import distill
from studio.models.catalog import PROJECT_ROOT, ModelEntry, load_catalog
from studio.models.loading import load_unet
from studio.toy.evaluate import DEFAULT_GUIDANCE, FAMILY, TEACHER

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


def distill_toy_lcm(steps: int, batch_size: int, lr: float, work: Path, dest_root: Path = ASSETS) -> Path:
    """toy-bk-tiny, consistency-distilled on toy data with toy-teacher's ODE (guidance drawn within 1 of the
    family's, which the `lcm` recipe embeds), shipped as toy-bk-tiny-lcm."""
    from studio.kinds.consistency.config import ConsistencyConfig
    from studio.kinds.consistency.train import consistency_distill

    out = work / "tiny-lcm"
    config = ConsistencyConfig(
        teacher=TEACHER, arch="tiny", student="toy-bk-tiny", data="toy", out=str(out), steps=steps,
        batch_size=batch_size, lr=lr, guidance_min=max(1.0, DEFAULT_GUIDANCE - 1), guidance_max=DEFAULT_GUIDANCE + 1,
        checkpoint_every=max(1, steps // 4), log_every=10, validation_prompts=FAMILY.validation_prompts,
        validation_guidance=DEFAULT_GUIDANCE)
    if not (out / "card.json").exists():
        consistency_distill(replace(config, resume=(out / "metrics.csv").exists()))
    export_student(out, dest_root / "bk-tiny-lcm")
    print(f"shipped toy-bk-tiny-lcm to {dest_root / 'bk-tiny-lcm'}")
    return out


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


def run_ablation(steps: int, batch_size: int, lr: float, work: Path, n: int | None, seeds, report: Path) -> list[dict]:
    """Distill each variant (reusing finished runs), judge it with the teacher through the one evaluation loop
    (`paper`, the same prompts and seeds), and write the table."""
    from studio.kinds.evaluation.sweep import over_seeds, percent, write_table
    from studio.toy.evaluate import JUDGE_KEYS, evaluate_toy

    entries = []
    for label, folder, weights, init in ABLATION:
        config = replace(toy_config("small", work, steps, batch_size, lr), out=str(work / folder), init=init,
                         lambda_task=weights[0], lambda_out=weights[1], lambda_feat=weights[2])
        run = run_once(config)
        entries.append(ModelEntry(name=label, source=str(run.resolve()), role="student", family="toy",
                                  teacher=TEACHER, arch="small"))
    catalog = load_catalog().with_entries(entries)
    rows = evaluate_toy((TEACHER, *(e.name for e in entries)), ("paper",), seeds, n, catalog,
                        work=work / "ablation-sweep")
    merged = over_seeds(rows, [*JUDGE_KEYS, "psnr_to_reference"])
    for row, (_, _, weights, init) in zip(merged[1:], ABLATION):
        row.update(init=init, weight_task=weights[0], weight_out=weights[1], weight_feat=weights[2])
    intro = (f"Student: BK-Small of `{TEACHER}`; {steps} steps, batch {batch_size}, lr {lr}, seed 0, toy data; each "
             f"model judged on the same {merged[0]['n']} prompts of the evaluation set with `paper`, seeds "
             f"{', '.join(map(str, seeds))} (mean ± standard deviation over seeds). Fidelity: the mean PSNR of each "
             "image against the teacher's image for the same prompt and seed. Produced by `python -m studio toy "
             "ablation`.")
    columns = [("variant", lambda r: r["model"]), ("overall", percent("overall")),
               ("held-out", percent("held_out")), ("attributes", percent("attributes")),
               ("PSNR to teacher (dB)", lambda r: "-" if r["psnr_to_reference"] is None else
                f"{r['psnr_to_reference']:.2f} ± {r['psnr_to_reference_std'] or 0:.2f}")]
    print(write_table(report, "KD ablation on the toy world", intro, columns, merged,
                      data={"rows": merged, "per_seed": rows}))
    return merged
