"""BK-SDM's distillation objective.

loss = w_task * MSE(eps_S, target) + w_out * MSE(eps_S, eps_T) + w_feat * sum_l MSE(f_S^l, f_T^l)

Feature pairs come from the compression plan, not from a list per preset:
every student down and up block is paired with the teacher block it was
copied from, when both produce outputs of the same shape. A down stage that
lost its downsampler (the new innermost stage of Tiny) is paired by its last
layer instead: for Tiny on SD, teacher `down_blocks.2.attentions.1.proj_out`
with student `down_blocks.2.attentions.0.proj_out`, as in the paper.
"""

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from studio.kinds.distillation.config import KDWeights
from studio.models.compression import CompressionPlan


def _stage_layers(config: dict, stage: int) -> int:
    layers = config.get("layers_per_block", 2)
    return layers[stage] if isinstance(layers, (list, tuple)) else layers


def _last_layer(config: dict, stage: int) -> str:
    """The module whose output ends a down stage's layers (before any downsampler)."""
    last = _stage_layers(config, stage) - 1
    if config["down_block_types"][stage].startswith("CrossAttn"):
        return f"down_blocks.{stage}.attentions.{last}.proj_out"
    return f"down_blocks.{stage}.resnets.{last}"


def feature_pairs(plan: CompressionPlan) -> list[tuple[str, str]]:
    """(student module, teacher module) names whose outputs feature KD matches."""
    student, teacher = plan.student_config, plan.teacher_config
    n_student = len(student["down_block_types"])
    n_teacher = len(teacher["down_block_types"])
    pairs = []
    for stage in range(n_student):
        student_downsamples = stage < n_student - 1
        teacher_downsamples = stage < n_teacher - 1
        if student_downsamples == teacher_downsamples:
            pairs.append((f"down_blocks.{stage}", f"down_blocks.{stage}"))
        else:
            pairs.append((_last_layer(student, stage), _last_layer(teacher, stage)))
    for stage in range(len(student["up_block_types"])):
        pairs.append((f"up_blocks.{stage}", plan.teacher_name(f"up_blocks.{stage}")))
    return pairs


@contextmanager
def capture_outputs(model: torch.nn.Module, names: list[str]):
    """Record the outputs of the named modules during forwards inside the block."""
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise KeyError(f"modules not in the model: {missing}")
    outputs: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(_module, _inputs, output):
            outputs[name] = output[0] if isinstance(output, tuple) else output  # down blocks return (h, skips)
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def kd_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, target: torch.Tensor,
            student_features: dict, teacher_features: dict, pairs: list[tuple[str, str]],
            weights: KDWeights = KDWeights()) -> dict[str, torch.Tensor]:
    """The terms of the objective and their weighted sum, as a dict of scalars."""
    task = F.mse_loss(student_out.float(), target.float())
    out = F.mse_loss(student_out.float(), teacher_out.float())
    feat = sum(
        F.mse_loss(student_features[s].float(), teacher_features[t].float()) for s, t in pairs
    ) if pairs else torch.zeros((), device=student_out.device)
    total = weights.task * task + weights.out * out + weights.feat * feat
    return {"loss_total": total, "loss_task": task, "loss_out_kd": out, "loss_feat_kd": feat}
