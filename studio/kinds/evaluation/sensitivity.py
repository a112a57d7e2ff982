"""Block sensitivity: remove each unit of a teacher's U-Net alone, without retraining, and measure what it costs.

The paper chose its removals from such a study. A unit is one resnet + attention
pair of a down or up stage, or the mid block. Removing it makes it an identity:
a down layer passes its input on (and still hands it to the up path as the
skip it would have made); an up layer passes the up path's features on and
drops the skip it would have read; the mid block passes its input on. Only
units whose input and output widths match can be removed so; the others (the
first layer of a stage that changes width) are listed as not removable.

For each unit: the parameters and MACs it saves (MACs: conv + linear, one
U-Net call at batch 1, counted on the meta device), and, on a fixed prompt set
and seed, the family's judge score (where it has one), the CLIP score (where
weights are at hand) and the PSNR of the images to the teacher's own images (one PSNR over the set, from
the mean squared error of all images, with the count of images left unchanged).
`python -m studio sensitivity --teacher NAME` writes the JSON and a heat map
over the U-Net's layout (down, mid, up x stage x layer).
"""

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from studio.inference.generation import PipelineCache, sample
from studio.kinds.evaluation.judges import get_judge
from studio.kinds.evaluation.metrics import ClipScorer, MetricUnavailable, psnr
from studio.kinds.evaluation.prompts import read_prompts
from studio.kinds.training import derive_seed
from studio.models.catalog import Catalog, load_catalog
from studio.models.profiling import count_params, count_unet_macs, meta_unet


@dataclass(frozen=True)
class Unit:
    part: str  # "down", "mid" or "up"
    stage: int = 0
    layer: int = 0

    @property
    def name(self) -> str:
        return "mid" if self.part == "mid" else f"{self.part}.{self.stage}.{self.layer}"


