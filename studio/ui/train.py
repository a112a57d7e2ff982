"""The Train a student tab: design a student by block removal, see its size and the teacher's block sensitivity,
distill it as a background job; below it, consistency distillation (studio/ui/consistency.py)."""

import json
from pathlib import Path

import gradio as gr

from studio.ui import consistency, inputs

from studio.jobs import JobError, JobManager, extract_dataset_zip, unpacked_bytes
from studio.jobs.datasets import place_shards
from studio.kinds.data import DATA_SOURCES, DataError, open_data
from studio.kinds.distillation.config import DistillConfig
from studio.kinds.evaluation.sensitivity import predict, removed_units
from studio.kinds.shards import ShardData
from studio.kinds.sources import open_source
from studio.models.catalog import Catalog, read_configs
from studio.models.compression import StudentSpec, plan_student, resolve_spec
from studio.models.profiling import input_geometry, profile_students
from studio.ui.common import ZEROGPU_NOTE, JobMonitor, Studio, endpoint, job_action, number

PRESET_CHOICES = ("base", "small", "tiny", "custom")
MAX_DESIGN_RESOLUTION = 4096
TABLE_HEADERS = ["student", "U-Net params", "x teacher", "G MACs (conv+linear)", "x teacher", "G MACs (+attention)",
                 "x teacher"]


def spec_from_controls(preset: str, layers: str, keep_mid: bool, keep_innermost: bool) -> StudentSpec:
    """The spec the controls describe; the custom fields apply only to `custom`."""
    if preset not in PRESET_CHOICES:
        raise ValueError(f"student: must be one of {', '.join(PRESET_CHOICES)}, got {preset!r}")
    if preset != "custom":
        return resolve_spec(preset)
    layers = (layers or "").replace(" ", "") or "1"
    flags = ("" if keep_mid else ":no-mid") + ("" if keep_innermost else ":no-innermost")
    return StudentSpec.parse(f"custom:{layers}{flags}")


def teacher_entry(catalog: Catalog, teacher: str):
    teachers = [e.name for e in catalog.teachers()]
    if teacher not in teachers:
        raise ValueError(f"teacher: {teacher!r} is not a teacher in the catalogue; choose one of {', '.join(teachers)}")
    return catalog.get(teacher)


def design_table(catalog: Catalog, teacher: str, preset: str, layers: str, keep_mid: bool, keep_innermost: bool,
                 resolution) -> tuple[list[list], str]:
    """Rows comparing the teacher, the paper's students and the designed one, and a line saying what they count."""
    teacher_entry(catalog, teacher)
    spec = spec_from_controls(preset, layers, keep_mid, keep_innermost)
    archs = tuple(dict.fromkeys(("base", "small", "tiny", str(spec))))
    resolution = number("resolution", resolution or 0, int)
    if resolution and not 8 <= resolution <= MAX_DESIGN_RESOLUTION:
        raise ValueError(f"resolution: must be 0 (the teacher's) or from 8 to {MAX_DESIGN_RESOLUTION}, got {resolution}")
    report = profile_students(teacher, archs, resolution or None, 1, catalog)
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


