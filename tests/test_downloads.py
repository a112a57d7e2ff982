"""Hub downloads against a local server that answers huggingface_hub's requests (tests/hub_server.py): a real
client over a real socket. A model is fetched with progress in bytes before it loads; each way a download can fail
is a named error; a download cut short resumes."""

import json
import shutil
import uuid
from collections import namedtuple

import huggingface_hub
import pytest
from hub_server import HubServer

from studio.models.catalog import load_catalog
from studio.models.downloads import PIPELINE_FILES, DownloadError, ensure_downloaded, fetch
from studio.models.loading import ModelUnavailableError
from studio.inference.pipeline_cache import PipelineCache

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture
def hub(tmp_path, tiny_pipeline_dir, monkeypatch):
    """(server, catalogue): a fresh repo name for this test (the suite's Hugging Face cache is shared), holding the
    tiny teacher pipeline, a student repo holding a U-Net, and one with pickled weights only."""
    owner = f"acme-{uuid.uuid4().hex[:8]}"
    shutil.copytree(tiny_pipeline_dir, tmp_path / "hub" / owner / "tiny-sd")
    shutil.copytree(tiny_pipeline_dir / "unet", tmp_path / "hub" / owner / "tiny-sd-student" / "unet")
    pickled = tmp_path / "hub" / owner / "pickled" / "unet"
    pickled.mkdir(parents=True)
    (pickled / "config.json").write_text((tiny_pipeline_dir / "unet" / "config.json").read_text())
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"\0" * 1024)
    entries = [{"name": "hub-teacher", "source": f"{owner}/tiny-sd", "role": "teacher", "family": "hub"},
               {"name": "hub-student", "source": f"{owner}/tiny-sd-student", "role": "student", "family": "hub",
                "teacher": "hub-teacher", "arch": "small"}]
    (tmp_path / "models.json").write_text(json.dumps({"families": {"hub": {}}, "models": entries}))
    with HubServer(tmp_path / "hub") as server:
        server.point_hub_here(monkeypatch)
        yield server, load_catalog(tmp_path / "models.json"), owner


def test_a_hub_model_downloads_with_progress_in_bytes_then_loads(hub):
    server, catalog, owner = hub
    events = []
    pipeline = PipelineCache(catalog).get("hub-teacher", callback=events.append)
    downloads = [e for e in events if e.task == "download"]
    expected = sum(f.stat().st_size for f in (server.root / owner / "tiny-sd").rglob("*") if f.is_file())
    assert downloads and downloads[-1].done == downloads[-1].total and downloads[-1].info["model"] == "hub-teacher"
    assert 0.5 * expected <= downloads[-1].total <= expected  # what from_pretrained reads, safetensors only
    assert pipeline.unet is not None
    fetched = [path for method, path, _ in server.requests if method == "GET" and "/resolve/" in path]
    assert not any(p.endswith(".bin") for p in fetched)
    events.clear()  # cached now: no download the second time
    PipelineCache(catalog).get("hub-teacher", callback=events.append)
    assert not [e for e in events if e.task == "download"]


def test_a_download_cut_short_resumes_where_it_stopped(hub, monkeypatch):
    server, catalog, owner = hub
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 4096)  # the client resumes whole chunks
    server.cut_after[WEIGHTS] = 8192
    fetch(f"{owner}/tiny-sd-student", ["unet/*"], "hub-student")
    assert (WEIGHTS, "bytes=8192-") in server.range_requests
    cached = huggingface_hub.try_to_load_from_cache(f"{owner}/tiny-sd-student", WEIGHTS)
    assert open(cached, "rb").read() == (server.root / owner / "tiny-sd-student" / WEIGHTS).read_bytes()


