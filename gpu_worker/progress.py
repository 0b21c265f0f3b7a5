"""Writing a running job's progress to its record, at a bounded rate, while the run holds the job."""

from __future__ import annotations

import logging
import time

from tasks.lifecycle import Lifecycle

__all__ = ["LeaseLost", "ProgressWriter"]

log = logging.getLogger("gpuq.progress")


class LeaseLost(Exception):
    """Raised in the analyzer's ``predict`` when the job was given to another run (this one was
    paused or cut off for longer than a heartbeat TTL): its work is wasted, so it stops as soon as
    it reports progress, and nothing it would write is accepted anyway."""


class ProgressWriter:
    """Callable given to analyzers; writes at most every ``interval`` seconds, the first time
    ``interval`` after the job started.

    A job that ends sooner writes no progress at all: nobody polls it in time to
    see it, and its end writes ``fraction: 1.0`` anyway. Batches of small jobs
    would otherwise pay a Redis round trip per job for nothing. Each write is
    fenced by the run's token (``tasks/lua/progress.lua``): a refused one whose
    fence moved on raises ``LeaseLost``.
    """

    def __init__(self, lifecycle: Lifecycle, job_id: str, token: int, interval: float = 0.25):
        self._lifecycle = lifecycle
        self._job_id = job_id
        self._token = token
        self._interval = interval
        self._last = time.monotonic()

    def __call__(self, done: int, total: int, stage: str = "") -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        fraction = round(done / total, 4) if total else None
        try:
            reply = self._lifecycle.progress(self._job_id, self._token,
                                             {"fraction": fraction, "stage": stage, "done": done, "total": total})
        except Exception as error:  # progress is a courtesy: losing one update must not fail the job
            log.warning("job %s: progress update lost: %s", self._job_id, error)
            return
        if reply.lease_lost(self._token):
            log.warning("job %s: this run's lease was revoked (its token %d, the job's now %s); stopping it",
                        self._job_id, self._token, reply.fence)
            raise LeaseLost(f"job {self._job_id} was given to another run (token {reply.fence}, this run's "
                            f"{self._token})")
