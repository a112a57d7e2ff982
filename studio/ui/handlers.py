"""Event handlers of the app: plain functions, no Gradio, called directly by the tests.

Bad input never raises here: a handler returns an empty result and a message
starting with "**Error:**" that names what was wrong and what is allowed.
"""

from pathlib import Path

from studio.catalog import Catalog, UnknownModelError, read_configs
from studio.compression import CompressionError, StudentSpec, plan_student, resolve_spec
from studio.generation import PipelineCache, Result, Settings, compare, speedups
from studio.history import History
from studio.jobs import JobError, JobManager, extract_dataset_zip, read_metrics
from studio.loading import ModelUnavailableError
from studio.profiling import input_geometry, profile_students

PRESET_CHOICES = ("base", "small", "tiny", "custom")
TABLE_HEADERS = ["student", "U-Net params", "x teacher", "G MACs (conv+linear)", "x teacher", "G MACs (+attention)", "x teacher"]
JOB_HEADERS = ["job", "name", "state", "step", "of", "steps/s", "loss_total"]
MAX_TRAIN_STEPS = 1_000_000
INPUT_ERRORS = (ValueError, UnknownModelError, ModelUnavailableError, CompressionError, JobError)


def error(message) -> str:
    return f"**Error:** {message}"


def spec_from_controls(preset: str, layers: str, keep_mid: bool, keep_innermost: bool) -> StudentSpec:
    """The spec the controls describe; the custom fields apply only to `custom`."""
    if preset != "custom":
        return resolve_spec(preset)
    layers = (layers or "").replace(" ", "") or "1"
    flags = ("" if keep_mid else ":no-mid") + ("" if keep_innermost else ":no-innermost")
    return StudentSpec.parse(f"custom:{layers}{flags}")


def design_table(teacher: str, preset: str, layers: str, keep_mid: bool, keep_innermost: bool,
                 resolution: int, catalog: Catalog) -> tuple[list[list], str]:
    """Rows comparing the teacher, the paper's students and the designed one."""
    if teacher not in {e.name for e in catalog.teachers()}:
        return [], error(f"unknown teacher {teacher!r}; choose one of {', '.join(e.name for e in catalog.teachers())}.")
    try:
        spec = spec_from_controls(preset, layers, keep_mid, keep_innermost)
        archs = tuple(dict.fromkeys(("base", "small", "tiny", str(spec))))
        report = profile_students(teacher, archs, int(resolution or 0) or None, 1, catalog)
    except (CompressionError, ValueError) as problem:
        return [], error(problem)
    first = report["rows"][0]
    rows = [[
        row["arch"] + (" (yours)" if row["arch"] == str(spec) else ""),
        f"{row['unet_params']:,}", round(row["unet_params"] / first["unet_params"], 3),
        float(f"{row['macs_paper'] / 1e9:.4g}"), round(row["macs_paper"] / first["macs_paper"], 3),
        float(f"{row['macs_total'] / 1e9:.4g}"), round(row["macs_total"] / first["macs_total"], 3),
    ] for row in report["rows"]]
    summary = (f"{teacher} at {report['resolution']}x{report['resolution']}, batch 1, MACs per U-Net step. "
               "'conv+linear' is the paper's convention; '+attention' adds the attention matrix products.")
    return rows, summary


def catalogue_rows(catalog: Catalog) -> list[list]:
    return [[e.name, e.role, e.family, e.teacher or "", e.arch or "", e.source, e.description] for e in catalog]


def family_models(catalog: Catalog, family: str) -> list[str]:
    """The teacher(s) of a family first, then their students."""
    teachers = [e.name for e in catalog.teachers() if e.family == family]
    return teachers + [s.name for t in teachers for s in catalog.students_of(t)]


def with_job_students(catalog: Catalog, jobs: JobManager) -> Catalog:
    """The catalogue plus the students finished training jobs made."""
    extra = [e for e in jobs.finished_students() if e.name not in catalog and e.teacher in catalog]
    return catalog.with_entries(extra) if extra else catalog


# --- Compare and img2img ---------------------------------------------------------------------------------------

