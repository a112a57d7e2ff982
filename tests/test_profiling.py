import pytest
import torch
from diffusers import UNet2DConditionModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import TINY_UNET
from studio.models.profiling import count_unet_macs, meta_unet, profile_students

# BK-SDM paper, Table: G MACs per U-Net step at 512x512, batch 1, conv + linear only.
PAPER_GMACS = {"teacher": 338.7, "base": 223.8, "small": 217.7, "tiny": 205.0}


def test_paper_convention_matches_the_paper_within_half_a_percent():
    report = profile_students("sd-v1.4")
    assert report["resolution"] == 512 and report["batch"] == 1
    for row in report["rows"]:
        measured = row["macs_paper"] / 1e9
        assert measured == pytest.approx(PAPER_GMACS[row["arch"]], rel=0.005), row["arch"]
        assert row["macs_total"] > row["macs_paper"]
    assert report["components"] == {"text_encoder": 123_060_480, "vae": 83_653_863}


def test_both_conventions_agree_with_torch_flop_counter():
    """Fused CPU SDPA hides attention from FlopCounterMode; the math backend shows it."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(TINY_UNET).eval()
    args = (torch.zeros(2, 4, 16, 16), torch.tensor([1]))
    context = torch.zeros(2, 7, 16)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fused:
            unet(*args, encoder_hidden_states=context)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as math:
            unet(*args, encoder_hidden_states=context)
    ours = count_unet_macs(meta_unet(TINY_UNET), (16, 16), batch=2, text_tokens=7)
    assert 2 * ours.paper == fused.get_total_flops()
    assert 2 * ours.total == math.get_total_flops()


def test_macs_scale_with_batch_and_resolution():
    one = profile_students("sd-v1.4", archs=(), resolution=256)["rows"][0]
    two = profile_students("sd-v1.4", archs=(), resolution=256, batch=2)["rows"][0]
    assert two["macs_paper"] == 2 * one["macs_paper"]
    full = profile_students("sd-v1.4", archs=())["rows"][0]
    assert 3.9 < full["macs_paper"] / one["macs_paper"] < 4.1  # 4x the pixels, same params


def test_bad_resolution_is_refused():
    with pytest.raises(ValueError, match="multiple of 8"):
        profile_students("sd-v1.4", resolution=500)