def sensitivity_view(catalog: Catalog, teacher: str, preset: str, layers: str, keep_mid: bool, keep_innermost: bool,
                     design_macs_ratio: float) -> tuple[str | None, str]:
    """The teacher's shipped block sensitivity map (PNG path) and what its single removals predict for the design,
    beside the design's measured MACs ratio; (None, how to make one) where there is no map."""
    path = catalog.family(teacher_entry(catalog, teacher).family).sensitivity_map_path
    result = json.loads(path.read_text()) if path and path.is_file() else None
    if result is None or result["teacher"] != teacher:
        return None, (f"No block sensitivity map of {teacher} is shipped; make one with `python -m studio "
                      f"sensitivity --teacher {teacher}`.")
    spec = spec_from_controls(preset, layers, keep_mid, keep_innermost)
    guess = predict(result, removed_units(spec, read_configs(teacher, catalog)["unet"]))
    judge = ("" if guess["judge_change"] is None else
             f", and {guess['judge_change'] * 100:+.1f} judge points before any distillation")
    unmeasured = (f" Not measured alone (their width changes): {', '.join(guess['not_measured'])}."
                  if guess["not_measured"] else "")
    text = (f"**Block sensitivity of {teacher}** (each unit removed alone, no retraining; {result['n']} prompts, seed "
            f"{result['seed']}; MACs: {result['mac_convention']}). This design removes {len(guess['units'])} units "
            f"({', '.join(guess['units']) or 'none'}). Their single removals sum to {guess['macs_saved']:.1%} fewer "
            f"MACs (measured for the whole design: {1 - design_macs_ratio:.1%}) and {guess['params_saved']:.1%} "
            f"fewer parameters{judge}: a sum, since units interact.{unmeasured}")
    return str(path.with_suffix(".png")), text


def train_start(jobs: JobManager, catalog: Catalog, teacher, preset, layers, keep_mid, keep_innermost, data_source,
                upload, steps, lr, lambda_task, lambda_out, lambda_feat, batch_size=8, processes=1, data_path="",
                allow_paths=False) -> tuple[str, str]:
    """Start a distillation job; (job id, message). Everything is checked before a job folder is made. `data_source`
    "path" trains on `data_path`, a folder or pattern on this machine (a local studio only: `allow_paths`)."""
    entry = teacher_entry(catalog, teacher)
    spec = spec_from_controls(preset, layers, keep_mid, keep_innermost)
    family = catalog.family(entry.family)
    steps = number("steps", steps, int)
    config = DistillConfig(
        teacher=teacher, arch=str(spec), data=data_path if data_source == "path" else data_source, out="-",
        steps=steps, batch_size=number("batch size", batch_size, int), lr=number("learning rate", lr, float),
        lambda_task=number("λ task", lambda_task, float), lambda_out=number("λ output KD", lambda_out, float),
        lambda_feat=number("λ feature KD", lambda_feat, float), validation_prompts=family.validation_prompts[:2],
        processes=number("processes", processes, int),
        validation_guidance=family.guidance)
    config.check()
    configs = read_configs(teacher, catalog)
    plan_student(configs["unet"], str(spec))  # a design this teacher can't give fails here, not in the job
    resolution = input_geometry(configs).resolution
    if data_source == "upload":
        if not upload:
            raise ValueError("data: no dataset uploaded; upload a zip in the imagefolder layout (metadata.jsonl with "
                             "file_name and text, and the images)")
    elif data_source in DATA_SOURCES:
        open_data(data_source, resolution)  # e.g. the toy world's 64x64 scenes: for teachers that draw at 64 px
    elif data_source == "path" and allow_paths:
        if not str(data_path).strip():
            raise ValueError("data path: empty; give an imagefolder, webdataset shards, a datasets folder or parquet, "
                             "or a feature cache on this machine")
        open_source(data_path, resolution, teacher)  # the trainer's own checks, before a job starts
    else:
        choices = [*DATA_SOURCES, "upload", *(["path"] if allow_paths else [])]
        raise ValueError(f"data: must be one of {', '.join(choices)}, got {data_source!r}")

    shards = data_source == "upload" and str(upload).endswith(".tar")

    def prepare(folder: Path) -> dict:
        if data_source != "upload":
            return {}
        if shards:  # webdataset shards: streamed by the trainer, never unpacked to image files
            data = place_shards(Path(upload), folder / "shards", jobs.limits)
            try:
                ShardData(str(data), resolution)  # the trainer's checks of the first shard
            except DataError as problem:
                raise JobError(f"the shards can't be trained on: {problem}") from None
            return {"data": str(data)}
        data = extract_dataset_zip(Path(upload), folder / "data", jobs.limits)
        try:
            open_data(str(data), resolution)  # the same checks the trainer makes, before a process starts
        except DataError as problem:
            raise JobError(f"the dataset zip can't be trained on: {problem}") from None
        return {"data": str(data)}

    unpacked = None
    if data_source == "upload":
        unpacked = {"dataset": Path(upload).stat().st_size if shards else unpacked_bytes(Path(upload))}
    job_id = jobs.create("distill", config, prepare=prepare, catalog=catalog, prepared_bytes=unpacked)
    return job_id, f"started job {job_id}: {jobs.spec(job_id)['name']}"


