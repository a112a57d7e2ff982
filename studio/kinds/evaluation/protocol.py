"""The evaluation protocol: generate (resumably), score, and write the results table and plot.

`python -m studio evaluate --models A,B --prompts FILE --n N --out DIR`. Defaults
follow the paper: 25 PNDM steps, guidance 7.5, 512x512 images downsampled to
256x256 for the metrics (toy models: their own defaults and size). Image i of
every model uses the same seed (derived from --seed and i), so teacher and
student images pair up for fidelity, and a resumed run makes exactly the
images a full run would; images already on disk are not redone.
"""

import csv
import json
from dataclasses import asdict
from pathlib import Path
from statistics import median

from PIL import Image

from studio.inference.generation import PipelineCache, Settings, run_model
from studio.kinds.evaluation.config import EvalConfig
from studio.kinds.evaluation.judges import get_judge
from studio.kinds.evaluation.metrics import ClipScorer, MetricUnavailable, fid_and_is, psnr, resize_for_metrics
from studio.kinds.evaluation.prompts import read_prompts
from studio.kinds.evaluation.sweep import write_table
from studio.kinds.training import derive_seed
from studio.models.catalog import Catalog, load_catalog
from studio.progress import Callback, report

COLUMNS = ["model", "role", "arch", "n", "clip_score", "fid", "is", "fidelity_psnr", "fidelity_clip",
           "judge_accuracy", "latency_s", "unet_step_s", "macs_paper", "unet_params"]


def _defaults(config: EvalConfig, catalog: Catalog) -> EvalConfig:
    """Fill unset prompts and guidance from the models' family (they must share one to use its defaults)."""
    config.check()
    families = {catalog.get(m).family for m in config.models}
    family = catalog.family(families.pop()) if len(families) == 1 else None
    if config.prompts is None:
        if family is None or family.prompt_set_path is None:
            raise ValueError("--prompts is needed (a BK-SDM metadata.csv or one prompt per line): these models' "
                             "family has no prompt set of its own")
        config.prompts = str(family.prompt_set_path)
    if config.guidance is None:
        config.guidance = family.guidance if family else 7.5
    return config


def generate_images(cache: PipelineCache, model: str, prompts: list[str], config: EvalConfig,
                    callback: Callback | None = None) -> dict:
    """Make the missing images of one model; returns its timing record (kept across resumes)."""
    folder = Path(config.out) / "images" / model
    folder.mkdir(parents=True, exist_ok=True)
    timing_path = folder / "timings.json"
    timings = json.loads(timing_path.read_text()) if timing_path.exists() else {"seconds": [], "unet_step": []}
    for index, prompt in enumerate(prompts):
        path = folder / f"{index:05d}.png"
        if path.exists():
            continue
        settings = Settings(prompt, seed=derive_seed(config.seed, index), steps=config.steps, guidance=config.guidance,
                            scheduler=config.scheduler, resolution=config.resolution)
        result = run_model(cache, model, settings)
        result.image.save(path.with_suffix(".tmp.png"))
        path.with_suffix(".tmp.png").rename(path)  # a kill never leaves half an image
        timings["seconds"].append(result.seconds)
        timings["unet_step"].append(result.unet_step_seconds)
        timings.update(macs_paper=result.macs_paper, unet_params=result.unet_params, resolution=result.resolution)
        timing_path.write_text(json.dumps(timings))
        report(callback, "evaluate", index + 1, len(prompts), model=model)
    if "macs_paper" not in timings:  # every image existed but the record was lost: measure once
        macs, _ = cache.macs(model, config.resolution or _native(cache, model))
        timings.update(macs_paper=macs, unet_params=sum(p.numel() for p in cache.get(model).unet.parameters()))
    return timings


def _native(cache, model) -> int:
    pipeline = cache.get(model)
    return pipeline.unet.config.sample_size * pipeline.vae_scale_factor


def _judge_accuracy(judge_name: str, images, prompts, notes: list[str]) -> float | None:
    try:
        return get_judge(judge_name)(prompts, images)
    except KeyError as error:
        notes.append(f"judge_accuracy: not computed: {error.args[0]}")
        return None


