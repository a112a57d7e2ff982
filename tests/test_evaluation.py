"""Evaluation: prompt files, CLIP score, FID/IS plumbing (random weights), fidelity, the protocol and resume."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studio.kinds.evaluation.metrics import ClipScorer, MetricUnavailable, fid_and_is, inception_from_safetensors
from studio.kinds.evaluation.prompts import read_prompts

DATA = Path(__file__).resolve().parent / "data"


def test_prompt_files(tmp_path):
    csv_file = tmp_path / "metadata.csv"
    csv_file.write_text('file_name,text\nCOCO_1.jpg,"A cat, on a mat."\nCOCO_2.jpg,a dog\n')
    assert read_prompts(csv_file) == ["A cat, on a mat.", "a dog"]
    text = tmp_path / "prompts.txt"
    text.write_text("a cat\n\n a dog \n")
    assert read_prompts(text) == ["a cat", "a dog"]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,caption\nx,y\n")
    with pytest.raises(ValueError, match="no 'text' column"):
        read_prompts(bad)
    with pytest.raises(ValueError, match="does not exist"):
        read_prompts(tmp_path / "nope.txt")


def test_the_toy_prompt_set_is_the_judge_prompt_set(catalog):
    from studio.toy.prompts import evaluation_set

    assert read_prompts(catalog.family("toy").prompt_set_path) == [p.text for p in evaluation_set()]


def test_evaluate_and_the_toy_judge_see_the_same_images(catalog, tmp_path):
    """Image i of a model is seeded the same way by `evaluate` and by the toy world's prompt set."""
    from studio.kinds.evaluation.config import EvalConfig
    from studio.kinds.evaluation.protocol import evaluate
    from studio.models.loading import load_pipeline
    from studio.toy.evaluate import prompt_set_images

    evaluate(EvalConfig(models=["toy-bk-tiny"], out=str(tmp_path / "eval"), n=3, seed=4), catalog)
    _, images = prompt_set_images(load_pipeline("toy-bk-tiny", catalog), 3, seed=4)
    for i, image in enumerate(images):
        saved = np.asarray(Image.open(tmp_path / "eval" / "images" / "toy-bk-tiny" / f"{i:05d}.png"), dtype=float)
        assert np.abs(saved - np.asarray(image, dtype=float)).max() <= 2  # batched vs single: float noise only


@pytest.fixture(scope="module")
def tiny_clip_weights(tmp_path_factory):
    """A randomly initialised small CLIP (tests/data/clip config), saved as safetensors: plumbing only."""
    import open_clip
    from safetensors.torch import save_file

    open_clip.add_model_config(DATA / "clip")
    torch.manual_seed(0)
    model = open_clip.create_model("studio-tiny-clip", pretrained=None)
    path = tmp_path_factory.mktemp("clip") / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """torch-fidelity's InceptionV3 with random weights, as safetensors: the real network's shapes."""
    from unittest import mock

    from safetensors.torch import save_file
    from torch_fidelity import feature_extractor_inceptionv3 as inception

    torch.manual_seed(0)
    with mock.patch.object(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None), \
            mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: {}):
        model = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def shapes(n, seed):
    from studio.toy.data import make_example

    return [make_example(i, seed)[0] for i in range(n)]


def test_clip_score_and_image_similarity(tiny_clip_weights):
    scorer = ClipScorer("studio-tiny-clip", None, str(tiny_clip_weights))
    images = shapes(4, 0)
    prompts = ["a red circle", "a blue square", "a green triangle", "a red circle"]
    score = scorer.score(images, prompts)
    # the mean cosine of each image's and its own prompt's embeddings, computed here from the model directly
    with torch.no_grad():
        image_features = scorer.model.encode_image(torch.stack([scorer.preprocess(i) for i in images]))
        text_features = scorer.model.encode_text(scorer.tokenizer(prompts))
    cosines = torch.nn.functional.cosine_similarity(image_features, text_features)
    assert score == pytest.approx(cosines.mean().item(), abs=1e-5)
    assert scorer.score(images, prompts[::-1]) != pytest.approx(score, abs=1e-6)  # pairs matter, not just the sets
    assert scorer.image_similarity(images, images) == pytest.approx(1.0, abs=1e-5)
    assert scorer.image_similarity(images, shapes(4, 1)) < 0.99999


