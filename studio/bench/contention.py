"""CPU contention: a Compare while a training job runs, against each alone (`python -m studio bench contention`).

The job is a real background job (a KD distillation, through the launcher, in its
own process); the Compare runs in this process as the app runs it. Phases follow
each other in one run: Compare alone, job alone, both, job alone again, Compare
alone again; the job's speed is read from its progress (steps over wall time in a
window), a Compare's time as a median of `repeats`. It runs twice: with the
studio's CPU budget (studio/jobs/cpu.py: the job gets its share at start, generation
the rest) and, for contrast, without one (every process takes all the cores).
"""

import statistics
import tempfile
import time
from pathlib import Path

from studio.budget import JobLimits
from studio.inference.generation import PipelineCache, Settings, compare_iter
from studio.inference.recipes import parse_recipe
from studio.jobs.cpu import CpuBudget, use_threads
from studio.jobs.launcher import JobManager
from studio.jobs.store import read_metrics
from studio.kinds.distillation.config import DistillConfig
from studio.models.catalog import Catalog, load_catalog


def _compare_seconds(cache: PipelineCache, models: list[str], settings: Settings, catalog: Catalog) -> float:
    started = time.perf_counter()
    for _ in compare_iter(cache, models, settings, catalog=catalog):
        pass
    return time.perf_counter() - started


def _step(jobs: JobManager, job_id: str) -> int:
    rows = read_metrics(jobs.run_folder(job_id))
    return int(rows[-1]["step"]) if rows else 0


def _speed_while(jobs: JobManager, job_id: str, work) -> tuple[float, object]:
    """The job's steps/s while `work()` runs (at least a few steps), and what `work` returned."""
    step, started = _step(jobs, job_id), time.perf_counter()
    result = work()
    while _step(jobs, job_id) < step + 3:  # a window too short to see steps
        time.sleep(0.2)
    return (_step(jobs, job_id) - step) / (time.perf_counter() - started), result


def _one_setting(budget: CpuBudget | None, models, settings, catalog, job_config, repeats, window, log) -> dict:
    label = "with the CPU budget" if budget else "without a budget (all cores each)"
    with tempfile.TemporaryDirectory() as folder:
        jobs = JobManager(Path(folder) / "jobs", JobLimits(), cpu=budget)
        cache = PipelineCache(catalog, "cpu")
        threads_alone = use_threads(budget.threads if budget else None)
        _compare_seconds(cache, models, settings, catalog)  # load and warm up
        alone = [_compare_seconds(cache, models, settings, catalog) for _ in range(repeats)]
        job_id = jobs.create("distill", job_config, catalog=catalog)
        try:
            while _step(jobs, job_id) < 5:  # started and past its first, slower steps
                if jobs.state(job_id)[0] != "running":
                    raise RuntimeError(f"the job stopped: {jobs.status(job_id).message}")
                time.sleep(0.5)
            job_threads = jobs.running_threads(budget.threads)[0] if budget else None
            solo_before, _ = _speed_while(jobs, job_id, lambda: time.sleep(window))
            generation = use_threads(budget.generation_share([job_threads]) if budget else None)
            together_speed, together = _speed_while(
                jobs, job_id, lambda: [_compare_seconds(cache, models, settings, catalog) for _ in range(repeats)])
            use_threads(threads_alone)
            solo_after, _ = _speed_while(jobs, job_id, lambda: time.sleep(window))
        finally:
            if jobs.state(job_id)[0] == "running":
                jobs.cancel(job_id, grace=5)
                jobs.wait(job_id, timeout=60)
        alone += [_compare_seconds(cache, models, settings, catalog) for _ in range(repeats)]
    row = {"setting": label, "compare_alone_s": statistics.median(alone),
           "compare_with_job_s": statistics.median(together), "job_alone_steps_s": (solo_before + solo_after) / 2,
           "job_with_compare_steps_s": together_speed, "job_threads": job_threads, "generation_threads": generation}
    row["compare_slowdown"] = row["compare_with_job_s"] / row["compare_alone_s"]
    row["job_speed_kept"] = row["job_with_compare_steps_s"] / row["job_alone_steps_s"]
    log(f"{label}: Compare {row['compare_alone_s']:.2f} s alone, {row['compare_with_job_s']:.2f} s beside the job "
        f"({row['compare_slowdown']:.2f}x); job {row['job_alone_steps_s']:.3f} steps/s alone, "
        f"{row['job_with_compare_steps_s']:.3f} beside the Compare ({row['job_speed_kept']:.2f} of it)")
    return row


def bench_contention(models: list[str], recipe: str = "paper", threads: int | None = None, arch: str = "tiny",
                     batch_size: int | None = None, resolution: int | None = None, repeats: int = 3,
                     window: float = 20.0, log=print, catalog: Catalog | None = None, data: str | None = None) -> dict:
    """Both settings (with and without the CPU budget); `models[0]`'s teacher is the job's teacher."""
    from studio.jobs.cpu import machine_threads

    catalog = catalog or load_catalog()
    teacher = catalog.get(models[0]).teacher or models[0]
    family = catalog.family(catalog.get(teacher).family)
    settings = parse_recipe(recipe).apply(Settings(family.prompt or "a photo", seed=0, resolution=resolution),
                                          family.guidance)
    job_config = DistillConfig(teacher=teacher, arch=arch, data=data or family.train_data or "toy", out="-",
                               steps=1_000_000, batch_size=batch_size or family.train_batch_size,
                               lr=family.train_lr, log_every=1, checkpoint_every=1_000_000,
                               checkpoints_total_limit=1)
    budget = CpuBudget(threads or machine_threads())
    rows = [_one_setting(setting, models, settings, catalog, job_config, repeats, window, log)
            for setting in (budget, None)]
    return {"models": models, "recipe": recipe, "threads": budget.threads, "job": f"distill {teacher} -> {arch}, "
            f"batch {job_config.batch_size}", "repeats": repeats, "window_s": window, "rows": rows}


def format_report(report: dict) -> str:
    lines = [f"Compare of {', '.join(report['models'])} with `{report['recipe']}` beside a training job "
             f"({report['job']}), {report['threads']} threads; Compare: median of {2 * report['repeats']} alone and "
             f"{report['repeats']} beside the job; job: steps/s over {report['window_s']:.0f} s windows",
             "| setting | job / generation threads | Compare alone | beside the job | slowdown | job alone | "
             "beside the Compare | speed kept |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["rows"]:
        shares = f"{r['job_threads']} / {r['generation_threads']}" if r["job_threads"] else "all / all"
        lines.append(f"| {r['setting']} | {shares} | {r['compare_alone_s']:.2f} s | {r['compare_with_job_s']:.2f} s | "
                     f"{r['compare_slowdown']:.2f}x | {r['job_alone_steps_s']:.3f} steps/s | "
                     f"{r['job_with_compare_steps_s']:.3f} steps/s | {r['job_speed_kept']:.2f} |")
    return "\n".join(lines)
