"""The DreamBooth tab: personalize models from uploaded photos (one background job each), then compare them."""

import json
import time
from dataclasses import replace
from pathlib import Path

import gradio as gr

from studio.ui import inputs

from studio.inference.generation import Settings, sample
from studio.inference.safety import screen
from studio.jobs import JobManager
from studio.kinds.personalization.config import DreamBoothConfig
from studio.kinds.personalization.dreambooth import load_personalized
from studio.kinds.personalization.photos import PhotoLimits, check_photos, import_photos
from studio.limits import MAX_GUIDANCE, MAX_SAMPLING_STEPS
from studio.models.catalog import Catalog, read_configs
from studio.models.profiling import input_geometry
from studio.options import check_text
from studio.ui.common import (ZEROGPU_NOTE, JobMonitor, Studio, chosen_models, endpoint, job_action, number, on_gpu,
                              refresh_models_on_visit, selected_jobs)
from studio.ui.fairness import check_request
from studio.ui.workspaces import Workspace


def prompts(identifier: str, class_phrase: str) -> tuple[str, str]:
    """("a sks dog", "a dog") from the identifier and the class phrase."""
    identifier, class_phrase = (identifier or "").strip(), (class_phrase or "").strip()
    check_text("identifier", identifier, 50)
    check_text("class", class_phrase, 200)
    if not identifier or " " in identifier:
        raise ValueError(f"identifier: must be one rare word (like 'sks'), got {identifier!r}")
    if not class_phrase:
        raise ValueError("class: empty; say what the subject is (like 'dog')")
    return f"a {identifier} {class_phrase}", f"a {class_phrase}"


def dreambooth_start(jobs: JobManager, catalog: Catalog, photos: list, identifier: str, class_phrase: str,
                     models: list[str], steps, full: bool = False, class_images=200, guidance: float = 7.5,
                     ) -> tuple[list[str], str]:
    """One background job per chosen model, all on the same photos; (job ids, message).

    The photos and every job's config are checked before any job is made: a bad upload changes nothing.
    """
    models = chosen_models(catalog, models, "the teacher and/or students to personalize")
    instance_prompt, class_prompt = prompts(identifier, class_phrase)
    steps = number("steps", steps, int)
    configs = []
    for name in models:
        resolution = input_geometry(read_configs(catalog.get(name).name, catalog)).resolution
        config = DreamBoothConfig(
            model=name, photos="-", instance_prompt=instance_prompt, class_prompt=class_prompt, out="-",
            steps=steps, mode="full" if full else "lora", class_images=number("class images", class_images, int),
            guidance=number("guidance", guidance, float), validation_prompts=(instance_prompt, class_prompt))
        config.check()
        configs.append((config, resolution))
    paths = [Path(p) for p in (photos or [])]
    limits = PhotoLimits(min_side=max(r for _, r in configs), max_photos=jobs.limits.max_photos,
                         max_bytes=jobs.limits.max_photo_bytes)
    check_photos(paths, limits)
    jobs.check_room(len(configs))  # all of them or none
    job_ids = []
    for config, resolution in configs:
        def prepare(folder: Path, resolution=resolution) -> dict:
            # normalized copies under names we choose
            import_photos(paths, folder / "photos", resolution, replace(limits, min_side=resolution))
            return {"photos": str(folder / "photos")}

        job_ids.append(jobs.create("dreambooth", config, prepare=prepare, catalog=catalog))
    return job_ids, f"started {len(job_ids)} DreamBooth job(s): {', '.join(job_ids)}"


def dreambooth_results(studio: Studio, job_ids: list[str], prompt: str, seed, steps, guidance,
                       workspace: Workspace | None = None):
    """Images of the user's prompt from every finished personalized model (of the workspace's jobs), side by side,
    with readouts."""
    if not prompt or not prompt.strip():
        raise ValueError("prompt: empty; use the identifier, like 'a sks dog in the snow'")
    Settings(prompt, seed=number("seed", seed, int), steps=number("steps", steps, int),
             guidance=number("guidance", guidance, float)).check()  # the checks Compare makes
    seed, steps, guidance = int(seed), int(steps), float(guidance)
    workspace = workspace or studio.workspace()
    jobs = workspace.jobs
    job_ids = selected_jobs(job_ids)
    finished = [j for j in job_ids if jobs.spec(j)["kind"] == "dreambooth" and jobs.state(j)[0] == "finished"]
    if not finished:
        raise ValueError("jobs: none of the chosen jobs has finished yet")
    models = [jobs.spec(j)["config"]["model"] for j in finished]
    check_request(studio.hosting, studio.device, studio.current_catalog(workspace), models,
                  [Settings(prompt, steps=steps, guidance=guidance)])
    if studio.device == "cpu":
        studio.share_cpu()
    items, notes, lines = [], [], ["| model | image time | training time | peak memory while training |",
                        "| --- | ---: | ---: | ---: |"]
    for job_id in finished:
        model = jobs.spec(job_id)["config"]["model"]
        card = json.loads((jobs.run_folder(job_id) / "card.json").read_text())
        pipeline = load_personalized(model, jobs.run_folder(job_id), studio.current_catalog(workspace))
        pipeline = pipeline.to(studio.device)
        start = time.perf_counter()
        image = sample(pipeline, [prompt], [seed], steps, guidance)[0]
        seconds = time.perf_counter() - start
        image, withheld = screen(studio.safety(), image)
        path = workspace.history.save(image, {"model": f"{model} + dreambooth {job_id}", "prompt": prompt,
                                           "negative_prompt": "", "seed": seed, "steps": steps,
                                           "guidance": guidance,
                                           "scheduler": type(pipeline.scheduler).__name__,
                                           "resolution": image.size[0]})
        items.append((str(path), f"{model}: {seconds:.2f} s" + (" (withheld)" if withheld else "")))
        lines.append(f"| {model} | {seconds:.2f} s | {card['train_seconds']:.0f} s | "
                     f"{card['peak_memory_mb']:.0f} MB ({card['memory_kind']}) |")
        if withheld:
            notes.append(f"\n{model}: the safety checker flagged this image; a placeholder is shown instead.")
    return items, "\n".join(lines + notes)


