"""Every public endpoint, in public mode, with a table of bad values: each call raises an error naming the field,
and the server keeps serving. (gradio_client can't send NaN or infinity: JSON has no such numbers; the functions
behind the endpoints refuse them, tested in test_ui.py and test_options.)"""

import re

import pytest
from conftest import serve_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from studio.ui.hosting import Hosting

pytestmark = pytest.mark.slow
HUGE = "x" * 100_000
CONTROL = "a\x00b\x1b[2J"

# Bad values by kind of field; each must be refused.
TEXT = [None, "", HUGE, CONTROL, ["a", "list"]]
OPTIONAL_TEXT = [HUGE, CONTROL, ["a", "list"]]
WHOLE = [None, "abc", -1, 10**13, [1]]
REAL = [None, "abc", -1.0, 1e12, [1.0]]
CHOICE = [None, "nope", 12, HUGE, CONTROL]
# sd-v1.4 and toy-teacher are in the catalogue but not the family's: a public studio neither downloads nor runs them.
MODELS = [None, "tiny-teacher", [], ["nope"], [1, 2], [HUGE], ["job-20260101-000000-ffffff"], ["sd-v1.4"],
          ["toy-teacher"]]
OTHER_FAMILIES = ["sd-v1.4", "toy-teacher"]
JOB = ["", "nope", "../../etc", HUGE, CONTROL, 12, "20260101-000000-ffffff"]
JOB_STATUS = JOB[1:]  # for a status, "" is no selection
JOBS = [["nope"], ["../../etc"], [HUGE], "20260101-000000-ffffff", [12]]

RECIPE_KNOBS = [("guidance_stop", "guidance stop", 1.0, [None, "abc", 0.0, 2.0]),
                ("cache_interval", "cache interval", 1, [None, "abc", 0, 11, 1.5]),
                ("tome_ratio", "token merging", 0.0, [None, "abc", -0.1, 0.9]),
                ("decoder", "decoder", "vae", CHOICE + ["tiny"]),  # the tiny family has no tiny decoder
                ("dtype", "dtype", "fp32", CHOICE + ["fp16"])]  # fp16: slower than fp32 on a CPU, refused in public

# endpoint: [(parameter, the word its errors must contain, a good value, bad values)]
ENDPOINTS = {
    "/compare": [("models", "models", ["tiny-small"], MODELS), ("prompt", "prompt", "a cat", TEXT),
                 ("negative", "negative prompt", "", OPTIONAL_TEXT), ("seed", "seed", 1, WHOLE),
                 ("steps", "steps", 2, WHOLE), ("guidance", "guidance", 2.0, REAL),
                 ("scheduler", "scheduler", "Euler", CHOICE), ("resolution", "resolution", 0, [-8, 36, 10**6, "abc", 8]),
                 *RECIPE_KNOBS, ("recipes", "grid", [], [None, "paper", ["nope"], [12], [HUGE]])],
    "/img2img": [("models", "models", ["tiny-small"], MODELS),
                 ("image", "image", "IMAGE", [None, "NOT_AN_IMAGE", "PIXEL_BOMB"]),
                 ("strength", "strength", 0.5, [None, "abc", 0, 2.0]), ("prompt", "prompt", "a cat", TEXT),
                 ("negative", "negative prompt", "", OPTIONAL_TEXT), ("seed", "seed", 1, WHOLE),
                 ("steps", "steps", 2, WHOLE), ("guidance", "guidance", 2.0, REAL),
                 ("scheduler", "scheduler", "DDIM", CHOICE), ("resolution", "resolution", 0, [-8, 36, "abc", 8]),
                 *RECIPE_KNOBS],
    "/design": [("teacher", "teacher", "tiny-teacher", CHOICE + OTHER_FAMILIES), ("preset", "student", "custom", CHOICE),
                ("layers", "layers", "1", ["abc", "-1", "1,2,3,4,5,6,7", HUGE, CONTROL]),
                ("keep_mid", "keep mid", True, ["abc", [1]]), ("keep_innermost", "innermost", True, ["abc", [1]]),
                ("resolution", "resolution", 0, [-8, 13, "abc", 10**9])],
    "/train_start": [("teacher", "teacher", "tiny-teacher", CHOICE + OTHER_FAMILIES), ("preset", "student", "custom", CHOICE),
                     ("layers", "layers", "1", ["abc"]), ("keep_mid", "keep mid", False, ["abc"]),
                     ("keep_innermost", "innermost", True, ["abc"]),
                     ("data", "data", "toy", CHOICE + ["upload", "path"]),  # path: a local studio's only
                     ("upload", "data", None, []), ("steps", "steps", 10, WHOLE + [0]),
                     ("lr", "learning rate", 1e-4, REAL + [0.0]), ("lambda_task", "λ task", 1.0, REAL),
                     ("lambda_out", "λ output", 1.0, REAL), ("lambda_feat", "λ feature", 1.0, REAL),
                     ("batch_size", "batch size", 2, WHOLE + [0, 10**6]),
                     ("processes", "processes", 1, WHOLE + [0, 2]),  # 2: a public host runs one a job
                     ("data_path", "data", "", [])],  # read only with data "path", refused above
    "/train_status": [("job", "job", None, JOB_STATUS)],
    "/consistency_start": [("student", "student", "tiny-small", CHOICE + ["tiny-teacher", "bk-sdm-small", "toy-bk-tiny"]),
                           ("mode", "mode", "full", CHOICE), ("ode", "ODE teacher", "teacher", CHOICE),
                           ("data", "data", "toy", CHOICE), ("images", "teacher images", 0, WHOLE + [11]),
                           ("steps", "steps", 2, WHOLE + [0]), ("lr", "learning rate", 1e-4, REAL + [0.0]),
                           ("batch_size", "batch size", 2, WHOLE + [0, 10**6]),
                           ("low", "lowest guidance", 1.0, REAL + [0.5, 25.0]),
                           ("high", "highest guidance", 3.0, REAL + [0.5, 25.0])],
    "/consistency_status": [("job", "job", None, JOB_STATUS)],
    "/consistency_cancel": [("job", "job", None, JOB + [None])],
    "/consistency_resume": [("job", "job", None, JOB + [None])],
    "/train_cancel": [("job", "job", None, JOB + [None])],
    "/train_resume": [("job", "job", None, JOB + [None])],
    "/dreambooth_start": [("photos", "photo", ["PHOTO"], [None, [], ["NOT_AN_IMAGE"], ["PHOTO"] * 60, ["PIXEL_BOMB"]]),
                          ("identifier", "identifier", "sks", TEXT[:-1] + ["two words"]),
                          ("class", "class", "cat", TEXT), ("models", "models", ["tiny-teacher"], MODELS),
                          ("steps", "steps", 4, WHOLE), ("mode", "finetuning", "LoRA", CHOICE),
                          ("class_images", "class images", 2, WHOLE + [10**6])],
    "/dreambooth_status": [("jobs", "job", None, JOBS)],
    "/dreambooth_cancel": [("jobs", "job", None, JOBS + [None, []])],
    "/dreambooth_results": [("jobs", "job", ["OWN_JOB"], JOBS), ("prompt", "prompt", "a sks cat", TEXT),
                            ("seed", "seed", 0, WHOLE), ("steps", "steps", 2, WHOLE),
                            ("guidance", "guidance", 2.0, REAL)],
    "/evaluate_start": [("models", "models", ["tiny-teacher"], MODELS), ("prompts", "prompt",
                                                                        "PROMPTS", ["NOT_AN_IMAGE"]),
                        ("n", "images per model", 2, WHOLE + [0, 10**6])],
    "/evaluate_status": [("job", "job", None, JOB_STATUS)],
}


