"""Running a batch so that one bad job fails only itself.

``predict`` may return an exception in an item's slot (the analyzer named the
bad input itself); when it raises instead, nobody knows which item was at
fault, so the batch is split in halves and each half run again, down to
single jobs: the culprit fails with its own error and every other job gets
its result. Splitting also answers running out of device memory: a half may
fit where the whole did not. A time limit is not split: time is up for all.
"""

from __future__ import annotations

from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from gpu_worker.analyzer import Analyzer, AnalyzerError, Item

__all__ = ["predict_isolating"]


def predict_isolating(analyzer: Analyzer, items: list[Item]) -> list[Any]:
    """One result or exception per item, in order; never raises for an analyzer's failure."""
    try:
        output = analyzer.predict(items)
        if not isinstance(output, (list, tuple)) or len(output) != len(items):
            got = len(output) if isinstance(output, (list, tuple)) else type(output).__name__
            raise AnalyzerError(f"predict returned {got} results for {len(items)} inputs", code="analyzer_error")
        return list(output)
    except SoftTimeLimitExceeded as error:
        return [error] * len(items)
    except Exception as error:  # whose fault is unknown until the batch is split
        if len(items) == 1:
            return [error]
        middle = len(items) // 2
        return predict_isolating(analyzer, items[:middle]) + predict_isolating(analyzer, items[middle:])
