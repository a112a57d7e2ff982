"""Published LoRA adapters (such as latent-consistency/lcm-lora-sdv1-5) on the teacher they were trained for and
on its block-removed students.

diffusers loads an adapter by module name. A BK student keeps the teacher's names in its down path, but its up
path is renumbered (its last layer per stage copies the teacher's last), so a name match would put some
adapters on the wrong layer and drop others without a word. Here each student module takes the adapter of the
teacher module it was copied from (studio.models.compression's plan), adapters of removed blocks are counted as
dropped, and the coverage is reported; an adapter of which nothing maps is an error.
"""

import re
from dataclasses import dataclass

import torch

_PART = re.compile(r"\.(lora_A|lora_B)(\.weight)?$")
# What diffusers' examples/consistency_distillation LoRA script adapts (latent-consistency/lcm-lora-sdv1-5's layout).
LCM_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                    "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


@dataclass(frozen=True)
class AdapterCoverage:
    adapter_modules: int  # U-Net modules the adapter adapts
    mapped: int  # modules of this U-Net that received one
    dropped: tuple[str, ...]  # adapter modules in blocks this U-Net does not have (removed, for a student)

    def describe(self) -> str:
        text = f"{self.mapped} of {self.adapter_modules} adapter modules map onto this U-Net"
        if self.dropped:
            blocks = sorted({".".join(name.split(".")[:3]) for name in self.dropped})
            text += f"; {len(self.dropped)} belong to blocks it does not have ({', '.join(blocks[:6])}" + \
                    (", ..." if len(blocks) > 6 else "") + ")"
        return text


