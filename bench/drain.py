"""Drain: how many no-op jobs one worker finishes per second with its queue full.

The jobs are queued ahead, with no worker running, through the same atomic
path the API takes (``tasks.submission.submit_job``; in this process, so the
queue fills in a second or two instead of measuring HTTP). Then one worker
starts and empties the queue. The rate comes from the job records (count over
first ``started_at`` to last ``finished_at``); the wall time from the worker
showing up ready is reported beside it. Every job must have succeeded and its
result be in the Celery result backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench.bench_stack import BenchStack
from bench.load import mean_batch_size
from tasks import keys
from tasks.app import create_celery, queue_for
from tasks.jobs import TERMINAL, JobStore
from tasks.settings import Settings
from tasks.submission import submit_job

__all__ = ["DrainResult", "drain"]

ANALYZER = "noop"
_POLL = 0.1


@dataclass
class DrainResult:
    batching: bool
    jobs: int
    succeeded: int
    jobs_per_s: float  # from the records: first started_at to last finished_at
    span_s: float
    wall_from_ready_s: float
    mean_batch_size: float | None
    errors: list[str] = field(default_factory=list)


def drain(stack: BenchStack, jobs: int, *, batching: bool, timeout: float = 600) -> DrainResult:
    celery_app = create_celery()
    settings = Settings(redis_url=stack.redis_url)
    store = JobStore(stack.redis, result_ttl=settings.result_ttl, tombstone_ttl=settings.tombstone_ttl,
                     input_ttl=settings.input_ttl)
    queue = queue_for(ANALYZER)
    if stack.redis.llen(queue):
        raise RuntimeError(f"the {queue} queue is not empty before the drain")
    ids = [submit_job(store, celery_app, analyzer=ANALYZER, input_bytes=b'{"n": %d}' % n,
                      input_media_type="application/json", params={}).job_id for n in range(jobs)]

    workers = stack.start_workers(ANALYZER, batching=batching, wait=False)
    try:
        worker = stack.wait_for_worker(ANALYZER, workers)
        # Its first heartbeat, sent when its model was loaded: it may have started on the queue before we looked.
        ready_at = min(worker["heartbeat_at"], time.time())
        _wait_until_done(stack, store, queue, ids, deadline=time.monotonic() + timeout)
    finally:
        stack.stop(workers)
    return _tally(stack, store, celery_app.backend, ids, ready_at, batching)


def _wait_until_done(stack: BenchStack, store: JobStore, queue: str, ids: list[str], deadline: float) -> None:
    """Polls cheaply (queue and unacked lengths) until the worker holds nothing, then the records."""
    while time.monotonic() < deadline:
        if stack.redis.llen(queue) == 0 and stack.redis.hlen(keys.KOMBU_UNACKED) == 0:
            if all(status in TERMINAL for status in _statuses(store, ids)):
                return
        time.sleep(_POLL)
    raise RuntimeError(f"the drain did not finish in time: {stack.redis.llen(queue)} messages still queued")


def _statuses(store: JobStore, ids: list[str]) -> list[str | None]:
    pipe = store.redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(keys.job(job_id), "status")
    return [s.decode() if s else None for s in pipe.execute()]


def _tally(stack: BenchStack, store: JobStore, backend, ids: list[str], ready_at: float,
           batching: bool) -> DrainResult:
    pipe = stack.redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.get(backend.get_key_for_task(job_id))
    stored = pipe.execute()
    records = [store.get(job_id) for job_id in ids]
    errors = []
    for n, (job_id, record, raw) in enumerate(zip(ids, records, stored, strict=True)):
        meta = backend.decode_result(raw) if raw is not None else {}
        if record is None or record.status != "succeeded":
            errors.append(f"job {job_id} ended {record.status if record else 'without a record'}: "
                          f"{record.error if record else ''}")
        elif meta.get("status") != "SUCCESS" or meta.get("result") != {"input": {"n": n}}:
            errors.append(f"job {job_id} succeeded but its stored result is {str(meta)[:200]}")
    done = [r for r in records if r is not None and r.started_at and r.finished_at]
    if not done:
        raise RuntimeError(f"no drained job has a start and finish time: {errors[:3]}")
    first_start = min(r.started_at for r in done)
    last_finish = max(r.finished_at for r in done)
    span = last_finish - first_start
    return DrainResult(batching=batching, jobs=len(ids), succeeded=len(ids) - len(errors),
                       jobs_per_s=len(done) / span if span > 0 else float("nan"), span_s=span,
                       wall_from_ready_s=last_finish - ready_at,
                       mean_batch_size=mean_batch_size([{"timings": r.timings} for r in done]), errors=errors)
