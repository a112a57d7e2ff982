"""A fair share of the machine in public mode: each visitor's requests in the queue, and each request's size.

Gradio's queue has one size for everyone: one visitor's flood of requests fills it
and turns every other visitor away. Here a visitor (studio/ui/hosting.py says who
that is) may have `max_queued_per_visitor` requests waiting or running, and one
client address `max_queued_per_address` whatever tokens it invents (where the
address is real: studio/ui/hosting.py); one more is refused when it asks to join
the queue, before it takes a place, with a message saying why. The queue's size
(`--queue-size`) caps the whole. A caller that can't be told apart (an MCP call
without its header) counts by address; its handler refuses it at once.
A request's size is capped too (`check_request`), so that no single request
holds the one generation slot for minutes.
"""

import gradio as gr

from studio.inference.generation import Settings, smallest_resolution
from studio.models.catalog import Catalog, UnknownModelError, read_configs
from studio.models.profiling import input_geometry, vae_scale_factor
from studio.ui.hosting import Hosting, client_address, identity

PAPER_EVALUATIONS = 25 * 2  # the cost unit: the `paper` recipe, 25 steps, each a conditional + unconditional batch
# Measured on this 2-core CPU (issue 22): the heaviest toy request took 89 s in fp32, 168 s in bf16, 211 s in fp16.
SLOW_ON_CPU = {"fp16": "211 s against 89 s in fp32", "bf16": "168 s against 89 s in fp32"}


def _caller(request, session_hash: str | None, hosting: Hosting) -> tuple[str | None, str | None]:
    """(visitor, client address) of a queued request; ValueError where the visitor can't be told."""
    asking = gr.Request(request=request, session_hash=session_hash)
    return identity(asking, hosting.sign_in), client_address(asking, hosting.proxy_hops)


def _refused(message: str):
    # As a failed validation: gradio_client raises it with the text, the page shows it by the first input
    # (gradio's "queue full" reaches both as a generic "Queue is full").
    return False, [{"__type__": "validate", "is_valid": False, "message": message, "parameter_name": "queue"}], \
        "validator_error"


def share_queue(app: gr.Blocks, hosting: Hosting) -> None:
    """Cap each visitor's and each client address's requests waiting or running in `app`'s queue (call after
    `app.queue()`). Gradio offers no per-user limit, so its queue's `push` is wrapped (gradio is pinned;
    tests/test_public_abuse.py checks that this holds)."""
    queue = app._queue
    push = queue.push

    def caller(request, session_hash):
        try:
            return _caller(request, session_hash, hosting)
        except ValueError:  # a malformed header, or an MCP call without one
            return None, client_address(gr.Request(request=request), hosting.proxy_hops)

    async def push_within_share(body, request, username):
        visitor, address = caller(request, body.session_hash)  # no visitor: the handler refuses it, naming why
        others = [caller(event.request, event.session_hash) for event in list(queue.event_ids_to_events.values())]
        mine = sum(1 for v, _ in others if visitor is not None and v == visitor)
        if mine >= hosting.max_queued_per_visitor:
            return _refused(f"queue: you have {mine} requests waiting or running; each visitor may have "
                            f"{hosting.max_queued_per_visitor} at once. Wait for one to finish")
        from_here = sum(1 for _, a in others if address is not None and a == address)
        if from_here >= hosting.max_queued_per_address:
            return _refused(f"queue: your address has {from_here} requests waiting or running; each address may "
                            f"have {hosting.max_queued_per_address} at once, whatever visitor tokens it sends. "
                            "Wait for one to finish")
        return await push(body, request, username)

    queue.push = push_within_share


def queue_app(app: gr.Blocks, hosting: Hosting, max_size: int | None) -> gr.Blocks:
    """The app's queue: one model run at a time (compare and img2img share one concurrency slot); in public mode
    each visitor's share of it capped."""
    app.queue(max_size=max_size, default_concurrency_limit=1)
    if hosting.public:
        share_queue(app, hosting)
    return app


def unet_evaluations(settings: Settings, img2img: bool = False) -> float:
    """U-Net evaluations (at batch 1) of one image, an upper bound: caching and token merging not counted."""
    steps = settings.steps * (settings.strength if img2img else 1.0)
    guided = settings.guidance > 1 and settings.scheduler != "LCM"  # LCM: guidance folded in, no second batch
    return steps * (1 + settings.guidance_stop) if guided else steps


def _configs(name: str, catalog: Catalog) -> dict | None:
    """A catalogue model's architecture configs without its weights, or None where the project has none."""
    try:
        return read_configs(name, catalog) if name in catalog else None
    except UnknownModelError:
        return None


def request_cost(catalog: Catalog, models: list[str], columns: list[Settings], img2img: bool = False) -> float:
    """A request's cost in teacher images with `paper` at the model's own size: models x recipes x steps x guidance
    batch x pixels, every model counted as its teacher (an upper bound). A U-Net call costs at least one at the
    model's native size: below it the call costs about the same (issue 33: 5 models x 50 steps at 16 px ran 26-47 s,
    as long as requests counted 4.0), so pixels count from the native size up."""
    cost = 0.0
    for name in models:
        configs = _configs(name, catalog)
        native = input_geometry(configs).resolution if configs else None
        for column in columns:
            pixels = max(1.0, (column.resolution / native) ** 2) if column.resolution and native else 1.0
            cost += unet_evaluations(column, img2img) * pixels / PAPER_EVALUATIONS
    return cost


def check_sizes(catalog: Catalog, models: list[str], columns: list[Settings]) -> None:
    """Refuse a resolution below what a model can draw (studio/inference/generation.py: smallest_resolution), before any
    model is loaded."""
    for name in models:
        configs = _configs(name, catalog)
        if configs is None:  # checked once loaded (Settings.check)
            continue
        smallest = smallest_resolution(vae_scale_factor(configs.get("vae")),
                                       len(configs["unet"]["block_out_channels"]))
        for column in columns:
            if column.resolution and column.resolution < smallest:
                raise ValueError(f"resolution {column.resolution} is too small for {name}: its U-Net halves the "
                                 f"latent {len(configs['unet']['block_out_channels']) - 1} times, so the smallest "
                                 f"is {smallest} px (0 draws at the model's own size)")


def check_request(hosting: Hosting, device: str, catalog: Catalog, models: list[str], columns: list[Settings],
                  img2img: bool = False) -> None:
    """Refuse sizes a model can't draw; in public mode also a request over the cost cap, or in a precision slower
    than fp32 on a CPU."""
    check_sizes(catalog, models, columns)
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
