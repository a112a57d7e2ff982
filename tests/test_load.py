"""The load test, small: 12 concurrent compare requests against a queue of 3 all complete or are turned away."""

import pytest

from conftest import serve_app
from load_compare import run


@pytest.mark.slow
def test_concurrent_compares_complete_or_are_rejected(tiny_catalog, tmp_path):
    with serve_app(tiny_catalog, tmp_path / "data", queue_size=3) as url:
        report = run(url, 12, ["tiny-teacher", "tiny-small"], steps=1, timeout=240)
        after = run(url, 1, ["tiny-small"], steps=1, timeout=60)  # and the server still serves afterwards
    print(report)
    assert report["completed"] + report["rejected"] == 12 and report["failed"] == report["hung"] == 0, report
    assert report["completed"] >= 1 and report["rejected"] >= 1, report  # 12 at once cannot all fit a queue of 3
    assert after["completed"] == 1, after