class _PassDown(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _PassAttention(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,)


class _PassUp(nn.Module):
    """An up layer's resnet gets cat([features, skip]); without it, the features go on and the skip is dropped."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states[:, :self.channels]


def units(unet) -> list[tuple[Unit, bool]]:
    """Every unit of the U-Net in down, mid, up order, with whether it can be removed alone."""
    widths = list(unet.config.block_out_channels)
    found = []
    for stage, block in enumerate(unet.down_blocks):
        for layer, resnet in enumerate(block.resnets):
            found.append((Unit("down", stage, layer), resnet.in_channels == resnet.out_channels))
    if unet.mid_block is not None:
        found.append((Unit("mid"), True))
    up_widths = widths[::-1]
    for stage, block in enumerate(unet.up_blocks):
        for layer, resnet in enumerate(block.resnets):
            incoming = up_widths[stage] if layer else (up_widths[stage - 1] if stage else widths[-1])
            found.append((Unit("up", stage, layer), incoming == resnet.out_channels))
    return found


def _modules(unet, unit: Unit) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute or index, replacement) for every module the unit's removal swaps."""
    if unit.part == "mid":
        return [(unet, "mid_block", _PassDown())]
    block = (unet.down_blocks if unit.part == "down" else unet.up_blocks)[unit.stage]
    resnet = block.resnets[unit.layer]
    swaps = [(block.resnets, unit.layer, _PassDown() if unit.part == "down" else _PassUp(resnet.out_channels))]
    if getattr(block, "attentions", None) is not None:
        swaps.append((block.attentions, unit.layer, _PassAttention()))
    return swaps


def _get(parent, key):
    return parent[key] if isinstance(key, int) else getattr(parent, key)


def _set(parent, key, module):
    if isinstance(key, int):
        parent[key] = module
    else:
        setattr(parent, key, module)


@contextmanager
def removed(unet, unit: Unit):
    """The U-Net with `unit` made an identity, restored on exit."""
    swaps = _modules(unet, unit)
    originals = [_get(parent, key) for parent, key, _ in swaps]
    try:
        for parent, key, replacement in swaps:
            _set(parent, key, replacement)
        yield unet
    finally:
        for (parent, key, _), original in zip(swaps, originals):
            _set(parent, key, original)


def unit_params(unet, unit: Unit) -> int:
    return sum(count_params(_get(parent, key)) for parent, key, _ in _modules(unet, unit))


def removed_units(spec, unet_config: dict) -> list[str]:
    """The units (names as in `units`) a BK-SDM design removes from a teacher of this config: per kept stage the
    down layers past the kept ones and the up layers between the kept first ones and the last; the mid block;
    with the innermost stage, all of its down and up layers."""
    stages = len(unet_config["block_out_channels"])
    per_layer = unet_config["layers_per_block"]
    per_layer = list(per_layer) if isinstance(per_layer, (list, tuple)) else [per_layer] * stages
    kept_stages = stages if spec.keep_innermost else stages - 1
    kept = list(spec.layers) if isinstance(spec.layers, (list, tuple)) else [spec.layers] * kept_stages
    names = []
    for stage in range(stages):
        if stage >= kept_stages:
            names += [f"down.{stage}.{layer}" for layer in range(per_layer[stage])]
        else:
            names += [f"down.{stage}.{layer}" for layer in range(kept[stage], per_layer[stage])]
    if not spec.keep_mid:
        names.append("mid")
    for up_stage in range(stages):
        stage = stages - 1 - up_stage  # the down stage it mirrors
        if stage >= kept_stages:
            names += [f"up.{up_stage}.{layer}" for layer in range(per_layer[stage] + 1)]
        else:
            names += [f"up.{up_stage}.{layer}" for layer in range(kept[stage], per_layer[stage])]
    return names


def predict(result: dict, names: list[str]) -> dict:
    """What single removals predict for a design that removes `names`: MACs and parameters saved and the judge
    points lost, summed (an additive guess: units interact); and the units that were not measured alone."""
    by_name = {u["unit"]: u for u in result["units"]}
    measured = [by_name[n] for n in names if n in by_name and by_name[n]["removable"]]
    base = result["teacher_scores"]
    judge = (sum(u["judge"] - base["judge"] for u in measured)
             if base.get("judge") is not None and measured else None)
    return {"units": names, "macs_saved": sum(u["macs_saved"] for u in measured) / base["macs_paper"],
            "params_saved": sum(u["params_saved"] for u in measured) / base["params"], "judge_change": judge,
            "not_measured": [n for n in names if n not in by_name or not by_name[n]["removable"]]}


def set_psnr(images, reference) -> float:
    """PSNR of a set of 8-bit images to a reference set of the same sizes, from the mean squared error over all
    of them (inf only when every image is identical)."""
    return psnr(np.stack([np.asarray(i.convert("RGB")) for i in images]),
                np.stack([np.asarray(i.convert("RGB")) for i in reference]))


def block_sensitivity(teacher: str, n: int = 96, seed: int = 0, catalog: Catalog | None = None,
                      clip_model: str = "ViT-g-14", clip_pretrained: str | None = "laion2b_s34b_b88k",
                      log=print) -> dict:
    catalog = catalog or load_catalog()
    entry = catalog.get(teacher)
    if entry.role != "teacher":
        raise ValueError(f"--teacher {teacher!r} is a {entry.role}; the map is made on a teacher's U-Net")
    family = catalog.family(entry.family)
    if family.prompt_set_path is None:
        raise ValueError(f"the {family.name!r} family has no prompt set to measure on")
    prompts = read_prompts(family.prompt_set_path)
    prompts = [prompts[i % len(prompts)] for i in range(n)]
    seeds = [derive_seed(seed, i) for i in range(n)]
    pipeline = PipelineCache(catalog).get(teacher)
    unet = pipeline.unet
    latent = unet.config.sample_size
    meta = meta_unet(dict(unet.config))

    def macs(model) -> int:
        return count_unet_macs(model, (latent, latent), 1, pipeline.tokenizer.model_max_length).paper

    judge = get_judge(family.judge) if family.judge else None
    clip = None
    if not clip_pretrained:  # no pretrained tag: a randomly initialised CLIP would score nothing real
        log("CLIP score: not measured (no pretrained CLIP weights asked for)")
    else:
        try:
            clip = ClipScorer(clip_model, clip_pretrained)
        except MetricUnavailable as error:
            log(f"CLIP score: not measured: {error}")

    def measure(images, reference=None) -> dict:
        # One PSNR over the whole set (the mean squared error of all images): a mean of per-image PSNRs turns
        # infinite when a single image comes out unchanged, and would call the removal "identical".
        fidelity = set_psnr(images, reference) if reference else None
        return {"judge": judge(prompts, images) if judge else None,
                "clip_score": clip.score(images, prompts) if clip else None,
                # every image the same as the teacher's: PSNR is infinite, which JSON can't hold
                "psnr_to_teacher": None if fidelity == float("inf") else fidelity,
                "identical_to_teacher": fidelity == float("inf"),
                "unchanged_images": sum(psnr(a, b) == float("inf") for a, b in zip(images, reference))
                if reference else None}

    def draw():
        return sample(pipeline, prompts, seeds, family.steps, family.guidance)

    reference = draw()
    base = {"params": count_params(unet), "macs_paper": macs(meta), **measure(reference)}
    rows = []
    for unit, removable in units(unet):
        row = {"unit": unit.name, "part": unit.part, "stage": unit.stage, "layer": unit.layer, "removable": removable}
        if removable:
            with removed(meta, unit):
                saved_macs = base["macs_paper"] - macs(meta)
            with removed(unet, unit):
                row.update(measure(draw(), reference))
            row.update(params_saved=unit_params(unet, unit), macs_saved=saved_macs)
            log(f"{unit.name:9} saves {row['params_saved'] / base['params']:6.1%} params, "
                f"{saved_macs / base['macs_paper']:6.1%} MACs; PSNR {_db(row)}"
                + (f", judge {row['judge']:.1%}" if row["judge"] is not None else ""))
        rows.append(row)
    return {"teacher": teacher, "n": n, "seed": seed, "steps": family.steps, "guidance": family.guidance,
            "mac_convention": "conv + linear, one U-Net call, batch 1", "teacher_scores": base, "units": rows}


def _db(row: dict) -> str:
    return "identical images" if row.get("identical_to_teacher") else f"{row['psnr_to_teacher']:.2f} dB"


def write_map(result: dict, out: Path) -> tuple[Path, Path]:
    """OUT.json and OUT.png (the heat map)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out.with_suffix(".json"), out.with_suffix(".png")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    plot_map(result, png_path)
    return json_path, png_path


def plot_map(result: dict, path: Path) -> Path:
    """Rows: down stages, mid, up stages; columns: layers. Color: PSNR to the teacher (low = the unit matters);
    each cell also gives the judge's drop in points (where there is a judge) and the MACs it saves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows_of = {}
    for row in result["units"]:
        key = "mid" if row["part"] == "mid" else f"{row['part']} {row['stage']}"
        rows_of.setdefault(key, {})[row["layer"]] = row
    labels = list(rows_of)
    width = max(len(layers) for layers in rows_of.values())
    grid = np.full((len(labels), width), np.nan)
    figure, axes = plt.subplots(figsize=(2.2 * width + 2.5, 0.62 * len(labels) + 1.6))
    base = result["teacher_scores"]
    cells = []
    for i, label in enumerate(labels):
        for layer, row in rows_of[label].items():
            if not row["removable"]:
                axes.text(layer, i, "changes width:\nnot removable", ha="center", va="center", fontsize=6, color="gray")
                continue
            grid[i, layer] = np.inf if row.get("identical_to_teacher") else row["psnr_to_teacher"]
            text = f"{_db(row)}\n-{row['macs_saved'] / base['macs_paper']:.1%} MACs"
            if row.get("judge") is not None:
                text += f"\njudge {100 * (row['judge'] - base['judge']):+.1f} pts"
            cells.append((layer, i, text))
    finite = grid[np.isfinite(grid)]
    top = finite.max() if finite.size else 1.0
    grid = np.where(np.isinf(grid), top, grid)  # identical images: drawn as the least sensitive measured
    image = axes.imshow(grid, cmap="magma", aspect="auto")
    middle = (finite.min() + top) / 2 if finite.size else 0.0
    for layer, i, text in cells:  # light text on the dark cells
        axes.text(layer, i, text, ha="center", va="center", fontsize=6.5,
                  color="white" if grid[i, layer] < middle else "black")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xticks(range(width), [f"layer {k}" for k in range(width)])
    figure.colorbar(image, label="PSNR to the teacher's images (dB); lower: the unit matters more")
    axes.set_title(f"Block sensitivity of {result['teacher']}: each unit removed alone, no retraining "
                   f"({result['n']} prompts, seed {result['seed']})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
