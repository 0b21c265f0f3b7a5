"""(a) The limit: the analyzer's own ``predict`` in a tight loop in this process.

The analyzer class is the one the worker serves (``resolve_analyzers``),
set up on the same device with the same torch CPU threads (``GPUQ_TORCH_THREADS``),
fed the ``Item``s the worker would build, in batches of as many jobs as a
worker may batch: the analyzer's ``max_batch_size``, and no more than the
benchmark's clients, who never have more jobs waiting than that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench.cpu_usage import CpuMeter
from bench.workloads import Workload
from gpu_worker.devices import limit_torch_threads
from gpu_worker.registry import resolve_analyzers
from tasks.settings import Settings

__all__ = ["RawResult", "measure_raw"]


@dataclass(frozen=True)
class RawResult:
    items_per_s: float
    items_per_call: int
    ms_per_call: float
    ms_per_job: float
    calls: int
    #: Cores this process and everything else on the machine used while it measured.
    cpu: dict[str, float] = field(default_factory=dict)


def measure_raw(workload: Workload, device: str, seconds: float, warmup: float = 1.0, *,
                clients: int) -> RawResult:
    # The same CPU threads as a worker process gets: like for like.
    limit_torch_threads(Settings.from_env(redis_url="unused").torch_threads)
    [analyzer_class] = resolve_analyzers(workload.analyzer)
    analyzer = analyzer_class()
    analyzer.setup(device)
    jobs_per_call = max(1, min(analyzer_class.max_batch_size, clients))
    batch = [workload.item(n) for n in range(jobs_per_call)]
    sync = _synchronizer(device)
    try:
        _loop(analyzer, batch, warmup, sync)
        meter = CpuMeter()
        meter.start()
        calls, elapsed = _loop(analyzer, batch, seconds, sync)
        cpu = meter.stop()
    finally:
        del analyzer
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()  # leave the device's memory to the workers that start next
    items_per_call = jobs_per_call * workload.items_per_job
    return RawResult(items_per_s=calls * items_per_call / elapsed, items_per_call=items_per_call,
                     ms_per_call=elapsed / calls * 1000, ms_per_job=elapsed / (calls * jobs_per_call) * 1000,
                     calls=calls, cpu=cpu)


def _loop(analyzer, batch, seconds: float, sync) -> tuple[int, float]:
    """Calls ``predict`` for at least ``seconds`` (and at least 3 times); returns (calls, elapsed)."""
    calls = 0
    sync()
    began = time.perf_counter()
    while True:
        results = analyzer.predict(batch)
        calls += 1
        if calls == 1:
            _check(results, len(batch))
        sync()
        elapsed = time.perf_counter() - began
        if elapsed >= seconds and calls >= 3:
            return calls, elapsed


def _check(results: list, expected: int) -> None:
    failed = [r for r in results if isinstance(r, BaseException)]
    if len(results) != expected or failed:
        raise RuntimeError(f"predict failed in the raw loop: {failed[:1] or f'{len(results)} results'}")


def _synchronizer(device: str):
    """A call that waits for the device: ``predict`` returns host values, but be explicit."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None