def build(app: gr.Blocks, studio: Studio) -> None:
    family, models_now = studio.family, studio.models()
    with gr.Tab("DreamBooth") as tab:
        gr.Markdown("Personalize the teacher and/or students from a few photos (DreamBooth; LoRA through peft by "
                    "default, rank 16 / alpha 27 on to_q, to_v; prior preservation with class images the model "
                    f"makes itself). One background job per model, on the same photos. {ZEROGPU_NOTE}")
        with gr.Row():
            photos = inputs.File(file_count="multiple", file_types=["image"], type="filepath",
                             label="Photos (JPEG, PNG, WebP; 1-50)")
            preview = gr.Gallery(interactive=False, label="Preview", columns=5, height=200)
        with gr.Row():
            identifier = inputs.Textbox(value="sks", label="Identifier (one rare word)")
            class_phrase = inputs.Textbox(value=family.dreambooth_class, label="Class (what the subject is)")
            models = inputs.ChoiceList(models_now, value=models_now[:1], label="Models to personalize")
        with gr.Row():
            steps = inputs.Number(value=family.dreambooth_steps, precision=0, label="Steps")
            mode = inputs.Radio(["LoRA", "full"], value="LoRA", label="Finetuning")
            class_images = inputs.Number(value=family.class_images, precision=0, label="Class images")
            start = gr.Button("Start DreamBooth", variant="primary")
            cancel = gr.Button("Cancel")
        message = gr.Markdown()
        monitor = JobMonitor(studio, "dreambooth", "DreamBooth jobs (plot shows the first)",
                             "Latest validation: instance prompt, class prompt", multiselect=True)
        with gr.Row():
            prompt = inputs.Textbox(value=family.dreambooth_prompt, label="Prompt for the personalized models")
            seed = inputs.Number(value=0, precision=0, label="Seed")
            sample_steps = inputs.Slider(1, MAX_SAMPLING_STEPS, value=family.steps, step=1, label="Steps")
            guidance = inputs.Slider(0, MAX_GUIDANCE, value=family.guidance, step=0.5, label="Guidance")
        generate = gr.Button("Generate with the personalized models")
        gallery = gr.Gallery(interactive=False, label="Personalized, side by side", columns=4, format="png", height=300)
        readout = gr.Markdown()

    @endpoint("dreambooth_start")
    def on_start(files, identifier, class_phrase, chosen, steps, mode, class_images, request: gr.Request):
        """Personalize models from a few photos of one subject (DreamBooth), one background job per model; returns a
        message and the jobs' ids.

        Args:
            files: 1 to 50 photos of the subject (JPEG, PNG, WebP)
            identifier: one rare word that will name the subject, e.g. sks
            class_phrase: what the subject is, e.g. dog
            chosen: catalogue model names to personalize
            steps: optimizer steps
            mode: LoRA or full
            class_images: images of the class each model draws first, for prior preservation
        """
        with studio.errors():
            if mode not in ("LoRA", "full"):
                raise ValueError(f"finetuning: must be LoRA or full, got {mode!r}")
            workspace = studio.workspace(request)
            ids, text = dreambooth_start(workspace.jobs, studio.current_catalog(workspace), files, identifier,
                                         class_phrase, chosen, steps, mode == "full", class_images, family.guidance)
            return text, gr.update(choices=workspace.jobs.ids("dreambooth"), value=ids)

    @endpoint("dreambooth_cancel")
    def on_cancel(job_ids, request: gr.Request):
        """Cancel running DreamBooth jobs; each saves a checkpoint first.

        Args:
            job_ids: a job id or a list of them
        """
        with studio.errors():
            return job_action(studio.workspace(request).jobs.cancel, job_ids)

    @on_gpu
    @endpoint("dreambooth_results")
    def on_generate(job_ids, prompt, seed, steps, guidance, request: gr.Request):
        """Draw a prompt with each finished DreamBooth job's personalized model, side by side.

        Args:
            job_ids: finished DreamBooth job ids
            prompt: what to draw, with the identifier, e.g. a sks dog on the beach
            seed: the random seed
            steps: sampling steps (1 to 100)
            guidance: classifier-free guidance scale (0 to 20)
        """
        with studio.errors():
            return dreambooth_results(studio, job_ids, prompt, seed, steps, guidance, studio.workspace(request))

    photos.change(lambda files: files or [], photos, preview, api_visibility="private", queue=False)
    start.click(on_start, [photos, identifier, class_phrase, models, steps, mode, class_images],
                [message, monitor.job], api_name="dreambooth_start")
    cancel.click(on_cancel, monitor.job, message, api_name="dreambooth_cancel")
    generate.click(on_generate, [monitor.job, prompt, seed, sample_steps, guidance], [gallery, readout],
                   api_name="dreambooth_results", concurrency_id="device", concurrency_limit=1)
    monitor.wire(app, tab, "dreambooth_status")
    refresh_models_on_visit(app, tab, studio, models)
