"""End-to-end image latency: teacher and students under several recipes, measured in one run.

An image here is what a person waits for: text encoding, every U-Net call and
the decode, through `generation.generate`, the same code the app runs. The
pipelines are built at real size with random weights from the configs in
`studio/models/configs` (speed does not depend on the values): the CLIP tokenizer
from the BPE merges open_clip ships, the text encoder, the VAE, the TAESD
layout for the tiny decoder, the teacher's U-Net and its students'. Cells
(model x recipe) are timed interleaved, round by round, after a one-step
warm-up of each pipeline and `warmup` untimed rounds; medians are reported.
The teacher with `paper` is always measured: every speed-up is against it.
"""

import gzip
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from studio.inference.devices import parse_dtype, synchronize
from studio.inference.generation import Settings, _UNetTimer, generate
from studio.inference.recipes import PRESETS, check_recipe, parse_recipe
from studio.models.catalog import PACKAGE_DIR, Catalog, load_catalog, read_configs
from studio.models.compression import plan_student
from studio.models.profiling import count_unet_macs, input_geometry, meta_unet

PROMPT = "a photograph of an astronaut riding a horse"
TAESD_CONFIG = PACKAGE_DIR / "configs" / "taesd" / "config.json"


def clip_tokenizer(max_length: int = 77):
    """CLIP's tokenizer (49,408 tokens) built from the BPE merges that open_clip ships."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]  # as open_clip reads them
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(tempfile.mkdtemp(prefix="clip-tokenizer-"))
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length,
                                                              "pad_token": "<|endoftext|>"}))
    return CLIPTokenizer.from_pretrained(folder)


def _tiny_decoder_config(teacher: str, catalog: Catalog) -> dict:
    """The family's own tiny decoder config when it is a local folder (the toy one), else TAESD's."""
    source = catalog.family(catalog.get(teacher).family).tiny_decoder_source if teacher in catalog else None
    path = Path(source) / "config.json" if source and Path(source).is_dir() else TAESD_CONFIG
    return json.loads(path.read_text())


def random_pipelines(teacher: str, archs: tuple[str, ...], catalog: Catalog, device: torch.device,
                     dtype: torch.dtype) -> tuple[dict, AutoencoderTiny, dict]:
    """({arch: pipeline}, tiny decoder, configs), random weights, sharing one text encoder and VAE."""
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = read_configs(teacher, catalog)
    torch.manual_seed(0)
    tokenizer = clip_tokenizer(configs["text_encoder"].get("max_position_embeddings", 77))
    text_encoder = CLIPTextModel(CLIPTextConfig(**{**configs["text_encoder"], "vocab_size": len(tokenizer)}))
    vae = AutoencoderKL.from_config(configs["vae"])
    scheduler = PNDMScheduler.from_config(configs["scheduler"] or {"skip_prk_steps": True})
    pipelines = {}
    for arch in ("teacher", *archs):
        config = configs["unet"] if arch == "teacher" else plan_student(configs["unet"], arch).student_config
        pipeline = StableDiffusionPipeline(
            unet=UNet2DConditionModel.from_config(config), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipeline.set_progress_bar_config(disable=True)
        pipelines[arch] = pipeline.to(device, dtype)
    tiny = AutoencoderTiny.from_config(_tiny_decoder_config(teacher, catalog)).to(device, dtype).eval()
    return pipelines, tiny, configs


@torch.inference_mode()
def bench_pipelines(teacher: str, archs: tuple[str, ...] = ("tiny",), recipes: tuple[str, ...] = ("paper", "fast"),
                    resolution: int | None = None, batch: int = 1, warmup: int = 0, repeats: int = 1,
                    device: str = "cpu", dtype: str | None = None, catalog: Catalog | None = None,
                    log=print) -> dict:
    """Median seconds per call (`batch` images) for the teacher and each student under each recipe;
    `dtype` overrides every recipe's."""
    if warmup < 0 or repeats < 1 or batch < 1:
        raise ValueError(f"need warmup >= 0, repeats >= 1 and batch >= 1, got {warmup}, {repeats} and {batch}")
    catalog = catalog or load_catalog()
    device = torch.device(device)
    chosen = [parse_recipe(spec) for spec in recipes]
    for recipe in chosen:  # before minutes go into building models
        check_recipe(recipe)
    if "paper" not in [r.name for r in chosen]:
        chosen.insert(0, PRESETS["paper"])
    if dtype is not None:
        chosen = [replace(r, dtype=dtype) for r in chosen]
    dtypes = {r.dtype for r in chosen}
    if len(dtypes) > 1:
        raise ValueError(f"recipes: one dtype per run, got {sorted(dtypes)}; bench them in separate runs")
    dtype = parse_dtype(dtypes.pop())
    family_guidance = catalog.family(catalog.get(teacher).family).guidance if teacher in catalog else 7.5
    log(f"building {teacher} and {', '.join(archs)} from their configs (random weights) on {device}")
    pipelines, tiny, configs = random_pipelines(teacher, archs, catalog, device, dtype)
    geometry = input_geometry(configs, resolution)
    cells = [(arch, recipe) for arch in pipelines for recipe in chosen]
    for pipeline in pipelines.values():  # first-call costs (allocations, kernel choice) stay out of the timings
        pipeline(PROMPT, num_inference_steps=1, guidance_scale=1.0, output_type="latent", height=geometry.resolution,
                 width=geometry.resolution, generator=torch.Generator().manual_seed(0))
    tiny.decode(torch.zeros(1, tiny.config.latent_channels, geometry.latent, geometry.latent, device=device,
                            dtype=dtype))

    times, decode, unet, calls = {}, {}, {}, {}
    for round_index in range(warmup + repeats):
        for arch, recipe in cells:
            settings = recipe.apply(Settings(PROMPT, seed=0, resolution=geometry.resolution), family_guidance)
            with _UNetTimer(pipelines[arch].unet) as timer:
                synchronize(device)
                start = time.perf_counter()
                made = generate(pipelines[arch], [PROMPT] * batch,
                                [torch.Generator().manual_seed(i) for i in range(batch)], settings,
                                geometry.resolution, tiny if settings.decoder == "tiny" else None)
                synchronize(device)
                elapsed = time.perf_counter() - start
            if round_index >= warmup:
                key = (arch, recipe.name)
                times.setdefault(key, []).append(elapsed)
                decode.setdefault(key, []).append(made.decode_seconds)
                unet.setdefault(key, []).append(sum(timer.seconds))
                calls[key] = (made.full_calls, made.cached_calls)
            log(f"round {round_index + 1}/{warmup + repeats} ({'warm-up' if round_index < warmup else 'timed'}): "
                f"{arch} {recipe.name} {elapsed:.2f} s")

    reference = statistics.median(times[("teacher", "paper")])
    rows = []
    for arch, recipe in cells:
        key = (arch, recipe.name)
        seconds = statistics.median(times[key])
        same = statistics.median(times[("teacher", recipe.name)]) if ("teacher", recipe.name) in times else None
        config = configs["unet"] if arch == "teacher" else plan_student(configs["unet"], arch).student_config
        rows.append({
            "arch": arch, "recipe": recipe.name, "seconds": seconds, "times_s": times[key],
            "speedup": reference / seconds, "speedup_same_recipe": None if same is None else same / seconds,
            "decode_seconds": statistics.median(decode[key]), "unet_seconds": statistics.median(unet[key]),
            "unet_calls": calls[key][0] + calls[key][1],
            "cached_calls": calls[key][1], "knobs": recipe.knobs(),
            "macs_paper": count_unet_macs(meta_unet(config), (geometry.latent, geometry.latent), 1,
                                          geometry.text_tokens).paper,
        })
    return {"teacher": teacher, "resolution": geometry.resolution, "batch": batch, "device": str(device),
            "dtype": chosen[0].dtype,
            "threads": torch.get_num_threads(), "warmup": warmup, "repeats": repeats,
            "guidance": family_guidance, "rows": rows}


