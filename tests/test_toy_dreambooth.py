"""DreamBooth proof on the toy world: the toy teacher learns a color it never saw (white), and keeps its class prior."""

import pytest

from studio.loading import load_pipeline
from studio.personalization.dreambooth import DreamBoothConfig, dreambooth, load_personalized
from studio.toy.evaluate import DEFAULT_GUIDANCE
from studio.toy.personalize import CLASS_PROMPT, INSTANCE_PROMPT, SUBJECT, judge_prompts, subject_photos

# Settings of the report (docs/toy-dreambooth.md), which gives what they measure.
STEPS, LR, CLASS_IMAGES = 300, 1e-3, 30


@pytest.mark.slow
@pytest.mark.xfail(run=False, reason="the 64x64 world's teachers do not learn the identifier: on the first, 0-5% of "
                   "'sks' images were white after 300 steps at 1e-3 and 400 at 3e-3; on the retrained one (issue 19's "
                   "second run), 0% after 400 steps at 1e-3 (docs/toy-dreambooth.md); the 32x32 world's reached 70-90%")
def test_the_identifier_brings_the_new_color_and_the_class_prompt_keeps_its_colors(tmp_path):
    before = judge_prompts(load_pipeline("toy-teacher"), 20, DEFAULT_GUIDANCE)
    assert before["instance"][SUBJECT] <= 0.1  # no toy object is white: it must be learned
    photos = subject_photos(tmp_path / "photos")[0].parent
    config = DreamBoothConfig(model="toy-teacher", photos=str(photos), instance_prompt=INSTANCE_PROMPT,
                              class_prompt=CLASS_PROMPT, out=str(tmp_path / "out"), steps=STEPS, lr=LR,
                              class_images=CLASS_IMAGES, guidance=DEFAULT_GUIDANCE, checkpoint_every=STEPS)
    out = dreambooth(config)
    after = judge_prompts(load_personalized("toy-teacher", out), 20, DEFAULT_GUIDANCE)
    assert after["instance"][SUBJECT] >= 0.5, after
    assert after["class"][SUBJECT] <= 0.2 and after["class"]["circle"] >= 0.5, after
