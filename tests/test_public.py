"""The app in public mode, driven by API clients as visitors: each sees only its own work, and quotas hold."""

import json
import shutil
import time
from pathlib import Path

import pytest
from conftest import serve_app
from gradio_client import Client
from gradio_client.exceptions import AppError

from studio.jobs import write_json
from studio.ui.hosting import COOKIE, Hosting
from studio.ui.workspaces import VISITORS, visitor_key

pytestmark = pytest.mark.slow
TOKEN_A, TOKEN_B = "a" * 24, "b" * 24
COMPARE = ["a cat", "", 1, 2, 2.0, "Euler", 0]  # prompt, negative, seed, steps, guidance, scheduler, resolution
TRAIN = ["tiny-teacher", "tiny", "1", False, True, "toy", None, 100_000, 1e-4, 1.0, 1.0, 1.0, 2]


def visitor(url, token=None, **kwargs):
    headers = {"X-Studio-Visitor": token} if token else None
    return Client(url, verbose=False, headers=headers, **kwargs)


def fake_student(data_dir, identity, tiny_catalog):
    """A finished distillation job in the visitor's folder (its student: the tiny catalogue's Small U-Net)."""
    job_id = "20260101-000000-5a5a5a"
    folder = data_dir / VISITORS / visitor_key(identity) / "jobs" / job_id
    shutil.copytree(Path(tiny_catalog.get("tiny-small").source) / "unet", folder / "run" / "unet")
    (folder / "run" / "card.json").write_text("{}")
    write_json(folder / "job.json", {"id": job_id, "kind": "distill", "name": "fake", "steps": 1, "family": "tiny",
                                     "created": time.time(), "config": {"teacher": "tiny-teacher", "arch": "small"}})
    write_json(folder / "exit.json", {"returncode": 0, "cancelled": False})
    return job_id


@pytest.fixture
def public_app(tiny_catalog, tmp_path):
    hosting = Hosting(public=True, max_jobs_per_visitor=1, max_jobs=2, max_steps=1_000_000)
    with serve_app(tiny_catalog, tmp_path / "data", queue_size=8, hosting=hosting) as url:
        yield url, tmp_path / "data"


def test_visitors_see_and_act_on_their_own_work_only(public_app, tiny_catalog):
    url, data = public_app
    a, b = visitor(url, TOKEN_A), visitor(url, TOKEN_B)
    student = fake_student(data, f"token:{TOKEN_A}", tiny_catalog)

    # History: each visitor's compare shows its own images only; A can use its own student, B can't name it.
    _, _, history_a = a.predict(["tiny-teacher", f"job-{student}"], *COMPARE, api_name="/compare")
    _, _, history_b = b.predict(["tiny-teacher"], *COMPARE, api_name="/compare")
    assert len(history_a) == 2 and len(history_b) == 1
    with pytest.raises(AppError, match=f"models: unknown 'job-{student}'"):
        b.predict([f"job-{student}"], *COMPARE, api_name="/compare")

    # Jobs: A starts one; a second is over A's quota. B can't see, cancel, resume or use A's job.
    message, _ = a.predict(*TRAIN, api_name="/train_start")
    job_a = message.split()[2].rstrip(":")
    with pytest.raises(AppError, match="at most 1 may run at once per visitor"):
        a.predict(*TRAIN, api_name="/train_start")
    for api_name, args in [("/train_status", [job_a]), ("/train_cancel", [job_a]), ("/train_resume", [job_a]),
                           ("/evaluate_status", [job_a]), ("/dreambooth_status", [[job_a]]),
                           ("/dreambooth_cancel", [[job_a]]), ("/dreambooth_results", [[job_a], "a sks cat", 0, 2, 2])]:
        with pytest.raises(AppError, match=f"job: no job '{job_a}'"):
            b.predict(*args, api_name=api_name)
    rows, _, text, _ = b.predict(None, api_name="/train_status")
    assert not rows["data"] and text == "No jobs yet."

    # A, from a new connection with the same token (a reload), finds its job and its student.
    again = visitor(url, TOKEN_A)
    rows, _, text, _ = again.predict(job_a, api_name="/train_status")
    assert [row[0] for row in rows["data"]] == [job_a, student] and "running" in text

    # A browser-like visitor (no header): the cookie set on its first request names its workspace.
    c = visitor(url)
    assert c.cookies.get(COOKIE)
    message, _ = c.predict(*TRAIN, api_name="/train_start")
    job_c = message.split()[2].rstrip(":")
    same_browser = visitor(url, httpx_kwargs={"cookies": {COOKIE: c.cookies[COOKIE]}})
    assert "running" in same_browser.predict(job_c, api_name="/train_status")[2]
    with pytest.raises(AppError, match=f"job: no job '{job_c}'"):
        a.predict(job_c, api_name="/train_status")
    # Two jobs run (A's and C's): the machine's total quota turns B away.
    with pytest.raises(AppError, match="2 jobs are running on this machine"):
        b.predict(*TRAIN, api_name="/train_start")

    # Files: each visitor's work is under its own folder, and nothing is left in the shared ones.
    roots = {p.name for p in (data / VISITORS).iterdir()}
    assert {visitor_key(f"token:{TOKEN_A}"), visitor_key(f"token:{TOKEN_B}"),
            visitor_key(f"token:{c.cookies[COOKIE]}")} == roots
    assert not (data / "jobs").exists() and not (data / "history").exists()
    assert "cancelling" in a.predict(job_a, api_name="/train_cancel")
    assert json.loads((data / VISITORS / visitor_key(f"token:{TOKEN_A}") / "jobs" / job_a / "job.json").read_text())


def test_a_bad_visitor_token_is_refused(public_app):
    url, _ = public_app
    with pytest.raises(AppError, match="X-Studio-Visitor header: must be 16-128 letters"):
        visitor(url, "short").predict(None, api_name="/train_status")
