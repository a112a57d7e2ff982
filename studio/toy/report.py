"""The toy world's report: every model x recipe x seed judged per task, with fidelity, cost and the Pareto front.

`python -m studio toy recipes` runs the sweep (studio/toy/evaluate.py) and,
with --report, writes the table (means over seeds, ± their standard
deviation), its JSON (every seed's row) and a plot of the judge's overall
score against U-Net MACs per image with the Pareto front.
"""

from pathlib import Path

from studio.kinds.evaluation.pareto import pareto_front, plot_pareto
from studio.kinds.evaluation.sweep import over_seeds, percent, write_table
from studio.toy.evaluate import JUDGE_KEYS, TEACHER, TOY_MODELS, evaluate_toy
from studio.toy.prompts import TASKS

TASK_HEADERS = {"single_object": "single", "two_object": "two", "counting": "counting", "colors": "colors",
                "position": "position", "color_attr": "attribution"}


def recipe_rows(models=TOY_MODELS, recipes=("paper",), n: int | None = None, seeds=(0,), batch: int = 48,
                work: Path | None = None, log=print) -> list[dict]:
    return evaluate_toy(models, recipes, seeds, n, work=work, batch=batch, log=log)


def _db(row) -> str:
    value = row.get("psnr_to_reference")
    return "reference" if value is None else f"{value:.2f} dB"


def write_report(rows: list[dict], report: Path) -> list[dict]:
    """`report` (markdown), the same stem as .json (every seed's row) and .png (the Pareto plot); returns the
    rows merged over seeds."""
    merged = over_seeds(rows, [*JUDGE_KEYS, "psnr_to_reference", "seconds"])
    for row in merged:
        row["gmacs_per_image"] = row["unet_macs_per_image"] / 1e9
    front = {(r["model"], r["recipe"]) for r in pareto_front(merged, "gmacs_per_image", "overall")}
    seeds = merged[0]["seeds"]
    columns = [("model", lambda r: r["model"]),
               ("recipe", lambda r: r["recipe"] + (" *" if (r["model"], r["recipe"]) in front else "")),
               ("overall", percent("overall")), ("held-out", percent("held_out")),
               *((TASK_HEADERS[t], percent(t, std=False)) for t in TASKS),
               ("attributes", percent("attributes", std=False)), ("PSNR to teacher paper", _db),
               ("G MACs / image", lambda r: f"{r['gmacs_per_image']:.2f}"),
               ("ms / image", lambda r: f"{r['seconds'] * 1000:.1f}")]
    intro = (f"`python -m studio toy recipes`: {merged[0]['n']} prompts of the evaluation set (studio/toy/prompts.py), "
             f"seeds {', '.join(map(str, seeds))} (image i seeded with derive_seed(seed, i)); the judge's score per "
             "GenEval task on the in-distribution prompts, overall = their mean (± the standard deviation over "
             "seeds), held-out = the prompts that ask for a color-shape pair training never drew; attributes = the "
             f"fraction of requested attributes right. PSNR: against {TEACHER} with `paper`, same prompt and seed. "
             "U-Net MACs per image: conv + linear, the samples of every full U-Net call (step-cached calls left "
             "out). ms / image: the set drawn in batches, CPU, loading excluded. * = on the Pareto front of overall "
             "score against MACs.")
    print(write_table(report, "The toy world: models x recipes", intro, columns, merged, data=rows))
    plot_pareto(merged, "gmacs_per_image", "overall", report.with_suffix(".png"),
                "Toy world: the judge's overall score against U-Net cost, models x recipes",
                "U-Net G MACs per image (conv + linear, full calls)", "judge: overall (mean of the six tasks)")
    return merged
