"""Block removal: turn a Stable Diffusion U-Net into a BK-SDM student.

A student is described by a `StudentSpec` (which blocks it keeps); the paper's
Base, Small and Tiny are three presets of it. From the spec and any teacher
config with Stable Diffusion's layout we derive the student's config, and from
the teacher's weights the student's, copied by name (BK-SDM, arXiv 2305.15798):

- a down stage keeps its first `l` resnet(+attention) layers;
- an up stage keeps `l + 1` layers: its first `l` and its last, since the last
  one is the layer that takes the stage's widest skip connection (for the paper's
  students: teacher layers 0 and 2);
- without the innermost stage, student `up_blocks.k` is teacher `up_blocks.k+1`.
"""

import copy
import re
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel

from studio.progress import report

DOWN_TO_UP = {"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn", None)
# Config entries with one value per stage, in down order or in up order.
PER_STAGE_DOWN_ORDER = (
    "block_out_channels", "down_block_types", "layers_per_block", "attention_head_dim",
    "num_attention_heads", "cross_attention_dim", "transformer_layers_per_block", "only_cross_attention",
)
PER_STAGE_UP_ORDER = ("up_block_types", "reverse_transformer_layers_per_block")


class CompressionError(ValueError):
    """A teacher config or student spec that block removal can't handle."""


@dataclass(frozen=True)
class StudentSpec:
    """Which blocks a student keeps.

    layers: resnet(+attention) layers per kept down stage, one int for all
        stages or one per stage; each up stage keeps one more.
    keep_mid: keep the mid block.
    keep_innermost: keep the innermost stage (teacher `down_blocks[-1]`,
        `up_blocks[0]` and the downsampler before it).
    """

    layers: int | tuple[int, ...] = 1
    keep_mid: bool = True
    keep_innermost: bool = True

    @classmethod
    def parse(cls, text: str) -> "StudentSpec":
        """Parse a preset name or `custom:LAYERS[:no-mid][:no-innermost]`.

        LAYERS is one int for every stage or a comma-separated int per kept
        stage, e.g. `custom:1,2,2,1:no-mid`.
        """
        text = text.strip().lower()
        if text in PRESETS:
            return PRESETS[text]
        head, _, rest = text.partition(":")
        if head != "custom" or not rest:
            raise CompressionError(
                f"unknown student architecture {text!r}; allowed: {', '.join(PRESETS)}, "
                "or custom:LAYERS[:no-mid][:no-innermost] (e.g. custom:1,2,2,1:no-mid)"
            )
        layers_text, *flags = rest.split(":")
        unknown = [f for f in flags if f not in ("no-mid", "no-innermost")]
        if unknown:
            raise CompressionError(f"unknown custom flag(s) {unknown}; allowed: no-mid, no-innermost")
        try:
            layers = tuple(int(v) for v in layers_text.split(","))
        except ValueError:
            raise CompressionError(
                f"custom layers must be integers separated by commas, got {layers_text!r}"
            ) from None
        return cls(
            layers=layers[0] if len(layers) == 1 else layers,
            keep_mid="no-mid" not in flags,
            keep_innermost="no-innermost" not in flags,
        )

    def __str__(self) -> str:
        for name, preset in PRESETS.items():
            if preset == self:
                return name
        layers = self.layers if isinstance(self.layers, int) else ",".join(map(str, self.layers))
        flags = ("" if self.keep_mid else ":no-mid") + ("" if self.keep_innermost else ":no-innermost")
        return f"custom:{layers}{flags}"


PRESETS = {
    "base": StudentSpec(layers=1, keep_mid=True, keep_innermost=True),
    "small": StudentSpec(layers=1, keep_mid=False, keep_innermost=True),
    "tiny": StudentSpec(layers=1, keep_mid=False, keep_innermost=False),
}


def resolve_spec(arch: "str | StudentSpec") -> StudentSpec:
    return arch if isinstance(arch, StudentSpec) else StudentSpec.parse(arch)


