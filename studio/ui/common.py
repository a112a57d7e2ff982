"""What the tabs share: the studio's state, the error format, family defaults, generation controls, the job monitor.

Tab modules (compare, img2img, train, dreambooth, evaluate, models) each lay out
their components and wire their events beside them; the work is done by plain
functions (no Gradio) that raise ValueError-like errors for bad input, which
`user_errors` turns into `gr.Error` (shown on the page, raised in an API client).
"""

import inspect
import logging
import random
import secrets
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from studio.ui import inputs
import pandas as pd

from studio.budget import QuotaError
from studio.inference.devices import DTYPES
from studio.inference.generation import DECODERS, MAX_CACHE_INTERVAL, MAX_TOME_RATIO, SCHEDULERS, PipelineCache
from studio.inference.recipes import PRESETS, Recipe
from studio.inference.safety import SafetyChecker, family_checker, screen_file
from studio.jobs import JobError, JobManager, read_metrics
from studio.jobs.cpu import use_threads
from studio.kinds.registry import KINDS
from studio.kinds.training import TrainingError
from studio.limits import MAX_GUIDANCE, MAX_SAMPLING_STEPS
from studio.models.catalog import Catalog, CatalogError, Family, UnknownModelError
from studio.models.compression import CompressionError
from studio.models.loading import ModelUnavailableError, in_reach
from studio.ui.hosting import Hosting, identity, public_catalog, without_paths
from studio.ui.workspaces import Workspace, Workspaces

INPUT_ERRORS = (ValueError, UnknownModelError, CatalogError, ModelUnavailableError, CompressionError, JobError,
                TrainingError, QuotaError)
ZEROGPU_NOTE = ("Training runs as a background process on this machine. On a ZeroGPU Space it gets no GPU "
                "(ZeroGPU lends one only inside a request), so train on dedicated hardware.")
LOSS_COLUMNS = ["step", "loss", "term"]
JOB_HEADERS = ["job", "name", "state", "step", "of", "steps/s", "loss_total"]
POLL_SECONDS = 2.0
# The page's CSS (passed to launch): a readout's model and recipe columns keep their names whole.
PAGE_CSS = ".readout th:nth-child(-n+2), .readout td:nth-child(-n+2) { white-space: nowrap; }"

try:  # Hugging Face ZeroGPU: a GPU exists only inside functions decorated with spaces.GPU
    import spaces

    on_gpu = spaces.GPU
except ImportError:
    def on_gpu(function):
        return function


@contextmanager
def user_errors(public: bool = False):
    """Bad input becomes a gr.Error naming what was wrong; anything else, too (never a blank page). In public mode
    no message shows a server path (nor the visitor key inside one), and a bug is shown as a reference into the
    server's log, not as its exception."""
    try:
        yield
    except gr.Error as error:
        if public:
            error.message = without_paths(str(error.message))
        raise
    except INPUT_ERRORS as problem:
        raise gr.Error(without_paths(str(problem)) if public else str(problem)) from None
    except Exception as problem:  # a bug: still say what happened
        reference = secrets.token_hex(4)
        logging.getLogger("studio").exception("handler failed (reference %s)", reference)
        if public:
            raise gr.Error(f"internal error (reference {reference}): the request failed on the server; it is in "
                           "the server's log under that reference") from None
        raise gr.Error(f"internal error ({type(problem).__name__}): {problem}") from None


