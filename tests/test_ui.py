"""The app: the designer's table, the family's models, and the whole app through gradio_client."""

import time

import pytest

from studio.ui.app import build_app
from studio.ui.common import family_models
from studio.ui.train import design_table, spec_from_controls


def test_design_table_lists_teacher_presets_and_the_custom_student(catalog):
    rows, summary = design_table(catalog, "sd-v1.4", "custom", "1,2,2,1", False, True, 0)  # 0: native
    names = [row[0] for row in rows]
    assert names == ["teacher", "base", "small", "tiny", "custom:1,2,2,1:no-mid (yours)"]
    assert rows[2][1] == "482,346,884" and rows[0][2] == 1.0
    assert rows[3][3] == 205.0  # Tiny, G MACs in the paper's convention
    assert "paper's convention" in summary


def test_design_preset_ignores_custom_fields(catalog):
    assert str(spec_from_controls("tiny", "2,2", True, True)) == "tiny"
    rows, _ = design_table(catalog, "sd-v2.1-base", "small", "", True, True, 512)
    assert [row[0] for row in rows] == ["teacher", "base", "small (yours)", "tiny"]


@pytest.mark.parametrize("args, message", [
    (("sd-v1.4", "custom", "1,5", True, True, 512), "one value per kept down stage"),
    (("sd-v1.4", "small", "", True, True, 500), "multiple of 8"),
    (("bk-sdm-tiny", "small", "", True, True, 512), "choose one of toy-teacher, sd-v1.4, sd-v2.1-base"),
])
def test_design_bad_input_names_what_is_allowed(catalog, args, message):
    with pytest.raises(ValueError, match=message):
        design_table(catalog, *args)


def test_family_models_put_the_teacher_first(catalog):
    assert family_models(catalog, "toy")[0] == "toy-teacher"
    v1 = family_models(catalog, "v1")
    assert v1[0] == "sd-v1.4" and len(v1) == 7 and "bk-sdm-tiny-2m" in v1
    with pytest.raises(ValueError, match="families: .*toy"):
        build_app(catalog, family="v7")


def gallery_path(item) -> str:
    """The local file of a gallery item as gradio_client returns it ({"image": path or {"path": ...}})."""
    image = item["image"]
    return image if isinstance(image, str) else image["path"]


@pytest.mark.slow
def test_app_end_to_end_with_gradio_client(served_app, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    from studio.jobs import JobManager

    client, _, data_dir = served_app
    table, summary, sensitivity_map, note = client.predict("sd-v1.4", "base", "1", True, True, 512, api_name="/design")
    assert [row[0] for row in table["data"]][:2] == ["teacher", "base (yours)"]
    assert table["data"][1][1] == "579,384,964"
    assert sensitivity_map is None and "python -m studio sensitivity --teacher sd-v1.4" in note  # none shipped

    # Compare: two models, two images, one readout row each (the last of the streamed updates).
    gallery, readout, history = client.predict(["tiny-teacher", "tiny-small"], "a cat", "", 3, 2, 2.0, "Euler", 0,
                                               api_name="/compare")
    assert len(gallery) == 2 and all(Image.open(gallery_path(item)).size == (32, 32) for item in gallery)
    assert "| tiny-teacher |" in readout and "| tiny-small |" in readout and len(history) == 2
    assert '"scheduler": "Euler"' in Image.open(gallery_path(gallery[1])).text["studio"]  # settings survive serving
    # Bad input: the client's call raises with the message, and nothing is generated.
    for models, prompt, message in [([], "a cat", "models: none chosen"), (["tiny-teacher"], " ", "prompt is empty"),
                                    (["tiny-teacher", "nope"], "a cat", "models: unknown 'nope'")]:
        with pytest.raises(AppError, match=message):
            client.predict(models, prompt, "", 3, 2, 2.0, "Euler", 0, api_name="/compare")
    assert len(list((data_dir / "history").glob("*.png"))) == 2

    # img2img on an uploaded image.
    source = tmp_path / "in.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(source)
    gallery, readout, _ = client.predict(["tiny-small"], handle_file(str(source)), 0.5, "a cat", "", 1, 4, 2.0, "DDIM",
                                         0, api_name="/img2img")
    assert len(gallery) == 1 and "| tiny-small |" in readout

    # Training: a bad request raises naming the field; a long job starts, runs, and is cancelled.
    with pytest.raises(AppError, match=r"learning rate \(--lr\) must be above 0"):
        client.predict("tiny-teacher", "tiny", "1", False, True, "toy", None, 10, -1, 1.0, 1.0, 1.0, 2,
                       api_name="/train_start")
    message, job = client.predict("tiny-teacher", "tiny", "1", False, True, "toy", None, 100000, 1e-4, 1.0, 1.0, 1.0,
                                  2, api_name="/train_start")
    assert message.startswith("started job"), message
    job_id = message.split()[2].rstrip(":")
    deadline = time.monotonic() + 240
    while True:
        rows, plot, text, validation = client.predict(job_id, api_name="/train_status")
        if rows["data"] and rows["data"][0][3] > 0:
            break
        assert time.monotonic() < deadline and "running" in text, text
        time.sleep(1)
    assert plot["data"], ("the loss plot has points", plot)
    assert "cancelling" in client.predict(job_id, api_name="/train_cancel")
    assert JobManager(data_dir / "jobs").wait(job_id, timeout=120) == "cancelled"
    with pytest.raises(AppError, match="nope"):
        client.predict("nope", api_name="/train_cancel")