def unet_adapter(source) -> dict[str, dict[str, torch.Tensor]]:
    """An adapter's U-Net part as {module: {"lora_A": A, "lora_B": B}}, each network alpha folded into B (so
    it loads exactly with diffusers' default alpha = rank). `source`: a folder, hub id or state dict that
    diffusers' `lora_state_dict` reads (its own, peft, kohya and older formats)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft

    state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(source, use_safetensors=True,
                                                                       return_lora_metadata=True)
    unet = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in state.items()
                                            if k.startswith("unet.")})
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in unet.items():
        match = _PART.search(key)
        if match:
            modules.setdefault(key[:match.start()], {})[match[1]] = tensor
    for key, alpha in (alphas or {}).items():
        name = re.sub(r"(\.lora(_A|_B|\.down|\.up)?(\.weight)?)?\.alpha$", "", key.removeprefix("unet."))
        if name in modules:
            rank = modules[name]["lora_A"].shape[0]
            modules[name]["lora_B"] = modules[name]["lora_B"] * (float(alpha) / rank)
    # peft's LoraConfig, where the file carries it (diffusers stores it flattened as "unet.<field>")
    config = {k.removeprefix("unet."): v for k, v in (metadata or {}).items() if k.startswith("unet.")}
    if "lora_alpha" in config:
        for name, parts in modules.items():
            alpha = next((a for pattern, a in (config.get("alpha_pattern") or {}).items()
                          if re.search(rf"(^|\.){re.escape(pattern)}$", name)), config["lora_alpha"])
            parts["lora_B"] = parts["lora_B"] * (float(alpha) / parts["lora_A"].shape[0])
    return {name: parts for name, parts in modules.items() if {"lora_A", "lora_B"} <= set(parts)}


def lora_params(unet, rank: int, targets=LCM_LORA_TARGETS) -> int:
    """Parameters of a rank-`rank` LoRA on every module `targets` names: rank x (fan-in + fan-out) each."""
    total = 0
    for name, module in unet.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets):
            weight = getattr(module, "weight", None)
            if weight is not None and weight.dim() >= 2:
                total += rank * (weight[0].numel() + weight.shape[0])
    return total


def map_adapter(adapter: dict, unet, plan=None) -> tuple[dict[str, torch.Tensor], AdapterCoverage]:
    """The adapter renamed onto `unet` (a student when `plan`, its CompressionPlan, is given): a state dict in
    peft's key format with the `unet.` prefix, and what mapped."""
    state, used = {}, set()
    for name, module in unet.named_modules():
        source = plan.teacher_name(name) if plan is not None else name
        parts = adapter.get(source)
        if parts is None:
            continue
        width = getattr(module, "in_features", None) or getattr(module, "in_channels", None)
        if parts["lora_A"].shape[1] != width:
            continue  # not the same layer shape: leave it out rather than fail inside peft
        state[f"unet.{name}.lora_A.weight"] = parts["lora_A"]
        state[f"unet.{name}.lora_B.weight"] = parts["lora_B"]
        used.add(source)
    dropped = tuple(sorted(set(adapter) - used))
    return state, AdapterCoverage(len(adapter), len(state) // 2, dropped)


def apply_adapter(pipeline, source, plan=None, adapter_name: str = "adapter") -> AdapterCoverage:
    """Load an adapter (trained on the teacher) into `pipeline`'s U-Net, renamed onto a student by `plan`."""
    state, coverage = map_adapter(unet_adapter(source), pipeline.unet, plan)
    if coverage.mapped == 0:
        raise ValueError(f"adapter {source}: none of its {coverage.adapter_modules} U-Net modules maps onto this "
                         "model; it was trained for another architecture")
    pipeline.load_lora_weights(state, adapter_name=adapter_name)
    return coverage


def layout_adapter(unet, targets=LCM_LORA_TARGETS) -> dict:
    """An adapter's shape without its values: rank-1 stand-ins on every module `targets` names (as peft matches
    them, by suffix), for counting what maps before any file is at hand."""
    adapter = {}
    for name, module in unet.named_modules():
        width = getattr(module, "in_features", None) or getattr(module, "in_channels", None)
        if width and any(name == t or name.endswith("." + t) for t in targets):
            adapter[name] = {"lora_A": torch.empty(1, width, device="meta"), "lora_B": torch.empty(0, device="meta")}
    return adapter


def adapter_coverage(teacher: str, archs=("base", "small", "tiny"), source=None, catalog=None) -> list[dict]:
    """Per model (the teacher, then each student layout): how many of the adapter's modules map. `source`: an
    adapter file or hub id (read, so it must be at hand); None: the LCM-LoRA layout on the teacher's config."""
    from studio.models.catalog import read_configs
    from studio.models.compression import plan_student
    from studio.models.profiling import meta_unet

    configs = read_configs(teacher, catalog)
    teacher_unet = meta_unet(configs["unet"])
    adapter = unet_adapter(source) if source else layout_adapter(teacher_unet)
    rows = []
    for arch in ("teacher", *archs):
        plan = None if arch == "teacher" else plan_student(configs["unet"], arch)
        unet = teacher_unet if plan is None else meta_unet(plan.student_config)
        coverage = map_adapter(adapter, unet, plan)[1]
        # diffusers' own loading matches names: these student modules would take another layer's adapter
        misplaced = sum(1 for name, _ in unet.named_modules()
                        if plan is not None and name in adapter and plan.teacher_name(name) != name)
        rows.append({"model": arch, "adapter_modules": coverage.adapter_modules, "mapped": coverage.mapped,
                     "dropped": len(coverage.dropped), "misplaced_by_name": misplaced,
                     "summary": coverage.describe()})
    return rows


def with_lcm_adapter(base, entry, catalog) -> tuple[object, str]:
    """(pipeline, readout note) for LCM sampling of `base`, the pipeline of catalogue `entry`. A consistency-distilled
    model as it is; another gets its family's published LCM-LoRA when the adapter is at hand (on a copy of its U-Net,
    renamed onto a student by its block-removal plan) and the note says how much of it mapped; else the model
    itself, and the note says its few-step images will be poor."""
    import copy
    from pathlib import Path

    from studio.models.catalog import read_configs
    from studio.models.compression import plan_student
    from studio.models.loading import in_reach, share_components

    if base.unet.config.time_cond_proj_dim is not None:
        return base, ""
    source = catalog.family(entry.family).lcm_adapter_source
    if not source or not (Path(source).is_dir() or in_reach(source, "pytorch_lora_weights.safetensors")):
        missing = f"; its family's LCM-LoRA ({source}) is not at hand" if source else ""
        return base, (f"{entry.name} was not consistency-distilled{missing}: with LCM steps its images come out "
                      "blurred (distill one in the Train tab).")
    plan = plan_student(read_configs(entry.teacher, catalog)["unet"], entry.arch) if entry.role == "student" else None
    adapted = share_components(base, copy.deepcopy(base.unet))
    adapted.set_progress_bar_config(disable=True)
    coverage = apply_adapter(adapted, source, plan, adapter_name="lcm")
    return adapted, f"{entry.name} with {source}: {coverage.describe()}."
