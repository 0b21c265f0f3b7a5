"""Writing a running job's progress to its record, at a bounded rate."""

from __future__ import annotations

import logging
import time

from tasks.jobs import RUNNING, JobStore

__all__ = ["ProgressWriter"]

log = logging.getLogger("gpuq.progress")


class ProgressWriter:
    """Callable given to analyzers; writes at most every ``interval`` seconds, the first time
    ``interval`` after the job started.

    A job that ends sooner writes no progress at all: nobody polls it in time to
    see it, and its end writes ``fraction: 1.0`` anyway. Batches of small jobs
    would otherwise pay a Redis round trip per job for nothing.
    """

    def __init__(self, store: JobStore, job_id: str, interval: float = 0.25):
        self._store = store
        self._job_id = job_id
        self._interval = interval
        self._last = time.monotonic()

    def __call__(self, done: int, total: int, stage: str = "") -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        fraction = round(done / total, 4) if total else None
        try:
            self._store.transition(self._job_id, [RUNNING], None,
                                   progress={"fraction": fraction, "stage": stage, "done": done, "total": total})
        except Exception as error:  # progress is a courtesy: losing one update must not fail the job
            log.warning("job %s: progress update lost: %s", self._job_id, error)
