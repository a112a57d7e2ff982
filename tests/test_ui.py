import socket

from studio.catalog import load_catalog
from studio.ui.app import build_app
from studio.ui.design import design_table, spec_from_controls


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
    finally:
        app.close()
