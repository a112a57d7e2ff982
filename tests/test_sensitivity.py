"""Block sensitivity: units removed alone, the command on the toy teacher, and the designer's use of the map."""

import json
import math

import torch

from studio.cli import main
from studio.models.compression import PRESETS, build_student
from studio.models.loading import load_pipeline
from studio.models.profiling import count_params
from studio.kinds.evaluation.sensitivity import Unit, predict, removed, removed_units, unit_params, units


def _forward(unet, generator_seed=0):
    generator = torch.Generator().manual_seed(generator_seed)
    sample = torch.randn(1, 4, 16, 16, generator=generator)
    context = torch.randn(1, 16, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([500]), encoder_hidden_states=context).sample


def test_a_removed_unit_is_skipped_and_put_back():
    unet = load_pipeline("toy-teacher").unet
    found = dict(units(unet))
    # the first layer of a stage that widens (32 -> 64) can't become an identity; the others can
    assert found[Unit("down", 1, 0)] is False and found[Unit("down", 1, 1)] is True and found[Unit("mid")] is True
    assert found[Unit("up", 3, 0)] is False and found[Unit("up", 0, 0)] is True
    before = _forward(unet)
    for unit in (Unit("down", 0, 1), Unit("mid"), Unit("up", 2, 1)):
        with removed(unet, unit):
            changed = _forward(unet)
        assert changed.shape == before.shape and not torch.allclose(changed, before)
        assert torch.equal(_forward(unet), before)  # restored exactly
    assert unit_params(unet, Unit("mid")) == count_params(unet.mid_block)


def test_the_units_a_design_removes_are_the_ones_block_removal_drops():
    teacher = load_pipeline("toy-teacher").unet
    config = dict(teacher.config)
    for arch, spec in PRESETS.items():
        names = removed_units(spec, config)
        student = build_student(teacher, arch)
        dropped = count_params(teacher) - count_params(student)
        by_name = {u.name: u for u, _ in units(teacher)}
        # the units' parameters are what the student lacks, less the innermost stage's samplers (not units)
        unit_total = sum(unit_params(teacher, by_name[n]) for n in names)
        assert unit_total <= dropped and (arch == "tiny" or unit_total == dropped), arch
    assert removed_units(PRESETS["small"], config) == removed_units(PRESETS["base"], config)[:4] + ["mid"] + \
        removed_units(PRESETS["base"], config)[4:]


def test_the_command_maps_the_toy_teacher(tmp_path, capsys):
    out = tmp_path / "map"
    assert main(["sensitivity", "--teacher", "toy-teacher", "--n", "2", "--out", str(out), "--clip-pretrained", ""]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000
    measured = [u for u in result["units"] if u["removable"]]
    assert len(result["units"]) == 8 + 1 + 12 and len(measured) == 19
    base = result["teacher_scores"]
    for unit in measured:
        assert 0 < unit["macs_saved"] < base["macs_paper"] and unit["params_saved"] > 0
        assert unit["identical_to_teacher"] or unit["psnr_to_teacher"] > 0
        assert 0 <= unit["unchanged_images"] <= 2 and (unit["unchanged_images"] == 2) == unit["identical_to_teacher"]
        assert 0 <= unit["judge"] <= 1 and unit["clip_score"] is None
    assert "most sensitive:" in capsys.readouterr().out
    guess = predict(result, removed_units(PRESETS["tiny"], result_config()))
    assert len(guess["units"]) == 12 and guess["not_measured"] == [] and 0 < guess["macs_saved"] < 1
    assert main(["sensitivity", "--teacher", "toy-bk-tiny", "--n", "2", "--out", str(out)]) == 2
    assert "is a student" in capsys.readouterr().err


def result_config():
    return dict(load_pipeline("toy-teacher").unet.config)


def test_the_designer_shows_the_shipped_map_and_its_prediction(catalog):
    from studio.ui.train import sensitivity_view

    picture, note = sensitivity_view(catalog, "toy-teacher", "tiny", "1", False, True, 0.5)
    assert picture.endswith("toy-sensitivity.png") and "removes 12 units" in note
    assert "measured for the whole design: 50.0%" in note and "judge points" in note
    picture, note = sensitivity_view(catalog, "sd-v1.4", "small", "1", False, True, 0.6)
    assert picture is None and "python -m studio sensitivity --teacher sd-v1.4" in note


def test_a_removal_is_identical_only_when_every_image_is():
    """One unchanged image among changed ones once made the mean of per-image PSNRs infinite, and the map called
    the removal "identical images"; the set's PSNR is finite then, and infinite only when all are the same."""
    from PIL import Image

    from studio.kinds.evaluation.sensitivity import set_psnr

    same = [Image.new("RGB", (8, 8), (10, 20, 30)), Image.new("RGB", (8, 8), (200, 0, 0))]
    changed = [same[0], Image.new("RGB", (8, 8), (199, 0, 0))]
    assert set_psnr(same, same) == float("inf")
    # one image off by 1 in one channel, the other unchanged: MSE 1/6 over the set
    assert abs(set_psnr(changed, same) - 10 * math.log10(255**2 * 6)) < 1e-9
