"""The quality side of the recipes, on the toy world: judge accuracy and fidelity for every model x recipe.

Every model draws the 90-prompt set (image i seeded with derive_seed(seed, i))
with every recipe. Each row gives the judge's accuracy (shape, color and
background all right), the mean PSNR to the teacher's image with `paper` for
the same prompt and seed, and the seconds per image (the whole set drawn in
batches of `batch`, divided by its size; loading and warm-up excluded).
"""

import time
from pathlib import Path
from statistics import mean

from studio.bench import parse_dtype
from studio.catalog import load_catalog, packaged_family
from studio.evaluation.metrics import psnr
from studio.evaluation.pareto import pareto_front, plot_pareto
from studio.generation import PipelineCache, Settings, sample
from studio.recipes import PRESETS, check_recipe, parse_recipe
from studio.toy.data import caption
from studio.toy.evaluate import PROMPT_SET, write_table_and_rows
from studio.toy.judge import judge_accuracy
from studio.training import derive_seed

TOY_MODELS = ("toy-teacher", "toy-bk-base", "toy-bk-small", "toy-bk-tiny")
TEACHER = "toy-teacher"


def recipe_rows(models=TOY_MODELS, recipes=tuple(PRESETS), n: int = len(PROMPT_SET), seed: int = 0,
                batch: int = 30, log=print) -> list[dict]:
    family = packaged_family("toy")
    cache = PipelineCache(load_catalog())
    targets = [PROMPT_SET[i % len(PROMPT_SET)] for i in range(n)]
    prompts, seeds = [caption(*t) for t in targets], [derive_seed(seed, i) for i in range(n)]

    def draw(model, recipe):
        settings = recipe.apply(Settings("-"), family.guidance)
        dtype = parse_dtype(settings.dtype)
        pipeline = cache.get(model, dtype=dtype)
        decoder = cache.decoder(model, settings.decoder, dtype=dtype)
        started = time.perf_counter()
        images = sample(pipeline, prompts, seeds, batch=batch, settings=settings, decoder=decoder)
        return images, (time.perf_counter() - started) / n

    chosen = [parse_recipe(spec) for spec in recipes]
    for recipe in chosen:  # every spec checked before any image is drawn
        check_recipe(recipe)
    reference, _ = draw(TEACHER, PRESETS["paper"])
    rows = []
    for model in models:
        for recipe in chosen:
            images, seconds = draw(model, recipe)
            accuracy = judge_accuracy(targets, images)
            is_reference = model == TEACHER and recipe.name == "paper"
            rows.append({"model": model, "recipe": recipe.name, "judge_all": accuracy["all"],
                         "judge_shape": accuracy["shape"], "judge_color": accuracy["color"],
                         "psnr_to_teacher_paper": None if is_reference else mean(psnr(a, b) for a, b in zip(images, reference)),
                         "seconds": seconds, "n": n, "batch": batch, "knobs": recipe.knobs()})
            log(f"{model:14} {recipe.name:12} judge {accuracy['all']:.1%}  PSNR "
                f"{_db(rows[-1]['psnr_to_teacher_paper'])}  {seconds * 1000:.1f} ms/image")
    return rows


def _db(value) -> str:
    return "reference" if value is None else f"{value:.2f} dB"


def write_report(rows: list[dict], report: Path) -> None:
    """`report` (markdown table with the Pareto front marked), the same stem as .json and .png."""
    measured = [r for r in rows if r["psnr_to_teacher_paper"] is not None]
    front = {(r["model"], r["recipe"]) for r in pareto_front(measured, "seconds", "psnr_to_teacher_paper")}
    own_paper = {r["model"]: r["judge_all"] for r in rows if r["recipe"] == "paper"}
    lines = ["# Recipes on the toy world (`python -m studio toy recipes`)\n",
             f"{rows[0]['n']} prompts, image i seeded with derive_seed(0, i); seconds per image = the set drawn in "
             f"batches of {rows[0]['batch']}, divided by its size (CPU; loading and warm-up excluded). "
             "PSNR: against toy-teacher's `paper` image for the same prompt and seed (the mean over images). "
             "* = on the Pareto front of PSNR against time.\n",
             "| model | recipe | judge: all three right | vs own paper | PSNR to teacher paper | ms / image |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        delta = r["judge_all"] - own_paper[r["model"]] if r["model"] in own_paper else None
        mark = " *" if (r["model"], r["recipe"]) in front else ""
        lines.append(f"| {r['model']} | {r['recipe']}{mark} | {r['judge_all']:.1%} | "
                     f"{'-' if delta is None else f'{delta * 100:+.1f} pts'} | "
                     f"{_db(r['psnr_to_teacher_paper'])} | {r['seconds'] * 1000:.1f} |")
    write_table_and_rows(report, lines, rows)
    plot_pareto(measured, "seconds", "psnr_to_teacher_paper", report.with_suffix(".png"),
                "Toy world: fidelity to the teacher's paper images against time, models x recipes",
                "seconds per image (CPU, batched)", "PSNR to toy-teacher with paper (dB)")