def _per_stage(value, n: int, key: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise CompressionError(f"config {key!r} has {len(value)} entries but the U-Net has {n} stages")
        return list(value)
    return [value] * n


def check_sd_shaped(config: dict) -> None:
    """Raise CompressionError unless `config` has Stable Diffusion's U-Net layout."""
    allowed = (
        "a UNet2DConditionModel config whose down stages are CrossAttnDownBlock2D or DownBlock2D, "
        "whose up stages mirror them (CrossAttnUpBlock2D/UpBlock2D, in reverse order), "
        "with mid_block_type UNetMidBlock2DCrossAttn or null"
    )
    name = config.get("_class_name", "UNet2DConditionModel")
    if name != "UNet2DConditionModel":
        raise CompressionError(f"expected {allowed}; got a {name} config")
    down, up = list(config.get("down_block_types", [])), list(config.get("up_block_types", []))
    bad = [t for t in down if t not in DOWN_TO_UP]
    if not down or bad:
        raise CompressionError(f"expected {allowed}; got down_block_types {down}")
    if up != [DOWN_TO_UP[t] for t in reversed(down)]:
        raise CompressionError(f"expected {allowed}; got up_block_types {up} for down_block_types {down}")
    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid not in MID_BLOCK_TYPES:
        raise CompressionError(f"expected {allowed}; got mid_block_type {mid!r}")
    for key in PER_STAGE_DOWN_ORDER + PER_STAGE_UP_ORDER:
        if key in config and config[key] is not None:
            _per_stage(config[key], len(down), key)


@dataclass(frozen=True)
class CompressionPlan:
    """A teacher config, a spec, and everything derived from them."""

    teacher_config: dict
    spec: StudentSpec
    student_config: dict
    teacher_up_layers: tuple[int, ...]
    student_up_layers: tuple[int, ...]

    @property
    def up_offset(self) -> int:
        return 0 if self.spec.keep_innermost else 1

    def teacher_name(self, student_name: str) -> str:
        """The teacher parameter or module a student parameter or module copies."""
        match = _UP_LAYER.match(student_name)
        if match:
            i, part, j, rest = int(match[1]), match[2], int(match[3]), match[4] or ""
            ti = i + self.up_offset
            tj = j if j < self.student_up_layers[i] - 1 else self.teacher_up_layers[ti] - 1
            return f"up_blocks.{ti}.{part}.{tj}{rest}"
        match = _UP_BLOCK.match(student_name)
        if match:
            return f"up_blocks.{int(match[1]) + self.up_offset}{match[2] or ''}"
        return student_name  # down stages keep their first layers, so names match


_UP_LAYER = re.compile(r"^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)(\..*)?$")
_UP_BLOCK = re.compile(r"^up_blocks\.(\d+)(\..*)?$")


def _clean(config) -> dict:
    return {k: copy.deepcopy(v) for k, v in dict(config).items() if k not in ("_name_or_path", "_use_default_values")}


def plan_student(teacher_config, arch: "str | StudentSpec") -> CompressionPlan:
    """Derive a student's config (and its weight mapping) from a teacher config."""
    spec = resolve_spec(arch)
    teacher = _clean(teacher_config)
    check_sd_shaped(teacher)
    n = len(teacher["down_block_types"])
    teacher_layers = _per_stage(teacher.get("layers_per_block", 2), n, "layers_per_block")

    kept = n if spec.keep_innermost else n - 1
    if kept < 1:
        raise CompressionError("dropping the innermost stage needs a teacher with at least two stages")
    if isinstance(spec.layers, tuple) and len(spec.layers) != kept:
        raise CompressionError(
            f"custom layers need one value per kept down stage ({kept}), got {len(spec.layers)}: {spec.layers}"
        )
    layers = _per_stage(spec.layers, kept, "layers")
    for stage, (kept_layers, available) in enumerate(zip(layers, teacher_layers)):
        if not 1 <= kept_layers <= available:
            raise CompressionError(
                f"down stage {stage} can keep 1 to {available} layers (the teacher's), got {kept_layers}"
            )

    student = dict(teacher)
    if not spec.keep_innermost:
        channels = teacher["block_out_channels"]
        if channels[-1] != channels[-2]:
            raise CompressionError(
                "dropping the innermost stage copies teacher up_blocks.1 into student up_blocks.0, which needs "
                f"the two innermost stages to have equal channels; got block_out_channels {list(channels)}"
            )
        for key in PER_STAGE_DOWN_ORDER:
            if isinstance(student.get(key), (list, tuple)):
                student[key] = list(student[key])[:-1]
        for key in PER_STAGE_UP_ORDER:
            if isinstance(student.get(key), (list, tuple)):
                student[key] = list(student[key])[1:]
    student["layers_per_block"] = layers[0] if len(set(layers)) == 1 else layers
    student["mid_block_type"] = "UNetMidBlock2DCrossAttn" if spec.keep_mid else None

    return CompressionPlan(
        teacher_config=teacher,
        spec=spec,
        student_config=student,
        teacher_up_layers=tuple(count + 1 for count in reversed(teacher_layers)),
        student_up_layers=tuple(count + 1 for count in reversed(layers)),
    )


def student_config(teacher_config, arch: "str | StudentSpec") -> dict:
    return plan_student(teacher_config, arch).student_config


def build_student(teacher: UNet2DConditionModel, arch: "str | StudentSpec", callback=None) -> UNet2DConditionModel:
    """A student U-Net whose every weight is copied from `teacher`; `callback` gets a progress event per tensor."""
    plan = plan_student(teacher.config, arch)
    student = UNet2DConditionModel.from_config(plan.student_config).to(
        device=teacher.device, dtype=teacher.dtype
    )
    copy_teacher_weights(teacher, student, plan, callback)
    return student


@torch.no_grad()
def copy_teacher_weights(teacher, student, plan: CompressionPlan, callback=None) -> None:
    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    problems = []
    for name, value in student_state.items():
        source = teacher_state.get(plan.teacher_name(name))
        if source is None:
            problems.append(f"{name}: no teacher tensor {plan.teacher_name(name)}")
        elif source.shape != value.shape:
            problems.append(f"{name}: shape {tuple(value.shape)} vs teacher {tuple(source.shape)}")
    if problems:
        raise CompressionError(
            f"{len(problems)} student tensors have no teacher counterpart, e.g. " + "; ".join(problems[:3])
        )
    for done, (name, value) in enumerate(student_state.items(), start=1):
        value.copy_(teacher_state[plan.teacher_name(name)])
        report(callback, "copying teacher weights", done, len(student_state))
