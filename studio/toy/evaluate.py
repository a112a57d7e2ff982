"""Toy models judged on the fixed evaluation set (studio/toy/prompts.py), through the one evaluation loop.

`judge_score` turns the judge's reading into flat columns (each task, overall,
held-out, attributes) for studio.kinds.evaluation.sweep; `evaluate_toy` runs the
sweep over toy models x recipes x seeds with the teacher's `paper` images as
the fidelity reference; the reports (`toy recipes`, `toy ablation`) and
`toy judge` are built on it.
"""

import json
from pathlib import Path

from studio.inference.generation import PipelineCache, sample
from studio.inference.recipes import parse_recipe
from studio.kinds.evaluation.sweep import over_seeds, sweep
from studio.kinds.training import derive_seed
from studio.models.catalog import Catalog, ModelEntry, load_catalog, packaged_family
from studio.toy.judge import judge_images
from studio.toy.prompts import TASKS, Prompt, evaluation_set, parse

# The toy family's sampling defaults live in the catalogue (studio/models/models.json): 25 PNDM steps and its guidance.
FAMILY = packaged_family("toy")
DEFAULT_STEPS = FAMILY.steps
DEFAULT_GUIDANCE = FAMILY.guidance
TOY_MODELS = ("toy-teacher", "toy-bk-base", "toy-bk-small", "toy-bk-tiny")
TEACHER = "toy-teacher"
JUDGE_KEYS = ["overall", "held_out", "attributes", *TASKS]


def prompt_set(n: int | None = None) -> list[Prompt]:
    """The first n prompts of the evaluation set (all by default; it cycles past its end)."""
    prompts = evaluation_set()
    n = len(prompts) if n is None else n
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return [prompts[i % len(prompts)] for i in range(n)]


def judge_score(prompts: list[str], images) -> dict:
    """The judge's scores as flat columns: overall, held_out, attributes and one per task."""
    verdict = judge_images([parse(p) for p in prompts], images)
    return {"overall": verdict["overall"], "held_out": verdict["held_out"], "attributes": verdict["attributes"],
            **{task: verdict["tasks"].get(task) for task in TASKS}}


def prompt_set_images(pipeline, n: int | None = None, steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
                      seed: int = 0) -> tuple[list[Prompt], list]:
    """(prompts, images) for the first n prompts of the set; image i is seeded with derive_seed(seed, i), as in
    the sweep and `python -m studio evaluate`, so all of them see the same images of a model."""
    prompts = prompt_set(n)
    images = sample(pipeline, [p.text for p in prompts], [derive_seed(seed, i) for i in range(len(prompts))], steps,
                    guidance)
    return prompts, images


def evaluate_toy(models=TOY_MODELS, recipes=("paper",), seeds=(0,), n: int | None = None,
                 catalog: Catalog | None = None, work: Path | None = None, batch: int = 48, log=print) -> list[dict]:
    """Sweep rows (one per model x recipe x seed) with the judge's columns; PSNR against the teacher's `paper`
    images of the same seed (drawn for it when that cell is not in the sweep)."""
    catalog = catalog or load_catalog()
    chosen = [parse_recipe(spec) for spec in recipes]
    reference = (TEACHER, "paper")
    texts = [p.text for p in prompt_set(n)]
    return sweep(PipelineCache(catalog), FAMILY, list(models), chosen, texts, list(seeds), judge_score, reference,
                 work, batch, log)


def folder_entry(ref: str, catalog: Catalog) -> ModelEntry:
    """A catalogue entry for a toy model folder: a pipeline (a teacher) or a student's run."""
    folder = Path(ref).resolve()
    if (folder / "model_index.json").is_file():
        return ModelEntry(name=ref, source=str(folder), role="teacher", family="toy")
    card = folder / "card.json"
    if (folder / "unet" / "config.json").is_file() and card.is_file():
        config = json.loads(card.read_text()).get("config", {})
        if config.get("teacher") not in catalog or not config.get("arch"):
            raise ValueError(f"--model {ref!r}: its card names teacher {config.get('teacher')!r} and arch "
                             f"{config.get('arch')!r}; a student run is judged with a catalogue teacher and an arch")
        return ModelEntry(name=ref, source=str(folder), role="student", family="toy", teacher=config["teacher"],
                          arch=config["arch"])
    raise ValueError(f"--model {ref!r} is not a catalogue model, a pipeline folder (model_index.json) or a student's "
                     "run folder (unet/ and card.json)")


def judge_model(ref: str, n: int | None = None, recipe: str = "paper", seeds=(0,), catalog: Catalog | None = None,
                log=print) -> dict:
    """A model's judge scores with one recipe, averaged over seeds (with standard deviations). `ref`: a catalogue
    name, a pipeline folder (a toy teacher trained elsewhere), or a student's run folder (unet/ and the card of
    `distill` or `consistency`, whose teacher is in the catalogue)."""
    catalog = catalog or load_catalog()
    if ref not in catalog:
        catalog = catalog.with_entries([folder_entry(ref, catalog)])
    rows = evaluate_toy((ref,), (recipe,), seeds, n, catalog, log=log)
    merged = over_seeds(rows, JUDGE_KEYS)[0]
    return {"model": ref, "recipe": recipe, "seeds": list(seeds), "n": merged["n"],
            "tasks": {task: merged[task] for task in TASKS if merged[task] is not None},
            **{key: merged[key] for key in ("overall", "held_out", "attributes")},
            "std": {key: merged[f"{key}_std"] for key in ("overall", "held_out", "attributes")},
            "per_seed": rows}