def format_report(report: dict) -> str:
    """The table `python -m studio bench pipeline` prints."""
    lines = [f"\nEnd to end (text encoder, every U-Net call, decoder), {report['teacher']} at {report['resolution']}x"
             f"{report['resolution']}, batch {report['batch']}, {report['device']} {report['dtype']}, "
             f"{report['threads']} threads; median of {report['repeats']} after {report['warmup']} warm-up rounds, "
             "interleaved; random weights; 'rest' is the text encoder and the scheduler's own work",
             f"{'arch':10} {'recipe':36} {'seconds':>9} {'vs teacher paper':>17} {'vs teacher same':>16} "
             f"{'U-Net calls (cached)':>21} {'U-Net':>8} {'decode':>8} {'rest':>7}"]
    for row in report["rows"]:
        same = "-" if row["speedup_same_recipe"] is None else f"{row['speedup_same_recipe']:.2f}x"
        lines.append(f"{row['arch']:10} {row['recipe']:36} {row['seconds']:>8.2f}s {row['speedup']:>16.2f}x "
                     f"{same:>16} {row['unet_calls']:>14} ({row['cached_calls']:>2}) {row['unet_seconds']:>7.2f}s "
                     f"{row['decode_seconds']:>7.3f}s {row['seconds'] - row['unet_seconds'] - row['decode_seconds']:>6.2f}s")
    return "\n".join(lines)
