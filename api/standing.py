"""A waiting or running job's place in its queue and its ETA, for the job object."""

from __future__ import annotations

import time
from typing import Any

from redis import Redis

from api.timefmt import iso
from tasks import eta
from tasks.app import queue_for
from tasks.jobs import QUEUED, RUNNING, JobRecord

__all__ = ["standing"]


def standing(redis: Redis, record: JobRecord) -> dict[str, Any]:
    """``queue_position``, ``eta_seconds`` and ``eta`` (ISO time); all None once the job has ended.

    A queued job has no ETA while no live worker serves its analyzer: it waits for a worker.
    """
    position = seconds = None
    if record.status == QUEUED:
        position = eta.queue_position(redis, queue_for(record.analyzer), record.id)
        average = eta.average_run_seconds(redis, record.analyzer)
        # No live worker serves the analyzer (free_in is empty): the job waits for one to come,
        # which no average foretells.
        free = eta.free_in(redis, record.analyzer) if average is not None else []
        if free:
            seconds = eta.queued_seconds(average, position or 0, free)
    elif record.status == RUNNING and record.started_at is not None:
        seconds = eta.running_seconds(eta.average_run_seconds(redis, record.analyzer),
                                      elapsed=max(0.0, time.time() - record.started_at),
                                      fraction=eta.fraction_of(record.progress))
    if seconds is not None:
        seconds = round(seconds, 2)
    return {"queue_position": position, "eta_seconds": seconds,
            "eta": iso(time.time() + seconds) if seconds is not None else None}