def resolve(value, files):
    """Placeholders for uploads become files (gradio_client uploads them)."""
    if isinstance(value, list):
        return [resolve(v, files) for v in value]
    return handle_file(str(files[value])) if isinstance(value, str) and value in files else value


def test_every_endpoint_refuses_bad_values_naming_the_field(tiny_catalog, tmp_path):
    from PIL import Image

    files = {"IMAGE": tmp_path / "in.png", "PHOTO": tmp_path / "photo.png", "NOT_AN_IMAGE": tmp_path / "junk.png",
             "NOT_A_ZIP": tmp_path / "junk.zip", "PROMPTS": tmp_path / "prompts.txt", "PIXEL_BOMB": tmp_path / "bomb.png"}
    Image.new("RGB", (32, 32), (200, 30, 30)).save(files["IMAGE"])
    Image.new("RGB", (64, 64), (30, 200, 30)).save(files["PHOTO"])
    files["NOT_AN_IMAGE"].write_bytes(b"not an image at all")
    Image.new("L", (9000, 9000)).save(files["PIXEL_BOMB"], compress_level=9)  # 81 Mpx in a few kB
    files["NOT_A_ZIP"].write_bytes(b"not a zip")
    files["PROMPTS"].write_text("a cat\n")
    hosting = Hosting(public=True, max_steps=20, max_class_images=10, max_eval_images=10, max_photos=50)
    tried, failures = 0, []
    with serve_app(tiny_catalog, tmp_path / "data", queue_size=8, hosting=hosting) as url:
        client = Client(url, verbose=False, headers={"X-Studio-Visitor": "f" * 24})
        api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        assert set(api) == set(ENDPOINTS), "every public endpoint has a row in the fuzz table"
        for name, fields in ENDPOINTS.items():
            assert len(fields) == len(api[name]["parameters"]), name
            good = [resolve(value, files) for _, _, value, _ in fields]
            for position, (field, word, _, bad_values) in enumerate(fields):
                for bad in bad_values:
                    args = list(good)
                    args[position] = resolve(bad, files)
                    try:
                        client.predict(*args, api_name=name)
                        message = "ACCEPTED"
                    except AppError as refused:
                        message = str(refused)
                    ok = re.search(re.escape(word), message, re.IGNORECASE) and "internal error" not in message
                    if not ok:
                        failures.append(f"{name} {field}={repr(bad)[:40]}: {message[:300]}")
                    tried += 1
        # Still serving, and duplicates in a model list are one model.
        gallery, readout, _ = client.predict(["tiny-small"] * 50, "a cat", "", 1, 1, 2.0, "Euler", 0,
                                             api_name="/compare")
        assert len(gallery) == 1 and readout.count("| tiny-small |") == 1
    assert not failures, "\n".join(failures)
    print(f"{tried} bad calls refused across {len(ENDPOINTS)} endpoints")
