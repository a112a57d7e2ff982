"""Shared fixtures: small models in the hub's pipeline layout, built here.

Real checkpoints can't reach this machine, so tests exercise the ordinary
`from_pretrained` code on local folders with the same layout and SD's stage
structure at a tiny width.
"""

import json
import os
import socket
import string
import tempfile
from contextlib import contextmanager

# Before anything imports huggingface_hub: tests never reach for the network, and never read the user's Hugging
# Face cache (a cached TAESD or ViT-g would change what they see): an empty one of their own, for every process.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="studio-tests-hf-home-")
for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE"):
    os.environ.pop(variable, None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import studio  # noqa: E402, F401  (torchvision compatibility first)
import studio.toy  # noqa: E402, F401  (the toy world plugs in its data source and judge, as cli.py and app.py do)

# SD's stage structure (three cross-attention down stages, a plain one, a
# cross-attention mid block, the mirrored up path, two layers per stage).
TINY_UNET = {
    "_class_name": "UNet2DConditionModel",
    "block_out_channels": [16, 32, 32, 32],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "cross_attention_dim": 16,
    "attention_head_dim": 4,
    "sample_size": 16,
}


def write_tokenizer(folder) -> None:
    """A character-level CLIP BPE tokenizer (no merges) in the hub's file layout."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = [c for c in string.ascii_lowercase] + [c + "</w>" for c in string.ascii_lowercase]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))


def build_tiny_pipeline(folder, seed: int = 0):
    """Save a tiny, randomly initialised StableDiffusionPipeline to `folder`."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    write_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=16, projection_dim=16,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    ))
    vae = AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=32,
    )
    unet = UNet2DConditionModel.from_config(TINY_UNET)
    scheduler = PNDMScheduler(skip_prk_steps=True)
    pipeline = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return pipeline


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-teacher")
    build_tiny_pipeline(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory, tiny_pipeline_dir):
    """The packaged catalogue plus a tiny teacher ("tiny-teacher") and its Small student ("tiny-small")."""
    from diffusers import UNet2DConditionModel

    from studio.models.catalog import load_catalog
    from studio.models.compression import build_student

    folder = tmp_path_factory.mktemp("tiny-catalog")
    teacher_unet = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir / "unet")
    build_student(teacher_unet, "small").save_pretrained(folder / "tiny-small" / "unet", safe_serialization=True)
    entries = [
        {"name": "tiny-teacher", "source": str(tiny_pipeline_dir), "role": "teacher", "family": "tiny"},
        {"name": "tiny-small", "source": str(folder / "tiny-small"), "role": "student", "family": "tiny",
         "teacher": "tiny-teacher", "arch": "small"},
    ]
    families = {"tiny": {"prompt": "a cat", "guidance": 2.0, "validation_prompts": ["a red circle"], "steps": 3,
                         "train_data": "toy", "train_steps": 100_000, "train_lr": 1e-4, "train_batch_size": 2}}
    (folder / "models.json").write_text(json.dumps({"families": families, "models": entries}))
    return load_catalog(folder / "models.json")


@pytest.fixture(scope="session")
def catalog():
    """The packaged catalogue (studio/models/models.json)."""
    from studio.models.catalog import load_catalog

    return load_catalog()


def stop_jobs(data_dir) -> None:
    """Kill whatever background jobs a test left running (jobs outlive the app by design)."""
    import signal

    from studio.jobs import JobManager

    for root in [data_dir / "jobs", *data_dir.glob("visitors/*/jobs")]:  # local and public mode
        if not root.is_dir():
            continue
        jobs = JobManager(root)
        for job_id in jobs.ids():
            if jobs.state(job_id)[0] == "running":
                pid = json.loads((jobs.folder(job_id) / "runner.json").read_text())["pid"]
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_app(catalog, data_dir, queue_size: int | None = None, hosting=None, family: str = "tiny", mcp: bool = False):
    """The app on `family` (local, or as `hosting` says), served on a free port; yields its URL. On exit
    the server closes and any job it left running is killed."""
    from studio.ui.app import build_app
    from studio.ui.doors import launch_options
    from studio.ui.fairness import queue_app
    from studio.ui.hosting import Hosting

    hosting = hosting or Hosting(public=False)
    app = build_app(catalog, family=family, data_dir=data_dir, hosting=hosting)
    port = free_port()
    queue_app(app, hosting, queue_size).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, mcp_server=mcp,
        **launch_options(hosting))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()
        stop_jobs(data_dir)


@pytest.fixture
def served_app(tiny_catalog, tmp_path):
    """(gradio_client Client, URL, data dir) of the app on the tiny family."""
    from gradio_client import Client

    with serve_app(tiny_catalog, tmp_path / "data", queue_size=4) as url:
        yield Client(url, verbose=False), url, tmp_path / "data"