@dataclass
class Studio:
    """Everything the tabs work with: the catalogue, the family shown, the device, the pipelines, and each
    visitor's workspace (jobs and image history; one shared workspace in local mode)."""

    catalog: Catalog  # the catalogue the app started with; a workspace's finished students join it
    family: Family
    device: str
    cache: PipelineCache
    workspaces: Workspaces
    hosting: Hosting
    _checker: SafetyChecker | None = None
    _screened: dict = field(default_factory=dict)  # (path, mtime) -> the file to show

    @classmethod
    def create(cls, catalog: Catalog, family: str, device: str, data_dir: Path,
               hosting: Hosting | None = None) -> "Studio":
        hosting = hosting or Hosting(public=False)
        hosting.check()
        if hosting.public:
            catalog = public_catalog(catalog, family, hosting.allow_download)
        downloads = not hosting.public or hosting.allow_download
        cache = PipelineCache(catalog, device, memory_budget=int(hosting.model_memory_gb * 1024**3),
                              downloads=downloads, download_budget=int(hosting.download_disk_gb * 1024**3)
                              if hosting.public else None)

        def reserved() -> int:  # a job leaves room for what the model cache may still load, and 0.5 GB for the app
            return max(0, cache.memory_budget - cache.used_bytes()) + 1024**3 // 2

        workspaces = Workspaces(data_dir, hosting.public, hosting.limits(), hosting.expire_seconds, hosting.cpu,
                                reserved)
        studio = cls(catalog, catalog.family(family), device, cache, workspaces, hosting)
        if not studio.models():
            if hosting.public:
                raise ValueError(f"public mode: no model of family {family!r} is on this server, and visitors' "
                                 "requests download nothing unless --allow-download is given; download the family's "
                                 "models first (they load from the Hugging Face cache), or allow downloads")
            families = sorted({e.family for e in catalog})
            raise ValueError(f"no teacher of family {family!r} in the catalogue; families: {', '.join(families)}")
        return studio

    def errors(self):
        """`user_errors` for this host (public mode hides server paths and internals)."""
        return user_errors(self.hosting.public)

    def safety(self) -> SafetyChecker | None:
        """The family's safety checker where this host screens images (loaded on first use), else None."""
        if not self.hosting.screens_images or not self.family.safety_checker:
            return None
        if self._checker is None:
            self._checker = family_checker(self.family, self.device)
        return self._checker

    def screened(self, path: str | None) -> str | None:
        """An image file to show (a job's validation grid): itself, or a placeholder where the checker flags it."""
        return screen_file(self.safety(), path, self._screened)

    def share_cpu(self) -> int:
        """Generation's threads now (studio/jobs/cpu.py): the budget less what running jobs were given."""
        return use_threads(self.workspaces.generation_threads())

    def workspace(self, request: gr.Request | None = None) -> Workspace:
        """The asking visitor's workspace (public mode), or the one workspace (local mode)."""
        return self.workspaces.get(identity(request, self.hosting.sign_in) if self.hosting.public else None)

    def shown_at_build(self) -> Workspace | None:
        """The workspace whose work a freshly built page may show: only locally (public pages fill in on load)."""
        return None if self.hosting.public else self.workspace()

    def current_catalog(self, workspace: Workspace | None = None) -> Catalog:
        """The catalogue plus the students the workspace's finished training jobs made."""
        workspace = workspace or self.shown_at_build()
        if workspace is None:
            return self.catalog
        return workspace.jobs.catalog_with_students(self.catalog)

    def models(self, workspace: Workspace | None = None) -> list[str]:
        """The family's teacher(s) first, then their students."""
        return family_models(self.current_catalog(workspace), self.family.name)


def family_models(catalog: Catalog, family: str) -> list[str]:
    teachers = [e.name for e in catalog.teachers() if e.family == family]
    return teachers + [s.name for t in teachers for s in catalog.students_of(t)]


def refresh_models_on_visit(app: gr.Blocks, tab: gr.Tab, studio: Studio, models: gr.CheckboxGroup) -> None:
    """The model choices read again (the visitor's finished students join them) on page load and tab visit."""
    def refresh(chosen, request: gr.Request):
        with studio.errors():
            names = studio.models(studio.workspace(request))
            return gr.update(choices=names, value=[m for m in chosen or [] if m in names])

    gr.on([app.load, tab.select], refresh, models, models, api_visibility="private", queue=False)