def build(app: gr.Blocks, studio: Studio) -> None:
    teachers = [e.name for e in studio.catalog.teachers()]
    family_teachers = [t for t in teachers if studio.catalog.get(t).family == studio.family.name]
    with gr.Tab("Train a student") as tab:
        gr.Markdown("Design a student by block removal and distill it from its teacher with the paper's objective "
                    f"(task + output KD + feature KD). {ZEROGPU_NOTE}")
        with gr.Row():
            teacher = inputs.Dropdown(teachers, value=(family_teachers or teachers)[0], label="Teacher")
            preset = inputs.Radio(list(PRESET_CHOICES), value="small", label="Student")
            resolution = inputs.Number(value=0, precision=0, label="Resolution for MACs (0 = the teacher's)")
        with gr.Row(visible=False) as custom_row:
            layers = inputs.Textbox(value="1",
                                    label="Custom: layers kept per down stage (one number, or one per stage)")
            keep_mid = inputs.Checkbox(value=False, label="Custom: keep mid block")
            keep_innermost = inputs.Checkbox(value=True, label="Custom: keep innermost stage")
        with gr.Row():
            with gr.Column(scale=3):
                table = gr.Dataframe(headers=TABLE_HEADERS, label="Parameters and MACs", interactive=False)
                summary = gr.Markdown()
                sensitivity = gr.Markdown()
            sensitivity_map = gr.Image(label="Block sensitivity (each unit removed alone)", type="filepath",
                                       interactive=False, scale=2)
        with gr.Row():
            local = not studio.hosting.public
            data_source = inputs.Radio([*DATA_SOURCES, "upload", *(["path"] if local else [])],
                                       value=studio.family.train_data or "upload",
                                       label="Data (a registered source, an uploaded zip"
                                             + (", or a path on this machine)" if local else ")"))
            data_path = inputs.Textbox(value="", label="Data path: an imagefolder, webdataset shards (folder or "
                                             "{00000..00099}.tar pattern), a datasets folder or parquet, a feature "
                                             "cache", visible=local)
            upload = inputs.File(label="Dataset: an imagefolder zip (metadata.jsonl + images) or webdataset shards "
                                   "(.tar)", file_types=[".zip", ".tar"],
                             type="filepath")
        with gr.Row():
            steps = inputs.Number(value=studio.family.train_steps, precision=0, label="Steps")
            lr = inputs.Number(value=studio.family.train_lr, label="Learning rate")
            batch_size = inputs.Number(value=studio.family.train_batch_size, precision=0, label="Batch size")
            lambda_task = inputs.Number(value=1.0, label="λ task")
            lambda_out = inputs.Number(value=1.0, label="λ output KD")
            lambda_feat = inputs.Number(value=1.0, label="λ feature KD")
            processes = inputs.Number(value=1, precision=0, minimum=1, label="Processes (GPUs; batch size is per "
                                                                             "process)")
        with gr.Row():
            start = gr.Button("Start training", variant="primary")
            cancel = gr.Button("Cancel")
            resume = gr.Button("Resume")
        message = gr.Markdown()
        monitor = JobMonitor(studio, "distill", "Job", "Latest validation: teacher (top) vs student (bottom)")
        consistency.build(app, studio, tab)  # the second kind: few-step students

    @endpoint("design")
    def on_design(teacher, preset, layers, keep_mid, keep_innermost, resolution):
        """Parameters and MACs per U-Net step of a teacher, the paper's Base, Small and Tiny students and a student
        designed by block removal (MACs counted as conv + linear, as the paper, and with attention products).

        Args:
            teacher: a teacher in the catalogue, e.g. toy-teacher or sd-v1.4
            preset: base, small, tiny or custom
            layers: custom only: layers kept per down stage, one number or one per stage (e.g. 1,2,2,1)
            keep_mid: custom only: keep the mid block
            keep_innermost: custom only: keep the innermost stage
            resolution: image side in pixels for the MACs; 0 for the teacher's own
        """
        with studio.errors():
            rows, text = design_table(studio.catalog, teacher, preset, layers, keep_mid, keep_innermost, resolution)
            picture, note = sensitivity_view(studio.catalog, teacher, preset, layers, keep_mid, keep_innermost,
                                             next(r[4] for r in rows if r[0].endswith("(yours)")))
            return rows, text, picture, note

    @endpoint("train_start")
    def on_start(teacher, preset, layers, keep_mid, keep_innermost, data_source, upload, steps, lr, lambda_task,
                 lambda_out, lambda_feat, batch_size, processes, data_path, request: gr.Request):
        """Start distilling a block-removed student from its teacher as a background job (the paper's task, output
        KD and feature KD losses); returns a message and the new job's id.

        Args:
            teacher: a teacher in the catalogue
            preset: base, small, tiny or custom
            layers: custom only: layers kept per down stage
            keep_mid: custom only: keep the mid block
            keep_innermost: custom only: keep the innermost stage
            data_source: a registered data source (e.g. toy), upload, or (local studio) path
            upload: with data_source upload: a zip in the imagefolder layout (metadata.jsonl and images), or
                webdataset shards (a .tar shard, or a tar of shards)
            steps: optimizer steps
            lr: learning rate
            lambda_task: weight of the task loss
            lambda_out: weight of the output KD loss
            lambda_feat: weight of the feature KD loss
            batch_size: images per step and process
            processes: training processes (accelerate launch): one per GPU, or on a CPU processes that share its
                threads
            data_path: with data_source path (a local studio only): an imagefolder, shards, a datasets folder or
                parquet, or a feature cache on the studio's machine
        """
        with studio.errors():
            jobs = studio.workspace(request).jobs
            job_id, text = train_start(jobs, studio.catalog, teacher, preset, layers, keep_mid, keep_innermost,
                                       data_source, upload, steps, lr, lambda_task, lambda_out, lambda_feat, batch_size,
                                       processes, data_path, allow_paths=not studio.hosting.public)
            return text, gr.update(choices=jobs.ids("distill"), value=job_id)

    @endpoint("train_cancel")
    def on_cancel(job_id, request: gr.Request):
        """Cancel a running training job; it saves a checkpoint of its current step first and can be resumed.

        Args:
            job_id: the job's id
        """
        with studio.errors():
            return job_action(studio.workspace(request).jobs.cancel, job_id)

    @endpoint("train_resume")
    def on_resume(job_id, request: gr.Request):
        """Resume a cancelled, failed or interrupted training job from its latest checkpoint.

        Args:
            job_id: the job's id
        """
        with studio.errors():
            return job_action(studio.workspace(request).jobs.resume, job_id)

    design_inputs = [teacher, preset, layers, keep_mid, keep_innermost, resolution]
    design_outputs = [table, summary, sensitivity_map, sensitivity]
    app.load(on_design, design_inputs, design_outputs, api_name="design")  # named first: it keeps the name
    gr.on([c.change for c in design_inputs], on_design, design_inputs, design_outputs, api_visibility="private")
    preset.change(lambda p: gr.update(visible=p == "custom"), preset, custom_row, api_visibility="private",
                  queue=False)
    start.click(on_start, [*design_inputs[:5], data_source, upload, steps, lr, lambda_task, lambda_out, lambda_feat,
                           batch_size, processes, data_path], [message, monitor.job], api_name="train_start")
    cancel.click(on_cancel, monitor.job, message, api_name="train_cancel")
    resume.click(on_resume, monitor.job, message, api_name="train_resume")
    monitor.wire(app, tab, "train_status")
