"""The load test, small: 12 concurrent compare requests against a queue of 3 all complete or are turned away."""

import pytest

from conftest import free_port
from load_compare import run


@pytest.mark.slow
def test_concurrent_compares_complete_or_are_rejected(tiny_catalog, tmp_path):
    from studio.ui.app import build_app

    app = build_app(tiny_catalog, family="tiny", data_dir=tmp_path / "data")
    port = free_port()
    app.queue(max_size=3, default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=port,
                                                               prevent_thread_lock=True)
    try:
        report = run(f"http://127.0.0.1:{port}/", 12, ["tiny-teacher", "tiny-small"], steps=1, timeout=240)
        # And the server still serves afterwards.
        after = run(f"http://127.0.0.1:{port}/", 1, ["tiny-small"], steps=1, timeout=60)
    finally:
        app.close()
    print(report)
    assert report["completed"] + report["rejected"] == 12 and report["failed"] == report["hung"] == 0, report
    assert report["completed"] >= 1 and report["rejected"] >= 1, report  # 12 at once cannot all fit a queue of 3
    assert after["completed"] == 1, after
