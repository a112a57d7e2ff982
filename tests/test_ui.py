import socket

import pytest

from studio.catalog import load_catalog
from studio.ui.app import build_app
from studio.ui.handlers import design_table, family_models, spec_from_controls


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gallery_path(item) -> str:
    """The local file of a gallery item as gradio_client returns it ({"image": path or {"path": ...}})."""
    image = item["image"]
    return image if isinstance(image, str) else image["path"]


@pytest.fixture
def served_app(tiny_catalog, tmp_path):
    """The app on the tiny family, served on a free port; yields (client, app, data dir)."""
    from gradio_client import Client

    app = build_app(tiny_catalog, family="tiny", data_dir=tmp_path / "data")
    port = free_port()
    app.queue(max_size=4, default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=port,
                                                               prevent_thread_lock=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False), port, tmp_path / "data"
    finally:
        app.close()


def test_app_end_to_end_with_gradio_client(served_app, tmp_path):
    from PIL import Image

    client, _, data_dir = served_app
    table, summary = client.predict("sd-v1.4", "base", "1", True, True, 512, api_name="/design")
    assert [row[0] for row in table["data"]][:2] == ["teacher", "base (yours)"]
    assert table["data"][1][1] == "579,384,964"

    # Compare: two models, two images, one readout row each.
    gallery, readout, history = client.predict(["tiny-teacher", "tiny-small"], "a cat", "", 3, 2, 2.0, "Euler", 0,
                                               api_name="/compare")
    assert len(gallery) == 2 and all(Image.open(gallery_path(item)).size == (32, 32) for item in gallery)
    assert "| tiny-teacher |" in readout and "| tiny-small |" in readout and len(history) == 2
    assert '"scheduler": "Euler"' in Image.open(gallery_path(gallery[1])).text["studio"]  # settings survive serving
    gallery, readout, _ = client.predict([], "a cat", "", 3, 2, 2.0, "Euler", 0, api_name="/compare")
    assert gallery == [] and "no model chosen" in readout

    # img2img on an uploaded image.
    from gradio_client import handle_file

    source = tmp_path / "in.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(source)
    gallery, readout, _ = client.predict(["tiny-small"], handle_file(str(source)), 0.5, "a cat", "", 1, 4, 2.0, "DDIM",
                                         0, api_name="/img2img")
    assert len(gallery) == 1 and "| tiny-small |" in readout

    # Training: start a long job, see it run, cancel it.
    message, job = client.predict("tiny-teacher", "tiny", "1", False, True, "toy", None, 100000, 1e-4, 1.0, 1.0, 1.0,
                                  2, api_name="/train_start")
    assert message.startswith("started job"), message
    job_id = message.split()[2].rstrip(":")
    import time

    deadline = time.monotonic() + 240
    while True:
        rows, plot, text, validation = client.predict(job_id, api_name="/train_status")
        if rows["data"] and rows["data"][0][3] > 0:
            break
        assert time.monotonic() < deadline and "running" in text, text
        time.sleep(1)
    assert "cancelling" in client.predict(job_id, api_name="/train_cancel")
    from studio.jobs import JobManager

    assert JobManager(data_dir / "jobs").wait(job_id, timeout=120) == "cancelled"
