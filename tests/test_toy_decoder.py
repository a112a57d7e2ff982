"""The toy tiny decoder's training: object-weighted loss, and a card that reports what the judge reads."""

import json

import torch
from diffusers import AutoencoderTiny

from studio.toy.data import batch_tensors
from studio.toy.scenes import BACKGROUNDS
from studio.toy.decoder import OBJECT_WEIGHT, distill_tiny_decoder, object_weights


def test_object_weights_weigh_the_shapes_and_not_the_background():
    images, _ = batch_tensors(range(4), seed=3)
    weights = object_weights(images)
    assert weights.shape == (4, 1, 64, 64)
    assert set(weights.unique().tolist()) == {1.0, 1.0 + OBJECT_WEIGHT}
    # every scene has at least one object of 14 px or more, and the object pixels are a minority
    shape_share = (weights > 1).float().mean(dim=(1, 2, 3))
    assert ((shape_share > 0.02) & (shape_share < 0.5)).all()
    # a blank scene of any background is all background
    for rgb in BACKGROUNDS.values():
        blank = (torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1).view(1, 3, 1, 1).expand(1, 3, 64, 64)
        assert (object_weights(blank) == 1).all()


def test_a_short_tiny_decoder_run_writes_a_loadable_decoder_and_its_card(tmp_path):
    lines = []
    card = distill_tiny_decoder(tmp_path, steps=2, batch_size=4, pool_size=8, log=lines.append)
    assert AutoencoderTiny.from_pretrained(tmp_path).config.latent_channels == 4
    written = json.loads((tmp_path / "card.json").read_text())
    assert written == card and written["object_weight"] == OBJECT_WEIGHT
    # the judge's accuracy on the VAE's reconstructions is the ceiling a decoder is measured against
    assert 0.0 <= card["judge_tiny"] <= 1.0 and 0.5 < card["judge_vae"] <= 1.0
    assert any("step 2/2" in line for line in lines)
