"""`python -m studio bench ...`: benchmarks that print measured numbers (U-Net, whole images, training data, CPU
contention, memory)."""

import json
import sys


def cmd_bench(args) -> None:
    from studio.bench.unet import bench_unets

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


def cmd_bench_pipeline(args) -> None:
    from studio.bench.pipeline import bench_pipelines, format_report

    log = (lambda message: print(message, file=sys.stderr)) if args.json else print
    report = bench_pipelines(args.teacher, tuple(args.arch), tuple(args.recipes), args.resolution, args.batch,
                             args.warmup, args.repeats, args.device, args.dtype, log=log)
    if args.json:
        context = {k: report[k] for k in ("teacher", "resolution", "batch", "device", "dtype", "threads", "guidance")}
        print(json.dumps([{**row, **context} for row in report["rows"]], indent=2))
        return
    print(format_report(report))


def cmd_bench_contention(args) -> None:
    from studio.bench.contention import bench_contention, format_report

    log = (lambda message: print(message, file=sys.stderr)) if args.json else print
    if args.random_teacher:  # real sizes: the teacher and the job's student with random weights, native at --resolution
        import tempfile
        from pathlib import Path

        from studio.bench.memory import write_noise_imagefolder, write_random_family
        from studio.models.catalog import load_catalog

        with tempfile.TemporaryDirectory(prefix="contention-") as folder:
            log(f"writing {args.random_teacher} and {args.arch} with random weights ...")
            catalog = load_catalog(write_random_family(args.random_teacher, (args.arch,), Path(folder),
                                                       args.resolution))
            data = write_noise_imagefolder(Path(folder) / "data", args.resolution or 512)
            report = bench_contention(["bench-teacher", f"bench-{args.arch}"], args.recipe, args.threads, args.arch,
                                      args.batch_size, None, args.repeats, args.window, log=log, catalog=catalog,
                                      data=str(data))
    else:
        report = bench_contention(args.models, args.recipe, args.threads, args.arch, args.batch_size,
                                  args.resolution, args.repeats, args.window, log=log)
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def cmd_bench_memory(args) -> None:
    from studio.bench.memory import bench_memory, format_report

    log = (lambda message: print(message, file=sys.stderr)) if args.json else print
    report = bench_memory(args.teacher, tuple(args.arch), args.budget_gb, args.resolution or 256, args.steps, log=log)
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def cmd_bench_data(args) -> None:
    from studio.bench.data import bench_data, format_report

    log = (lambda message: print(message, file=sys.stderr)) if args.json else print
    report = bench_data(args.resolution, args.batch, tuple(args.workers), args.images, args.batches, args.warmup,
                        args.rounds, log=log)
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def cmd_bench_train(args) -> None:
    from studio.bench.train import format_report, run_bench_train

    log = (lambda message: print(message, file=sys.stderr)) if args.json else print
    report = run_bench_train(args, log)
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def cmd_gpu_check(args) -> None:
    from studio.bench.gpu_check import format_table, gpu_check

    rows = gpu_check(args.device, args.family, job_steps=args.job_steps, bench_512=not args.skip_512)
    print(format_table(rows, args.device))
    if not all(row["ok"] for row in rows):
        sys.exit(1)


