"""`python -m studio bench data`: how fast training batches are decoded, in the loop and by loader workers.

An imagefolder of noise JPEGs (640x480, as web photos come) is read at the
training resolution the way the trainers read it: rows and mirroring drawn from
each draw's rng (studio/kinds/data.py), decoded, resized, cropped, made tensors.
"In the loop" decodes each batch when asked, as `--data-workers 0` does; "N
workers" asks the prefetching loader, which decodes ahead in N processes. Each
setting is timed over the same draws after a warm-up of `warmup` batches; the
settings take turns, round after round, and the medians are reported.
"""

import statistics
import tempfile
import time
from pathlib import Path

GB = 1024**3


def write_jpeg_imagefolder(folder: Path, n: int, size: tuple[int, int] = (640, 480)) -> Path:
    """`n` noise JPEGs with captions in the imagefolder layout (noise: the slowest case for a JPEG decoder)."""
    import json

    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
        rows.append(json.dumps({"file_name": f"{i:05d}.jpg", "text": f"image {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def _images_per_second(data, batch: int, draws: range) -> float:
    from studio.kinds.training import step_generator

    started = time.perf_counter()
    for draw in draws:
        data.batch(batch, step_generator(0, draw)[0])
    return batch * len(draws) / (time.perf_counter() - started)


def bench_data(resolution: int = 512, batch: int = 8, workers: tuple[int, ...] = (2,), images: int = 64,
               batches: int = 8, warmup: int = 2, rounds: int = 3, log=print) -> dict:
    from studio.kinds.data import ImageFolderData, prefetched
    from studio.kinds.training import step_generator

    with tempfile.TemporaryDirectory(prefix="bench-data-") as folder:
        log(f"writing {images} noise JPEGs (640x480) ...")
        data = ImageFolderData(write_jpeg_imagefolder(Path(folder), images), resolution)
        settings = {"in the loop": 0, **{f"{n} workers": n for n in workers}}
        seconds = {name: [] for name in settings}
        for r in range(rounds):
            for name, n in settings.items():
                first = r * (warmup + batches)
                source = prefetched(data, n, batch, lambda draw: step_generator(0, draw)[0], first)
                _images_per_second(source, batch, range(first, first + warmup))  # workers start, queues fill
                seconds[name].append(_images_per_second(source, batch, range(first + warmup, first + warmup + batches)))
                del source  # its workers stop
                log(f"round {r + 1}/{rounds}: {name} {seconds[name][-1]:.1f} images/s")
    rates = {name: statistics.median(values) for name, values in seconds.items()}
    base = rates["in the loop"]
    return {"resolution": resolution, "batch": batch, "images": images, "rounds": rounds,
            "rows": [{"setting": name, "images_per_second": rate, "speedup": rate / base}
                     for name, rate in rates.items()]}


def format_report(report: dict) -> str:
    lines = [f"Training batches from an imagefolder of 640x480 JPEGs at {report['resolution']} px, batch "
             f"{report['batch']}; median images/s of {report['rounds']} interleaved rounds",
             f"{'setting':14} {'images/s':>9} {'vs the loop':>12}"]
    lines += [f"{r['setting']:14} {r['images_per_second']:>9.1f} {r['speedup']:>11.2f}x" for r in report["rows"]]
    return "\n".join(lines)
