"""The metrics: CLIP score (open_clip), FID and IS (torchmetrics), teacher-student fidelity.

Weights come from local files or the Hugging Face cache; a metric whose
weights are absent raises MetricUnavailable with what was looked for and how
to provide it, and the protocol leaves that column empty.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image


class MetricUnavailable(RuntimeError):
    """A metric that can't run here (its weights are missing); the message says how to provide them."""


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio of two 8-bit images, in dB (inf when identical)."""
    error = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


def resize_for_metrics(image: Image.Image, size: int) -> Image.Image:
    return image if image.size == (size, size) else image.resize((size, size), Image.Resampling.BICUBIC)


def _uint8_batch(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(i.convert("RGB")) for i in images])).permute(0, 3, 1, 2).contiguous()


def _local_clip_weights(weights: str | Path) -> str:
    weights = Path(weights)
    if weights.suffix != ".safetensors":
        raise MetricUnavailable(f"CLIP weights {weights} are not a .safetensors file; the studio loads safetensors only "
                                "(convert once where you trust the file)")
    if not weights.is_file():
        raise MetricUnavailable(f"CLIP weights {weights} do not exist")
    return str(weights)


def _cached_clip_weights(model_name: str, pretrained: str | None) -> str | None:
    """The safetensors file of an open_clip pretrained tag in the Hugging Face cache (None: random init)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE
    from open_clip.pretrained import get_pretrained_cfg

    if not pretrained:
        return None
    hub = get_pretrained_cfg(model_name, pretrained).get("hf_hub", "").rstrip("/")
    if not hub:
        raise MetricUnavailable(f"open_clip has no Hugging Face hub weights for {model_name} {pretrained!r}; "
                                "give --clip-weights FILE.safetensors")
    path = try_to_load_from_cache(hub, "open_clip_model.safetensors")
    if not isinstance(path, str):
        raise MetricUnavailable(
            f"CLIP {model_name} {pretrained}: {hub}/open_clip_model.safetensors is not in the Hugging Face cache "
            f"({HF_HUB_CACHE}); download it once where the hub is reachable (huggingface-cli download {hub} "
            "open_clip_model.safetensors), or give --clip-weights FILE.safetensors"
        )
    return path


class ClipScorer:
    """open_clip image and text embeddings; CLIP score is their cosine similarity (unscaled, as the paper)."""

    def __init__(self, model_name: str = "ViT-g-14", pretrained: str | None = "laion2b_s34b_b88k",
                 weights: str | None = None, device: str = "cpu"):
        import open_clip

        # Find the weights before building the model: ViT-g-14 alone takes minutes and gigabytes to build.
        path = _local_clip_weights(weights) if weights else _cached_clip_weights(model_name, pretrained)
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=path, device=device)
        self.model, self.preprocess = model.eval(), preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = device
        self.name = f"{model_name}/{Path(weights).name if weights else pretrained}"

    @torch.no_grad()
    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        batch = torch.stack([self.preprocess(i.convert("RGB")) for i in images]).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_image(batch).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def score(self, images: list[Image.Image], prompts: list[str]) -> float:
        """Mean cosine similarity of each image with its prompt."""
        return float((self.image_features(images) * self.text_features(prompts)).sum(-1).mean())

    def image_similarity(self, a: list[Image.Image], b: list[Image.Image]) -> float:
        """Mean cosine similarity of paired images' embeddings (teacher-student fidelity)."""
        return float((self.image_features(a) * self.image_features(b)).sum(-1).mean())


def inception_from_safetensors(path: Path | str, features: tuple[str, ...]):
    """torch-fidelity's InceptionV3 (the network FID and IS are defined with), weights from safetensors.

    torch-fidelity itself would download a pickle or torch.load one; we hand it
    a state dict read from a safetensors file instead.
    """
    from unittest import mock

    from safetensors.torch import load_file
    from torch_fidelity import feature_extractor_inceptionv3 as inception

    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        raise MetricUnavailable(
            f"Inception weights {path} {'are not .safetensors' if path.is_file() else 'do not exist'}. FID and IS "
            "need torch-fidelity's InceptionV3 weights (weights-inception-2015-12-05-6726825d.pth) converted once "
            "to safetensors: load the state dict where you trust the file and save it with safetensors.torch.save_file."
        )
    state = load_file(path)
    with mock.patch.object(inception, "load_state_dict_from_url", lambda *args, **kwargs: state):
        return inception.FeatureExtractorInceptionV3("inception-v3-compat", list(features))


class _Output(torch.nn.Module):
    """One named output of the Inception extractor, as torchmetrics expects a feature module."""

    def __init__(self, extractor, index: int, num_features: int):
        super().__init__()
        self.extractor, self.index, self.num_features = extractor, index, num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images)[self.index]


def fid_and_is(images: list[Image.Image], real: list[Image.Image], weights: Path | str,
               is_splits: int = 10) -> tuple[float | None, float]:
    """(FID against `real`, or None without real images; Inception Score) of 8-bit images."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore

    extractor = inception_from_safetensors(weights, ("2048", "logits_unbiased"))
    generated = _uint8_batch(images)
    inception_score = InceptionScore(feature=_Output(extractor, 1, 1008), splits=min(is_splits, len(images)))
    inception_score.update(generated)
    is_mean = float(inception_score.compute()[0])
    if not real:
        return None, is_mean
    fid = FrechetInceptionDistance(feature=_Output(extractor, 0, 2048))
    fid.update(_uint8_batch(real), real=True)
    fid.update(generated, real=False)
    return float(fid.compute()), is_mean
