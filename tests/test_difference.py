"""The teacher-student difference view: PSNR, SSIM and the heat map, and pairing an image with its teacher's."""

import math

import numpy as np
from PIL import Image

from studio.kinds.evaluation.difference import difference_map, fidelity
from studio.inference.history import History
from studio.toy.scenes import Scene, Thing, render
from studio.ui.compare import difference_view


def _pictures():
    teacher = render(Scene("white", (Thing("circle", "red", (20.0, 30.0), 22.0),)))
    student = render(Scene("white", (Thing("circle", "red", (24.0, 30.0), 22.0),)))  # moved 4 px
    return teacher, student


def test_fidelity_and_the_heat_map():
    teacher, student = _pictures()
    same = fidelity(teacher, teacher.copy())
    assert math.isinf(same["psnr"]) and abs(same["ssim"] - 1.0) < 1e-6
    moved = fidelity(teacher, student)
    assert 5 < moved["psnr"] < 30 and 0 < moved["ssim"] < 0.99
    heat = np.asarray(difference_map(teacher, student))
    assert heat.shape == (256, 256, 3)  # 64 px scaled up 4x, pixel for pixel
    dark = heat[0:8, 0:8].mean()  # a corner where both are background
    assert dark < 20 and heat.max() > 150  # bright where the circle moved


def test_a_student_image_pairs_with_its_teachers_same_settings(tmp_path, catalog):
    history = History(tmp_path)
    teacher, student = _pictures()
    settings = {"prompt": "a red circle on a white background", "seed": 3, "recipe": "paper", "steps": 25,
                "scheduler": "PNDM", "guidance": 1.5, "resolution": 64}
    items = [(str(history.save(teacher, {"model": "toy-teacher", **settings, "seconds": 1.0})), "t"),
             (str(history.save(student, {"model": "toy-bk-tiny", **settings, "seconds": 0.2})), "s"),
             (str(history.save(student, {"model": "toy-bk-small", **settings, "seed": 4})), "other seed")]
    pair, heat, text = difference_view(items, 1, catalog)
    assert pair == (items[0][0], items[1][0]) and heat.size == (256, 256)
    assert "toy-bk-tiny" in text and "PSNR" in text and "SSIM" in text
    assert difference_view(items, 0, catalog)[:2] == (None, None)  # the teacher itself
    pair, heat, text = difference_view(items, 2, catalog)
    assert pair is None and "same prompt, seed and recipe" in text
