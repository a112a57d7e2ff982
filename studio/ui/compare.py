"""The Compare tab: the family's models on one prompt, seed and scheduler, side by side, with readouts."""

import gradio as gr

from studio.ui import inputs

from studio.generation import Result, Settings, compare_iter, speedups
from studio.ui.common import (Studio, generation_controls, on_gpu, progress_callback, refresh_models_on_visit,
                              user_errors)
from studio.workspaces import Workspace

READOUT_HEADER = ["| model | total | U-Net / step | speed-up (total, U-Net) | U-Net params | "
                  "G MACs / step (conv+linear; +attn) | loading |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]


def settings_from_controls(prompt, negative, seed, steps, guidance, scheduler, resolution, strength=0.75) -> Settings:
    try:
        return Settings(prompt=prompt or "", negative_prompt=negative or "", seed=int(seed), steps=int(steps),
                        guidance=float(guidance), scheduler=scheduler, resolution=int(resolution or 0) or None,
                        strength=float(strength))
    except (TypeError, ValueError, OverflowError):
        raise ValueError("seed, steps and resolution must be whole numbers, guidance and strength numbers") from None


def readout_table(results: list[Result], teacher: str | None, device: str = "cpu") -> str:
    ratios = speedups(results, teacher)
    lines = list(READOUT_HEADER)
    for r in results:
        ratio = ratios[r.model]
        speed = f"{ratio[0]:.2f}x, {ratio[1]:.2f}x" if ratio else "- (teacher not run)"
        load = f"{r.load_seconds:.1f} s" if r.load_seconds else "cached"
        lines.append(f"| {r.model} | {r.seconds:.3f} s | {r.unet_step_seconds * 1000:.1f} ms | {speed} | "
                     f"{r.unet_params:,} | {r.macs_paper / 1e9:.3g}; {r.macs_total / 1e9:.3g} | {load} |")
    first = results[0]
    if first.prompt_tokens > first.max_tokens:
        lines.append(f"\nThe prompt is {first.prompt_tokens} tokens long; the text encoder reads the first "
                     f"{first.max_tokens}, so the rest was cut.")
    lines.append(f"\n{first.resolution}x{first.resolution}, {first.settings.steps} steps, {first.settings.scheduler}, "
                 f"guidance {first.settings.guidance}, seed {first.settings.seed}, on {device}. "
                 "Timings exclude loading (models are warmed up first); the device is synchronized around every "
                 "U-Net call; U-Net / step is the median call (both CFG halves run in one batch). "
                 "MACs: one U-Net call at batch 1.")
    return "\n".join(lines)


def compare_stream(studio: Studio, models: list[str], settings: Settings, init_image=None, callback=None,
                   workspace: Workspace | None = None):
    """Yields (gallery items [(png path, caption)], readout markdown) after each model: every chosen model is
    loaded first, so one that can't be had stops the run before any image is made. Only the catalogue's models
    and the workspace's own students can be chosen; images go to the workspace's history."""
    workspace = workspace or studio.workspace()
    models = list(dict.fromkeys(models or []))
    catalog = studio.current_catalog(workspace)
    teachers = {catalog.get(m).teacher or m for m in models if m in catalog}
    teacher = teachers.pop() if len(teachers) == 1 else None
    items, results = [], []
    for result in compare_iter(studio.cache, models, settings, init_image, callback, catalog):
        metadata = {**result.metadata(), "mode": "img2img" if init_image is not None else "txt2img"}
        path = workspace.history.save(result.image, metadata)
        items.append((str(path), f"{result.model}: {result.seconds:.2f} s"))
        results.append(result)
        yield list(items), readout_table(results, teacher, str(studio.cache.device))


def build(app: gr.Blocks, studio: Studio) -> dict:
    """Lay out the tab and wire it; returns the components other tabs use (history, selected image)."""
    models_now = studio.models()
    local = studio.shown_at_build()
    with gr.Tab("Compare") as tab:
        models = inputs.ChoiceList(models_now, value=models_now[:4], label=f"Models ({studio.family.name} family)")
        controls = generation_controls(studio.family)
        run = gr.Button("Compare", variant="primary")
        gallery = gr.Gallery(label="Same prompt, seed and scheduler", columns=4, format="png", height=320,
                             object_fit="contain")
        readout = gr.Markdown()
        send = gr.Button("Send the selected image to img2img", size="sm")
        history = gr.Gallery(label="Recent runs (PNGs carry their settings)", columns=8, height=200,
                             value=local.history.recent() if local else [], format="png")
        selected = gr.State(None)

    @on_gpu
    def on_compare(chosen, prompt, negative, seed, steps, guidance, scheduler, resolution, request: gr.Request,
                   progress=gr.Progress()):
        with user_errors():
            workspace = studio.workspace(request)
            settings = settings_from_controls(prompt, negative, seed, steps, guidance, scheduler, resolution)
            for items, text in compare_stream(studio, chosen, settings, None, progress_callback(progress), workspace):
                yield items, text, workspace.history.recent()

    def on_load(request: gr.Request):
        with user_errors():
            return studio.workspace(request).history.recent()

    def on_select(items, event: gr.SelectData):
        return items[event.index][0] if items else None

    run.click(on_compare, [models, *controls], [gallery, readout, history], api_name="compare",
              concurrency_id="device", concurrency_limit=1)
    gallery.select(on_select, gallery, selected, api_visibility="private")
    app.load(on_load, None, history, api_visibility="private", queue=False)
    refresh_models_on_visit(app, tab, studio, models)
    return {"history": history, "selected": selected, "send": send}
