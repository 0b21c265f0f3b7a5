"""Accepting a job: record, claim-checked input and broker message in one atomic step.

The input bytes never ride in the broker message: they are stored under
their own key with a TTL and the message carries only the job id. One Lua
script (``tasks/lua/accept.lua``, the ``queued`` transition) checks the
idempotency key and the queue's depth, then writes the record, the input and
the message together, so a 202 means all three are in Redis and no crash
can leave one without the others. A large input is the exception to
"together": it is written by a plain SET sent just before the script, in the
same write, and the script writes the record and message only if it finds it
there. A crash between the two can then leave an input that
no job names; it expires with the input TTL.

The job id is chosen before the script is sent. When Redis does not answer in
time, the script may still have run, or may still run later (it waits in a
stalled Redis's socket): the caller asks Redis again, on a fresh connection,
for a bounded time, and either finds the job or voids its id so that the
script, should it ever arrive, refuses it (``tasks/lua/void.lua``). Only when
Redis cannot be asked at all is the outcome unknown, and then the caller says
so, with the id (``OutcomeUnknown``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from celery import Celery
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tasks import keys
from tasks import metrics as job_metrics
from tasks.app import queue_for
from tasks.batched_script import BatchedScript
from tasks.ids import random_uuid
from tasks.jobs import QUEUED, JobRecord, JobStore, encode_fields
from tasks.lifecycle import accept_script
from tasks.publish import job_message

__all__ = ["Accepted", "IdempotencyConflict", "OutcomeUnknown", "QueueFull", "TenantQueueFull", "submit_job"]

log = logging.getLogger("gpuq.submission")

#: Seconds spent learning what became of a submit whose reply never came, after its own timeout.
OUTCOME_WAIT = 4.0
#: Pause between two tries at learning it.
_OUTCOME_RETRY = 0.25

class QueueFull(Exception):
    """Raised when the analyzer's queue is at its depth limit; nothing was written."""

    def __init__(self, analyzer: str, depth: int, limit: int):
        super().__init__(f"the {analyzer!r} queue holds {depth} jobs (limit {limit})")
        self.analyzer, self.depth, self.limit = analyzer, depth, limit


class TenantQueueFull(Exception):
    """Raised when the tenant already has its limit of queued jobs; nothing was written."""

    def __init__(self, tenant: str, queued: int, limit: int):
        super().__init__(f"tenant {tenant!r} has {queued} queued jobs (limit {limit})")
        self.tenant, self.queued, self.limit = tenant, queued, limit


class IdempotencyConflict(Exception):
    """Raised when an idempotency key is reused with a different request."""


class OutcomeUnknown(Exception):
    """Raised when a submit's script was sent, no reply came, and Redis could not be asked since:
    the job ``job_id`` may exist (and run) or not. Look it up later; a retry with the same
    idempotency key makes no second job."""

    def __init__(self, job_id: str, cause: BaseException):
        super().__init__(f"Redis did not answer in time; job {job_id} may or may not have been accepted ({cause})")
        self.job_id = job_id


@dataclass(frozen=True)
class Accepted:
    job_id: str
    record: JobRecord | None  # None when an earlier request with the same key made the job
    replayed: bool


#: Inputs above this size are staged (see tasks/lua/accept.lua): below it, the extra command costs more than it saves.
STAGE_INPUT_BYTES = 8 * 1024


@lru_cache(maxsize=8)
def _submit_script(redis: Redis) -> BatchedScript:
    """One per client, shared by every thread that submits through it: the submits an API process's
    threads make at the same moment travel together (tasks/batched_script.py)."""
    return BatchedScript(redis, accept_script().source)


@lru_cache(maxsize=256)
def _accepted_field(analyzer: str) -> str:
    return job_metrics.counter_field(job_metrics.JOBS_ACCEPTED, analyzer)


