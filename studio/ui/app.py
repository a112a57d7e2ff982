"""The studio's Gradio app: components wired to the plain functions in `handlers`."""

import random
from pathlib import Path

import gradio as gr
import pandas as pd

from studio.catalog import Catalog
from studio.generation import MAX_GUIDANCE, MAX_STEPS, SCHEDULERS, PipelineCache
from studio.history import History
from studio.jobs import JobManager
from studio.toy.evaluate import DEFAULT_GUIDANCE
from studio.ui import evaluate, handlers, personalize
from studio.ui.handlers import JOB_HEADERS, PRESET_CHOICES, TABLE_HEADERS

try:  # Hugging Face ZeroGPU: a GPU exists only inside functions decorated with spaces.GPU
    import spaces

    on_gpu = spaces.GPU
except ImportError:
    def on_gpu(function):
        return function

ZEROGPU_NOTE = ("Training runs as a background process on this machine. On a ZeroGPU Space it gets no GPU "
                "(ZeroGPU lends one only inside a request), so train on dedicated hardware.")


def _progress_callback(progress):
    def callback(event):
        done = event["index"] * event["steps"] + event["step"]
        progress(done / (event["models"] * event["steps"]), desc=f"{event['model']}: step {event['step']}/{event['steps']}")
    return callback


def _generation_controls(family: str, defaults: dict):
    with gr.Row():
        prompt = gr.Textbox(value=defaults["prompt"], label="Prompt", scale=3)
        negative = gr.Textbox(value="", label="Negative prompt", scale=2)
    with gr.Row():
        seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
        dice = gr.Button("Random seed", size="sm")
        steps = gr.Slider(1, MAX_STEPS, value=25, step=1, label="Steps")
        guidance = gr.Slider(0, MAX_GUIDANCE, value=defaults["guidance"], step=0.5, label="Guidance")
        scheduler = gr.Dropdown(list(SCHEDULERS), value="PNDM", label="Scheduler")
        resolution = gr.Number(value=0, precision=0, label="Resolution (px; 0 = each model's own)")
    dice.click(lambda: random.randrange(2**31), None, seed, api_name=False)
    return [prompt, negative, seed, steps, guidance, scheduler, resolution]


