"""``noop``: an analyzer that does no work, to measure what gpuq itself costs.

A job of ``noop`` spends all its time in the service: HTTP, Redis, Celery
and the worker's bookkeeping. ``bench/throughput.py`` uses it for per-job
overhead and for how many jobs one worker drains per second.
"""

from __future__ import annotations

from typing import Any

from gpu_worker.analyzer import Analyzer, Item

__all__ = ["NoopAnalyzer"]


class NoopAnalyzer(Analyzer):
    name = "noop"
    description = "Returns its JSON input unchanged, doing no work: measures the service's own cost per job."
    version = "1"
    input_schema = {}
    max_input_bytes = 64 * 1024
    # Large batches, no waiting: it exists to show the service's ceiling.
    max_batch_size = 256
    max_wait_ms = 0

    def predict(self, batch: list[Item]) -> list[Any]:
        return [{"input": item.data} for item in batch]
