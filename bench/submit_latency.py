"""Submit latency while one worker is busy: 8 concurrent 2-second simulate jobs.

Starts its own Redis, one CPU worker and the API (production gunicorn config),
warms every API thread up, then sends 8 jobs at once and reports each
submit's latency against a baseline measured in the same run: 8 concurrent
GET /healthz (the same server, no Redis work). Also checks the jobs ran one
at a time and all succeeded.

    .venv/bin/python bench/submit_latency.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpuq.redis_server import RedisServer  # noqa: E402
from tests.stack import base_env, start_api, start_workers, wait_for_status, wait_for_workers  # noqa: E402


def _timed(call) -> float:
    began = time.perf_counter()
    response = call()
    response.raise_for_status()
    return (time.perf_counter() - began) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpuq-bench-"))
    redis = RedisServer(work / "redis").start()
    env = base_env(redis.url, GPUQ_ANALYZERS="simulate")
    workers = start_workers(env, work)
    api_process, api = start_api(env, work)
    sessions = [requests.Session() for _ in range(8)]
    try:
        wait_for_workers(redis.url, {"simulate"}, workers)
        with ThreadPoolExecutor(8) as pool:
            # Warm-up: every thread's connection, the catalog, the Celery producer pool.
            for _ in range(3):
                jobs = list(pool.map(lambda s: s.post(f"{api}/v1/jobs", json={"analyzer": "simulate",
                                                                               "params": {"seconds": 0}}), sessions))
            for job in jobs:
                wait_for_status(api, job.json()["id"], {"succeeded"})
            base, submit, ids = [], [], []
            for _ in range(args.rounds):
                base += pool.map(lambda s: _timed(lambda: s.get(f"{api}/healthz")), sessions)
            for round_no in range(args.rounds):
                # The first round is the 2-second jobs of the target; later rounds
                # are instant jobs, so the run stays short.
                body = {"analyzer": "simulate", "params": {"seconds": 2 if round_no == 0 else 0}}
                answers = list(pool.map(lambda s, b=body: s.post(f"{api}/v1/jobs", json=b), sessions))
                submit += [a.elapsed.total_seconds() * 1000 for a in answers]
                ids += [a.json()["id"] for a in answers]
        finished = [wait_for_status(api, i, {"succeeded", "failed"}, timeout=120) for i in ids]
        ok = sum(j["status"] == "succeeded" for j in finished)
        p50_b, p50_s = statistics.median(base), statistics.median(submit)
        print(f"baseline GET /healthz, 8 concurrent: p50 {p50_b:.1f} ms  max {max(base):.1f} ms")
        print(f"POST /v1/jobs, 8 concurrent:       p50 {p50_s:.1f} ms  max {max(submit):.1f} ms  "
              f"(first round while 2-second jobs queue up: max {max(submit[:8]):.1f} ms)")
        print(f"ratio submit/baseline p50: {p50_s / p50_b:.2f}")
        print(f"submits under 50 ms: {sum(s < 50 for s in submit)}/{len(submit)}; jobs succeeded {ok}/{len(ids)}")
        return 0 if ok == len(ids) else 1
    finally:
        api_process.stop()
        workers.stop(timeout=60)
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
