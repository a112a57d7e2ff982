"""Public mode against a hostile visitor (issue 22): pixel bombs, a flood of requests, zips past the disk budget,
and error texts that would show the server's insides. Each drives the served app through gradio_client."""

import io
import os
import re
import time
import zipfile

import httpx
import psutil
import pytest
from conftest import serve_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from test_public import COMPARE, TOKEN_A, TOKEN_B, TRAIN, visitor

from studio.budget import folder_bytes
from studio.ui.doors import LISTEN_SECONDS
from studio.ui.hosting import Hosting
from studio.ui.workspaces import VISITORS, visitor_key

pytestmark = pytest.mark.slow
IMG2IMG = [0.5, "a cat", "", 1, 2, 2.0, "DDIM", 0]  # strength, prompt, negative, seed, steps, guidance, scheduler, res
SERVER_INSIDES = re.compile(r"/tmp|/visitors/|[0-9a-f]{32}|Error\b|Exception|Traceback")


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 1024**2  # the served app runs in this process


def upload_zip(path, files: dict[str, bytes], compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


@pytest.fixture
def hostile_app(tiny_catalog, tmp_path):
    hosting = Hosting(public=True, max_steps=1_000_000, max_queued_per_visitor=2, max_request_cost=2.0,
                      visitor_disk_gb=0.05)
    with serve_app(tiny_catalog, tmp_path / "data", queue_size=8, hosting=hosting) as url:
        yield url, tmp_path / "data"


def test_a_pixel_bomb_is_refused_from_its_header_and_memory_stays(hostile_app, tmp_path):
    url, data = hostile_app
    bomb = tmp_path / "bomb.png"
    Image.new("LA", (13000, 13000)).save(bomb, compress_level=9)  # 169 Mpx in a few hundred kB
    a = visitor(url, TOKEN_A)
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), "red").save(good)
    a.predict(["tiny-teacher"], handle_file(str(good)), *IMG2IMG, api_name="/img2img")  # warm: models loaded
    before = rss_mb()
    for _ in range(3):
        with pytest.raises(AppError) as refused:
            a.predict(["tiny-teacher"], handle_file(str(bomb)), *IMG2IMG, api_name="/img2img")
        message = str(refused.value)
        assert "13000x13000 pixels (169.0 Mpx) is over the limit of 40 Mpx" in message
        assert message.startswith("Input image:") and not SERVER_INSIDES.search(message), message
    after = rss_mb()
    print(f"app RSS around three pixel bombs: {before:.0f} MB before, {after:.0f} MB after")
    assert after - before < 50, (before, after)  # decoding one would take 169M x 2 bytes, then RGB 3x that

    # The same bomb inside a dataset zip: its row is refused from the header, and the job with it.
    zipped = upload_zip(tmp_path / "bombs.zip", {"metadata.jsonl": '{"file_name": "b.png", "text": "a"}\n',
                                                 "b.png": bomb.read_bytes()}, zipfile.ZIP_STORED)
    with pytest.raises(AppError, match="b.png: 13000x13000 pixels") as refused:
        a.predict(*TRAIN[:5], "upload", handle_file(str(zipped)), *TRAIN[7:], api_name="/train_start")
    assert not SERVER_INSIDES.search(str(refused.value)), str(refused.value)


def test_a_flooding_visitor_keeps_a_share_and_another_is_served(hostile_app):
    url, _ = hostile_app
    a, b = visitor(url, TOKEN_A), visitor(url, TOKEN_B)
    b.predict(["tiny-teacher"], *COMPARE, api_name="/compare")  # warm: models loaded
    # A floods: ten compares at once, each as large as the cost cap allows (two models, 25 steps with guidance: 2 teacher `paper` images).
    heavy = ["a cat", "", 1, 25, 2.0, "DDIM", 0]
    flood = [a.submit(["tiny-teacher", "tiny-small"], *heavy, api_name="/compare") for _ in range(10)]
    time.sleep(1.0)
    started = time.perf_counter()
    _, _, history = b.predict(["tiny-teacher"], *COMPARE, api_name="/compare")
    waited = time.perf_counter() - started
    outcomes = []
    for job in flood:
        try:
            job.result(timeout=600)
            outcomes.append("served")
        except Exception as error:  # noqa: BLE001  the refusal's text is what is checked
            outcomes.append(str(error))
    refused = [o for o in outcomes if o != "served"]
    print(f"flood: {outcomes.count('served')} of 10 served, {len(refused)} refused; the other visitor waited "
          f"{waited:.1f} s")
    assert len(history) == 2  # B's warm-up image and this one
    assert 1 <= outcomes.count("served") <= 4 and refused, outcomes
    assert all("each visitor may have 2 at once" in o for o in refused), refused[:2]


def test_a_request_over_the_cost_cap_or_in_a_slow_dtype_is_refused(hostile_app):
    url, _ = hostile_app
    a = visitor(url, TOKEN_A)
    too_big = ["a cat", "", 1, 100, 7.5, "DDIM", 0]  # 2 models x 100 steps x 2 = 8 teacher `paper` images
    with pytest.raises(AppError, match=r"request: 2 model\(s\) x 1 recipe\(s\) cost 8.0 teacher images"):
        a.predict(["tiny-teacher", "tiny-small"], *too_big, api_name="/compare")
    with pytest.raises(AppError, match="dtype: fp16 runs slower than fp32 on a CPU"):
        a.predict(["tiny-teacher"], *COMPARE, 1.0, 1, 0.0, "vae", "fp16", [], api_name="/compare")