def evaluate(config: EvalConfig, catalog: Catalog | None = None, callback: Callback | None = None) -> list[dict]:
    catalog = catalog or load_catalog()
    config = _defaults(config, catalog)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    prompts = read_prompts(config.prompts)
    prompts = [prompts[i % len(prompts)] for i in range(config.n)]
    cache = PipelineCache(catalog, config.device)
    timings = {m: generate_images(cache, m, prompts, config, callback) for m in config.models}

    notes, clip = [], None
    try:
        clip = ClipScorer(config.clip_model, config.clip_pretrained, config.clip_weights, config.device)
    except MetricUnavailable as error:
        notes.append(f"clip_score, fidelity_clip: not computed: {error}")
    real = []
    if config.real:
        real = [Image.open(p).convert("RGB") for p in sorted(Path(config.real).glob("*")) if p.suffix.lower() in
                (".png", ".jpg", ".jpeg", ".webp")]
        if not real:
            raise ValueError(f"--real {config.real} holds no images")
    if not config.inception_weights:
        notes.append("fid, is: not computed: give --inception-weights FILE.safetensors (and --real DIR for FID)")
    elif not config.real:
        notes.append("fid: not computed: give --real DIR, a folder of real images")

    images = {m: [Image.open(out / "images" / m / f"{i:05d}.png").convert("RGB") for i in range(config.n)]
              for m in config.models}
    size = min(config.metric_size, min(im.size[0] for ims in images.values() for im in ims[:1]))
    metric_images = {m: [resize_for_metrics(i, size) for i in ims] for m, ims in images.items()}
    teacher = _reference_teacher(config.models, catalog)
    rows = []
    for model in config.models:
        entry = catalog.get(model)
        row = {"model": model, "role": entry.role, "arch": entry.arch or "", "n": config.n,
               "latency_s": median(timings[model]["seconds"]) if timings[model]["seconds"] else None,
               "unet_step_s": median(timings[model]["unet_step"]) if timings[model]["unet_step"] else None,
               "macs_paper": timings[model]["macs_paper"], "unet_params": timings[model]["unet_params"]}
        if clip is not None:
            row["clip_score"] = clip.score(metric_images[model], prompts)
        if config.inception_weights:
            try:
                row["fid"], row["is"] = fid_and_is(metric_images[model], [resize_for_metrics(r, size) for r in real],
                                                   config.inception_weights)
            except MetricUnavailable as error:
                notes.append(f"fid, is: not computed: {error}")
                config.inception_weights = None
        if teacher and model != teacher:
            pairs = list(zip(images[teacher], images[model]))
            row["fidelity_psnr"] = sum(psnr(a, b) for a, b in pairs) / len(pairs)
            if clip is not None:
                row["fidelity_clip"] = clip.image_similarity(metric_images[teacher], metric_images[model])
        judge = catalog.family(entry.family).judge
        if judge:
            row["judge_accuracy"] = _judge_accuracy(judge, images[model], prompts, notes)
        rows.append(row)
    write_results(rows, notes, config, teacher)
    return rows


def _reference_teacher(models: list[str], catalog: Catalog) -> str | None:
    teachers = [m for m in models if catalog.get(m).role == "teacher"]
    return teachers[0] if teachers else None


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_results(rows: list[dict], notes: list[str], config: EvalConfig, teacher: str | None) -> None:
    out = Path(config.out)
    with open(out / "results.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _format(row.get(k)) for k in COLUMNS})
    intro = (f"{config.n} prompts from {config.prompts}; {config.steps} {config.scheduler} steps, guidance "
             f"{config.guidance}, image i seeded with derive_seed({config.seed}, i); metrics at "
             f"{config.metric_size}px or the images' own size if smaller. Fidelity is against {teacher or '-'} "
             "on the same prompts and seeds. Latency: median seconds per image on "
             f"{config.device} (model warm, loading excluded).")
    write_table(out / "results.md", f"Evaluation: {', '.join(config.models)}", intro,
                [(key, lambda row, key=key: _format(row.get(key))) for key in COLUMNS], rows,
                notes=tuple(dict.fromkeys(notes)))
    plot_quality_vs_speed(rows, out / "quality_vs_speed.png")


def plot_quality_vs_speed(rows: list[dict], path: Path) -> Path | None:
    """Each available quality metric against U-Net step latency and MACs, one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [k for k in ("clip_score", "fid", "is", "fidelity_psnr", "judge_accuracy")
               if any(r.get(k) is not None for r in rows)]
    if not metrics:
        return None
    figure, axes = plt.subplots(len(metrics), 2, figsize=(9, 3 * len(metrics)), squeeze=False)
    for line, metric in zip(axes, metrics):
        for axis, (x_key, label) in zip(line, (("unet_step_s", "U-Net s / step"), ("macs_paper", "G MACs / step"))):
            points = [(r[x_key] / (1e9 if x_key == "macs_paper" else 1), r[metric], r["model"]) for r in rows
                      if r.get(metric) is not None and r.get(x_key) is not None]
            axis.scatter([p[0] for p in points], [p[1] for p in points])
            for x, y, name in points:
                axis.annotate(name, (x, y), fontsize=8)
            axis.set_xlabel(label)
            axis.set_ylabel(metric)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
