import inspect
import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from conftest import TINY_UNET
from studio.models.catalog import read_configs
from studio.models.compression import CompressionError, StudentSpec, build_student, plan_student, student_config
from studio.models.profiling import count_params, meta_unet

PUBLISHED = Path(__file__).parent / "data" / "published_unet_configs"

# Parameter counts from the paper (SD-v1.4) and its released v2 models.
EXPECTED_PARAMS = {
    "sd-v1.4": {"teacher": 859_520_964, "base": 579_384_964, "small": 482_346_884, "tiny": 323_384_964},
    "sd-v2.1-base": {"teacher": 865_910_724, "base": 583_480_964, "small": 485_787_524, "tiny": 326_825_604},
}


def architecture(config: dict) -> dict:
    """Every constructor field of a U-Net config, defaults filled, lists normalised."""
    defaults = {
        name: p.default for name, p in inspect.signature(UNet2DConditionModel.__init__).parameters.items()
        if name != "self"
    }
    merged = {**defaults, **{k: v for k, v in config.items() if k in defaults}}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}


@pytest.mark.parametrize("teacher", sorted(EXPECTED_PARAMS))
def test_parameter_counts_match_the_paper_exactly(teacher):
    teacher_config = read_configs(teacher)["unet"]
    for arch, expected in EXPECTED_PARAMS[teacher].items():
        config = teacher_config if arch == "teacher" else student_config(teacher_config, arch)
        assert count_params(meta_unet(config)) == expected, (teacher, arch)


@pytest.mark.parametrize("family, teacher_overrides", [
    ("unet_config", {}),
    ("unet_config_v2-base", {}),
    # SD-v2.1 at 768 px: the v2.1-base architecture at sample size 96 with upcast attention.
    ("unet_config_v2", {"sample_size": 96, "upcast_attention": True}),
])
@pytest.mark.parametrize("arch", ["base", "small", "tiny"])
def test_student_configs_equal_the_published_ones(family, teacher_overrides, arch):
    teacher = "sd-v1.4" if family == "unet_config" else "sd-v2.1-base"
    teacher_config = {**read_configs(teacher)["unet"], **teacher_overrides}
    published = json.loads((PUBLISHED / f"{family}__bk_{arch}.json").read_text())
    ours = student_config(teacher_config, arch)
    assert architecture(ours) == architecture(published)
    # and the published config loads into the model we build, tensor for tensor
    ours_state = meta_unet(ours).state_dict()
    published_state = meta_unet(published).state_dict()
    assert {k: v.shape for k, v in ours_state.items()} == {k: v.shape for k, v in published_state.items()}


@pytest.fixture(scope="module")
def teacher_unet():
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(TINY_UNET).eval()
    with torch.no_grad():  # distinct values everywhere, so a mis-mapped copy can't pass by chance
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return unet


@pytest.mark.parametrize("arch", ["base", "small", "tiny", "custom:1,2,1,2", "custom:2,1,2:no-innermost"])
def test_every_student_weight_comes_from_the_teacher(teacher_unet, arch):
    student = build_student(teacher_unet, arch)
    plan = plan_student(teacher_unet.config, arch)
    teacher_state = teacher_unet.state_dict()
    for name, value in student.state_dict().items():
        assert torch.equal(value, teacher_state[plan.teacher_name(name)]), name
    out = student(torch.randn(1, 4, 16, 16), torch.tensor([10]), encoder_hidden_states=torch.randn(1, 5, 16)).sample
    assert out.shape == (1, 4, 16, 16)


