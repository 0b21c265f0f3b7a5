"""The worker's one metrics hook: once a run is over, record its job's timings in Redis.

Called by the runtime after each run, whatever its outcome, it reads the job's
record (created, started and finished times, the runner's timings) rather
than asking the runner for them, so the runner needs no change to be measured.
Only a job this run ended is recorded (and ``tasks.metrics.observe_job`` adds
it once even then); a failure to record is logged and never fails the job.
"""

from __future__ import annotations

import logging

from tasks import eta, metrics
from tasks.jobs import FAILED, SUCCEEDED, JobStore

__all__ = ["record_finished_job"]

log = logging.getLogger("gpuq.metrics")

_MEASURED = (SUCCEEDED, FAILED)


def record_finished_job(store: JobStore, job_id: str, *, since: float) -> bool:
    """Observe ``job_id`` if it ended (succeeded or failed) at or after ``since``; True when recorded."""
    try:
        record = store.get(job_id)
        if (record is None or record.status not in _MEASURED or record.finished_at is None
                or record.started_at is None or record.finished_at < since):
            return False
        timings = record.timings or {}
        run_ms = timings.get("run_ms")
        run = run_ms / 1000 if isinstance(run_ms, (int, float)) else record.finished_at - record.started_at
        batch_size = timings.get("batch_size")
        if record.status == SUCCEEDED:  # the ETA's moving average: only runs that went to the end
            eta.record_run_seconds(store.redis, record.analyzer, run)
        return metrics.observe_job(
            store.redis, job_id, analyzer=record.analyzer, status=record.status,
            queue_wait=record.started_at - record.created_at, run=run,
            total=record.finished_at - record.created_at,
            batch_size=batch_size if isinstance(batch_size, int) else None)
    except Exception as error:  # metrics are a courtesy: losing one observation must not fail the job
        log.warning("job %s: metrics not recorded: %s: %s", job_id, type(error).__name__, error)
        return False
