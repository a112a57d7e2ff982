"""The model memory budget at real size (`python -m studio bench memory`).

A teacher and its students are written in the hub layout with random weights
(the configs in studio/models/configs; memory does not depend on the values), then a
fresh process runs a Compare of all of them through the app's pipeline cache
with a budget below their sum, sampling its RSS every 50 ms. It prints the
budget, what the models would hold together, the peak RSS, and the cache's
loads and evictions.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from studio.models.catalog import PROJECT_ROOT

GB = 1024**3


def write_random_family(teacher: str, archs: tuple[str, ...], folder: Path, resolution: int | None = None) -> Path:
    """A catalogue (models.json) of `teacher` and its `archs` students with random weights, in `folder`; with
    `resolution`, their native size is that (the U-Nets' sample_size), so jobs train at it too."""
    import torch

    from studio.bench.pipeline import random_pipelines
    from studio.models.catalog import load_catalog

    pipelines, _, _ = random_pipelines(teacher, archs, load_catalog(), torch.device("cpu"), torch.float16)
    if resolution:
        for pipeline in pipelines.values():
            pipeline.unet.register_to_config(sample_size=resolution // pipeline.vae_scale_factor)
    pipelines["teacher"].save_pretrained(folder / "teacher", safe_serialization=True)
    entries = [{"name": "bench-teacher", "source": str(folder / "teacher"), "role": "teacher", "family": "bench"}]
    for arch in archs:
        pipelines[arch].unet.save_pretrained(folder / arch / "unet", safe_serialization=True)
        entries.append({"name": f"bench-{arch}", "source": str(folder / arch), "role": "student", "family": "bench",
                        "teacher": "bench-teacher", "arch": arch})
    (folder / "models.json").write_text(json.dumps({"families": {"bench": {}}, "models": entries}))
    return folder / "models.json"


def write_noise_imagefolder(folder: Path, resolution: int, n: int = 16) -> Path:
    """An imagefolder of random-noise images and captions: training data whose values don't matter (speed)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"a photo number {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def measure(models_json: str, budget_gb: float, resolution: int, steps: int) -> dict:
    """In this process: the Compare of every model of the catalogue within the budget; peak RSS sampled."""
    import psutil

    from studio.inference.generation import Settings, compare_iter
    from studio.inference.pipeline_cache import PipelineCache
    from studio.models.catalog import load_catalog

    catalog = load_catalog(models_json)
    names = [e.name for e in catalog if e.family == "bench"]
    cache = PipelineCache(catalog, memory_budget=int(budget_gb * GB))
    process, peak, done = psutil.Process(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.05)

    baseline = process.memory_info().rss
    threading.Thread(target=sample, daemon=True).start()
    started, notes = time.perf_counter(), []
    for result in compare_iter(cache, names, Settings("a photo of a cat", steps=steps, resolution=resolution)):
        notes.append(f"{result.model}: {result.note or 'no loads or evictions'}")
    done.set()
    return {"models": names, "budget_gb": budget_gb, "together_gb": _together(catalog, names) / GB,
            "baseline_rss_gb": baseline / GB, "peak_rss_gb": peak[0] / GB, "seconds": time.perf_counter() - started,
            "events": notes, "resolution": resolution, "steps": steps}


def _together(catalog, names) -> int:
    """Bytes the models hold loaded together at fp32: every U-Net and one set of the teacher's components."""
    import torch

    from studio.models.catalog import read_configs
    from studio.models.profiling import component_params, count_params, meta_unet

    unets = sum(count_params(meta_unet(read_configs(n, catalog)["unet"])) for n in names)
    shared = sum(n or 0 for n in component_params(read_configs(names[0], catalog)).values())
    return (unets + shared) * torch.empty(()).element_size()


def bench_memory(teacher: str, archs: tuple[str, ...], budget_gb: float, resolution: int = 256, steps: int = 2,
                 log=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as folder:
        log(f"writing {teacher} and {', '.join(archs)} with random weights ...")
        models_json = write_random_family(teacher, archs, Path(folder))
        log("measuring in a fresh process ...")
        code = ("import json, studio.compat; from studio.bench.memory import measure; "
                f"print(json.dumps(measure({str(models_json)!r}, {budget_gb}, {resolution}, {steps})))")
        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
        return json.loads(output.stdout.strip().splitlines()[-1])


def format_report(report: dict) -> str:
    lines = [f"Compare of {', '.join(report['models'])} (random weights, fp32) at {report['resolution']} px, "
             f"{report['steps']} steps, model memory budget {report['budget_gb']:.1f} GB; loaded together they "
             f"hold {report['together_gb']:.2f} GB",
             f"RSS: {report['baseline_rss_gb']:.2f} GB before, peak {report['peak_rss_gb']:.2f} GB "
             f"({report['peak_rss_gb'] - report['budget_gb']:+.2f} GB against the budget); {report['seconds']:.0f} s"]
    lines += [f"  {line}" for line in report["events"]]
    return "\n".join(lines)
