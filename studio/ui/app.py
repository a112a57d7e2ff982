"""The studio's Gradio app."""

import gradio as gr

from studio.catalog import Catalog
from studio.ui.design import PRESET_CHOICES, TABLE_HEADERS, catalogue_rows, design_table


def build_app(catalog: Catalog) -> gr.Blocks:
    teachers = [e.name for e in catalog.teachers()]

    def on_design(teacher, preset, layers, keep_mid, keep_innermost, resolution):
        return design_table(teacher, preset, layers, keep_mid, keep_innermost, resolution, catalog)

    with gr.Blocks(title="BK-SDM Studio") as app:
        gr.Markdown("# BK-SDM Studio\nCompress Stable Diffusion by block removal (BK-SDM, arXiv 2305.15798) "
                    "and see what it costs.")
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
