"""The Evaluate tab: the paper's protocol on chosen models as a background job, its table and its plot."""

from pathlib import Path

import gradio as gr

from studio.ui import inputs

from studio.jobs import JobManager
from studio.kinds.evaluation.config import EvalConfig
from studio.kinds.evaluation.prompts import read_prompts
from studio.models.catalog import Catalog
from studio.ui.common import JobMonitor, Studio, chosen_models, endpoint, number, refresh_models_on_visit


def evaluate_start(jobs: JobManager, catalog: Catalog, models: list[str], prompts_file: str | None, n,
                   device: str = "cpu", steps: int = 25) -> tuple[str, str]:
    """Start `python -m studio evaluate` as a background job; (job id, message)."""
    models = chosen_models(catalog, models, "the models to evaluate")
    families = {catalog.get(m).family for m in models}
    if not prompts_file and not all(catalog.family(f).prompt_set for f in families):
        raise ValueError("prompt file: upload one (BK-SDM metadata.csv or one prompt per line); these models' family "
                         "has no built-in prompt set")
    if prompts_file:
        read_prompts(prompts_file)  # a bad file is reported now, not in the job's log
    config = EvalConfig(models=models, out="-", n=number("images per model", n, int), device=device, steps=steps)
    config.check()

    def prepare(folder: Path) -> dict:
        if not prompts_file:
            return {}
        copy = folder / ("prompts.csv" if str(prompts_file).endswith(".csv") else "prompts.txt")
        copy.write_bytes(Path(prompts_file).read_bytes())  # the job keeps its own copy of the upload
        return {"prompts": str(copy)}

    job_id = jobs.create("evaluate", config, prepare=prepare, catalog=catalog)
    return job_id, f"started job {job_id}: {jobs.spec(job_id)['name']}"


def evaluate_status(jobs: JobManager, job_id: str | None) -> tuple[str, str | None]:
    """(markdown: state, progress and the results table when done; the quality-vs-speed plot or None)."""
    if not job_id:
        return "No evaluation selected.", None
    spec = jobs.spec(job_id)
    state, message = jobs.state(job_id)
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


class EvaluationMonitor(JobMonitor):
    """The job monitor, showing an evaluation's results table and plot instead of loss curves."""

    def status(self, jobs: JobManager, selected) -> tuple:
        rows, _, _, _ = super().status(jobs, None)
        text, plot = evaluate_status(jobs, selected)
        return rows, None, text, plot


def build(app: gr.Blocks, studio: Studio) -> None:
    models_now = studio.models()
    with gr.Tab("Evaluate") as tab:
        report = studio.family.recipe_report_path
        if report is not None and report.is_file():  # the shipped results first: what the models do, measured
            with gr.Accordion("Shipped results: models x recipes, the judge's score per task against U-Net MACs, "
                              "with the Pareto front (the command that made them is in the table's title)", open=True):
                if report.with_suffix(".png").is_file():
                    gr.Image(str(report.with_suffix(".png")), show_label=False, interactive=False, height=360)
                gr.Markdown(report.read_text())
        gr.Markdown("### Run an evaluation\nCLIP score, FID, IS, teacher-student fidelity (PSNR, CLIP image "
                    "similarity) and, where the family has a judge (the toy world), its prompt accuracy, with the "
                    "paper's protocol (25 PNDM steps, one seed per prompt shared by all models). Runs as a background "
                    "job; metrics whose weights are not on this machine are left empty, with the reason under the "
                    "table.")
        with gr.Row():
            models = inputs.ChoiceList(models_now, value=models_now, label="Models")
            prompts = inputs.File(label="Prompt file (metadata.csv or one per line; empty = the family's prompt set)",
                              file_types=[".csv", ".txt"], type="filepath")
            n = inputs.Number(value=studio.family.eval_images, precision=0, label="Images per model")
            start = gr.Button("Start evaluation", variant="primary")
        message = gr.Markdown()
        monitor = EvaluationMonitor(studio, "evaluate", "Evaluation", "Quality against U-Net latency and MACs",
                                    loss_plot=False)

    @endpoint("evaluate_start")
    def on_start(chosen, prompts_file, n, request: gr.Request):
        """Evaluate models with the paper's protocol (CLIP score, FID, IS, fidelity to the teacher, the family's judge)
        as a background job; returns a message and the job's id.

        Args:
            chosen: catalogue model names
            prompts_file: a BK-SDM metadata.csv or a text file with one prompt per line; empty for the family's set
            n: images per model
        """
        with studio.errors():
            workspace = studio.workspace(request)
            job_id, text = evaluate_start(workspace.jobs, studio.current_catalog(workspace), chosen, prompts_file, n,
                                          studio.device)
            return text, gr.update(choices=workspace.jobs.ids("evaluate"), value=job_id)

    start.click(on_start, [models, prompts, n], [message, monitor.job], api_name="evaluate_start")
    monitor.wire(app, tab, "evaluate_status")
    refresh_models_on_visit(app, tab, studio, models)
