"""`python -m studio gpu-check`: the studio end to end on a device, as one table.

Where CUDA is present (or on any device named), it runs what the app runs: a
Compare of the family's models in fp32 and fp16, an img2img, a short
distillation job, a short DreamBooth job (on photos the teacher draws), an
evaluation job, and the 512x512 pipeline bench (teacher `paper`, Tiny with the
faster recipes). Each row says whether it worked and what it measured; a
failing step is a row with its error, and the others still run.
"""

import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

from studio.inference.generation import Settings, compare, sample
from studio.inference.pipeline_cache import PipelineCache
from studio.inference.recipes import PRESETS
from studio.jobs import JobManager
from studio.kinds.distillation.config import DistillConfig
from studio.kinds.evaluation.config import EvalConfig
from studio.kinds.personalization.config import DreamBoothConfig
from studio.models.catalog import Catalog, load_catalog


def _row(rows: list, step: str, work, log) -> None:
    started = time.perf_counter()
    try:
        measured = work()
        rows.append({"step": step, "ok": True, "measured": measured, "seconds": time.perf_counter() - started})
    except Exception as error:  # noqa: BLE001  every step is tried; the table says which failed and why
        traceback.print_exc()
        rows.append({"step": step, "ok": False, "measured": f"{type(error).__name__}: {error}"[:300],
                     "seconds": time.perf_counter() - started})
    log(f"{step}: {'ok' if rows[-1]['ok'] else 'FAILED'} ({rows[-1]['measured']})")


def _job(jobs: JobManager, job_id: str, timeout: float = 1800) -> str:
    state = jobs.wait(job_id, timeout=timeout)
    status = jobs.status(job_id)
    if state != "finished":
        raise RuntimeError(f"job {job_id} {state}: {status.message}")
    speed = f", {status.steps_per_second:.2f} {status.unit}s/s" if status.steps_per_second else ""
    return f"{status.step} {status.unit}s{speed}"


def gpu_check(device: str = "cuda", family: str = "toy", catalog: Catalog | None = None, job_steps: int = 20,
              bench_512: bool = True, log=print) -> list[dict]:
    """The studio end to end on `device`, through the library as `python -m studio jobs start` uses it."""
    catalog = catalog or load_catalog()
    info = catalog.family(family)
    teacher = next(e.name for e in catalog.teachers() if e.family == family)
    models = [teacher] + [s.name for s in catalog.students_of(teacher)]
    cache, rows = PipelineCache(catalog, device), []
    paper = PRESETS["paper"].apply(Settings(info.prompt or "a photo of a cat", seed=0), info.guidance)

    def compare_in(dtype):
        results = compare(cache, models, replace(paper, dtype=dtype))
        return ", ".join(f"{r.model} {r.seconds:.2f} s" for r in results)

    _row(rows, "compare fp32", lambda: compare_in("fp32"), log)
    _row(rows, "compare fp16", lambda: compare_in("fp16"), log)

    def img2img():
        first = compare(cache, [teacher], paper)[0].image
        return f"{compare(cache, [teacher], paper, init_image=first)[0].seconds:.2f} s"

    _row(rows, "img2img", img2img, log)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        jobs = JobManager(Path(folder) / "jobs")

        def distill():
            config = DistillConfig(teacher=teacher, arch="tiny", data=info.train_data or "toy", out="-",
                                   steps=job_steps, lr=info.train_lr, batch_size=info.train_batch_size,
                                   validation_prompts=info.validation_prompts[:2], validation_guidance=info.guidance)
            return _job(jobs, jobs.create("distill", config, catalog=catalog))

        def dreambooth():
            photos = Path(folder) / "photos"
            photos.mkdir()
            for i, photo in enumerate(sample(cache.get(teacher), [info.dreambooth_class] * 4, [0, 1, 2, 3],
                                             steps=info.steps, guidance=info.guidance)):
                photo.save(photos / f"photo-{i}.png")
            config = DreamBoothConfig(model=teacher, photos=str(photos), out="-", steps=job_steps, class_images=4,
                                      instance_prompt=f"a sks {info.dreambooth_class}",
                                      class_prompt=f"a {info.dreambooth_class}", guidance=info.guidance)
            return _job(jobs, jobs.create("dreambooth", config, catalog=catalog))

        def evaluation():
            prompts = Path(folder) / "prompts.txt"  # the family's prompt set where it has one, else its prompt
            prompts.write_text("\n".join([info.prompt or "a photo of a cat"] * 8) + "\n")
            config = EvalConfig(models=models[:2], out="-", n=8, device=device, steps=info.steps,
                                prompts=None if info.prompt_set else str(prompts))
            return _job(jobs, jobs.create("evaluate", config, catalog=catalog))

        _row(rows, "distillation job", distill, log)
        _row(rows, "DreamBooth job", dreambooth, log)
        _row(rows, "evaluation job", evaluation, log)
    if bench_512:
        from studio.bench.pipeline import bench_pipelines

        def bench():
            report = bench_pipelines("sd-v1.4", ("tiny",), ("paper", "fast", "lcm", "lcm-2"), 512, device=device,
                                     log=lambda message: None)
            return ", ".join(f"{r['arch']} {r['recipe']} {r['seconds']:.2f} s ({r['speedup']:.1f}x)"
                             for r in report["rows"])

        _row(rows, "512x512 pipeline bench", bench, log)
    return rows


def format_table(rows: list[dict], device: str) -> str:
    lines = [f"Studio end to end on {device}", "| step | worked | measured | wall |", "| --- | --- | --- | ---: |"]
    lines += [f"| {r['step']} | {'yes' if r['ok'] else 'NO'} | {r['measured']} | {r['seconds']:.0f} s |" for r in rows]
    return "\n".join(lines)
