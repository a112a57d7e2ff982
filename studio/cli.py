"""`python -m studio <command>`: the studio from the command line."""

import argparse
import json
import sys
import time
from pathlib import Path

from studio.catalog import CatalogError, UnknownModelError, load_catalog
from studio.compression import CompressionError

PRESET_ARCHS = ("base", "small", "tiny")
USER_ERRORS = (CompressionError, UnknownModelError, CatalogError, ValueError)


def _giga(value: int) -> str:
    return f"{value / 1e9:.2f} G"


def cmd_models(args) -> None:
    catalog = load_catalog()
    for entry in catalog:
        owner = f"student of {entry.teacher}, {entry.arch}" if entry.role == "student" else "teacher"
        print(f"{entry.name:18} {entry.family:8} {owner:32} {entry.source}")


def cmd_compress(args) -> None:
    from tqdm import tqdm

    from studio.compression import build_student, resolve_spec
    from studio.loading import load_unet

    out = Path(args.out)
    if (out / "config.json").exists() and not args.overwrite:
        raise ValueError(f"{out} already holds a model; choose another --out or pass --overwrite")
    spec = resolve_spec(args.arch)
    start = time.perf_counter()
    print(f"loading teacher U-Net {args.teacher} ...", flush=True)
    teacher = load_unet(args.teacher)
    print(f"building {spec} student from a teacher of {sum(p.numel() for p in teacher.parameters()):,} parameters")
    with tqdm(desc="copying teacher weights", unit="tensor") as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        student = build_student(teacher, spec, progress=progress)
    print(f"saving to {out} ...", flush=True)
    student.save_pretrained(out, safe_serialization=True)
    params = sum(p.numel() for p in student.parameters())
    print(f"wrote {spec} student ({params:,} parameters) to {out} in {time.perf_counter() - start:.1f}s")


def cmd_profile(args) -> None:
    from studio.profiling import profile_students

    report = profile_students(args.teacher, tuple(args.arch), args.resolution, args.batch)
    if args.json:
        print(json.dumps(report["rows"], indent=2))
        return
    teacher = report["rows"][0]
    print(f"{args.teacher} at {report['resolution']}x{report['resolution']}, batch {report['batch']}; "
          "MACs per U-Net step. paper = conv + linear (as BK-SDM); total = paper + attention matmuls")
    header = f"{'arch':24} {'U-Net params':>14} {'ratio':>6} {'MACs paper':>12} {'ratio':>6} {'MACs total':>12} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for row in report["rows"]:
        print(f"{row['arch']:24} {row['unet_params']:>14,} {row['unet_params'] / teacher['unet_params']:>6.2f} "
              f"{_giga(row['macs_paper']):>12} {row['macs_paper'] / teacher['macs_paper']:>6.2f} "
              f"{_giga(row['macs_total']):>12} {row['macs_total'] / teacher['macs_total']:>6.2f}")
    for part, count in report["components"].items():
        if count is not None:
            print(f"shared {part.replace('_', ' ')}: {count:,} parameters")


def cmd_bench(args) -> None:
    from studio.bench import bench_unets

    log = (lambda message: print(message, file=sys.stderr)) if args.json else print
    report = bench_unets(
        args.teacher, tuple(args.arch), args.resolution, args.batch, args.warmup, args.repeats,
        args.device, args.dtype, log=log,
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"\nU-Net forward, {args.teacher} at {report['resolution']}x{report['resolution']}, batch {report['batch']}, "
          f"{report['device']} {report['dtype']}, {report['threads']} threads; "
          f"median of {report['repeats']} after {report['warmup']} warm-up, interleaved")
    print(f"{'arch':24} {'median':>9} {'speed-up':>9} {'MAC ratio (paper)':>18}")
    for row in report["rows"]:
        print(f"{row['arch']:24} {row['median_s']:>8.3f}s {row['speedup']:>8.2f}x {row['macs_ratio']:>17.2f}x")


def cmd_toy_data(args) -> None:
    from studio.toy.data import export_imagefolder

    out = export_imagefolder(args.n, args.out, args.seed)
    print(f"wrote {args.n} images and metadata.jsonl to {out}")