def _fingerprint(analyzer: str, params: dict[str, Any], media_type: str, data: bytes) -> str:
    digest = hashlib.sha256()
    for part in (analyzer.encode(), json.dumps(params, sort_keys=True).encode(), media_type.encode(), data):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def submit_job(store: JobStore, celery_app: Celery, *, analyzer: str, input_bytes: bytes,
               input_media_type: str, params: dict[str, Any], max_queue_depth: int = 0,
               idempotency_key: str | None = None, webhook: str | None = None, tenant: str = "default",
               tenant_max_queued: int = 0) -> Accepted:
    """Write the job's record, input and message in one atomic step, or refuse it having written nothing."""
    record = JobRecord(
        id=random_uuid(),
        analyzer=analyzer,
        status=QUEUED,
        created_at=time.time(),
        input_media_type=input_media_type,
        params=params,
        webhook=webhook,
        tenant=tenant,
    )
    fingerprint = _fingerprint(analyzer, params, input_media_type, input_bytes) if idempotency_key else ""
    queue = queue_for(analyzer)
    fields = {k: v for k, v in record.__dict__.items() if v is not None}
    idempotency = keys.idempotency(f"{tenant}:{idempotency_key}") if idempotency_key else ""
    if idempotency:
        # Named in the record so that the record's every new TTL is the key's too (fragments/end_job.lua).
        fields["idempotency_key"] = idempotency
    input_key = keys.job_input(record.id)
    staged = len(input_bytes) > STAGE_INPUT_BYTES
    script_keys, script_args = accept_script().order(
        # Idempotency keys are the tenant's own: another tenant's same key is another job.
        keys={"job": keys.job(record.id), "input": input_key, "queue": queue,
              "idempotency": idempotency or keys.idempotency(""),
              "queued_index": keys.queued_index(queue), "sequence": keys.queue_sequence(queue),
              "tenant_jobs": keys.tenant_jobs(tenant), "tenant_queued": keys.tenant_queued(tenant),
              "accepted_counter": keys.metric(job_metrics.JOBS_ACCEPTED.name), "void": keys.void_submit(record.id)},
        args={"fields": json.dumps(encode_fields(fields)), "record_ttl": store.queued_record_ttl,
              "input": b"" if staged else input_bytes, "input_ttl": store.input_ttl,
              "message": job_message(celery_app, record.id, analyzer, queue), "queue_limit": max_queue_depth,
              "idempotency": f"{fingerprint}|{record.id}" if idempotency_key else "",
              "idempotency_ttl": store.queued_record_ttl, "id": record.id, "tenant_limit": tenant_max_queued,
              "created_at": repr(record.created_at), "job_prefix": keys.job(""),
              "oldest_kept": repr(record.created_at - store.queued_record_ttl),
              "counter_field": _accepted_field(analyzer), "staged": "1" if staged else ""})
    try:
        status, detail = _submit_script(store.redis)(
            keys=script_keys, args=script_args,
            staged=[("SET", input_key, input_bytes, "EX", store.input_ttl)] if staged else ())
    except (RedisTimeoutError, RedisConnectionError) as error:
        if not _ran(store, record.id, error):
            raise  # nothing was enqueued, and nothing will be
        return Accepted(job_id=record.id, record=record, replayed=False)
    status, detail = status.decode(), detail.decode()
    if status == "full":
        raise QueueFull(analyzer, int(detail), max_queue_depth)
    if status == "tenant_full":
        raise TenantQueueFull(tenant, int(detail), tenant_max_queued)
    if status == "voided":  # a call sent again after its id was voided: refused, as promised
        raise RedisTimeoutError(f"the submit of job {record.id} was given up; nothing was written")
    if status == "input_lost":
        raise RuntimeError(f"the input of job {record.id} was not in Redis when its submit ran; nothing was written")
    if status == "existing":
        earlier_fingerprint, _, job_id = detail.partition("|")
        if earlier_fingerprint != fingerprint:
            raise IdempotencyConflict(f"Idempotency-Key {idempotency_key!r} was used for a different request")
        return Accepted(job_id=job_id, record=None, replayed=True)
    return Accepted(job_id=record.id, record=record, replayed=False)


def _ran(store: JobStore, job_id: str, error: BaseException) -> bool:
    """Whether the submit of ``job_id``, whose reply never came, wrote its job: ask Redis until it answers
    (``OUTCOME_WAIT`` at most), voiding the id if it did not. Raises ``OutcomeUnknown`` if Redis never answers."""
    deadline = time.monotonic() + OUTCOME_WAIT
    while True:
        try:
            outcome = store.lifecycle.void(job_id)
        except (RedisTimeoutError, RedisConnectionError) as again:
            if time.monotonic() + _OUTCOME_RETRY >= deadline:
                log.warning("job %s: submit outcome unknown: %s, then %s", job_id, error, again)
                raise OutcomeUnknown(job_id, again) from error
            time.sleep(_OUTCOME_RETRY)
            continue
        log.warning("job %s: no reply to its submit (%s); Redis says it %s", job_id, error,
                    "ran" if outcome == "exists" else "never will (voided)")
        return outcome == "exists"
