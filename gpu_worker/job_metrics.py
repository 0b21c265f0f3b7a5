"""The worker's metrics: each ended job's timings, and worker time per job for the ETA.

The runner queues the observations of a batch with the batch's other end
writes (``observe_ended``), so they cost no round trip of their own. Jobs
ended some other way (the attempt bound reached before a run, say) are
recorded afterwards from their records (``record_finished_jobs``).
``tasks.metrics.observe_job`` adds each job once however often it is
reported; a failure to record is logged and never fails a job.
"""

from __future__ import annotations

import logging

from redis import Redis

from tasks import eta, keys, metrics
from tasks.jobs import FAILED, SUCCEEDED, JobRecord, JobStore
from tasks.pipelined import Pipelined

__all__ = ["observe_ended", "record_finished_jobs"]

log = logging.getLogger("gpuq.metrics")

_MEASURED = (SUCCEEDED, FAILED)


def observe_ended(batch: Pipelined, redis: Redis, record: JobRecord, *, status: str, started_at: float,
                  finished_at: float, run_seconds: float, batch_size: int | None, token: int | None = None) -> None:
    """Queue the observation of a job this worker is ending now as ``status`` on ``batch``; with the
    run's ``token``, only if that run still holds the job (its end was accepted)."""
    metrics.observe_job(redis, record.id, analyzer=record.analyzer, status=status,
                        queue_wait=started_at - record.created_at, run=run_seconds,
                        total=finished_at - record.created_at, batch_size=batch_size, batch=batch, fence=token)


def record_run_seconds(batch: Pipelined, redis: Redis, analyzer: str, run_seconds: float, jobs: int) -> None:
    """The ETA's moving average is worker time per job: a batch's run is shared by its jobs."""
    eta.record_run_seconds(redis, analyzer, run_seconds / max(1, jobs), batch=batch)


def record_finished_jobs(store: JobStore, job_ids: list[str], *, since: float) -> int:
    """Observe each of ``job_ids`` whose record ended (succeeded or failed) at or after ``since``."""
    if not job_ids:
        return 0
    try:
        read = store.redis.pipeline(transaction=False)
        for job_id in job_ids:
            read.hgetall(keys.job(job_id))
        records = [JobRecord.from_hash(raw) if raw else None for raw in read.execute()]
        ended = [r for r in records if r is not None and r.status in _MEASURED and r.finished_at is not None
                 and r.started_at is not None and r.finished_at >= since]
        batch = Pipelined(store.redis)
        for record in ended:
            timings = record.timings or {}
            run_ms = timings.get("run_ms")
            size = timings.get("batch_size")
            observe_ended(batch, store.redis, record, status=record.status, started_at=record.started_at,
                          finished_at=record.finished_at,
                          run_seconds=run_ms / 1000 if isinstance(run_ms, (int, float))
                          else record.finished_at - record.started_at,
                          batch_size=size if isinstance(size, int) else None)
        batch.execute()
        return len(ended)
    except Exception as error:  # metrics are a courtesy: losing observations must not fail a job
        log.warning("jobs %s: metrics not recorded: %s: %s", job_ids[:3], type(error).__name__, error)
        return 0