def test_missing_or_pickled_weights_get_clear_messages(tmp_path):
    with pytest.raises(MetricUnavailable, match="not a .safetensors file"):
        ClipScorer("ViT-B-32", None, str(tmp_path / "clip.bin"))
    with pytest.raises(MetricUnavailable, match="not in the Hugging Face cache.*--clip-weights"):
        ClipScorer("ViT-g-14", "laion2b_s34b_b88k")  # the paper's; offline and not cached: said at once
    with pytest.raises(MetricUnavailable, match="do not exist.*safetensors"):
        inception_from_safetensors(tmp_path / "inception.safetensors", ("2048",))


@pytest.mark.slow
def test_fid_and_is_plumbing(random_inception_weights):
    a, b = shapes(6, 0), shapes(6, 1)
    same, score = fid_and_is(a, a, random_inception_weights, is_splits=2)
    different, _ = fid_and_is(a, [Image.new("RGB", (32, 32), (255, 255, 255))] * 6, random_inception_weights, 2)
    assert abs(same) < 1e-3 and different > same
    # IS = exp(E_x[KL(p(y|x) || p(y))]) over the extractor's unbiased logits, computed here by hand (one split, so
    # torchmetrics' shuffling does not matter); copies of one image share p(y|x), so theirs is exactly 1
    from studio.kinds.evaluation.metrics import _uint8_batch

    logits = inception_from_safetensors(random_inception_weights, ("logits_unbiased",))(_uint8_batch(a))[0]
    p = torch.softmax(logits.double(), dim=1)
    by_hand = torch.exp((p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean()).item()
    assert fid_and_is(a, [], random_inception_weights, 1)[1] == pytest.approx(by_hand, rel=1e-4)
    _, copies = fid_and_is([a[0]] * 6, [], random_inception_weights, 2)
    assert copies == pytest.approx(1.0, abs=1e-4) and score >= copies - 1e-4
    none, _ = fid_and_is(b, [], random_inception_weights, 2)
    assert none is None


@pytest.mark.slow
def test_protocol_writes_results_and_resumes(tiny_catalog, tmp_path, tiny_clip_weights, random_inception_weights):
    import csv

    from studio.kinds.evaluation.config import EvalConfig
    from studio.kinds.evaluation.protocol import COLUMNS, evaluate

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na bird\n")
    real = tmp_path / "real"
    real.mkdir()
    for i, image in enumerate(shapes(3, 2)):
        image.save(real / f"{i}.png")
    config = EvalConfig(models=["tiny-teacher", "tiny-small"], out=str(tmp_path / "eval"), prompts=str(prompts), n=3,
                        steps=2, clip_model="studio-tiny-clip", clip_pretrained=None,
                        clip_weights=str(tiny_clip_weights), inception_weights=str(random_inception_weights),
                        real=str(real))
    evaluate(config, tiny_catalog)
    out = tmp_path / "eval"
    with open(out / "results.csv") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == COLUMNS and [r["model"] for r in rows] == ["tiny-teacher", "tiny-small"]
    teacher, student = rows
    assert teacher["fidelity_psnr"] == "" and float(student["fidelity_psnr"]) > 0
    for key in ("clip_score", "fid", "is", "latency_s", "macs_paper", "fidelity_clip"):
        assert student[key] != "", key
    assert int(teacher["macs_paper"]) > int(student["macs_paper"])
    assert (out / "quality_vs_speed.png").stat().st_size > 1000 and "| tiny-small |" in (out / "results.md").read_text()
    # Resume: only the missing image is made again, and it is the same image.
    images = sorted((out / "images" / "tiny-small").glob("0*.png"))
    kept = {p: p.stat().st_mtime_ns for p in images[:2]}
    removed = np.asarray(Image.open(images[2]))
    images[2].unlink()
    evaluate(config, tiny_catalog)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert np.array_equal(np.asarray(Image.open(images[2])), removed)


@pytest.mark.slow
def test_toy_models_use_the_toy_defaults_and_the_judge(tmp_path):
    from studio.models.catalog import packaged_family
    from studio.kinds.evaluation.config import EvalConfig
    from studio.kinds.evaluation.protocol import evaluate

    config = EvalConfig(models=["toy-teacher"], out=str(tmp_path / "eval"), n=6)  # no CLIP weights here
    rows = evaluate(config)
    toy = packaged_family("toy")
    assert config.guidance == toy.guidance != 7.5 and config.prompts.endswith("prompts.txt")  # the toy family's
    assert rows[0]["judge_accuracy"] is not None and rows[0].get("clip_score") is None
    assert "clip_score, fidelity_clip: not computed" in (tmp_path / "eval" / "results.md").read_text()
