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
from dataclasses import replace
import traceback
from pathlib import Path

from studio.catalog import Catalog, load_catalog
from studio.generation import Settings, compare, sample
from studio.jobs import JobManager
from studio.pipelines import PipelineCache
from studio.recipes import PRESETS


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
    from studio.ui.dreambooth import dreambooth_start
    from studio.ui.evaluate import evaluate_start
    from studio.ui.train import train_start

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
            job_id, _ = train_start(jobs, catalog, teacher, "tiny", "1", False, True, info.train_data or "toy",
                                    None, job_steps, info.train_lr, 1.0, 1.0, 1.0, info.train_batch_size)
            return _job(jobs, job_id)

        def dreambooth():
            photos = sample(cache.get(teacher), [info.dreambooth_class] * 4, [0, 1, 2, 3], steps=info.steps,
                            guidance=info.guidance)
            paths = []
            for i, photo in enumerate(photos):
                paths.append(Path(folder) / f"photo-{i}.png")
                photo.save(paths[-1])
            job_ids, _ = dreambooth_start(jobs, catalog, paths, "sks", info.dreambooth_class, [teacher], job_steps,
                                          class_images=4, guidance=info.guidance)
            return _job(jobs, job_ids[0])

        def evaluation():
            prompts = Path(folder) / "prompts.txt"  # the family's prompt set where it has one, else its prompt
            prompts.write_text("\n".join([info.prompt or "a photo of a cat"] * 8) + "\n")
            job_id, _ = evaluate_start(jobs, catalog, models[:2], None if info.prompt_set else str(prompts), 8,
                                       device, info.steps)
            return _job(jobs, job_id)

        _row(rows, "distillation job", distill, log)
        _row(rows, "DreamBooth job", dreambooth, log)
        _row(rows, "evaluation job", evaluation, log)
    if bench_512:
        from studio.pipeline_bench import bench_pipelines

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
