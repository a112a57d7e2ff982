"""A fair share of the machine in public mode: each visitor's requests in the queue, and each request's size.

Gradio's queue has one size for everyone: one visitor's flood of requests fills it
and turns every other visitor away. Here a visitor (studio/ui/hosting.py says who
that is) may have `max_queued_per_visitor` requests waiting or running; one more
is refused when it asks to join the queue, before it takes a place, with a message
saying why.
A request's size is capped too (`check_request`), so that no single request
holds the one generation slot for minutes.
"""

import gradio as gr

from studio.catalog import Catalog, read_configs
from studio.generation import Settings
from studio.profiling import input_geometry
from studio.ui.hosting import Hosting, identity

PAPER_EVALUATIONS = 25 * 2  # the cost unit: the `paper` recipe, 25 steps, each a conditional + unconditional batch
# Measured on this 2-core CPU (issue 22): the heaviest toy request took 89 s in fp32, 168 s in bf16, 211 s in fp16.
SLOW_ON_CPU = {"fp16": "211 s against 89 s in fp32", "bf16": "168 s against 89 s in fp32"}


def _visitor(request, session_hash: str | None) -> str | None:
    try:
        return identity(gr.Request(request=request, session_hash=session_hash))
    except ValueError:  # a malformed visitor header: the handler refuses it with its message
        return None


def share_queue(app: gr.Blocks, max_queued_per_visitor: int) -> None:
    """Cap each visitor's requests waiting or running in `app`'s queue (call after `app.queue()`). Gradio offers no
    per-user limit, so its queue's `push` is wrapped (gradio is pinned; tests/test_public_abuse.py checks that this holds)."""
    queue = app._queue
    push = queue.push

    async def push_within_share(body, request, username):
        visitor = _visitor(request, body.session_hash)
        if visitor is not None:
            mine = sum(1 for event in list(queue.event_ids_to_events.values())
                       if _visitor(event.request, event.session_hash) == visitor)
            if mine >= max_queued_per_visitor:
                message = (f"queue: you have {mine} requests waiting or running; each visitor may have "
                           f"{max_queued_per_visitor} at once. Wait for one to finish")
                # As a failed validation: gradio_client raises it with the text, the page shows it by the first input
                # (gradio's "queue full" reaches both as a generic "Queue is full").
                return False, [{"__type__": "validate", "is_valid": False, "message": message,
                                "parameter_name": "queue"}], "validator_error"
        return await push(body, request, username)

    queue.push = push_within_share


def queue_app(app: gr.Blocks, hosting: Hosting, max_size: int | None) -> gr.Blocks:
    """The app's queue: one model run at a time (compare and img2img share one concurrency slot); in public mode
    each visitor's share of it capped."""
    app.queue(max_size=max_size, default_concurrency_limit=1)
    if hosting.public:
        share_queue(app, hosting.max_queued_per_visitor)
    return app


def unet_evaluations(settings: Settings, img2img: bool = False) -> float:
    """U-Net evaluations (at batch 1) of one image, an upper bound: caching and token merging not counted."""
    steps = settings.steps * (settings.strength if img2img else 1.0)
    guided = settings.guidance > 1 and settings.scheduler != "LCM"  # LCM: guidance folded in, no second batch
    return steps * (1 + settings.guidance_stop) if guided else steps


def request_cost(catalog: Catalog, models: list[str], columns: list[Settings], img2img: bool = False) -> float:
    """A request's cost in teacher images with `paper` at the model's own size: models x recipes x steps x guidance
    batch x pixels, every model counted as its teacher (an upper bound)."""
    cost = 0.0
    for name in models:
        native = input_geometry(read_configs(name, catalog)).resolution if name in catalog else None
        for column in columns:
            pixels = (column.resolution / native) ** 2 if column.resolution and native else 1.0
            cost += unet_evaluations(column, img2img) * pixels / PAPER_EVALUATIONS
    return cost


def check_request(hosting: Hosting, device: str, catalog: Catalog, models: list[str], columns: list[Settings],
                  img2img: bool = False) -> None:
    """Public mode: refuse a request over the cost cap, or in a precision slower than fp32 on a CPU."""
    if not hosting.public:
        return
    if str(device).startswith("cpu"):
        for column in columns:
            if column.dtype in SLOW_ON_CPU:
                raise ValueError(f"dtype: {column.dtype} runs slower than fp32 on a CPU (the heaviest request took "
                                 f"{SLOW_ON_CPU[column.dtype]}); this public studio runs fp32 on its CPU")
    cost = request_cost(catalog, models, columns, img2img)
    if cost > hosting.max_request_cost:
        raise ValueError(f"request: {len(models)} model(s) x {len(columns)} recipe(s) cost {cost:.1f} teacher images "
                         f"with `paper` (steps x guidance batch x pixels); each request may cost "
                         f"{hosting.max_request_cost:g}. Choose fewer models or recipes, fewer steps or a smaller "
                         "resolution")
