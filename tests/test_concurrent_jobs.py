"""Eight 2-second jobs against one worker: answered at once, run one at a time, all succeed."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import requests

from tests.stack import wait_for_status


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_eight_two_second_jobs_on_one_worker(api):
    def submit(n: int) -> tuple[float, requests.Response]:
        began = time.perf_counter()
        response = requests.post(f"{api}/v1/jobs", json={"analyzer": "simulate", "params": {"seconds": 2},
                                                          "input": {"n": n}}, timeout=10)
        return time.perf_counter() - began, response

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(submit, range(8)))
    latencies = sorted(latency for latency, _ in answers)
    assert all(r.status_code == 202 for _, r in answers)
    # Answered at once, not after the 2-second work: the 50 ms target is measured
    # by bench/submit_latency.py; here a wide margin keeps a noisy machine from flaking.
    print(f"submit latency: median {latencies[4] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    assert latencies[-1] < 0.5, latencies

    jobs = [wait_for_status(api, r.json()["id"], {"succeeded", "failed"}, timeout=60) for _, r in answers]
    assert [j["status"] for j in jobs] == ["succeeded"] * 8
    assert sorted(j["result"]["input"]["n"] for j in jobs) == list(range(8))
    spans = sorted((_ts(j["started_at"]), _ts(j["finished_at"])) for j in jobs)
    for (_, previous_end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= previous_end - 0.001, "two jobs ran at the same time on a concurrency-1 worker"
    assert spans[-1][1] - spans[0][0] >= 16 - 0.1
