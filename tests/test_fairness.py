"""The pieces of public mode's fair share, as plain functions: request costs, pixel limits, messages without paths."""

import time

import pytest
from PIL import Image

from studio.budget import size_text
from studio.models.catalog import read_configs
from studio.inference.generation import Settings
from studio.images import ImageTooLarge, open_image
from studio.kinds.personalization.photos import PhotoError, PhotoLimits, check_photos
from studio.models.profiling import input_geometry
from studio.inference.recipes import PRESETS
from studio.ui.fairness import check_request, request_cost
from studio.ui.hosting import Hosting, without_paths


def test_a_request_costs_its_models_recipes_steps_and_pixels(tiny_catalog):
    base = Settings("a cat")
    paper, lcm = PRESETS["paper"].apply(base, 7.5), PRESETS["lcm"].apply(base, 7.5)
    assert request_cost(tiny_catalog, ["tiny-teacher"], [paper]) == pytest.approx(1.0)
    assert request_cost(tiny_catalog, ["tiny-teacher", "tiny-small"], [paper, lcm]) == pytest.approx(2 * (1 + 4 / 50))
    half = Settings("a cat", steps=25, guidance=7.5, guidance_stop=0.5)  # guidance on half the steps: 1.5 batches
    assert request_cost(tiny_catalog, ["tiny-teacher"], [half]) == pytest.approx(0.75)
    assert request_cost(tiny_catalog, ["tiny-teacher"], [paper], img2img=True) == pytest.approx(0.75)  # strength
    native = input_geometry(read_configs("tiny-teacher", tiny_catalog)).resolution
    large = Settings("a cat", steps=25, guidance=7.5, resolution=2 * native)
    assert request_cost(tiny_catalog, ["tiny-teacher"], [large]) == pytest.approx(4.0)
    # Below the native size a U-Net call costs about as much as at it: pixels count from the native size up.
    small = Settings("a cat", steps=25, guidance=7.5, resolution=native // 2)
    assert request_cost(tiny_catalog, ["tiny-teacher"], [small]) == pytest.approx(1.0)


def test_a_size_below_what_a_model_draws_is_named_before_anything_loads(tiny_catalog):
    configs = read_configs("tiny-teacher", tiny_catalog)
    stages = len(configs["unet"]["block_out_channels"])
    smallest = input_geometry(configs).resolution // configs["unet"]["sample_size"] * 2 ** (stages - 1)
    for hosting in (Hosting(public=True), Hosting(public=False)):
        check_request(hosting, "cpu", tiny_catalog, ["tiny-teacher"], [Settings("a cat", resolution=smallest)])
        with pytest.raises(ValueError, match=rf"resolution {smallest - 8} is too small for tiny-teacher: its U-Net "
                                             rf"halves the latent {stages - 1} times, so the smallest is {smallest} px"):
            check_request(hosting, "cpu", tiny_catalog, ["tiny-teacher"], [Settings("a cat", resolution=smallest - 8)])


def test_a_client_address_is_read_only_where_it_is_real():
    from starlette.requests import Request

    import gradio as gr

    from studio.ui.hosting import client_address

    def asking(forwarded: str | None, peer="10.0.0.9"):
        headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
        return gr.Request(request=Request({"type": "http", "headers": headers, "client": (peer, 1234), "path": "/"}))

    assert client_address(asking("1.2.3.4"), proxy_hops=0) == "10.0.0.9"  # no proxy trusted: the socket's peer
    assert client_address(asking("6.6.6.6, 1.2.3.4"), proxy_hops=1) == "1.2.3.4"  # what the proxy appended
    assert client_address(asking("6.6.6.6, 1.2.3.4, 10.1.1.1"), proxy_hops=2) == "1.2.3.4"
    assert client_address(asking(None), proxy_hops=1) is None  # not through the proxy: no address to trust


def test_public_requests_over_the_cap_or_in_slow_dtypes_are_refused_locally_not(tiny_catalog):
    paper = PRESETS["paper"].apply(Settings("a cat"), 7.5)
    public, local = Hosting(public=True, max_request_cost=1.5), Hosting(public=False, max_request_cost=1.5)
    check_request(public, "cpu", tiny_catalog, ["tiny-teacher"], [paper])
    with pytest.raises(ValueError, match=r"request: 2 model\(s\) x 1 recipe\(s\) cost 2.0 teacher images"):
        check_request(public, "cpu", tiny_catalog, ["tiny-teacher", "tiny-small"], [paper])
    check_request(local, "cpu", tiny_catalog, ["tiny-teacher", "tiny-small"], [paper])
    fp16 = Settings("a cat", dtype="fp16")
    with pytest.raises(ValueError, match="dtype: fp16 runs slower than fp32 on a CPU"):
        check_request(public, "cpu", tiny_catalog, ["tiny-teacher"], [fp16])
    check_request(public, "cuda", tiny_catalog, ["tiny-teacher"], [fp16])


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("L", (9000, 9000)).save(bomb, compress_level=9)
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match=r"init image: 9000x9000 pixels \(81.0 Mpx\) is over the limit of 40 Mpx"):
        open_image(bomb, "init image")
    assert time.perf_counter() - started < 0.5  # no decode: decoding 81 Mpx takes seconds
    with pytest.raises(ValueError, match=r"^image: the upload notes.txt is not a readable image \(not an image\)"):
        (tmp_path / "notes.txt").write_text("hello")
        open_image(tmp_path / "notes.txt")
    with pytest.raises(PhotoError, match=r"bomb.png: 9000x9000 pixels, over the 40,000,000 pixel limit"):
        check_photos([bomb], PhotoLimits(min_side=32))


def test_messages_lose_server_paths_but_keep_urls_and_hub_ids():
    assert without_paths("rows of /srv/data/visitors/0a1b/jobs/x/data/metadata.jsonl are bad") == \
        "rows of metadata.jsonl are bad"
    assert without_paths("cannot identify image file '/tmp/gradio/abc/photo.png'") == \
        "cannot identify image file 'photo.png'"
    kept = "see https://huggingface.co/nota-ai/bk-sdm-small for nota-ai/bk-sdm-small; 1/2 of /compare"
    assert without_paths(kept) == kept


def test_sizes_read_in_the_unit_that_shows_them():
    assert size_text(0.05 * 1024**3) == "51.2 MB"
    assert size_text(3 * 1024**3) == "3.00 GB"
