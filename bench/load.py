"""(b) and (c): end-to-end items/s with N concurrent clients, HTTP submit to result.

Each client thread has its own connection and loops: POST a job, long-poll
it until it ends, check its result. After a warm-up, items of the jobs whose
result arrived inside the measuring window are counted. Clients then finish
the job in hand and stop, so the queue is empty when the phase ends.
"""

from __future__ import annotations

import http.client
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

from bench.cpu_usage import CpuMeter, over_windows
from bench.http_client import ApiConnection
from bench.http_jobs import JobFailure, Outcome, run_job
from bench.stats import p50_p99
from bench.workloads import Workload

__all__ = ["LoadResult", "combine_loads", "run_load"]

_ERRORS_PRINTED = 10


@dataclass
class LoadResult:
    items_per_s: float
    jobs: int
    items: int
    window_s: float
    mean_batch_size: float | None
    #: Share of the window the worker spent in ``predict`` (each batch's run_ms counted once):
    #: what is left is the service's own time per job, or time without work.
    predict_share: float | None
    latency_p50_ms: float
    latency_p99_ms: float
    errors: list[str] = field(default_factory=list)
    #: Cores each part of the stack used during the window (1.0 = one core).
    cpu: dict[str, float] = field(default_factory=dict)
    #: Each counted job's latency, POST to result (for ``combine_loads``).
    latencies_ms: list[float] = field(default_factory=list)


def run_load(url: str, workload: Workload, *, clients: int, warmup: float, seconds: float,
             meter: CpuMeter) -> LoadResult:
    stop = threading.Event()
    outcomes: list[Outcome] = []  # list.append is atomic: the threads share it without a lock
    errors: list[str] = []

    def client(index: int) -> None:
        connection = ApiConnection(url, workload)
        job_number = index
        while not stop.is_set():
            try:
                outcomes.append(run_job(connection, workload, job_number))
            except (JobFailure, OSError, http.client.HTTPException, ValueError) as error:
                if stop.is_set():
                    break  # the run was interrupted and the stack is going away: not the service's error
                errors.append(str(error))
                if len(errors) <= _ERRORS_PRINTED:
                    print(f"  ERROR: {error}", file=sys.stderr, flush=True)
                time.sleep(0.1)  # an API that refuses everything must not be hammered
            job_number += clients
        connection.close()

    threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}", daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(warmup)
        meter.start()
        window_began = time.perf_counter()
        time.sleep(seconds)
        window_ended = time.perf_counter()
        cpu = meter.stop()
    finally:
        stop.set()  # interrupted: the daemon threads die with the process, no joining
    for thread in threads:
        thread.join(timeout=90)  # each finishes the job in hand, so nothing is left queued
    counted = [o for o in outcomes if window_began <= o.finished_at < window_ended]
    window = window_ended - window_began
    items = sum(o.items for o in counted)
    latencies = [o.total_s * 1000 for o in counted]
    latency_p50, latency_p99 = p50_p99(latencies)
    return LoadResult(items_per_s=items / window, jobs=len(counted), items=items, window_s=window,
                      mean_batch_size=mean_batch_size([o.job for o in counted]),
                      predict_share=predict_seconds([o.job for o in counted]) / window,
                      latency_p50_ms=latency_p50, latency_p99_ms=latency_p99,
                      errors=errors, cpu=cpu, latencies_ms=latencies)


def combine_loads(windows: list[LoadResult]) -> LoadResult:
    """The windows as one measurement: items over seconds, latencies and cores over all of them."""
    window = sum(w.window_s for w in windows)
    jobs = sum(w.jobs for w in windows)
    items = sum(w.items for w in windows)
    latencies = [ms for w in windows for ms in w.latencies_ms]
    latency_p50, latency_p99 = p50_p99(latencies)
    batched = [w for w in windows if w.mean_batch_size is not None and w.jobs]
    return LoadResult(
        items_per_s=items / window, jobs=jobs, items=items, window_s=window,
        mean_batch_size=(sum(w.mean_batch_size * w.jobs for w in batched) / sum(w.jobs for w in batched)
                         if batched else None),
        predict_share=(sum(w.predict_share * w.window_s for w in windows) / window
                       if all(w.predict_share is not None for w in windows) else None),
        latency_p50_ms=latency_p50, latency_p99_ms=latency_p99,
        errors=[error for w in windows for error in w.errors],
        cpu=over_windows([(w.cpu, w.window_s) for w in windows]),
        latencies_ms=latencies)


def mean_batch_size(jobs: list[dict]) -> float | None:
    sizes = [j["timings"]["batch_size"] for j in jobs if (j.get("timings") or {}).get("batch_size") is not None]
    return statistics.fmean(sizes) if sizes else None


def predict_seconds(jobs: list[dict]) -> float:
    """Seconds spent in ``predict`` for these jobs: a batch's run_ms shared out among its jobs."""
    return sum(t["run_ms"] / t["batch_size"] / 1000 for t in (j.get("timings") or {} for j in jobs)
               if t.get("run_ms") is not None and t.get("batch_size"))
