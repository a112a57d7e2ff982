"""The img2img tab: an uploaded image through the family's models, side by side, with the Compare readout."""

import gradio as gr

from studio.ui import inputs

from studio.images import open_image
from studio.ui.common import (GENERATION_ARGS, Studio, endpoint, generation_controls, on_gpu, progress_callback,
                              refresh_models_on_visit)
from studio.ui.compare import compare_stream, settings_from_controls
from studio.ui.doors import check_listening


def img2img_stream(studio: Studio, models, image_path, strength, prompt, negative, seed, steps, guidance, scheduler,
                   resolution, guidance_stop=1.0, cache_interval=1, tome_ratio=0.0, decoder="vae", dtype="fp32",
                   callback=None, workspace=None, previews=False):
    """`compare_stream` on an uploaded image (checked before any model runs)."""
    image = open_image(image_path)
    settings = settings_from_controls(prompt, negative, seed, steps, guidance, scheduler, resolution, strength,
                                      guidance_stop, cache_interval, tome_ratio, decoder, dtype, studio.family.guidance)
    yield from compare_stream(studio, models, settings, image, callback, workspace, previews)


def build(app: gr.Blocks, studio: Studio, compare: dict) -> None:
    models_now = studio.models()
    with gr.Tab("img2img") as tab:
        models = inputs.ChoiceList(models_now, value=models_now[:4], label=f"Models ({studio.family.name} family)")
        with gr.Row():
            init_image = inputs.Image(type="filepath", image_mode=None, label="Input image", height=256)
            strength = inputs.Slider(0.05, 1.0, value=0.6, step=0.05, label="Strength")
        controls = generation_controls(studio.family)
        run = gr.Button("Run img2img", variant="primary")
        gallery = gr.Gallery(interactive=False, label="img2img, side by side", columns=4, format="png", height=320, object_fit="contain")
        readout = gr.Markdown(elem_classes=["readout"])

    @on_gpu
    @endpoint("img2img", GENERATION_ARGS)
    def on_img2img(chosen, image, strength, prompt, negative, seed, steps, guidance, scheduler, resolution,
                   guidance_stop, cache_interval, tome_ratio, decoder, dtype, request: gr.Request,
                   progress=gr.Progress()):
        """Redraw an input image with several models side by side on the same seed, with their latencies.

        Args:
            chosen: catalogue model names, e.g. ["toy-teacher", "toy-bk-tiny"]
            image: the input image
            strength: how far from the input image to go (0.05 to 1)
        """
        with studio.errors():
            workspace = studio.workspace(request)
            check_listening(studio.hosting.public, request)
            for items, text in img2img_stream(studio, chosen, image, strength, prompt, negative, seed, steps,
                                              guidance, scheduler, resolution, guidance_stop, cache_interval,
                                              tome_ratio, decoder, dtype, progress_callback(progress), workspace,
                                              previews=True):
                yield items, text, workspace.history.recent()

    run.click(on_img2img, [models, init_image, strength, *controls], [gallery, readout, compare["history"]],
              api_name="img2img", concurrency_id="device", concurrency_limit=1)
    compare["send"].click(lambda path: path, compare["selected"], init_image, api_visibility="private")
    refresh_models_on_visit(app, tab, studio, models)