def cmd_toy_train(args) -> None:
    from studio.toy.train import ToyTrainConfig, train_toy_teacher

    config = ToyTrainConfig(out=args.out, seed=args.seed)
    for field in ("vae_steps", "unet_steps", "batch_size", "dataset_size"):
        if getattr(args, field) is not None:
            if getattr(args, field) < 1:
                raise ValueError(f"--{field.replace('_', '-')} must be at least 1")
            setattr(config, field, getattr(args, field))
    train_toy_teacher(config)


def cmd_toy_judge(args) -> None:
    from studio.toy.evaluate import judge_model

    report = judge_model(args.model, n=args.n, steps=args.steps, guidance=args.guidance, seed=args.seed)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.model}: {report['n']} images, {args.steps} steps, guidance {args.guidance}, seed {args.seed}")
    for key in ("color", "shape", "background", "all"):
        print(f"{key:>10} accuracy {report[key]:.1%}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("models", help="list the model catalogue").set_defaults(run=cmd_models)

    compress = commands.add_parser("compress", help="build a BK-SDM student U-Net from a teacher's weights")
    compress.add_argument("--teacher", required=True, help="catalogue name, pipeline folder or U-Net folder")
    compress.add_argument("--arch", required=True,
                          help="base, small, tiny, or custom:LAYERS[:no-mid][:no-innermost] (e.g. custom:1,2,2,1)")
    compress.add_argument("--out", required=True, help="folder to write the student U-Net to")
    compress.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    compress.set_defaults(run=cmd_compress)

    def add_model_args(sub):
        sub.add_argument("--teacher", default="sd-v1.4", help="catalogue name or local folder (default: sd-v1.4)")
        sub.add_argument("--arch", nargs="+", default=list(PRESET_ARCHS),
                         help="students to build from the teacher's config (default: base small tiny)")
        sub.add_argument("--resolution", type=int, help="image side in pixels (default: the teacher's)")
        sub.add_argument("--batch", type=int, default=1)
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")

    profile = commands.add_parser("profile", help="parameters and MACs of a teacher and its students")
    add_model_args(profile)
    profile.set_defaults(run=cmd_profile)

    bench = commands.add_parser("bench", help="latency benchmarks")
    bench_targets = bench.add_subparsers(dest="target", required=True)
    unet = bench_targets.add_parser("unet", help="one U-Net forward: teacher against each student")
    add_model_args(unet)
    unet.add_argument("--warmup", type=int, default=1)
    unet.add_argument("--repeats", type=int, default=3)
    unet.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    unet.add_argument("--dtype", default="fp32", help="fp32, fp16 or bf16")
    unet.set_defaults(run=cmd_bench)
    toy = commands.add_parser("toy", help="the toy world: procedural data, a tiny teacher, a judge")
    toy_commands = toy.add_subparsers(dest="toy_command", required=True)
    data = toy_commands.add_parser("data", help="export procedural shapes in the imagefolder layout")
    data.add_argument("--n", type=int, required=True)
    data.add_argument("--out", required=True)
    data.add_argument("--seed", type=int, default=0)
    data.set_defaults(run=cmd_toy_data)
    train = toy_commands.add_parser("train", help="train the toy teacher (VAE, text encoder, U-Net) from scratch")
    train.add_argument("--out", default="assets/toy/teacher")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--vae-steps", type=int)
    train.add_argument("--unet-steps", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--dataset-size", type=int)
    train.set_defaults(run=cmd_toy_train)
    judge = toy_commands.add_parser("judge", help="prompt accuracy of a toy model, by the procedural judge")
    judge.add_argument("--model", default="toy-teacher", help="catalogue name or pipeline folder")
    judge.add_argument("--n", type=int, default=90, help="images (the fixed prompt set repeats past 90)")
    judge.add_argument("--steps", type=int, default=25)
    judge.add_argument("--guidance", type=float, default=7.5)
    judge.add_argument("--seed", type=int, default=0)
    judge.add_argument("--json", action="store_true")
    judge.set_defaults(run=cmd_toy_judge)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from studio.loading import ModelUnavailableError

    try:
        args.run(args)
    except (*USER_ERRORS, ModelUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