def default_recipe(family: Family) -> Recipe:
    """The studio's CPU recommendation (`fast`) where the family's tiny decoder is at hand (shipped, or in the
    Hugging Face cache), else the reference: a first click must not fail on a decoder that can't be had."""
    source = family.tiny_decoder_source
    return PRESETS["fast"] if source and in_reach(source) else PRESETS["paper"]


def generation_controls(family: Family) -> list:
    """Prompt, negative prompt, seed (with a random button), resolution, and a recipe's knobs: steps, guidance,
    scheduler, guidance stop, step caching, token merging, decoder, dtype. Choosing a recipe fills the knobs in;
    every knob can then be changed on its own."""
    recipe = default_recipe(family)
    with gr.Row():
        prompt = inputs.Textbox(value=family.prompt, label="Prompt", scale=3)
        negative = inputs.Textbox(value="", label="Negative prompt", scale=2)
    with gr.Row():
        seed = inputs.Number(value=0, precision=0, label="Seed", minimum=0)
        dice = gr.Button("Random seed", size="sm")
        resolution = inputs.Number(value=0, precision=0, label="Resolution (px; 0 = each model's own)")
        preset = inputs.Dropdown(list(PRESETS), value=recipe.name, label="Recipe (fills in the knobs below)")
    with gr.Row():
        steps = inputs.Slider(1, MAX_SAMPLING_STEPS, value=recipe.steps, step=1, label="Steps")
        guidance = inputs.Slider(0, MAX_GUIDANCE, value=recipe.guidance or family.guidance, step=0.5, label="Guidance")
        scheduler = inputs.Dropdown(list(SCHEDULERS), value=recipe.scheduler, label="Scheduler")
        stop = inputs.Slider(0.05, 1.0, value=recipe.guidance_stop, step=0.05,
                             label="Guidance stop (fraction of steps with guidance)")
    with gr.Row():
        cache = inputs.Slider(1, MAX_CACHE_INTERVAL, value=recipe.cache_interval, step=1,
                              label="Cache interval: a full U-Net every N steps (1 = off)")
        tome = inputs.Slider(0, MAX_TOME_RATIO, value=recipe.tome_ratio, step=0.05,
                             label="Token merging ratio (0 = off)")
        decoder = inputs.Dropdown(list(DECODERS), value=recipe.decoder, label="Decoder (tiny = TAESD)")
        dtype = inputs.Dropdown(list(DTYPES), value=recipe.dtype, label="Precision (dtype)")
    knobs = [steps, guidance, scheduler, stop, cache, tome, decoder, dtype]

    def fill(name):
        chosen = PRESETS.get(name, PRESETS["paper"])
        return [chosen.steps, chosen.guidance or family.guidance, chosen.scheduler, chosen.guidance_stop,
                chosen.cache_interval, chosen.tome_ratio, chosen.decoder, chosen.dtype]

    preset.change(fill, preset, knobs, api_visibility="private", queue=False)
    dice.click(lambda: random.randrange(2**31), None, seed, api_visibility="private", queue=False)
    # The order the endpoints take them: the first seven as before this round, the recipe's knobs after.
    return [prompt, negative, seed, steps, guidance, scheduler, resolution, stop, cache, tome, decoder, dtype]


# The generation controls' parameters (generation_controls), as a handler's docstring describes them.
GENERATION_ARGS = """\
prompt: what to draw
negative: what to keep out of the image (may be empty)
seed: the random seed shared by every model (0 to 4294967295)
steps: sampling steps (1 to 100)
guidance: classifier-free guidance scale (0 to 20)
scheduler: sampler: PNDM, DDIM, DPM-Solver++, DPM++ 2M Karras, UniPC or Euler
resolution: image side in pixels; 0 for each model's own
guidance_stop: fraction of the steps that use guidance (0.05 to 1)
cache_interval: step caching, a full U-Net every N steps (1 is off)
tome_ratio: token merging ratio (0 is off, at most 0.75)
decoder: vae (the model's own) or tiny (TAESD)
dtype: fp32, fp16 or bf16"""


