"""One evaluation loop: models x recipes x seeds over a prompt set, each cell drawn once, scored and kept.

`sweep` draws every cell's images (image i of a cell seeded with
derive_seed(seed, i), so the same prompt and seed pair up across models and
recipes), times them, scores them with the caller's `score(prompts, images)`
(a judge, a metric), measures PSNR to a reference cell of the same seed, and
appends the row to `rows.jsonl` in its work folder at once: a rerun skips the
cells already there. `write_table` is the one markdown-and-JSON writer of the
reports built on it.

Cost is counted as U-Net MACs per image (conv + linear, the paper's convention):
one call's MACs at batch 1 times the samples the U-Net sees per image (two per
guided step, one per unguided step), full calls only: a step-cached call runs
only the outer blocks and is left out of the count.
"""

import json
import math
import time
from pathlib import Path
from statistics import mean, pstdev
from typing import Callable

import numpy as np
from PIL import Image

from studio.inference.acceleration import guidance_steps
from studio.inference.devices import parse_dtype
from studio.inference.generation import PipelineCache, Settings, sample
from studio.inference.recipes import Recipe, check_recipe, parse_recipe
from studio.kinds.evaluation.metrics import psnr
from studio.kinds.training import derive_seed


def unet_samples_per_image(settings: Settings) -> float:
    """How many U-Net samples (in full calls) one image costs with these settings: PNDM makes one call more than
    its steps; a guided call is two samples (never with LCM: the guidance is an input or folded into the weights);
    with step caching, every cache_interval-th call runs in full."""
    calls = settings.steps + (settings.scheduler == "PNDM")
    if settings.guidance <= 1 or settings.scheduler == "LCM":
        guided = 0
    else:
        guided = calls if settings.guidance_stop >= 1 else guidance_steps(settings.guidance_stop, settings.steps)
    return (calls + guided) * math.ceil(calls / settings.cache_interval) / calls


def sweep(cache: PipelineCache, family, models: list[str], recipes: list[Recipe], prompts: list[str],
          seeds: list[int], score: Callable[[list[str], list], dict], reference: tuple[str, str] | None = None,
          work: Path | None = None, batch: int = 32, log=print) -> list[dict]:
    """Rows of models x recipes x seeds (in that order); `reference` (model, recipe name) is the cell every
    other cell's PSNR is measured against, per seed. `family` gives the recipes' default guidance."""
    for recipe in recipes:  # every spec checked before any image is drawn
        check_recipe(recipe)
    done_path = work / "rows.jsonl" if work else None
    done = {}
    if done_path and done_path.exists():
        for line in done_path.read_text().splitlines():
            row = json.loads(line)
            done[(row["model"], row["recipe"], row["seed"], row["n"])] = row
    references: dict[int, list] = {}

    def draw(model, recipe, seed):
        settings = recipe.apply(Settings("-"), family.guidance)
        dtype = parse_dtype(settings.dtype)
        pipeline = cache.get(model, dtype=dtype)
        decoder = cache.decoder(model, settings.decoder, dtype=dtype)
        started = time.perf_counter()
        images = sample(pipeline, prompts, [derive_seed(seed, i) for i in range(len(prompts))], batch=batch,
                        settings=settings, decoder=decoder)
        return images, (time.perf_counter() - started) / len(prompts), settings

    def kept(seed) -> Path | None:
        """Where the reference cell's images of a seed are kept, so another sweep on the same work folder (another
        process, or a rerun) measures PSNR against them without drawing them again."""
        return work / f"reference-{reference[0]}-{reference[1]}-seed{seed}-n{len(prompts)}.npz" if work else None

    def keep(seed, images) -> None:
        references[seed] = images
        if kept(seed):
            kept(seed).parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(kept(seed), images=np.stack([np.asarray(image) for image in images]))

    def reference_images(seed):
        if seed not in references and kept(seed) and kept(seed).exists():
            references[seed] = [Image.fromarray(a) for a in np.load(kept(seed))["images"]]
        if seed not in references:
            model, name = reference
            keep(seed, draw(model, next((r for r in recipes if r.name == name), None) or parse_recipe(name), seed)[0])
        return references[seed]

    rows = []
    for model in models:
        for recipe in recipes:
            for seed in seeds:
                key = (model, recipe.name, seed, len(prompts))
                if key in done:
                    rows.append(done[key])
                    continue
                images, seconds, settings = draw(model, recipe, seed)
                if reference and (model, recipe.name) == reference:
                    keep(seed, images)
                is_reference = reference is None or (model, recipe.name) == reference
                macs, _ = cache.macs(model, images[0].size[0])
                row = {"model": model, "recipe": recipe.name, "seed": seed, "n": len(prompts),
                       **score(prompts, images),
                       "psnr_to_reference": None if is_reference else
                       mean(psnr(a, b) for a, b in zip(images, reference_images(seed))),
                       "seconds": seconds, "unet_macs_per_image": macs * unet_samples_per_image(settings),
                       "knobs": recipe.knobs()}
                rows.append(row)
                if done_path:
                    done_path.parent.mkdir(parents=True, exist_ok=True)
                    with open(done_path, "a") as file:
                        file.write(json.dumps(row) + "\n")
                log(f"{model:14} {recipe.name:12} seed {seed}: " + ", ".join(
                    f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)))
    return rows


def over_seeds(rows: list[dict], keys: list[str]) -> list[dict]:
    """One row per (model, recipe): each key's mean over seeds and its population standard deviation
    (`key_std`), in first-seen order; other fields from the first seed's row."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["recipe"]), []).append(row)
    merged = []
    for group in groups.values():
        row = {**group[0], "seeds": [r["seed"] for r in group]}
        row.pop("seed", None)
        for key in keys:
            values = [r[key] for r in group if r.get(key) is not None]
            row[key] = mean(values) if values else None
            row[f"{key}_std"] = pstdev(values) if len(values) > 1 else None
        merged.append(row)
    return merged


def write_table(report: Path, title: str, intro: str, columns: list[tuple[str, Callable[[dict], str]]],
                rows: list[dict], data=None, notes: tuple[str, ...] = ()) -> str:
    """A report: a markdown table at `report` (one column per (header, cell text of a row)), and `data` (the
    rows when not given) as JSON beside it, same stem. Returns the markdown."""
    aligned = [" ---" if header in ("model", "recipe", "variant", "task", "unit") else " ---:" for header, _ in columns]
    lines = [f"# {title}", "", intro, "", "| " + " | ".join(h for h, _ in columns) + " |", "|" + " |".join(aligned) + " |"]
    lines += ["| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in rows]
    lines += [""] * bool(notes) + [f"- {note}" for note in notes]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    report.with_suffix(".json").write_text(json.dumps(rows if data is None else data, indent=2) + "\n")
    return "\n".join(lines)


def percent(key: str, std: bool = True) -> Callable[[dict], str]:
    """A cell: the row's `key` in percent, with its seed standard deviation when there is one."""
    def cell(row):
        value, spread = row.get(key), row.get(f"{key}_std")
        if value is None:
            return "-"
        return f"{value:.1%}" + (f" ± {spread * 100:.1f}" if std and spread is not None else "")
    return cell