def test_every_way_a_download_fails_is_named(hub, monkeypatch):
    server, catalog, owner = hub
    server.gated.add(f"{owner}/tiny-sd")
    with pytest.raises(DownloadError, match="is gated or private on the Hugging Face hub: accept its terms"):
        PipelineCache(catalog).get("hub-teacher")
    with pytest.raises(DownloadError, match="was not found on the Hugging Face hub"):
        fetch(f"{owner}/nothing-here", PIPELINE_FILES, "missing")
    with pytest.raises(DownloadError, match="has no safetensors weights .* the studio loads safetensors only"):
        fetch(f"{owner}/pickled", ["unet/*"], "pickled")
    full = namedtuple("usage", "total used free")(10**9, 10**9, 10)
    with monkeypatch.context() as patched:
        patched.setattr(shutil, "disk_usage", lambda path: full)
        with pytest.raises(DownloadError, match=r"needs 0.00 GB and the disk of the Hugging Face cache has 0.00 GB "
                                                "free"):
            fetch(f"{owner}/tiny-sd-student", ["unet/*"], "hub-student")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    ensure_downloaded("hub-student", catalog)  # offline: left to the loader, which names what is missing
    with pytest.raises(ModelUnavailableError, match="not in the cache"):
        PipelineCache(catalog).get("hub-student")


@pytest.mark.slow
def test_a_public_studio_downloads_nothing_a_visitor_asks_for(hub, tmp_path):
    """Issue 33: a visitor on the toy Space made the server fetch hub models. Public mode serves only the family's
    models on disk; the operator allows downloads (--allow-download), within a disk budget."""
    from conftest import serve_app
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from studio.ui.app import build_app
    from studio.ui.hosting import Hosting

    server, catalog, owner = hub
    asked = ["a cat", "", 1, 2, 2.0, "Euler", 0]
    with serve_app(catalog, tmp_path / "toy", family="toy", hosting=Hosting(public=True)) as url:
        visitor = Client(url, verbose=False, headers={"X-Studio-Visitor": "v" * 24})
        for model in ("hub-teacher", "hub-student", "sd-v1.4"):
            with pytest.raises(AppError, match=rf"models: unknown '{model}'; choose from toy-teacher"):
                visitor.predict([model], *asked, api_name="/compare")
            with pytest.raises(AppError, match=rf"unknown model '{model}'|teacher"):
                visitor.predict(model, "tiny", "1", False, True, "toy", None, 10, 1e-4, 1.0, 1.0, 1.0, 2,
                                api_name="/train_start")
    asked_for = [path for _, path, _ in server.requests if owner in path or "CompVis" in path]
    assert asked_for == []  # not one request for a model reached the hub (gradio asks it for other things at launch)
    with pytest.raises(ValueError, match="public mode: no model of family 'hub' is on this server"):
        build_app(catalog, "hub", data_dir=tmp_path / "hub", hosting=Hosting(public=True))

    budget = Hosting(public=True, allow_download=True, download_disk_gb=1e-6)  # about 1 kB
    with serve_app(catalog, tmp_path / "allowed", family="hub", hosting=budget) as url:
        visitor = Client(url, verbose=False, headers={"X-Studio-Visitor": "v" * 24})
        with pytest.raises(AppError, match=r"needs 0.00 GB and the Hugging Face cache holds .* download budget"):
            visitor.predict(["hub-teacher"], *asked, api_name="/compare")
    assert not [path for method, path, _ in server.requests if method == "GET" and "/resolve/" in path]  # dry run only


def test_the_operator_preloads_a_family_and_the_public_studio_serves_it(hub, tmp_path):
    from studio.models.downloads import preload_family
    from studio.ui.common import Studio
    from studio.ui.hosting import Hosting

    server, catalog, owner = hub
    assert preload_family(catalog, "hub") == ["hub-teacher", "hub-student"]
    studio = Studio.create(catalog, "hub", "cpu", tmp_path, Hosting(public=True))  # on disk now: served
    assert studio.models() == ["hub-teacher", "hub-student"]
    before = len(server.requests)
    studio.cache.get("hub-student")
    fetched = [path for method, path, _ in server.requests[before:] if method == "GET" and "/resolve/" in path]
    assert fetched == []  # what was preloaded loads without a file fetched (from_pretrained still checks revisions)
