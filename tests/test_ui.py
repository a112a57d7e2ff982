import socket

import pytest

from studio.catalog import load_catalog
from studio.generation import PipelineCache
from studio.ui.app import build_app
from studio.ui.handlers import design_table, family_models, generate_image, spec_from_controls


def test_design_table_lists_teacher_presets_and_the_custom_student():
    rows, summary = design_table("sd-v1.4", "custom", "1,2,2,1", False, True, 0, load_catalog())  # 0: native
    names = [row[0] for row in rows]
    assert names == ["teacher", "base", "small", "tiny", "custom:1,2,2,1:no-mid (yours)"]
    assert rows[2][1] == "482,346,884" and rows[0][2] == 1.0
    assert rows[3][3] == 205.0  # Tiny, G MACs in the paper's convention
    assert "paper's convention" in summary


def test_design_preset_ignores_custom_fields():
    assert str(spec_from_controls("tiny", "2,2", True, True)) == "tiny"
    rows, _ = design_table("sd-v2.1-base", "small", "", True, True, 512, load_catalog())
    assert [row[0] for row in rows] == ["teacher", "base", "small (yours)", "tiny"]


def test_design_bad_input_names_what_is_allowed():
    catalog = load_catalog()
    rows, message = design_table("sd-v1.4", "custom", "1,5", True, True, 512, catalog)
    assert rows == [] and "one value per kept down stage" in message
    rows, message = design_table("sd-v1.4", "small", "", True, True, 500, catalog)
    assert rows == [] and "multiple of 8" in message
    rows, message = design_table("bk-sdm-tiny", "small", "", True, True, 512, catalog)
    assert rows == [] and "choose one of toy-teacher, sd-v1.4, sd-v2.1-base" in message


def test_family_models_put_the_teacher_first():
    catalog = load_catalog()
    assert family_models(catalog, "toy")[0] == "toy-teacher"
    v1 = family_models(catalog, "v1")
    assert v1[0] == "sd-v1.4" and len(v1) == 7 and "bk-sdm-tiny-2m" in v1
    with pytest.raises(ValueError, match="families: .*toy"):
        build_app(catalog, family="v7")


def test_generate_with_the_toy_teacher_and_bad_input():
    cache = PipelineCache(load_catalog())
    image, readout = generate_image(cache, "toy-teacher", "a red circle on a blue background", 1, 5, 7.5)
    assert image.size == (32, 32) and "toy-teacher" in readout and "5 steps" in readout
    assert cache.get("toy-teacher") is cache.get("toy-teacher")  # loaded once
    for args, message in [
        (("", 1, 5, 7.5), "prompt is empty"),
        (("a red circle", 1, 0, 7.5), "steps must be between 1 and 100"),
        (("a red circle", 1, 5, 99), "guidance must be between 0 and 20"),
    ]:
        image, readout = generate_image(cache, "toy-teacher", *args)
        assert image is None and message in readout
    image, readout = generate_image(cache, "sd-v1.4", "a cat", 1, 5, 7.5)
    assert image is None and "not in the cache" in readout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_serves_the_design_api():
    from gradio_client import Client

    app = build_app(load_catalog())
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        table, summary = client.predict("sd-v1.4", "base", "1", True, True, 512, api_name="/design")
        assert [row[0] for row in table["data"]][:2] == ["teacher", "base (yours)"]
        assert table["data"][1][1] == "579,384,964"
        image_path, readout = client.predict("toy-teacher", "a green square on a yellow background", 3, 5, 7.5,
                                             api_name="/generate")
        from PIL import Image

        assert Image.open(image_path).size == (32, 32) and "toy-teacher" in readout
    finally:
        app.close()
