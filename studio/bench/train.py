"""`python -m studio bench train`: distillation steps per second, the share of each step spent waiting for data, and
peak memory, with the batches decoded in the loop, decoded ahead by loader workers, and read from cached features.

The real trainer runs (`python -m studio distill`, one process per round, alone on the machine): each setting runs
`steps` steps a round and resumes where its last round stopped, the settings taking turns over `rounds` rounds, so
a slow minute of the machine falls on all of them. A step's time and data wait come from the run's metrics.csv
(`seconds`, `data_seconds`); the first step of every round is left out (warm-up: the first batch, allocations).
The data is an imagefolder of 640x480 noise JPEGs (as web photos come; noise is the slowest case for a JPEG
decoder), the same images as webdataset shards at the training resolution, and their feature cache, made first
(the cache's time is reported too). Peak memory is the trainer process's peak
RSS (loader workers are processes of their own, not counted in it).
"""

import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from studio.models.catalog import PROJECT_ROOT


def _rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def bench_train(teacher: str, arch: str, batch: int, workers: int, rounds: int, steps: int, images: int,
                folder: Path, log=print) -> dict:
    from studio.bench.data import write_jpeg_imagefolder

    data = write_jpeg_imagefolder(folder / "data", images)
    log(f"{images} JPEGs (640x480) in {data}; caching their features by {teacher} ...")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "studio", "precompute", "--teacher", teacher, "--data", str(data),
                    "--out", str(folder / "cache"), "--batch-size", str(batch)], check=True, cwd=PROJECT_ROOT)
    precompute_seconds = time.perf_counter() - started
    from studio.kinds.shards import make_shards

    resolution = json.loads((folder / "cache" / "features.json").read_text())["resolution"]  # the teacher's
    make_shards(str(data), folder / "shards", resolution, per_shard=max(1, images // (2 * max(workers, 1))))
    settings = {"images, in the loop": (data, 0), f"images, {workers} loader workers": (data, workers),
                f"shards, {workers} loader workers": (folder / "shards", workers),
                "cached features": (folder / "cache", 0)}
    outs = {name: folder / f"run-{i}" for i, name in enumerate(settings)}
    for round_number in range(1, rounds + 1):
        for name, (source, data_workers) in settings.items():
            log(f"round {round_number}/{rounds}: {name}, {steps} steps")
            command = [sys.executable, "-m", "studio", "distill", "--teacher", teacher, "--arch", arch,
                       "--data", str(source), "--out", str(outs[name]), "--steps", str(round_number * steps),
                       "--batch-size", str(batch), "--data-workers", str(data_workers),
                       "--checkpoint-every", str(steps), "--checkpoints-total-limit", "1", "--log-every", "1"]
            subprocess.run(command + (["--resume"] if round_number > 1 else []), check=True, cwd=PROJECT_ROOT,
                           stdout=subprocess.DEVNULL)
    results = {}
    for name, out in outs.items():
        rows = _rows(out)
        step_times, waits = [], []
        for previous, row in zip(rows, rows[1:]):
            if (int(row["step"]) - 1) % steps == 0:  # a round's first step
                continue
            step_times.append(float(row["seconds"]) - float(previous["seconds"]))
            waits.append(float(row["data_seconds"]) - float(previous["data_seconds"]))
        card = json.loads((out / "card.json").read_text())
        median = statistics.median(step_times)
        results[name] = {"seconds_per_step": median, "samples_per_second": batch / median,
                         "data_wait_share": sum(waits) / sum(step_times), "steps_timed": len(step_times),
                         "peak_memory_mb": card["peak_memory_mb"]}
    baseline = results["images, in the loop"]["seconds_per_step"]
    for result in results.values():
        result["speedup"] = baseline / result["seconds_per_step"]
    return {"teacher": teacher, "arch": arch, "batch": batch, "images": images, "rounds": rounds, "steps": steps,
            "threads": os.cpu_count(), "precompute_seconds": precompute_seconds, "settings": results}


def format_report(report: dict) -> str:
    lines = [f"KD steps of {report['arch']} from {report['teacher']}, batch {report['batch']}, "
             f"{report['rounds']} interleaved rounds of {report['steps']} steps (the first of each left out); "
             f"caching {report['images']} images took {report['precompute_seconds']:.1f} s",
             f"{'data':34} {'s/step':>8} {'samples/s':>10} {'speed-up':>9} {'data wait':>10} {'peak RSS':>10}"]
    for name, r in report["settings"].items():
        lines.append(f"{name:34} {r['seconds_per_step']:8.3f} {r['samples_per_second']:10.2f} {r['speedup']:8.2f}x "
                     f"{r['data_wait_share']:9.1%} {r['peak_memory_mb']:8.0f} MB")
    return "\n".join(lines)


def run_bench_train(args, log=print) -> dict:
    """The command: a catalogue teacher (e.g. toy-teacher), or --random-teacher at --resolution (random weights)."""
    with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
        teacher = args.teacher
        if args.random_teacher:
            from studio.bench.memory import write_random_family

            log(f"writing {args.random_teacher} with random weights, native at {args.resolution} px ...")
            write_random_family(args.random_teacher, (), Path(folder) / "family", args.resolution)
            teacher = str(Path(folder) / "family" / "teacher")
        report = bench_train(teacher, args.arch, args.batch, args.workers, args.rounds, args.steps, args.images,
                             Path(folder), log)
        if args.random_teacher:
            report["teacher"] = f"{args.random_teacher} (random weights) at {args.resolution} px"
        return report
