"""Load test: many concurrent Compare requests against a live studio; every one completes or is turned away.

    python tests/load_compare.py --url http://127.0.0.1:7860/ --n 50 --steps 2

Sends N `/compare` requests at once (one gradio_client, N submitted jobs) and waits for each with a
deadline. Prints how many completed, were rejected with gradio's "queue is full" answer, failed
otherwise, or hung past the deadline, with p50/p95 latency of the completed ones and throughput.
Only for servers on this machine (loopback); `test_load` runs it small against a tiny-family app.
"""

import argparse
import json
import statistics
import time
from urllib.parse import urlparse


def run(url: str, n: int, models: list[str], prompt: str = "a cat", steps: int = 2, timeout: float = 300.0) -> dict:
    from gradio_client import Client

    if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load-test {url}: only servers on this machine (loopback)")
    client = Client(url, verbose=False)
    started = time.monotonic()
    jobs = [(time.monotonic(), client.submit(models, prompt, "", i, steps, 2.0, "DDIM", 0, api_name="/compare"))
            for i in range(n)]
    counts = {"completed": 0, "rejected": 0, "failed": 0, "hung": 0}
    latencies, errors = [], []
    for submitted, job in jobs:
        remaining = max(0.1, timeout - (time.monotonic() - started))
        try:
            job.result(timeout=remaining)
            counts["completed"] += 1
            latencies.append(time.monotonic() - submitted)
        except TimeoutError:
            counts["hung"] += 1
        except Exception as error:  # gradio_client's QueueError / AppError carry the server's answer
            if "queue is full" in str(error).lower():
                counts["rejected"] += 1
            else:
                counts["failed"] += 1
                errors.append(f"{type(error).__name__}: {error}")
    elapsed = time.monotonic() - started
    latencies.sort()
    return {**counts, "requests": n, "seconds": round(elapsed, 2),
            "p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3) if latencies else None,
            "throughput_per_s": round(counts["completed"] / elapsed, 3), "errors": errors[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--models", default="toy-teacher,toy-bk-tiny", help="comma-separated")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    print(json.dumps(run(args.url, args.n, args.models.split(","), steps=args.steps, timeout=args.timeout), indent=2))


if __name__ == "__main__":
    main()
