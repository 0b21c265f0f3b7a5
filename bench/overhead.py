"""Per-job overhead: a no-op job, one at a time, against a plain Celery round trip.

gpuq: one client, sequentially, POST a ``noop`` job and long-poll it; the
time from sending the POST to reading ``succeeded`` (result included) is the
job's overhead, since the analyzer itself does nothing. Celery: the same
Redis, a plain app with a trivial task, ``apply_async(...).get()``. The two
are measured in turn, job by job, after a warm-up, so connections and caches
are made and the machine's noise falls on both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import requests

from bench.http_jobs import SessionClient, run_job
from bench.stats import p50_p99
from bench.workloads import Workload

__all__ = ["GpuqOverhead", "Latencies", "interleaved_round_trips"]


@dataclass(frozen=True)
class Latencies:
    """p50 and p99 of one measure, in milliseconds."""

    p50: float
    p99: float

    @classmethod
    def of(cls, values_ms: list[float]) -> Latencies:
        return cls(*p50_p99(values_ms))


@dataclass(frozen=True)
class GpuqOverhead:
    total: Latencies  # POST sent to the succeeded job read
    submit: Latencies  # POST sent to 202 read
    queued: Latencies  # the record's queued_ms: accepted to started on the worker
    run: Latencies  # the record's run_ms: predict and its checks
    jobs: int


def interleaved_round_trips(url: str, workload: Workload, task, jobs: int, warmup: int,
                            start_timeout: float = 120) -> tuple[GpuqOverhead, Latencies]:
    """A gpuq no-op job, then a plain Celery round trip, in turn, ``jobs`` times each.

    Taking them in turn, rather than one series after the other, lets a noisy
    neighbour on a shared machine slow both measures alike, so their ratio holds.
    """
    task.apply_async(args=[{"n": -1}]).get(timeout=start_timeout)  # waits for the Celery worker to start
    session = requests.Session()
    client = SessionClient(session, url, workload)
    outcomes, durations = [], []
    try:
        for n in range(warmup + jobs):
            outcome = run_job(client, workload, n)
            began = time.perf_counter()
            result = task.apply_async(args=[{"n": n}]).get(timeout=30)
            duration = (time.perf_counter() - began) * 1000
            if result != {"n": n}:
                raise RuntimeError(f"the plain Celery task returned {result!r} for {{'n': {n}}}")
            if n >= warmup:
                outcomes.append(outcome)
                durations.append(duration)
    finally:
        session.close()
    timings = [o.job.get("timings") or {} for o in outcomes]
    gpuq = GpuqOverhead(
        total=Latencies.of([o.total_s * 1000 for o in outcomes]),
        submit=Latencies.of([o.submit_s * 1000 for o in outcomes]),
        queued=Latencies.of([t["queued_ms"] for t in timings if "queued_ms" in t]),
        run=Latencies.of([t["run_ms"] for t in timings if "run_ms" in t]),
        jobs=len(outcomes),
    )
    return gpuq, Latencies.of(durations)