def test_a_zip_over_the_disk_budget_is_refused_before_unpacking(hostile_app, tmp_path):
    url, data = hostile_app
    a = visitor(url, TOKEN_A)
    # 40 MB that barely compress (ratio ~1, under the bomb check): with the job's own ~18 MB, past the visitor's
    # 51 MB budget (the job alone fits).
    upload = upload_zip(tmp_path / "big.zip", {"metadata.jsonl": '{"file_name": "x.bin", "text": "a"}\n',
                                               "x.bin": os.urandom(40 * 1024**2)})
    with pytest.raises(AppError, match=r"dataset 40.0 MB\); each visitor may keep 51.2 MB") as refused:
        a.predict(*TRAIN[:5], "upload", handle_file(str(upload)), *TRAIN[7:], api_name="/train_start")
    assert not SERVER_INSIDES.search(str(refused.value)), str(refused.value)
    left = folder_bytes(data / VISITORS / visitor_key(f"token:{TOKEN_A}"))
    print(f"disk a refused 40 MB zip left in the visitor's folder: {left} bytes")
    assert left == 0


def test_errors_name_the_field_and_never_show_server_insides(hostile_app, tmp_path):
    url, _ = hostile_app
    a = visitor(url, TOKEN_A)
    empty = upload_zip(tmp_path / "empty.zip", {"metadata.jsonl": ""})
    good = png_bytes(Image.new("RGB", (64, 64), "blue"))
    damaged = tmp_path / "damaged.zip"
    upload_zip(damaged, {"metadata.jsonl": '{"file_name": "a.png", "text": "a"}\n', "a.png": good},
               zipfile.ZIP_STORED)
    raw = bytearray(damaged.read_bytes())
    at = raw.index(good[8:40])  # inside a.png's stored bytes: its CRC no longer matches
    raw[at:at + 8] = b"XXXXXXXX"
    damaged.write_bytes(bytes(raw))
    for upload, expected in [(empty, "metadata.jsonl is empty"), (damaged, "data: the zip is damaged")]:
        with pytest.raises(AppError) as refused:
            a.predict(*TRAIN[:5], "upload", handle_file(str(upload)), *TRAIN[7:], api_name="/train_start")
        message = str(refused.value)
        assert expected in message and not SERVER_INSIDES.search(message), message


def test_looking_around_leaves_no_folders(hostile_app):
    url, data = hostile_app
    for n in range(20):
        visitor(url, f"visitor{n:02d}" + "x" * 16).predict(None, api_name="/train_status")
    assert not (data / VISITORS).exists() or not any((data / VISITORS).iterdir())


def test_many_visitors_do_not_slow_a_job_start(tiny_catalog, tmp_path):
    """The running-job count reads the folders of visitors with jobs, not every visitor's."""
    from studio.ui.workspaces import Workspaces

    spaces = Workspaces(tmp_path, public=True)
    for n in range(3000):
        spaces.get(f"token:visitor-{n}").history.folder.mkdir(parents=True)  # visitors with images, no jobs
    assert spaces.running() == 0  # the first count looks for jobs folders on disk, once
    started = time.perf_counter()
    assert spaces.running() == 0
    seconds = time.perf_counter() - started
    print(f"running-job count with 3,000 visitor folders: {seconds * 1000:.2f} ms")
    assert seconds < 0.01


def test_invented_tokens_from_one_address_share_its_queue_and_a_real_visitor_is_served(tiny_catalog, tmp_path):
    """50 made-up visitor tokens x 2 compares from one address (behind the Space's proxy, which appends the address it
    saw to X-Forwarded-For), sent as plain API calls whose results nobody reads."""
    hosting = Hosting(public=True, proxy_hops=1, max_queued_per_visitor=2, max_queued_per_address=4)
    heavy = [["tiny-teacher"], "a cat", "", 1, 25, 2.0, "DDIM", 0, 1.0, 1, 0.0, "vae", "fp32", []]
    with serve_app(tiny_catalog, tmp_path / "data", queue_size=16, hosting=hosting) as url:
        real = Client(url, verbose=False, headers={"X-Studio-Visitor": TOKEN_B, "X-Forwarded-For": "203.0.113.7"})
        real.predict(*heavy, api_name="/compare")  # warm: the model loaded
        started = time.perf_counter()
        real.predict(*heavy, api_name="/compare")
        alone = time.perf_counter() - started
        admitted, refused = 0, []
        with httpx.Client(timeout=30) as http:
            for n in range(100):
                headers = {"X-Studio-Visitor": f"invented{n // 2:02d}" + "x" * 16, "X-Forwarded-For": "198.51.100.9"}
                answer = http.post(url + "gradio_api/call/compare", json={"data": heavy}, headers=headers)
                if answer.status_code == 200:
                    admitted += 1
                else:
                    refused.append(answer.text)
        started = time.perf_counter()
        real.predict(*heavy, api_name="/compare")
        waited = time.perf_counter() - started
    print(f"flood: {admitted} of 100 admitted, {len(refused)} refused; a real visitor's compare took {waited:.1f} s "
          f"(alone {alone:.1f} s)")
    assert admitted <= hosting.max_queued_per_address and len(refused) == 100 - admitted
    assert all("each address may have 4 at once" in text for text in refused), refused[:2]
    # Nobody reads the flood's results: each is dropped after LISTEN_SECONDS without running; the real visitor's
    # compare waits at most for those, not for the flood's work.
    assert waited < alone + admitted * LISTEN_SECONDS + 10, (waited, alone)