def endpoint(name: str, more_args: str = ""):
    """Name a handler as its endpoint: API docs and MCP clients know a tool by its function's name and read its
    docstring (the summary, then `Args:` lines `name: what it is`; `more_args` adds lines to a trailing Args)."""
    def rename(function):
        function.__name__ = function.__qualname__ = name
        if more_args:
            function.__doc__ = inspect.cleandoc(function.__doc__) + "\n" + textwrap.indent(more_args, "    ")
        return function
    return rename


def number(name: str, value, kind=float):
    """A control's value as `kind`, or ValueError naming the field (None, text and NaN-to-int are refused)."""
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def progress_callback(progress: gr.Progress):
    """The studio's progress events (studio/progress.py) shown by gr.Progress."""
    def callback(event):
        info = event.info
        if event.task == "download":
            progress(event.fraction, desc=f"downloading {info['model']}: {event.done / 1024**3:.2f} of "
                                          f"{event.total / 1024**3:.2f} GB")
        elif "models" in info:  # generation: steps of model `index` of `models`
            fraction = (info["index"] + event.fraction) / info["models"]
            progress(fraction, desc=f"{info['model']}: {event.task} {event.done}/{event.total}")
        else:
            progress(event.fraction, desc=event.describe())
    return callback


# --- Jobs ------------------------------------------------------------------------------------------------------------

def job_rows(jobs: JobManager, kind: str) -> list[list]:
    rows = []
    for s in (jobs.status(job_id) for job_id in jobs.ids(kind)):
        rows.append([s.id, s.name, s.state, s.step, s.steps,
                     "" if s.steps_per_second is None else round(s.steps_per_second, 3),
                     "" if "loss_total" not in s.losses else round(s.losses["loss_total"], 5)])
    return rows


def loss_curves(jobs: JobManager, job_id: str) -> list[dict]:
    """Long-format rows {step, loss, term} of a job's metrics (every loss_* column), for a line plot."""
    return [{"step": row["step"], "loss": value, "term": term}
            for row in read_metrics(jobs.run_folder(job_id)) for term, value in row.items() if term.startswith("loss")]


def job_view(jobs: JobManager, job_id: str) -> tuple[list[dict], str, str | None]:
    """(loss curve rows, status markdown, latest validation image or None) of one job."""
    status = jobs.status(job_id)
    speed = "-" if status.steps_per_second is None else f"{status.steps_per_second:.2f} steps/s"
    losses = ", ".join(f"{k} {v:.4f}" for k, v in status.losses.items())
    text = (f"**{status.id}** ({status.name}): {status.state}, {status.unit} {status.step} of {status.steps}, {speed}. "
            f"{losses}{status.data_note}")
    if status.message:
        text += f"\n\n{status.message}"
    if status.state == "finished" and KINDS[status.kind].result == "student":
        text += f"\n\nThe student is in the Compare tab's model list as `job-{status.id}`."
    validation = sorted((jobs.run_folder(job_id) / "validation").glob("*.png"))
    return loss_curves(jobs, job_id), text, str(validation[-1]) if validation else None


def selected_jobs(value) -> list[str]:
    """A job dropdown's value (an id, a list of ids, or nothing) as a list; an empty id is no selection."""
    ids = [value] if isinstance(value, str) else value if isinstance(value, list) else [] if value is None else None
    if ids is None or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"job: must be a job id or a list of them, got {value!r}"[:200])
    return [i for i in ids if i]


def chosen_models(catalog: Catalog, models, purpose: str) -> list[str]:
    """The chosen model names, once each, all in `catalog`; or ValueError naming the field."""
    models = list(dict.fromkeys(models or []))
    if not models:
        raise ValueError(f"models: none chosen; pick {purpose}")
    unknown = [m for m in models if m not in catalog]
    if unknown:
        raise ValueError(f"models: unknown {', '.join(repr(m[:100]) for m in unknown[:5])}; choose from "
                         f"{', '.join(catalog.names())}")
    return models


