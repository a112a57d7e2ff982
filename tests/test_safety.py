"""The safety checker: diffusers' StableDiffusionSafetyChecker on the images the app shows, with a small checker
whose decision the test sets (its concept thresholds), served as a family's checker."""

import json

import numpy as np
import pytest
import torch
from conftest import serve_app
from PIL import Image
from test_public import COMPARE, TOKEN_A, visitor

from studio.models.catalog import load_catalog
from studio.models.loading import ModelUnavailableError
from studio.inference.safety import PLACEHOLDER_COLOR, SafetyChecker, screen
from studio.ui.hosting import Hosting


def write_checker(folder, flag_everything: bool):
    """A small checker in the SD-v1.4 layout (safety_checker/, feature_extractor/). Its verdict is set by the
    thresholds: an image is flagged when its similarity to a concept passes the concept's threshold, and every
    cosine similarity lies in [-1, 1]."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8)
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0 if flag_everything else 2.0)
        checker.special_care_embeds_weights.fill_(2.0)
    checker.save_pretrained(folder / "safety_checker", safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder / "feature_extractor")
    return folder


@pytest.fixture(scope="module")
def checkers(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkers")
    return {verdict: write_checker(root / verdict, verdict == "flags") for verdict in ("flags", "passes")}


def test_a_flagged_image_is_replaced_by_a_placeholder(checkers):
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    flags, passes = (SafetyChecker.load(str(checkers[v])) for v in ("flags", "passes"))
    assert flags.flagged([image, image]) == [True, True] and passes.flagged([image]) == [False]
    shown, withheld = screen(flags, image)
    assert withheld and shown.size == image.size
    assert (np.asarray(shown) == PLACEHOLDER_COLOR).all(axis=-1).mean() > 0.9
    assert screen(passes, image) == (image, False) and screen(None, image) == (image, False)


def test_a_checker_that_is_not_at_hand_is_a_named_error(tmp_path):
    with pytest.raises(ModelUnavailableError, match="safety checker: .* could not be loaded .* --no-safety-checker"):
        SafetyChecker.load(str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_public_compare_images_are_screened_and_local_ones_when_asked(checkers, tiny_catalog, tmp_path):
    entries = [{"name": e.name, "source": e.source, "role": e.role, "family": e.family, "teacher": e.teacher,
                "arch": e.arch} for e in tiny_catalog if e.family == "tiny"]
    family = {**tiny_catalog.family("tiny").__dict__, "safety_checker": str(checkers["flags"])}
    family.pop("name")
    (tmp_path / "models.json").write_text(json.dumps({"families": {"tiny": family}, "models": [
        {k: v for k, v in e.items() if v is not None} for e in entries]}))
    catalog = load_catalog(tmp_path / "models.json")

    with serve_app(catalog, tmp_path / "public", hosting=Hosting(public=True)) as url:
        gallery, readout, history = visitor(url, TOKEN_A).predict(["tiny-teacher", "tiny-small"], *COMPARE,
                                                                 api_name="/compare")
    assert readout.count("the safety checker flagged this image") == 2
    for item in gallery + history:
        with Image.open(item["image"]) as image:
            assert (np.asarray(image.convert("RGB")) == PLACEHOLDER_COLOR).all(axis=-1).mean() > 0.9

    with serve_app(catalog, tmp_path / "local") as url:  # locally the checker is off unless asked for
        _, readout, _ = visitor(url).predict(["tiny-teacher"], *COMPARE, api_name="/compare")
    assert "safety checker" not in readout
    with serve_app(catalog, tmp_path / "asked", hosting=Hosting(public=False, safety_checker=True)) as url:
        _, readout, _ = visitor(url).predict(["tiny-teacher"], *COMPARE, api_name="/compare")
    assert "the safety checker flagged this image" in readout