def add_bench_commands(commands, add_model_args, wrap_run=lambda run: run) -> None:
    """`bench ...` and `gpu-check`; `wrap_run` wraps the commands that may use the toy world."""
    gpu = commands.add_parser("gpu-check", help="the studio end to end on a device (compare fp32/fp16, img2img, "
                              "distillation, DreamBooth, evaluation, the 512x512 bench) as one table")
    gpu.add_argument("--device", default="cuda")
    gpu.add_argument("--family", default="toy")
    gpu.add_argument("--job-steps", type=int, default=20)
    gpu.add_argument("--skip-512", action="store_true", help="leave out the 512x512 pipeline bench")
    gpu.set_defaults(run=wrap_run(cmd_gpu_check))
    bench = commands.add_parser("bench", help="latency benchmarks")
    bench_targets = bench.add_subparsers(dest="target", required=True)
    data = bench_targets.add_parser("data", help="training batches decoded in the loop and by loader workers")
    data.add_argument("--resolution", type=int, default=512)
    data.add_argument("--batch", type=int, default=8)
    data.add_argument("--workers", type=int, nargs="+", default=[2], help="loader worker counts to time")
    data.add_argument("--images", type=int, default=64, help="JPEGs in the imagefolder")
    data.add_argument("--batches", type=int, default=8, help="timed batches per setting and round")
    data.add_argument("--warmup", type=int, default=2)
    data.add_argument("--rounds", type=int, default=3)
    data.add_argument("--json", action="store_true")
    data.set_defaults(run=cmd_bench_data)
    train = bench_targets.add_parser("train", help="distillation steps: images decoded in the loop, by loader "
                                     "workers, and cached features (samples/s, data wait, peak memory)")
    train.add_argument("--teacher", default="toy-teacher", help="a catalogue teacher or pipeline folder")
    train.add_argument("--random-teacher", help="instead: this catalogue teacher's architecture with random weights "
                                                "(e.g. sd-v1.4), native at --resolution")
    train.add_argument("--resolution", type=int, default=256)
    train.add_argument("--arch", default="tiny")
    train.add_argument("--batch", type=int, default=2)
    train.add_argument("--workers", type=int, default=2, help="loader workers of the second setting")
    train.add_argument("--images", type=int, default=32, help="JPEGs in the imagefolder (and its cache)")
    train.add_argument("--rounds", type=int, default=3)
    train.add_argument("--steps", type=int, default=4, help="steps per setting and round")
    train.add_argument("--json", action="store_true")
    train.set_defaults(run=cmd_bench_train)
    unet = bench_targets.add_parser("unet", help="one U-Net forward: teacher against each student")
    add_model_args(unet)
    unet.add_argument("--warmup", type=int, default=1)
    unet.add_argument("--repeats", type=int, default=3)
    unet.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    unet.add_argument("--dtype", default="fp32", help="fp32, fp16 or bf16")
    unet.set_defaults(run=cmd_bench)
    pipeline = bench_targets.add_parser("pipeline", help="whole images: teacher and students under recipes")
    add_model_args(pipeline)
    pipeline.set_defaults(arch=["tiny"])
    pipeline.add_argument("--recipes", nargs="+", default=["paper", "fast"],
                          help="preset names, each optionally with :knob=value overrides, e.g. "
                               "'paper:scheduler=DPM++ 2M Karras:steps=12' (the teacher with paper always runs)")
    pipeline.add_argument("--warmup", type=int, default=0, help="untimed rounds (each pipeline also runs one step first)")
    pipeline.add_argument("--repeats", type=int, default=1)
    pipeline.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    pipeline.add_argument("--dtype", help="fp32, fp16 or bf16 for every recipe (default: each recipe's own)")
    pipeline.set_defaults(run=cmd_bench_pipeline)
    contention = bench_targets.add_parser("contention", help="a Compare beside a training job, against each alone, "
                                          "with the CPU budget and without")
    contention.add_argument("--models", nargs="+", default=["toy-teacher", "toy-bk-tiny"],
                            help="the Compare's models; the first one's teacher trains the job's student")
    contention.add_argument("--recipe", default="paper")
    contention.add_argument("--resolution", type=int, help="image side in pixels (default: each model's own)")
    contention.add_argument("--arch", default="tiny", help="the job's student")
    contention.add_argument("--batch-size", type=int, help="the job's batch (default: the family's)")
    contention.add_argument("--threads", type=int, help="the CPU budget (default: the cores)")
    contention.add_argument("--repeats", type=int, default=3)
    contention.add_argument("--window", type=float, default=20.0, help="seconds the job's speed is read over")
    contention.add_argument("--random-teacher", help="real sizes instead: this catalogue teacher and its --arch "
                            "student with random weights, native at --resolution (e.g. sd-v1.4 at 256)")
    contention.add_argument("--json", action="store_true")
    contention.set_defaults(run=cmd_bench_contention)
    memory = bench_targets.add_parser("memory", help="a Compare of a teacher and its students at real size (random "
                                      "weights) within a model memory budget below their sum: peak RSS, evictions")
    add_model_args(memory)
    memory.set_defaults(arch=["small", "tiny"])
    memory.add_argument("--budget-gb", type=float, default=5.0)
    memory.add_argument("--steps", type=int, default=2)
    memory.set_defaults(run=cmd_bench_memory)
