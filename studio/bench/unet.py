"""U-Net latency: teacher against its students, measured in one run.

Random weights are enough: a forward's speed does not depend on their values.
Models are timed interleaved (teacher, base, small, ... each round) so that
drift in machine load hits all of them alike; warm-up rounds are discarded,
the device is synchronized around each forward, and medians are reported.
"""

import statistics
import time

import torch
from diffusers import UNet2DConditionModel

from studio.inference.devices import parse_dtype, synchronize
from studio.models.catalog import Catalog, load_catalog, read_configs
from studio.models.compression import plan_student
from studio.models.profiling import count_unet_macs, input_geometry, meta_unet

@torch.inference_mode()
def bench_unets(
    teacher: str,
    archs: tuple[str, ...] = ("base", "small", "tiny"),
    resolution: int | None = None,
    batch: int = 1,
    warmup: int = 1,
    repeats: int = 3,
    device: str = "cpu",
    dtype: str = "fp32",
    catalog: Catalog | None = None,
    log=print,
) -> dict:
    """Median latency of one U-Net forward for the teacher and each student."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    device = torch.device(device)
    torch_dtype = parse_dtype(dtype)
    configs = read_configs(teacher, catalog or load_catalog())
    geometry = input_geometry(configs, resolution)
    latent, text_tokens = geometry.latent, geometry.text_tokens

    names = ("teacher", *archs)
    models, macs = {}, {}
    for name in names:
        config = configs["unet"] if name == "teacher" else plan_student(configs["unet"], name).student_config
        macs[name] = count_unet_macs(meta_unet(config), (latent, latent), batch, text_tokens).paper
        log(f"building {name} U-Net (random weights) on {device}, {dtype}")
        torch.manual_seed(0)
        model = UNet2DConditionModel.from_config(config).to(device)
        models[name] = (model if torch_dtype == torch.float32 else model.to(torch_dtype)).eval()

    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, configs["unet"].get("in_channels", 4), latent, latent, generator=generator)
    context = torch.randn(batch, text_tokens, geometry.cross_dim, generator=generator)
    sample, context = sample.to(device, torch_dtype), context.to(device, torch_dtype)
    timestep = torch.tensor([500], device=device)

    times = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        for name in names:
            synchronize(device)
            start = time.perf_counter()
            models[name](sample, timestep, encoder_hidden_states=context)
            synchronize(device)
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
        kind = "warm-up" if round_index < warmup else "timed"
        log(f"round {round_index + 1}/{warmup + repeats} ({kind}) done")

    teacher_median = statistics.median(times["teacher"])
    rows = []
    for name in names:
        median = statistics.median(times[name])
        rows.append({
            "arch": name,
            "median_s": median,
            "times_s": times[name],
            "speedup": teacher_median / median,
            "macs_paper": macs[name],
            "macs_ratio": macs["teacher"] / macs[name],
        })
    return {
        "teacher": teacher, "resolution": geometry.resolution, "batch": batch, "device": str(device), "dtype": dtype,
        "threads": torch.get_num_threads(), "warmup": warmup, "repeats": repeats, "rows": rows,
    }
