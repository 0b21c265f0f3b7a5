"""(a) The limit: the analyzer's own ``predict`` in a tight loop in this process.

The analyzer class is the one the worker serves (``resolve_analyzers``),
set up on the same device with the same torch CPU threads (``GPUQ_TORCH_THREADS``)
and host allocator settings (``gpu_worker.host_memory``),
fed the ``Item``s the worker would build, in batches of as many jobs as a
worker may batch: the analyzer's ``max_batch_size``, and no more than the
benchmark's clients, who never have more jobs waiting than that.

A shared machine's speed drifts from one second to the next, so the
benchmark loads the model once (``RawModel``) and measures it in windows
between the end-to-end windows, while the stack is idle: each end-to-end
figure is set against the raw windows around it (``combine``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench.cpu_usage import CpuMeter, over_windows
from bench.workloads import Workload
from gpu_worker.devices import limit_torch_threads
from gpu_worker.host_memory import keep_freed_memory
from gpu_worker.registry import resolve_analyzers
from tasks.settings import Settings

__all__ = ["RawModel", "RawResult", "combine"]


@dataclass(frozen=True)
class RawResult:
    items_per_s: float
    items_per_call: int
    ms_per_call: float
    ms_per_job: float
    calls: int
    #: Cores this process and everything else on the machine used while it measured.
    cpu: dict[str, float] = field(default_factory=dict)
    #: Seconds measured.
    elapsed_s: float = 0.0
    jobs_per_call: int = 1


class RawModel:
    """The workload's analyzer, loaded once in this process on ``device``, ready to be measured."""

    def __init__(self, workload: Workload, device: str, *, clients: int):
        # The same CPU threads and host allocator settings as a worker process gets: like for like.
        limit_torch_threads(Settings.from_env(redis_url="unused").torch_threads)
        keep_freed_memory()
        [analyzer_class] = resolve_analyzers(workload.analyzer)
        self.device = device
        self.analyzer = analyzer_class()
        self.analyzer.setup(device)
        self.jobs_per_call = max(1, min(analyzer_class.max_batch_size, clients))
        self.items_per_call = self.jobs_per_call * workload.items_per_job
        self.batch = [workload.item(n) for n in range(self.jobs_per_call)]
        self._sync = _synchronizer(device)
        _check(self.analyzer.predict(self.batch), len(self.batch))

    def measure(self, seconds: float, warmup: float = 1.0) -> RawResult:
        """Items/s of ``predict`` in a tight loop for ``seconds``, after ``warmup`` seconds of it."""
        _loop(self.analyzer, self.batch, warmup, self._sync)
        meter = CpuMeter()
        meter.start()
        calls, elapsed = _loop(self.analyzer, self.batch, seconds, self._sync)
        cpu = meter.stop()
        return RawResult(items_per_s=calls * self.items_per_call / elapsed, items_per_call=self.items_per_call,
                         ms_per_call=elapsed / calls * 1000, ms_per_job=elapsed / (calls * self.jobs_per_call) * 1000,
                         calls=calls, cpu=cpu, elapsed_s=elapsed, jobs_per_call=self.jobs_per_call)

    def close(self) -> None:
        del self.analyzer, self.batch
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()  # leave the device's memory to the workers that start next


def combine(windows: list[RawResult]) -> RawResult:
    """The windows as one measurement: items over seconds, calls and cores over all of them."""
    elapsed = sum(w.elapsed_s for w in windows)
    calls = sum(w.calls for w in windows)
    items = sum(w.items_per_s * w.elapsed_s for w in windows)
    first = windows[0]
    return RawResult(items_per_s=items / elapsed, items_per_call=first.items_per_call,
                     ms_per_call=elapsed / calls * 1000, ms_per_job=elapsed / (calls * first.jobs_per_call) * 1000,
                     calls=calls, cpu=over_windows([(w.cpu, w.elapsed_s) for w in windows]), elapsed_s=elapsed,
                     jobs_per_call=first.jobs_per_call)


def _loop(analyzer, batch, seconds: float, sync) -> tuple[int, float]:
    """Calls ``predict`` for at least ``seconds`` (and at least 3 times); returns (calls, elapsed)."""
    calls = 0
    sync()
    began = time.perf_counter()
    while True:
        analyzer.predict(batch)
        calls += 1
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
