"""The Train tab's second kind: consistency distillation (LCM) of a student, so it samples in 1-4 steps."""

import gradio as gr

from studio.jobs import JobManager
from studio.kinds.consistency.config import ConsistencyConfig
from studio.kinds.data import DATA_SOURCES
from studio.models.catalog import Catalog
from studio.options import check_text
from studio.ui import inputs
from studio.ui.common import JobMonitor, Studio, endpoint, job_action, number


def students(catalog: Catalog, family: str) -> list[str]:
    return [s.name for t in catalog.teachers() if t.family == family for s in catalog.students_of(t.name)]


def default_student(catalog: Catalog, names: list[str]) -> str | None:
    """The first Tiny (the paper's smallest, the one to make fastest), else the first student."""
    return next((n for n in names if catalog.get(n).arch == "tiny"), (names or [None])[0])


def consistency_start(jobs: JobManager, catalog: Catalog, student: str, mode: str, ode_teacher: str, data_source: str,
                      teacher_images, steps, lr, batch_size, guidance_min, guidance_max) -> tuple[str, str]:
    """Start a consistency distillation job of a catalogue (or job-made) student; (job id, message)."""
    if not isinstance(student, str):
        raise ValueError(f"student: must be a model name, got {type(student).__name__}")
    check_text("student", student, 200)
    entry = catalog.get(student) if student in catalog else None
    if entry is None or entry.role != "student":
        raise ValueError(f"student: {student!r} is not a student in the catalogue or among your finished jobs; "
                         f"choose one of {', '.join(s.name for s in catalog if s.role == 'student')}")
    if not isinstance(data_source, str) or data_source not in DATA_SOURCES:
        raise ValueError(f"data: must be one of {', '.join(DATA_SOURCES)}, got {str(data_source)[:40]!r}")
    family = catalog.family(entry.family)
    config = ConsistencyConfig(
        teacher=entry.teacher, arch=entry.arch, student=student, data=data_source, out="-", mode=mode,
        ode_teacher=ode_teacher, synthetic=number("teacher images", teacher_images, int),
        steps=number("steps", steps, int), lr=number("learning rate", lr, float),
        batch_size=number("batch size", batch_size, int), guidance_min=number("lowest guidance", guidance_min),
        guidance_max=number("highest guidance", guidance_max), validation_prompts=family.validation_prompts[:2],
        validation_guidance=family.guidance)
    config.check()
    job_id = jobs.create("consistency", config, catalog=catalog)
    return job_id, f"started job {job_id}: {jobs.spec(job_id)['name']}"


def build(app: gr.Blocks, studio: Studio, tab: gr.Tab) -> None:
    family = studio.family
    choices = students(studio.catalog, family.name)
    with gr.Accordion("Few-step students: consistency distillation (LCM)", open=False):
        gr.Markdown("Teach a student to sample in 1-4 steps (latent consistency distillation, as diffusers' "
                    "`examples/consistency_distillation`): a DDIM solver on the teacher's guided ODE, an EMA target, "
                    "the pseudo-Huber loss. The result samples with the `lcm` (4 steps) and `lcm-2` recipes; its "
                    "validation rows are 1, 2 and 4 steps.")
        with gr.Row():
            student = inputs.Dropdown(choices, value=default_student(studio.catalog, choices), label="Student",
                                      allow_custom_value=True)
            mode = inputs.Radio(["full", "lora"], value="full", label="Mode (full: guidance embedding; lora: peft "
                                                                     "adapter, guidance folded in)")
            ode_teacher = inputs.Radio(["teacher", "student"], value="teacher", label="ODE teacher")
        with gr.Row():
            data_source = inputs.Radio(list(DATA_SOURCES), value=family.train_data or (list(DATA_SOURCES) or [None])[0],
                                       label="Data (captions, and images unless the teacher draws them)")
            teacher_images = inputs.Number(value=0, precision=0,
                                           label="Teacher images (0: the data's own; N: the teacher draws N)")
        with gr.Row():
            steps = inputs.Number(value=family.train_steps, precision=0, label="Steps")
            lr = inputs.Number(value=family.train_lr, label="Learning rate")
            batch_size = inputs.Number(value=family.train_batch_size, precision=0, label="Batch size")
            guidance_min = inputs.Number(value=1.0, label="Lowest guidance drawn")
            guidance_max = inputs.Number(value=max(1.0, 2 * family.guidance), label="Highest guidance (LoRA: its scale)")
        with gr.Row():
            start = gr.Button("Start consistency distillation", variant="primary")
            cancel = gr.Button("Cancel")
            resume = gr.Button("Resume")
        message = gr.Markdown()
        monitor = JobMonitor(studio, "consistency", "Consistency job", "Latest validation: 1, 2 and 4 steps (rows)")

    @endpoint("consistency_start")
    def on_start(student_name, mode_name, ode, data, images, step_count, learning_rate, batch, low, high,
                 request: gr.Request):
        """Start consistency-distilling a student (LCM) as a background job; returns a message and the job's id.

        Args:
            student_name: a student in the catalogue or one of your finished jobs (job-<id>)
            mode_name: full (every weight, with a guidance embedding) or lora (a peft adapter)
            ode: whose ODE the solver follows: teacher or student
            data: a registered data source, e.g. toy
            images: 0 to train on the data's own images; N for N images the teacher draws for its captions
            step_count: optimizer steps
            learning_rate: learning rate
            batch: images per step
            low: the lowest guidance scale drawn (full)
            high: the highest guidance scale drawn (full), the fixed scale (lora)
        """
        with studio.errors():
            jobs = studio.workspace(request).jobs
            job_id, text = consistency_start(jobs, studio.current_catalog(studio.workspace(request)), student_name,
                                             mode_name, ode, data, images, step_count, learning_rate, batch, low, high)
            return text, gr.update(choices=jobs.ids("consistency"), value=job_id)

    @endpoint("consistency_cancel")
    def on_cancel(job_id, request: gr.Request):
        """Cancel a running consistency job; it saves a checkpoint of its current step first and can be resumed.

        Args:
            job_id: the job's id
        """
        with studio.errors():
            return job_action(studio.workspace(request).jobs.cancel, job_id)

    @endpoint("consistency_resume")
    def on_resume(job_id, request: gr.Request):
        """Resume a cancelled, failed or interrupted consistency job from its latest checkpoint.

        Args:
            job_id: the job's id
        """
        with studio.errors():
            return job_action(studio.workspace(request).jobs.resume, job_id)

    def refresh(chosen, request: gr.Request):
        with studio.errors():
            catalog = studio.current_catalog(studio.workspace(request))
            names = students(catalog, family.name)
            return gr.update(choices=names, value=chosen if chosen in names else default_student(catalog, names))

    gr.on([app.load, tab.select], refresh, student, student, api_visibility="private", queue=False)
    start.click(on_start, [student, mode, ode_teacher, data_source, teacher_images, steps, lr, batch_size,
                           guidance_min, guidance_max], [message, monitor.job], api_name="consistency_start")
    cancel.click(on_cancel, monitor.job, message, api_name="consistency_cancel")
    resume.click(on_resume, monitor.job, message, api_name="consistency_resume")
    monitor.wire(app, tab, "consistency_status")