def job_action(action, job_ids) -> str:
    """Cancel or resume the selected job(s); one line per job."""
    job_ids = selected_jobs(job_ids)
    if not job_ids:
        raise ValueError("no job selected; choose one in the job list")
    return "\n\n".join(action(job_id) for job_id in job_ids)


class JobMonitor:
    """A job list of one kind, its table, and the selected job's status, loss plot and latest image.

    Everything shown is the asking visitor's. The choices are read again on every page load and tab visit,
    so a job started since is selectable; the view polls every few seconds outside the generation queue.
    """

    def __init__(self, studio: Studio, kind: str, label: str, image_label: str, multiselect: bool = False,
                 loss_plot: bool = True):
        self.studio, self.kind = studio, kind
        local = studio.shown_at_build()
        ids = local.jobs.ids(kind) if local else []
        # Any id is accepted here and looked up in the asking visitor's jobs (a fresh API session has no choices).
        self.job = inputs.Dropdown(ids, value=[] if multiselect else (ids or [None])[0], multiselect=multiselect,
                                   label=label, allow_custom_value=True)
        self.table = gr.Dataframe(headers=JOB_HEADERS, label="Jobs (state on disk; survives restarts)",
                                  interactive=False)
        with gr.Row():
            self.plot = gr.LinePlot(x="step", y="loss", color="term", title="Loss terms", height=300) \
                if loss_plot else None
            self.image = gr.Image(label=image_label, height=300)
        self.text = gr.Markdown()
        self.outputs = [c for c in (self.table, self.plot, self.text, self.image) if c is not None]

    def status(self, jobs: JobManager, selected) -> tuple:
        """(jobs table, loss curves of the first selected job, status of each, its latest image)."""
        selected = selected_jobs(selected)
        texts, curves, image = [], [], None
        for job_id in selected:
            job_curves, text, job_image = job_view(jobs, job_id)
            texts.append(text)
            if len(texts) == 1:
                curves, image = job_curves, job_image
        rows = job_rows(jobs, self.kind)
        text = "\n\n".join(texts) or ("No job selected." if rows else "No jobs yet.")
        # No data is None, not an empty frame: after an empty frame gradio's plot never draws the lines that follow.
        frame = pd.DataFrame(curves, columns=LOSS_COLUMNS).astype({"step": float, "loss": float, "term": str}) \
            if curves else None
        return rows, frame, text, image

    def choices(self, jobs: JobManager, selected):
        ids = jobs.ids(self.kind)
        if self.job.multiselect:
            return gr.update(choices=ids, value=[j for j in selected or [] if j in ids])
        return gr.update(choices=ids, value=selected if selected in ids else (ids or [None])[0])

    def wire(self, app: gr.Blocks, tab: gr.Tab, api_name: str) -> None:
        @endpoint(api_name)
        def show(selected, request: gr.Request):
            """The asking visitor's jobs of this kind as a table, and the selected job's state, progress, loss curves
            and latest validation image.

            Args:
                selected: a job id (or a list of ids) from the job table; empty for none
            """
            with self.studio.errors():
                rows, curves, text, image = self.status(self.studio.workspace(request).jobs, selected)
                image = self.studio.screened(image)
                return (rows, curves, text, image) if self.plot else (rows, text, image)

        def choices(selected, request: gr.Request):
            with self.studio.errors():
                return self.choices(self.studio.workspace(request).jobs, selected)

        gr.on([app.load, tab.select], choices, self.job, self.job, api_visibility="private", queue=False)
        gr.Timer(POLL_SECONDS).tick(show, self.job, self.outputs, api_name=api_name, queue=False,
                                    concurrency_limit=None, show_progress="hidden")  # named first: keeps the name
        self.job.change(show, self.job, self.outputs, api_visibility="private", queue=False)