def _settings(prompt, negative, seed, steps, guidance, scheduler, resolution, strength=0.75) -> Settings:
    try:
        return Settings(prompt=prompt or "", negative_prompt=negative or "", seed=int(seed), steps=int(steps),
                        guidance=float(guidance), scheduler=scheduler, resolution=int(resolution or 0) or None,
                        strength=float(strength))
    except (TypeError, ValueError):
        raise ValueError("seed, steps, resolution must be whole numbers and guidance, strength numbers") from None


def readout_table(results: list[Result], teacher: str | None, device: str = "cpu") -> str:
    ratios = speedups(results, teacher)
    lines = ["| model | total | U-Net / step | speed-up (total, U-Net) | U-Net params | G MACs / step (conv+linear; +attn) | loading |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        ratio = ratios[r.model]
        speed = f"{ratio[0]:.2f}x, {ratio[1]:.2f}x" if ratio else "- (teacher not run)"
        load = f"{r.load_seconds:.1f} s" if r.load_seconds else "cached"
        lines.append(f"| {r.model} | {r.seconds:.3f} s | {r.unet_step_seconds * 1000:.1f} ms | {speed} | "
                     f"{r.unet_params:,} | {r.macs_paper / 1e9:.3g}; {r.macs_total / 1e9:.3g} | {load} |")
    first = results[0]
    lines.append(f"\n{first.resolution}x{first.resolution}, {first.settings.steps} steps, {first.settings.scheduler}, "
                 f"guidance {first.settings.guidance}, seed {first.settings.seed}, on {device}. "
                 "Timings exclude loading (models are warmed up first); the device is synchronized around every "
                 "U-Net call; U-Net / step is the median call (both CFG halves run in one batch). "
                 "MACs: one U-Net call at batch 1.")
    return "\n".join(lines)


def compare_view(cache: PipelineCache, history: History, models: list[str], prompt, negative, seed, steps,
                 guidance, scheduler, resolution, init_image=None, strength=0.75, callback=None):
    """(gallery items [(png path, caption)], readout markdown) for the chosen models."""
    try:
        settings = _settings(prompt, negative, seed, steps, guidance, scheduler, resolution, strength)
        results = compare(cache, list(models or []), settings, init_image, callback)
    except INPUT_ERRORS as problem:
        return [], error(problem)
    teachers = {cache.catalog.get(m).teacher or m for m in models}
    teacher = teachers.pop() if len(teachers) == 1 else None
    items = []
    for result in results:
        metadata = {**result.metadata(), "mode": "img2img" if init_image is not None else "txt2img"}
        path = history.save(result.image, metadata)
        items.append((str(path), f"{result.model}: {result.seconds:.2f} s"))
    return items, readout_table(results, teacher, str(cache.device))


def open_upload(path):
    """An uploaded image, or ValueError saying it is not one."""
    from PIL import Image, UnidentifiedImageError

    if path is None:
        raise ValueError("no input image; upload one (PNG, JPEG or WebP)")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError) as problem:
        raise ValueError(f"the upload {Path(str(path)).name} is not a readable image ({problem})") from None


def img2img_view(cache, history, models, image_path, strength, prompt, negative, seed, steps, guidance, scheduler,
                 resolution, callback=None):
    try:
        image = open_upload(image_path)
    except ValueError as problem:
        return [], error(problem)
    return compare_view(cache, history, models, prompt, negative, seed, steps, guidance, scheduler, resolution,
                        image, strength, callback)


# --- Training jobs ---------------------------------------------------------------------------------------------

def positive_number(name, value, kind=float, maximum=None):
    try:
        value = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if value <= 0 or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be above 0" + (f" and at most {maximum:g}" if maximum else "") + f", got {value}")
    return value


