"""The Compare tab: the family's models on one prompt, seed and scheduler, side by side, with readouts."""

import contextvars
import queue
import threading

import gradio as gr
from PIL import Image

from studio.ui import inputs

from studio.inference.generation import Result, Settings, compare_iter
from studio.inference.history import read_settings
from studio.inference.recipes import PRESETS, recipe_name
from studio.inference.safety import screen
from studio.kinds.evaluation.difference import difference_map, fidelity
from studio.ui.common import (GENERATION_ARGS, Studio, endpoint, generation_controls, on_gpu, progress_callback,
                              refresh_models_on_visit)
from studio.ui.doors import check_listening
from studio.ui.fairness import check_request
from studio.ui.workspaces import Workspace

READOUT_HEADER = ["| model | recipe | s: total; decode | U-Net calls (cached) | speed-up: same recipe; paper | "
                  "to teacher: PSNR; SSIM | U-Net: M params; G MACs/call (+attn) |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
TIMING_KEYS = ("seconds", "unet_step_seconds", "decode_seconds")
PREVIEW_SECONDS = 0.5  # at most two previews a second reach the page


def settings_from_controls(prompt, negative, seed, steps, guidance, scheduler, resolution, strength=0.75,
                           guidance_stop=1.0, cache_interval=1, tome_ratio=0.0, decoder="vae", dtype="fp32",
                           family_guidance: float = 7.5) -> Settings:
    for name, value in (("seed", seed), ("steps", steps), ("cache interval", cache_interval)):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{name} must be a whole number, got {value}")
    try:
        settings = Settings(prompt=prompt or "", negative_prompt=negative or "", seed=int(seed), steps=int(steps),
                            guidance=float(guidance), scheduler=scheduler, resolution=int(resolution or 0) or None,
                            strength=float(strength), guidance_stop=float(guidance_stop),
                            cache_interval=int(cache_interval), tome_ratio=float(tome_ratio), decoder=decoder,
                            dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise ValueError("seed, steps, cache interval and resolution must be whole numbers; guidance, guidance "
                         "stop, token merging and strength numbers") from None
    return recipe_name(settings, family_guidance)


def grid_columns(settings: Settings, recipes, family_guidance: float) -> list[Settings]:
    """Grid mode: one column per chosen preset, on `settings`' prompt, seed and resolution; none: `settings`."""
    if recipes is None or recipes == []:
        return [settings]
    if not isinstance(recipes, list) or not all(isinstance(r, str) for r in recipes):
        raise ValueError(f"grid recipes: must be a list of preset names, got {recipes!r}"[:200])
    unknown = [r for r in recipes if r not in PRESETS]
    if unknown:
        raise ValueError(f"grid recipes: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(PRESETS)}")
    return [PRESETS[r].apply(settings, family_guidance) for r in dict.fromkeys(recipes)]


def _to_teacher(result: Result, results: list[Result], teacher: str | None, known: dict) -> str:
    if result.model == teacher:
        return "reference"
    match = next((r for r in results if r.model == teacher and r.settings == result.settings), None)
    if match is None:
        return "-"
    key = (id(match), id(result))
    if key not in known:  # the readout is redrawn on every preview: each pair is measured once
        scores = fidelity(match.image, result.image)
        known[key] = f"{scores['psnr']:.2f} dB; {scores['ssim']:.3f}"
    return known[key]


def speedups(results: list[Result], teacher: str | None) -> list[tuple[float | None, float | None]]:
    """Per result: end-to-end speed-up against the teacher with the same settings, and with the `paper` recipe
    (None where that teacher image was not made in this run)."""
    def teacher_seconds(match) -> float | None:
        found = next((r for r in results if r.model == teacher and match(r.settings)), None)
        return found.seconds if found else None

    paper = teacher_seconds(lambda s: s.recipe == "paper")
    ratios = []
    for r in results:
        same = teacher_seconds(lambda s, mine=r.settings: s == mine)
        ratios.append((same and same / r.seconds, paper and paper / r.seconds))
    return ratios


def readout_table(results: list[Result], teacher: str | None, device: str = "cpu", known: dict | None = None) -> str:
    """The readout; `known` keeps the teacher-student fidelity already measured across redraws of one run."""
    known = {} if known is None else known
    lines = list(READOUT_HEADER)
    for r, (same, paper) in zip(results, speedups(results, teacher)):
        speed = (f"{same:.2f}x" if same else "-") + "; " + (f"{paper:.2f}x" if paper else "-")
        lines.append(f"| {r.model} | {r.settings.recipe} | {r.seconds:.3f}; {r.decode_seconds:.3f} ({r.settings.decoder}) | "
                     f"{len(r.unet_seconds)} ({r.cached_calls}) | {speed} | {_to_teacher(r, results, teacher, known)} | "
                     f"{r.unet_params / 1e6:.2f}; {r.macs_paper / 1e9:.3g}; {r.macs_total / 1e9:.3g} |")
    loaded = {r.model: r.load_seconds for r in results if r.load_seconds}
    if loaded:
        lines.append("\nLoaded for this run (not timed above): " +
                     ", ".join(f"{model} {seconds:.1f} s" for model, seconds in loaded.items()) + ".")
    for note in dict.fromkeys(r.note for r in results if r.note):
        lines.append(f"\n{note}")
    first = results[0]
    if first.prompt_tokens > first.max_tokens:
        lines.append(f"\nThe prompt is {first.prompt_tokens} tokens long; the text encoder reads the first "
                     f"{first.max_tokens}, so the rest was cut.")
    for recipe in dict.fromkeys(r.settings for r in results):
        lines.append(f"\n**{recipe.recipe}**: {recipe.steps} {recipe.scheduler} steps, guidance {recipe.guidance} on "
                     f"{recipe.guidance_stop:.0%} of them, full U-Net every {recipe.cache_interval} call(s), token "
                     f"merging {recipe.tome_ratio:g}, decoder {recipe.decoder}, {recipe.dtype}.")
    if teacher is None or not any(r.model == teacher and r.settings.recipe == "paper" for r in results):
        lines.append("\nSpeed-up against the teacher with `paper`: run the teacher with the `paper` recipe too "
                     "(tick `paper` under Grid).")
    lines.append(f"\n{first.resolution}x{first.resolution}, seed {first.settings.seed}, on {device}. s: seconds; decode "
                 "names its decoder. MACs: conv + linear (the paper's convention), then with attention products. "
                 "Timings exclude "
                 "loading (models are warmed up first); the device is synchronized around every U-Net call and the "
                 "decode. Total: text encoding, every U-Net call, decoding. MACs: one full U-Net call at batch 1.")
    return "\n".join(lines)


def _drawn_with(path: str) -> dict:
    """An image's settings from its PNG (what `history.save` wrote), timings left out."""
    try:
        metadata = read_settings(path)
    except (KeyError, ValueError, OSError):  # not one of the studio's images
        return {}
    return {k: v for k, v in metadata.items() if k not in TIMING_KEYS}


def difference_view(items: list, index: int, catalog) -> tuple:
    """For the gallery's image `index`: (teacher image, it) for the wipe slider, the difference heat map, and a
    line with PSNR and SSIM, when the gallery holds its teacher's image with the same prompt, seed and recipe."""
    path = items[index][0]
    drawn = _drawn_with(path)
    model = drawn.get("model")
    teacher = catalog.get(model).teacher if model in catalog else None
    if teacher is None:
        return None, None, "Select a student's image to see it beside its teacher's."
    wanted = {**drawn, "model": teacher}
    match = next((item[0] for item in items if _drawn_with(item[0]) == wanted), None)
    if match is None:
        return None, None, (f"{teacher} has no image here with the same prompt, seed and recipe as this {model} "
                            "image; compare them together.")
    with Image.open(match) as first, Image.open(path) as second:
        scores = fidelity(first.convert("RGB"), second.convert("RGB"))
        heat = difference_map(first, second)
    return (match, path), heat, (f"**{model}** against **{teacher}** ({drawn.get('recipe')}, seed {drawn.get('seed')}): "
                                 f"PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f}. Drag the slider to wipe "
                                 "between them; the map is bright where they differ.")


class _Stopped(Exception):
    """The page went away: the worker stops at its next step."""


def _in_background(run, callback, previews: bool):
    """Runs `run(callback)` (a generator function) in a thread, yielding ("result", item) as it makes them and,
    with `previews`, ("preview", progress event) for events that carry a picture."""
    events, stop = queue.Queue(), threading.Event()

    def on_progress(event):
        if stop.is_set():
            raise _Stopped()
        if callback is not None:
            callback(event)
        if previews and event.preview is not None:  # already no more than one every PREVIEW_SECONDS
            events.put(("preview", event))

    def work():
        try:
            for item in run(on_progress):
                events.put(("result", item))
            events.put(("done", None))
        except BaseException as error:  # handed to the consumer, which raises it
            events.put(("error", error))

    threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True).start()
    try:
        while True:
            kind, item = events.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield kind, item
    finally:
        stop.set()


def compare_stream(studio: Studio, models: list[str], settings: Settings | list[Settings], init_image=None,
                   callback=None, workspace: Workspace | None = None, previews: bool = False):
    """Yields (gallery items [(image, caption)], readout markdown) after each model x settings cell (and, with
    `previews`, as each image forms): every chosen model is loaded first, so one that can't be had stops the run
    before any image is made. Only the catalogue's models and the workspace's own students can be chosen; images
    go to the workspace's history."""
    workspace = workspace or studio.workspace()
    models = list(dict.fromkeys(models or []))
    catalog = studio.current_catalog(workspace)
    columns = settings if isinstance(settings, list) else [settings]
    for column in columns:
        column.check()  # a bad knob is named before the request's size is weighed
    check_request(studio.hosting, studio.device, catalog, [m for m in models if m in catalog], columns,
                  img2img=init_image is not None)
    device = str(studio.cache.device)
    if device == "cpu" and (threads := studio.share_cpu()) < studio.hosting.threads:
        device += f" ({threads} of {studio.hosting.threads} threads: running jobs have the rest)"
    checker = studio.safety()
    previews = previews and checker is None  # a forming image is not shown before the checker has seen it
    teachers = {catalog.get(m).teacher or m for m in models if m in catalog}
    teacher = teachers.pop() if len(teachers) == 1 else None
    items, results, known = [], [], {}

    def run(on_progress):
        return compare_iter(studio.cache, models, settings, init_image, on_progress, catalog,
                            PREVIEW_SECONDS if previews else 0.0)

    for kind, item in _in_background(run, callback, previews):
        if kind == "preview":
            info = item.info
            caption = f"{info['model']}: step {item.done}/{item.total} (preview)"
            yield [*items, (item.preview, caption)], readout_table(results, teacher, device, known) \
                if results else "Generating..."
            continue
        result = item
        result.image, withheld = screen(checker, result.image)
        if withheld:
            result.note = "; ".join(filter(None, [result.note, f"{result.model} ({result.settings.recipe}): the "
                                                  "safety checker flagged this image; a placeholder is shown instead"]))
        metadata = {**result.metadata(), "mode": "img2img" if init_image is not None else "txt2img"}
        path = workspace.history.save(result.image, metadata)
        items.append((str(path), f"{result.model} · {result.settings.recipe}: {result.seconds:.2f} s"))
        results.append(result)
        yield list(items), readout_table(results, teacher, device, known)


def build(app: gr.Blocks, studio: Studio) -> dict:
    """Lay out the tab and wire it; returns the components other tabs use (history, selected image)."""
    models_now = studio.models()
    local = studio.shown_at_build()
    with gr.Tab("Compare") as tab:
        models = inputs.ChoiceList(models_now, value=models_now[:4], label=f"Models ({studio.family.name} family)")
        controls = generation_controls(studio.family)
        grid = inputs.ChoiceList(list(PRESETS), value=[], label="Grid: recipes across, models down (none ticked: "
                                 "one column with the knobs above)")
        run = gr.Button("Compare", variant="primary")
        gallery = gr.Gallery(interactive=False, label="Same prompt and seed; each image forms live", columns=4, format="png",
                             height=320, object_fit="contain")
        readout = gr.Markdown(elem_classes=["readout"])
        send = gr.Button("Send the selected image to img2img", size="sm")
        with gr.Row():
            wipe = gr.ImageSlider(label="Teacher | selected student (same prompt, seed and recipe)", type="filepath",
                                  interactive=False, format="png")
            heat = gr.Image(label="Difference from the teacher", type="pil", interactive=False, format="png")
        difference = gr.Markdown("Select a student's image to see it beside its teacher's.")
        history = gr.Gallery(interactive=False, label="Recent runs (PNGs carry their settings)", columns=8, height=200,
                             value=local.history.recent() if local else [], format="png")
        selected = gr.State(None)

    @on_gpu
    @endpoint("compare", GENERATION_ARGS)
    def on_compare(chosen, prompt, negative, seed, steps, guidance, scheduler, resolution, guidance_stop,
                   cache_interval, tome_ratio, decoder, dtype, recipes, request: gr.Request, progress=gr.Progress()):
        """Draw one prompt with several models (a teacher and its block-removed students) on the same seed, side by
        side, with each image's latency, U-Net calls, parameters and MACs.

        Args:
            chosen: catalogue model names, e.g. ["toy-teacher", "toy-bk-tiny"]
            recipes: recipe names for a grid (models down, recipes across); empty for one column with the knobs above
        """
        with studio.errors():
            workspace = studio.workspace(request)
            check_listening(studio.hosting.public, request)
            settings = settings_from_controls(prompt, negative, seed, steps, guidance, scheduler, resolution, 0.75,
                                              guidance_stop, cache_interval, tome_ratio, decoder, dtype,
                                              studio.family.guidance)
            columns = grid_columns(settings, recipes, studio.family.guidance)
            for items, text in compare_stream(studio, chosen, columns, None, progress_callback(progress), workspace,
                                              previews=True):
                yield items, text, workspace.history.recent()

    def on_load(request: gr.Request):
        with studio.errors():
            return studio.workspace(request).history.recent()

    def on_select(items, event: gr.SelectData, request: gr.Request):
        if not items:
            return None, None, None, ""
        with studio.errors():
            catalog = studio.current_catalog(studio.workspace(request))
            return (items[event.index][0], *difference_view(items, event.index, catalog))

    def gallery_layout(recipes):
        """A grid reads as rows of models with a column per recipe; one recipe puts the models side by side."""
        grid_mode = isinstance(recipes, list) and len(recipes) > 1
        return gr.Gallery(columns=len(recipes) if grid_mode else 4, height="auto" if grid_mode else 320)

    run.click(on_compare, [models, *controls, grid], [gallery, readout, history], api_name="compare",
              concurrency_id="device", concurrency_limit=1)
    grid.change(gallery_layout, grid, gallery, api_visibility="private", queue=False)
    gallery.select(on_select, gallery, [selected, wipe, heat, difference], api_visibility="private")
    app.load(on_load, None, history, api_visibility="private", queue=False)
    refresh_models_on_visit(app, tab, studio, models)
    return {"history": history, "selected": selected, "send": send}
