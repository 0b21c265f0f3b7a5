"""The worker's one metrics hook: once a batch is over, record its jobs' timings in Redis.

Called by the runtime after each run, whatever its outcome, it reads the jobs'
records (created, started and finished times, the runner's timings) rather
than asking the runner for them, so the runner needs no change to be measured.
Only a job this run ended is recorded (and ``tasks.metrics.observe_job`` adds
it once even then); a failure to record is logged and never fails a job.
A batch costs two round trips, however many jobs it held.
"""

from __future__ import annotations

import logging

from tasks import eta, keys, metrics
from tasks.jobs import FAILED, SUCCEEDED, JobRecord, JobStore

__all__ = ["record_finished_jobs"]

log = logging.getLogger("gpuq.metrics")

_MEASURED = (SUCCEEDED, FAILED)


def record_finished_jobs(store: JobStore, job_ids: list[str], *, since: float) -> int:
    """Observe each of ``job_ids`` that ended (succeeded or failed) at or after ``since``; returns how many."""
    try:
        read = store.redis.pipeline(transaction=False)
        for job_id in job_ids:
            read.hgetall(keys.job(job_id))
        records = [JobRecord.from_hash(raw) if raw else None for raw in read.execute()]
        ended = [r for r in records if r is not None and r.status in _MEASURED and r.finished_at is not None
                 and r.started_at is not None and r.finished_at >= since]
        write = store.redis.pipeline(transaction=False)
        per_job_seconds: dict[str, float] = {}
        for record in ended:
            timings = record.timings or {}
            run_ms = timings.get("run_ms")
            run = run_ms / 1000 if isinstance(run_ms, (int, float)) else record.finished_at - record.started_at
            batch_size = timings.get("batch_size")
            if record.status == SUCCEEDED:
                # The ETA's moving average is worker time per job: a batch's run is shared by its jobs.
                per_job_seconds[record.analyzer] = run / (batch_size if isinstance(batch_size, int) and
                                                          batch_size > 0 else 1)
            metrics.observe_job(store.redis, record.id, analyzer=record.analyzer, status=record.status,
                                queue_wait=record.started_at - record.created_at, run=run,
                                total=record.finished_at - record.created_at,
                                batch_size=batch_size if isinstance(batch_size, int) else None, client=write)
        if ended:
            write.execute()
        for analyzer, seconds in per_job_seconds.items():  # once per batch, not once per job
            eta.record_run_seconds(store.redis, analyzer, seconds)
        return len(ended)
    except Exception as error:  # metrics are a courtesy: losing observations must not fail a job
        log.warning("jobs %s: metrics not recorded: %s: %s", job_ids[:3], type(error).__name__, error)
        return 0