def train_start(jobs: JobManager, catalog: Catalog, teacher, preset, layers, keep_mid, keep_innermost, data_source,
                upload, steps, lr, lambda_task, lambda_out, lambda_feat, batch_size=8) -> tuple[str | None, str]:
    """Start a distillation job; (job id or None, message)."""
    from studio.distillation.data import DataError, open_data

    try:
        entry = catalog.get(teacher)
        if entry.role != "teacher":
            raise ValueError(f"{teacher} is a student; choose a teacher: {', '.join(e.name for e in catalog.teachers())}")
        spec = spec_from_controls(preset, layers, keep_mid, keep_innermost)
        steps = positive_number("steps", steps, int, MAX_TRAIN_STEPS)
        lr = positive_number("learning rate", lr, float, 1.0)
        batch_size = positive_number("batch size", batch_size, int, 1024)
        weights = [float(w) for w in (lambda_task, lambda_out, lambda_feat)]
        if min(weights) < 0 or max(weights) == 0:
            raise ValueError(f"loss weights must be >= 0 and not all 0, got {weights}")
        configs = read_configs(teacher, catalog)
        plan_student(configs["unet"], str(spec))  # a design this teacher can't give fails here, not in the job
        resolution = input_geometry(configs).resolution
        if data_source == "toy":
            open_data("toy", resolution)  # 32x32 shapes: for teachers that draw at 32 pixels
        elif data_source != "upload":
            raise ValueError(f"data source must be 'toy' or 'upload', got {data_source!r}")
        elif not upload:
            raise ValueError("no dataset uploaded; upload a zip in the imagefolder layout (metadata.jsonl with "
                             "file_name and text, and the images)")
    except (*INPUT_ERRORS, DataError) as problem:
        return None, error(problem)

    def prepare(folder: Path) -> list[str]:
        if data_source == "toy":
            return ["--data", "toy"]
        data = extract_dataset_zip(Path(upload), folder / "data")
        try:
            open_data(str(data), resolution)  # the same checks the trainer makes, before a process starts
        except DataError as problem:
            raise JobError(f"the dataset zip can't be trained on: {problem}") from None
        return ["--data", str(data)]

    argv = ["distill", "--teacher", teacher, "--arch", str(spec), "--steps", str(steps), "--lr", str(lr),
            "--batch-size", str(batch_size), "--lambda-task", str(weights[0]), "--lambda-out", str(weights[1]),
            "--lambda-feat", str(weights[2]), "--checkpoint-every", str(max(1, min(500, steps // 4))),
            "--log-every", str(max(1, min(10, steps // 20)))]
    if entry.family == "toy":
        from studio.toy.evaluate import DEFAULT_GUIDANCE
        from studio.toy.students import VALIDATION_PROMPTS

        argv += [a for p in VALIDATION_PROMPTS[:2] for a in ("--validation-prompt", p)]
        argv += ["--validation-guidance", str(DEFAULT_GUIDANCE)]
    name = f"{spec} from {teacher}, {steps} steps"
    try:
        job_id = jobs.create("distill", name, argv, steps, {"teacher": teacher, "arch": str(spec),
                                                             "family": entry.family}, prepare, catalog)
    except (JobError, OSError) as problem:
        return None, error(problem)
    return job_id, f"started job {job_id}: {name}"


def job_rows(jobs: JobManager) -> list[list]:
    rows = []
    for s in jobs.statuses():
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
    try:
        status = jobs.status(job_id)
    except JobError as problem:
        return [], error(problem), None
    speed = "-" if status.steps_per_second is None else f"{status.steps_per_second:.2f} steps/s"
    losses = ", ".join(f"{k} {v:.4f}" for k, v in status.losses.items())
    text = f"**{status.id}** ({status.name}): {status.state}, step {status.step} of {status.steps}, {speed}. {losses}"
    if status.message:
        text += f"\n\n{status.message}"
    if status.state == "finished" and status.kind == "distill":
        text += f"\n\nThe student is in the Compare tab's model list as `job-{status.id}`."
    validation = sorted((jobs.run_folder(job_id) / "validation").glob("*.png"))
    return loss_curves(jobs, job_id), text, str(validation[-1]) if validation else None


def train_status(jobs: JobManager, job_id: str | None) -> tuple[list[list], list[dict], str, str | None]:
    """(job table, loss curve rows, status markdown, latest validation image or None)."""
    rows = job_rows(jobs)
    if not job_id:
        return rows, [], "No job selected." if rows else "No training jobs yet.", None
    return (rows, *job_view(jobs, job_id))


def _on_job(action, job_id: str | None) -> str:
    if not job_id:
        return error("no job selected; choose one in the job list")
    try:
        return action(job_id)
    except JobError as problem:
        return error(problem)


def train_cancel(jobs: JobManager, job_id: str | None) -> str:
    return _on_job(jobs.cancel, job_id)


def train_resume(jobs: JobManager, job_id: str | None) -> str:
    return _on_job(jobs.resume, job_id)
