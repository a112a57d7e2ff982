"""The studio's Gradio app."""

import gradio as gr

from studio.catalog import Catalog
from studio.generation import MAX_GUIDANCE, MAX_STEPS, PipelineCache
from studio.toy.evaluate import DEFAULT_GUIDANCE
from studio.ui.handlers import (
    PRESET_CHOICES, TABLE_HEADERS, catalogue_rows, design_table, family_models, generate_image,
)


def build_app(catalog: Catalog, family: str = "toy", device: str = "cpu") -> gr.Blocks:
    teachers = [e.name for e in catalog.teachers()]
    models = family_models(catalog, family)
    if not models:
        families = sorted({e.family for e in catalog})
        raise ValueError(f"no teacher of family {family!r} in the catalogue; families: {', '.join(families)}")
    cache = PipelineCache(catalog, device)

    def on_generate(model, prompt, seed, steps, guidance):
        return generate_image(cache, model, prompt, seed, steps, guidance)

    def on_design(teacher, preset, layers, keep_mid, keep_innermost, resolution):
        return design_table(teacher, preset, layers, keep_mid, keep_innermost, resolution, catalog)

    with gr.Blocks(title="BK-SDM Studio") as app:
        gr.Markdown("# BK-SDM Studio\nCompress Stable Diffusion by block removal (BK-SDM, arXiv 2305.15798) "
                    "and see what it costs.")
        with gr.Tab("Generate"):
            with gr.Row():
                model = gr.Dropdown(models, value=models[0], label=f"Model ({family} family)")
                prompt = gr.Textbox(value="a red circle on a blue background" if family == "toy" else "",
                                    label="Prompt")
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed")
                steps = gr.Slider(1, MAX_STEPS, value=25, step=1, label="Steps")
                guidance = gr.Slider(0, MAX_GUIDANCE, value=DEFAULT_GUIDANCE if family == "toy" else 7.5, step=0.5,
                                     label="Guidance")
            run = gr.Button("Generate", variant="primary")
            image = gr.Image(label="Image", type="pil", height=256)
            readout = gr.Markdown()
            run.click(on_generate, [model, prompt, seed, steps, guidance], [image, readout], api_name="generate")
        with gr.Tab("Design a student"):
            with gr.Row():
                default = "sd-v1.4" if "sd-v1.4" in teachers else teachers[0]
                teacher = gr.Dropdown(teachers, value=default, label="Teacher")
                preset = gr.Radio(list(PRESET_CHOICES), value="small", label="Student")
                resolution = gr.Number(value=0, precision=0, label="Resolution (px; 0 = the teacher's own)")
            with gr.Row():
                layers = gr.Textbox(value="1", label="Custom: layers kept per down stage (one number, or one per stage)")
                keep_mid = gr.Checkbox(value=False, label="Custom: keep mid block")
                keep_innermost = gr.Checkbox(value=True, label="Custom: keep innermost stage")
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Parameters and MACs", interactive=False)
            summary = gr.Markdown()
            inputs = [teacher, preset, layers, keep_mid, keep_innermost, resolution]
            for control in inputs:
                control.change(on_design, inputs, [table, summary], api_name=False)
            app.load(on_design, inputs, [table, summary], api_name="design")
        with gr.Tab("Models"):
            gr.Dataframe(
                value=catalogue_rows(catalog),
                headers=["name", "role", "family", "teacher", "arch", "source", "description"],
                interactive=False,
            )
    return app
