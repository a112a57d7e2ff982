"""DreamBooth proof on the toy world: the toy teacher learns a subject it never drew (a red circle, a held-out
pair), and keeps its class prior."""

import pytest

from studio.models.loading import load_pipeline
from studio.kinds.personalization.dreambooth import DreamBoothConfig, dreambooth, load_personalized
from studio.toy.scenes import HELD_OUT
from studio.toy.evaluate import DEFAULT_GUIDANCE
from studio.toy.personalize import CLASS_PROMPT, INSTANCE_PROMPT, SUBJECT, judge_prompts, subject_photos

# Settings of the report (docs/toy-dreambooth.md, 50 class images there), which gives what they measure.
STEPS, LR, CLASS_IMAGES = 300, 1e-3, 30


def test_the_subject_is_a_pair_no_training_scene_has():
    assert (SUBJECT, "circle") in HELD_OUT


@pytest.mark.slow
def test_the_identifier_brings_the_subject_and_the_class_prompt_keeps_its_circles(tmp_path):
    """The identifier carries the subject, and the class prompt keeps its circles and draws red less often than
    the identifier does. Language drift is real here: the teacher tuned for guidance 3.0 answers "circle" in
    red after training in 30-63% of images (five runs of the report's settings and neighbours), the earlier,
    weaker teacher in 20%; Small in 7-40% (docs/toy-dreambooth.md). Measured here: red "sks" circles 15% before,
    100% after; the class prompt's circles 35% red, 100% circles."""
    before = judge_prompts(load_pipeline("toy-teacher"), 20, DEFAULT_GUIDANCE)
    assert before["instance"][SUBJECT] <= 0.25  # no training scene has a red circle: it must be learned
    photos = subject_photos(tmp_path / "photos")[0].parent
    config = DreamBoothConfig(model="toy-teacher", photos=str(photos), instance_prompt=INSTANCE_PROMPT,
                              class_prompt=CLASS_PROMPT, out=str(tmp_path / "out"), steps=STEPS, lr=LR,
                              class_images=CLASS_IMAGES, guidance=DEFAULT_GUIDANCE, checkpoint_every=STEPS,
                              train_text_encoder=True)
    out = dreambooth(config)
    after = judge_prompts(load_personalized("toy-teacher", out), 20, DEFAULT_GUIDANCE)
    assert after["instance"][SUBJECT] >= 0.6, after
    assert after["class"][SUBJECT] <= after["instance"][SUBJECT] - 0.25 and after["class"]["circle"] >= 0.5, after
