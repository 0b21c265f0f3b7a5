"""Embedding throughput: the raw model in-process against the whole stack, in one run.

First the model alone: all-MiniLM-L6-v2 in this process, the texts grouped
into jobs and each job's texts run as the analyzer runs them (shortest first,
64 per forward pass). Then the same texts through gpuq: its own Redis, one
worker (the first GPU that nvidia-smi lists, else the CPU), the API under
gunicorn, jobs posted by concurrent clients that long-poll for their results.
Prints sentences/s for both and their ratio: what the queue, JSON and HTTP cost.

    .venv/bin/python bench/embed_throughput.py [--texts 1024] [--per-job 64] [--clients 4]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_worker.analyzers.embed import TEXTS_PER_PASS  # noqa: E402
from gpu_worker.analyzers.embed_model import MiniLM  # noqa: E402
from gpu_worker.devices import discover_gpus  # noqa: E402
from gpuq.redis_server import RedisServer  # noqa: E402
from tests.stack import base_env, start_api, start_workers, wait_for_workers  # noqa: E402

_WORDS = ("the a model queue worker fast slow GPU request answer result cat dog river city music "
          "question reset password train leaves noon bread eating meal office car horse baby market "
          "fell sharply weather tomorrow rain sunny mountain lake science history kitchen recipe flour").split()


def make_texts(count: int, seed: int = 0) -> list[str]:
    """Sentences of 4 to 40 words: lengths as varied as real traffic, the same on every run."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 40))).capitalize() + "."
            for _ in range(count)]


def raw_throughput(jobs: list[list[str]], device: str) -> float:
    model = MiniLM.load(device)
    model.encode(["warm-up"] * TEXTS_PER_PASS)
    began = time.perf_counter()
    for texts in jobs:
        ordered = sorted(texts, key=len)
        for lo in range(0, len(ordered), TEXTS_PER_PASS):
            model.encode(ordered[lo:lo + TEXTS_PER_PASS])  # returns on the CPU: the device has finished
    elapsed = time.perf_counter() - began
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return sum(map(len, jobs)) / elapsed


def stack_throughput(jobs: list[list[str]], gpus: list[str], clients: int) -> tuple[float, list[float], str]:
    work = Path(tempfile.mkdtemp(prefix="gpuq-bench-embed-"))
    redis = RedisServer(work / "redis").start()
    env = base_env(redis.url, GPUQ_ANALYZERS="embed", GPUQ_GPUS=",".join(gpus[:1]) or "none")
    workers = start_workers(env, work)
    api_process, api = start_api(env, work)
    try:
        [worker] = wait_for_workers(redis.url, {"embed"}, workers, timeout=300)
        sessions = [requests.Session() for _ in range(clients)]

        def run(index: int) -> float:
            session = sessions[index % clients]
            began = time.perf_counter()
            job = session.post(f"{api}/v1/jobs", json={"analyzer": "embed", "input": jobs[index]}, timeout=30)
            job.raise_for_status()
            while True:
                done = session.get(f"{api}/v1/jobs/{job.json()['id']}", params={"wait": 30}, timeout=60).json()
                if done["status"] not in ("queued", "running"):
                    break
            if done["status"] != "succeeded" or done["result"]["count"] != len(jobs[index]):
                raise RuntimeError(f"job {done['id']} ended {done['status']}: {done.get('error')}")
            return time.perf_counter() - began

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(run, range(min(clients, len(jobs)))))  # warm-up: connections, catalog, first batches
            began = time.perf_counter()
            latencies = list(pool.map(run, range(len(jobs))))
            elapsed = time.perf_counter() - began
        return sum(map(len, jobs)) / elapsed, latencies, worker["device"]
    finally:
        api_process.stop()
        workers.stop(timeout=60)
        redis.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1024, help="sentences in all (default 1024)")
    parser.add_argument("--per-job", type=int, default=64, help="sentences per job (at most 256; default 64)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    args = parser.parse_args()
    texts = make_texts(args.texts)
    jobs = [texts[i:i + args.per_job] for i in range(0, len(texts), args.per_job)]
    gpus = discover_gpus()
    device = "cuda" if gpus else "cpu"

    raw = raw_throughput(jobs, device)
    print(f"raw model in-process on {device}: {raw:,.0f} sentences/s "
          f"({len(texts)} sentences, {len(jobs)} jobs of {args.per_job}, {TEXTS_PER_PASS} per forward pass)",
          flush=True)
    stack, latencies, label = stack_throughput(jobs, gpus, args.clients)
    print(f"whole stack (1 worker on {label}, {args.clients} clients): {stack:,.0f} sentences/s; "
          f"job latency p50 {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    print(f"ratio stack/raw: {stack / raw:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