def test_the_papers_layer_mapping(teacher_unet):
    base = build_student(teacher_unet, "base")
    tiny = build_student(teacher_unet, "tiny")
    t = teacher_unet
    # an up stage keeps teacher layers 0 and 2
    assert torch.equal(base.up_blocks[1].resnets[0].conv1.weight, t.up_blocks[1].resnets[0].conv1.weight)
    assert torch.equal(base.up_blocks[1].resnets[1].conv1.weight, t.up_blocks[1].resnets[2].conv1.weight)
    assert torch.equal(base.up_blocks[2].attentions[1].proj_out.weight, t.up_blocks[2].attentions[2].proj_out.weight)
    # Tiny: student up_blocks.k is teacher up_blocks.k+1; no innermost stage, no last downsampler
    assert torch.equal(tiny.up_blocks[0].upsamplers[0].conv.weight, t.up_blocks[1].upsamplers[0].conv.weight)
    assert torch.equal(tiny.up_blocks[2].resnets[1].conv2.weight, t.up_blocks[3].resnets[2].conv2.weight)
    assert len(tiny.down_blocks) == 3 and tiny.down_blocks[2].downsamplers is None
    assert tiny.mid_block is None and base.mid_block is not None


def test_module_names_map_like_parameter_names():
    plan = plan_student(TINY_UNET, "tiny")
    assert plan.teacher_name("up_blocks.0") == "up_blocks.1"
    assert plan.teacher_name("up_blocks.2.resnets.1") == "up_blocks.3.resnets.2"
    assert plan.teacher_name("down_blocks.1.attentions.0") == "down_blocks.1.attentions.0"


def test_presets_are_the_papers_removals():
    assert StudentSpec.parse("base") == StudentSpec(1, keep_mid=True, keep_innermost=True)
    assert StudentSpec.parse("small") == StudentSpec(1, keep_mid=False, keep_innermost=True)
    assert StudentSpec.parse("tiny") == StudentSpec(1, keep_mid=False, keep_innermost=False)
    assert StudentSpec.parse("custom:1:no-mid:no-innermost") == StudentSpec.parse("tiny")
    spec = StudentSpec.parse("custom:1,2,2,1:no-mid")
    assert spec == StudentSpec((1, 2, 2, 1), keep_mid=False) and StudentSpec.parse(str(spec)) == spec


def test_custom_student_config():
    config = student_config(TINY_UNET, "custom:2,1,1:no-innermost")
    assert config["layers_per_block"] == [2, 1, 1]
    assert config["block_out_channels"] == [16, 32, 32]
    assert config["up_block_types"] == ["CrossAttnUpBlock2D"] * 3
    assert config["mid_block_type"] == "UNetMidBlock2DCrossAttn"


def test_tiny_trims_per_stage_lists():
    config = student_config(read_configs("sd-v2.1-base")["unet"], "tiny")
    assert config["attention_head_dim"] == [5, 10, 20]
    assert config["block_out_channels"] == [320, 640, 1280]


@pytest.mark.parametrize("arch, message", [
    ("huge", "allowed: base, small, tiny"),
    ("custom:3", "down stage 0 can keep 1 to 2 layers"),
    ("custom:0", "can keep 1 to 2 layers"),
    ("custom:1,1", "one value per kept down stage (4)"),
    ("custom:1,x", "integers separated by commas"),
    ("custom:1:no-attention", "allowed: no-mid, no-innermost"),
])
def test_bad_student_specs_say_what_is_allowed(arch, message):
    with pytest.raises(CompressionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_student(TINY_UNET, arch)


@pytest.mark.parametrize("change, message", [
    ({"_class_name": "UNet2DModel"}, "got a UNet2DModel config"),
    ({"up_block_types": ["CrossAttnUpBlock2D"] * 4}, "got up_block_types"),
    ({"down_block_types": ["SimpleCrossAttnDownBlock2D"] * 4}, "got down_block_types"),
    ({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}, "got mid_block_type"),
    ({"attention_head_dim": [4, 4]}, "has 2 entries but the U-Net has 4 stages"),
])
def test_configs_that_are_not_sd_shaped_are_refused(change, message):
    with pytest.raises(CompressionError, match=message):
        plan_student({**TINY_UNET, **change}, "base")


def test_tiny_needs_equal_innermost_channels():
    with pytest.raises(CompressionError, match="equal channels"):
        plan_student({**TINY_UNET, "block_out_channels": [16, 32, 32, 64]}, "tiny")