def build_app(catalog: Catalog, family: str = "toy", device: str = "cpu", data_dir: Path | str = "studio-data") -> gr.Blocks:
    data_dir = Path(data_dir)
    jobs = JobManager(data_dir / "jobs")
    history = History(data_dir / "history")
    base_catalog = catalog
    catalog = handlers.with_job_students(base_catalog, jobs)
    if not handlers.family_models(catalog, family):
        families = sorted({e.family for e in catalog})
        raise ValueError(f"no teacher of family {family!r} in the catalogue; families: {', '.join(families)}")
    cache = PipelineCache(catalog, device)
    teachers = [e.name for e in catalog.teachers()]
    defaults = {"prompt": "a red circle on a blue background" if family == "toy" else "",
                "guidance": DEFAULT_GUIDANCE if family == "toy" else 7.5}

    def current_models():
        cache.catalog = handlers.with_job_students(base_catalog, jobs)  # students finished since start-up
        return handlers.family_models(cache.catalog, family)

    def refresh_models(chosen):
        models = current_models()
        return gr.update(choices=models, value=[m for m in chosen or [] if m in models])

    @on_gpu
    def on_compare(models, prompt, negative, seed, steps, guidance, scheduler, resolution, progress=gr.Progress()):
        items, readout = handlers.compare_view(cache, history, models, prompt, negative, seed, steps, guidance,
                                               scheduler, resolution, callback=_progress_callback(progress))
        return items, readout, history.recent()

    @on_gpu
    def on_img2img(models, image, strength, prompt, negative, seed, steps, guidance, scheduler, resolution,
                   progress=gr.Progress()):
        items, readout = handlers.img2img_view(cache, history, models, image, strength, prompt, negative, seed, steps,
                                               guidance, scheduler, resolution, callback=_progress_callback(progress))
        return items, readout, history.recent()

    def on_select(items, event: gr.SelectData):
        return items[event.index][0] if items else None

    def on_design(teacher, preset, layers, keep_mid, keep_innermost, resolution):
        return handlers.design_table(teacher, preset, layers, keep_mid, keep_innermost, resolution, catalog)

    def on_train_start(teacher, preset, layers, keep_mid, keep_innermost, data_source, upload, steps, lr,
                       lambda_task, lambda_out, lambda_feat, batch_size):
        job_id, message = handlers.train_start(jobs, base_catalog, teacher, preset, layers, keep_mid, keep_innermost,
                                               data_source, upload, steps, lr, lambda_task, lambda_out,
                                               lambda_feat, batch_size)
        choices = jobs.ids("distill")
        return message, gr.update(choices=choices, value=job_id) if job_id else gr.update(choices=choices)

    def on_dreambooth_start(photos, identifier, class_phrase, models, steps, mode, class_images):
        job_ids, message = personalize.dreambooth_start(jobs, cache.catalog, photos, identifier, class_phrase, models,
                                                        steps, mode == "full", class_images, defaults["guidance"])
        return message, gr.update(choices=jobs.ids("dreambooth"), value=job_ids or None)

    @on_gpu
    def on_dreambooth_results(job_ids, prompt, seed, steps, guidance):
        return personalize.dreambooth_results(jobs, cache.catalog, job_ids, prompt, seed, steps, guidance, device)

    def on_evaluate_start(models, prompts_file, n):
        job_id, message = evaluate.evaluate_start(jobs, cache.catalog, models, prompts_file, n,
                                                  ["--device", device])
        return message, gr.update(choices=jobs.ids("evaluate"), value=job_id) if job_id else gr.update()

    def on_train_status(job_id):
        rows, curves, text, validation = handlers.train_status(jobs, job_id)
        plot = pd.DataFrame(curves, columns=["step", "loss", "term"])
        return rows, plot, text, validation

    def on_booth_status(job_ids):
        texts, first = [], None
        for job_id in job_ids or []:
            curves, text, validation = handlers.job_view(jobs, job_id)
            texts.append(text)
            first = first or (curves, validation)
        curves, validation = first or ([], None)
        return pd.DataFrame(curves, columns=["step", "loss", "term"]), "\n\n".join(texts), validation

    with gr.Blocks(title="BK-SDM Studio") as app:
        gr.Markdown("# BK-SDM Studio\nCompress Stable Diffusion by block removal (BK-SDM, arXiv 2305.15798) "
                    "and see what it costs.")
        models_now = current_models()
        with gr.Tab("Compare") as compare_tab:
            compare_models = gr.CheckboxGroup(models_now, value=models_now[:4], label=f"Models ({family} family)")
            controls = _generation_controls(family, defaults)
            compare_run = gr.Button("Compare", variant="primary")
            compare_gallery = gr.Gallery(label="Same prompt, seed and scheduler", columns=4, format="png",
                                         height=320, object_fit="contain")
            compare_readout = gr.Markdown()
            with gr.Row():
                send = gr.Button("Send the selected image to img2img", size="sm")
            history_gallery = gr.Gallery(label="Recent runs (PNGs carry their settings)", columns=8, height=200,
                                         value=history.recent(), format="png")
            selected = gr.State(None)
        with gr.Tab("img2img") as img2img_tab:
            img_models = gr.CheckboxGroup(models_now, value=models_now[:4], label=f"Models ({family} family)")
            with gr.Row():
                init_image = gr.Image(type="filepath", label="Input image", height=256)
                strength = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="Strength")
            img_controls = _generation_controls(family, defaults)
            img_run = gr.Button("Run img2img", variant="primary")
            img_gallery = gr.Gallery(label="img2img, side by side", columns=4, format="png", height=320,
                                     object_fit="contain")
            img_readout = gr.Markdown()
        with gr.Tab("Train a student"):
            gr.Markdown("Design a student by block removal and distill it from its teacher with the paper's "
                        f"objective (task + output KD + feature KD). {ZEROGPU_NOTE}")
            with gr.Row():
                default = "toy-teacher" if "toy-teacher" in teachers else teachers[0]
                teacher = gr.Dropdown(teachers, value=default, label="Teacher")
                preset = gr.Radio(list(PRESET_CHOICES), value="small", label="Student")
                design_resolution = gr.Number(value=0, precision=0, label="Resolution for MACs (0 = the teacher's)")
            with gr.Row():
                layers = gr.Textbox(value="1", label="Custom: layers kept per down stage (one number, or one per stage)")
                keep_mid = gr.Checkbox(value=False, label="Custom: keep mid block")
                keep_innermost = gr.Checkbox(value=True, label="Custom: keep innermost stage")
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Parameters and MACs", interactive=False)
            summary = gr.Markdown()
            with gr.Row():
                data_source = gr.Radio(["toy", "upload"], value="toy", label="Data")
                upload = gr.File(label="Dataset zip (imagefolder: metadata.jsonl + images)", file_types=[".zip"],
                                 type="filepath")
            with gr.Row():
                train_steps = gr.Number(value=200, precision=0, label="Steps")
                lr = gr.Number(value=3e-4, label="Learning rate")
                batch_size = gr.Number(value=8, precision=0, label="Batch size")
                lambda_task = gr.Number(value=1.0, label="λ task")
                lambda_out = gr.Number(value=1.0, label="λ output KD")
                lambda_feat = gr.Number(value=1.0, label="λ feature KD")
            with gr.Row():
                start = gr.Button("Start training", variant="primary")
                cancel = gr.Button("Cancel")
                resume = gr.Button("Resume")
            train_message = gr.Markdown()
            job = gr.Dropdown(jobs.ids("distill"), value=(jobs.ids("distill") or [None])[0], label="Job")
            job_table = gr.Dataframe(headers=JOB_HEADERS, label="Jobs (state on disk; survives restarts)",
                                     interactive=False)
            with gr.Row():
                plot = gr.LinePlot(x="step", y="loss", color="term", title="Loss terms", height=300)
                validation = gr.Image(label="Latest validation: teacher (top) vs student (bottom)", height=300)
            job_text = gr.Markdown()
            timer = gr.Timer(2.0)
        with gr.Tab("DreamBooth"):
            gr.Markdown("Personalize the teacher and/or students from a few photos (DreamBooth; LoRA through peft by "
                        "default, rank 16 / alpha 27 on to_q, to_v; prior preservation with class images the model "
                        f"makes itself). One background job per model, on the same photos. {ZEROGPU_NOTE}")
            with gr.Row():
                photos = gr.File(file_count="multiple", file_types=["image"], type="filepath",
                                 label="Photos (JPEG, PNG, WebP; 1-50)")
                preview = gr.Gallery(label="Preview", columns=5, height=200)
            with gr.Row():
                identifier = gr.Textbox(value="sks", label="Identifier (one rare word)")
                class_phrase = gr.Textbox(value="circle on a blue background" if family == "toy" else "dog",
                                          label="Class (what the subject is)")
                booth_models = gr.CheckboxGroup(models_now, value=models_now[:1], label="Models to personalize")
            with gr.Row():
                booth_steps = gr.Number(value=400 if family == "toy" else 800, precision=0, label="Steps")
                booth_mode = gr.Radio(["LoRA", "full"], value="LoRA", label="Finetuning")
                class_images = gr.Number(value=50 if family == "toy" else 200, precision=0, label="Class images")
                booth_start = gr.Button("Start DreamBooth", variant="primary")
                booth_cancel = gr.Button("Cancel")
            booth_message = gr.Markdown()
            booth_job = gr.Dropdown(jobs.ids("dreambooth"), multiselect=True, label="DreamBooth jobs (plot shows the first)")
            with gr.Row():
                booth_plot = gr.LinePlot(x="step", y="loss", color="term", title="Loss terms", height=260)
                booth_validation = gr.Image(label="Latest validation: instance prompt, class prompt", height=260)
            booth_text = gr.Markdown()
            with gr.Row():
                booth_prompt = gr.Textbox(value="a sks circle on a blue background" if family == "toy"
                                          else "a sks dog in the snow", label="Prompt for the personalized models")
                booth_seed = gr.Number(value=0, precision=0, label="Seed")
                booth_gen_steps = gr.Slider(1, MAX_STEPS, value=25, step=1, label="Steps")
                booth_guidance = gr.Slider(0, MAX_GUIDANCE, value=defaults["guidance"], step=0.5, label="Guidance")
            booth_generate = gr.Button("Generate with the personalized models")
            booth_gallery = gr.Gallery(label="Personalized, side by side", columns=4, format="png", height=300)
            booth_readout = gr.Markdown()
        with gr.Tab("Evaluate"):
            gr.Markdown("CLIP score, FID, IS, teacher-student fidelity (PSNR, CLIP image similarity) and, for toy "
                        "models, the judge's prompt accuracy, with the paper's protocol (25 PNDM steps, one seed per "
                        "prompt shared by all models). Runs as a background job; metrics whose weights are not on "
                        "this machine are left empty, with the reason under the table.")
            with gr.Row():
                eval_models = gr.CheckboxGroup(models_now, value=models_now, label="Models")
                eval_prompts = gr.File(label="Prompt file (metadata.csv or one per line; empty = toy prompt set)",
                                       file_types=[".csv", ".txt"], type="filepath")
                eval_n = gr.Number(value=90 if family == "toy" else 1000, precision=0, label="Images per model")
                eval_start = gr.Button("Start evaluation", variant="primary")
            eval_message = gr.Markdown()
            eval_job = gr.Dropdown(jobs.ids("evaluate"), value=(jobs.ids("evaluate") or [None])[0], label="Evaluation")
            with gr.Row():
                eval_text = gr.Markdown()
                eval_plot = gr.Image(label="Quality against U-Net latency and MACs", height=400)
        with gr.Tab("Models"):
            gr.Dataframe(value=handlers.catalogue_rows(catalog),
                         headers=["name", "role", "family", "teacher", "arch", "source", "description"],
                         interactive=False)

        compare_run.click(on_compare, [compare_models, *controls], [compare_gallery, compare_readout, history_gallery],
                          api_name="compare", concurrency_id="device", concurrency_limit=1)
        compare_gallery.select(on_select, compare_gallery, selected, api_name=False)
        send.click(lambda path: path, selected, init_image, api_name=False)
        img_run.click(on_img2img, [img_models, init_image, strength, *img_controls],
                      [img_gallery, img_readout, history_gallery], api_name="img2img",
                      concurrency_id="device", concurrency_limit=1)
        img2img_tab.select(refresh_models, img_models, img_models, api_name=False)

        design_inputs = [teacher, preset, layers, keep_mid, keep_innermost, design_resolution]
        for control in design_inputs:
            control.change(on_design, design_inputs, [table, summary], api_name=False)
        app.load(on_design, design_inputs, [table, summary], api_name="design")
        start.click(on_train_start, [*design_inputs[:5], data_source, upload, train_steps, lr, lambda_task,
                                     lambda_out, lambda_feat, batch_size], [train_message, job], api_name="train_start")
        status_outputs = [job_table, plot, job_text, validation]
        job.change(on_train_status, job, status_outputs, api_name=False)
        timer.tick(on_train_status, job, status_outputs, api_name="train_status", show_progress="hidden")
        cancel.click(lambda j: handlers.train_cancel(jobs, j), job, train_message, api_name="train_cancel")
        resume.click(lambda j: handlers.train_resume(jobs, j), job, train_message, api_name="train_resume")
        compare_tab.select(refresh_models, compare_models, compare_models, api_name=False)
        photos.change(lambda files: files or [], photos, preview, api_name=False)
        booth_start.click(on_dreambooth_start, [photos, identifier, class_phrase, booth_models, booth_steps, booth_mode,
                                                class_images], [booth_message, booth_job], api_name="dreambooth_start")
        booth_status_outputs = [booth_plot, booth_text, booth_validation]
        timer.tick(on_booth_status, booth_job, booth_status_outputs, api_name="dreambooth_status",
                   show_progress="hidden")
        booth_cancel.click(lambda ids: "\n\n".join(handlers.train_cancel(jobs, j) for j in ids or [None]),
                           booth_job, booth_message, api_name="dreambooth_cancel")
        eval_start.click(on_evaluate_start, [eval_models, eval_prompts, eval_n], [eval_message, eval_job],
                         api_name="evaluate_start")
        timer.tick(lambda j: evaluate.evaluate_status(jobs, j), eval_job, [eval_text, eval_plot],
                   api_name="evaluate_status", show_progress="hidden")
        booth_generate.click(on_dreambooth_results, [booth_job, booth_prompt, booth_seed, booth_gen_steps,
                                                     booth_guidance], [booth_gallery, booth_readout],
                             api_name="dreambooth_results", concurrency_id="device", concurrency_limit=1)
    return app
