"""Handlers of the Evaluate tab: plain functions, no Gradio, called directly by the tests."""

from pathlib import Path

from studio.catalog import Catalog
from studio.jobs import JobError, JobManager
from studio.ui.handlers import INPUT_ERRORS, positive_number, error

MAX_EVAL_IMAGES = 30_000


def evaluate_start(jobs: JobManager, catalog: Catalog, models: list[str], prompts_file: str | None, n,
                   extra_args: list[str] | None = None) -> tuple[str | None, str]:
    """Start `python -m studio evaluate` as a background job; (job id or None, message)."""
    from studio.evaluation.prompts import read_prompts

    try:
        if not models:
            raise ValueError("no model chosen; pick the models to evaluate")
        entries = [catalog.get(m) for m in models]
        n = positive_number("number of images", n, int, MAX_EVAL_IMAGES)
        if prompts_file:
            read_prompts(prompts_file)  # a bad file is reported now, not in the job's log
        elif any(e.family != "toy" for e in entries):
            raise ValueError("upload a prompt file (BK-SDM metadata.csv or one prompt per line); the built-in prompt "
                             "set is for toy models")
    except INPUT_ERRORS as problem:
        return None, error(problem)

    def prepare(folder: Path) -> list[str]:
        if not prompts_file:
            return []
        copy = folder / ("prompts.csv" if str(prompts_file).endswith(".csv") else "prompts.txt")
        copy.write_bytes(Path(prompts_file).read_bytes())  # the job keeps its own copy of the upload
        return ["--prompts", str(copy)]

    argv = ["evaluate", "--models", ",".join(models), "--n", str(n), *(extra_args or [])]
    name = f"evaluate {', '.join(models)} on {n} prompts"
    try:
        job_id = jobs.create("evaluate", name, argv, n * len(models), {"models": models}, prepare, catalog)
    except (JobError, OSError) as problem:
        return None, error(problem)
    return job_id, f"started job {job_id}: {name}"


def evaluate_status(jobs: JobManager, job_id: str | None) -> tuple[str, str | None]:
    """(markdown: state, progress and the results table when done; the quality-vs-speed plot or None)."""
    if not job_id:
        return "No evaluation selected.", None
    try:
        spec = jobs.spec(job_id)
        state, message = jobs.state(job_id)
    except JobError as problem:
        return error(problem), None
    run = jobs.run_folder(job_id)
    done = len(list((run / "images").glob("*/[0-9]*.png")))
    text = f"**{job_id}** ({spec['name']}): {state}, {done} of {spec['steps']} images generated."
    if message:
        text += f"\n\n{message}"
    results = run / "results.md"
    if results.exists():
        text += "\n\n" + results.read_text()
    plot = run / "quality_vs_speed.png"
    return text, str(plot) if plot.exists() else None
