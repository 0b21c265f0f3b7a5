"""Accepting a job: record, claim-checked input and broker message in one atomic step.

The input bytes never ride in the broker message: they are stored under
their own key with a TTL and the message carries only the job id. One Lua
script checks the idempotency key and the queue's depth, then writes the
record, the input and the message together, so a 202 means all three are in
Redis and no crash can leave one without the others. A large input is the
exception to "together": it is written by a plain SET sent just before the
script, in the same write, and the script writes the record and message only
if it finds it there. A crash between the two can then leave an input that
no job names; it expires with the input TTL.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from celery import Celery
from redis import Redis

from tasks import keys
from tasks import metrics as job_metrics
from tasks.app import queue_for
from tasks.batched_script import BatchedScript
from tasks.ids import random_uuid
from tasks.jobs import QUEUED, JobRecord, JobStore, encode_fields
from tasks.publish import job_message

__all__ = ["Accepted", "IdempotencyConflict", "QueueFull", "TenantQueueFull", "submit_job"]

# KEYS: job, input, queue, idempotency key (ignored when ARGV[7] is empty),
#       the queue's index of queued jobs, the queue's sequence counter,
#       the tenant's index of jobs, the tenant's set of queued jobs, the accepted-jobs counter's hash.
# ARGV: record fields (JSON object of strings), record TTL, input bytes, input TTL,
#       message, queue depth limit (0: none), idempotency value, idempotency TTL, job id,
#       tenant's queued-jobs limit (0: none), created time, job key prefix, oldest created time kept,
#       the counter's field (its labels), '1' when the input was staged (ARGV[3] then empty).
# A large input is staged: SET by a plain command sent just before this script on the same
# connection (a Lua argument of 100 KB costs Redis 2.5 times what a SET of it does). The script then
# writes nothing unless it is there, and deletes it when it refuses the job, so a refused upload
# leaves nothing behind.
_SUBMIT = """
local staged = ARGV[15] == '1'
local function refuse(reason, detail)
  if staged then redis.call('DEL', KEYS[2]) end
  return {reason, detail}
end
if ARGV[7] ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return refuse('existing', existing) end
end
local limit = tonumber(ARGV[6])
if limit > 0 then
  local depth = redis.call('LLEN', KEYS[3])
  if depth >= limit then return refuse('full', tostring(depth)) end
end
local tenant_limit = tonumber(ARGV[10])
if tenant_limit > 0 and redis.call('SCARD', KEYS[8]) >= tenant_limit then
  -- Jobs leave the queued state (start, cancel, expiry) without telling this
  -- set, so it is swept only here, when it looks full: a cost paid by a tenant
  -- at its limit, never by the others. (Job keys are built from ARGV[12]: gpuq
  -- runs on one Redis, not a cluster.)
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[8])) do
    if redis.call('HGET', ARGV[12] .. id, 'status') ~= 'queued' then redis.call('SREM', KEYS[8], id) end
  end
  local queued = redis.call('SCARD', KEYS[8])
  if queued >= tenant_limit then return refuse('tenant_full', tostring(queued)) end
end
if staged then
  if redis.call('EXISTS', KEYS[2]) == 0 then return {'input_lost', ''} end
else
  redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
end
local fields = cjson.decode(ARGV[1])
local flat = {}
for k, v in pairs(fields) do
  flat[#flat + 1] = k
  flat[#flat + 1] = v
end
redis.call('HSET', KEYS[1], unpack(flat))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[5])
redis.call('ZADD', KEYS[5], redis.call('INCR', KEYS[6]), ARGV[9])
if ARGV[7] ~= '' then redis.call('SET', KEYS[4], ARGV[7], 'EX', ARGV[8]) end
-- The tenant's index outlives no record it names for long: entries older than
-- any record can be are trimmed, and an idle tenant's keys expire.
redis.call('ZADD', KEYS[7], ARGV[11], ARGV[9])
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', '(' .. ARGV[13])
redis.call('EXPIRE', KEYS[7], ARGV[2])
redis.call('SADD', KEYS[8], ARGV[9])
redis.call('EXPIRE', KEYS[8], ARGV[2])
-- Counted here rather than by a request hook after the answer: no round trip of
-- its own, and a job is counted exactly when it is written.
redis.call('HINCRBY', KEYS[9], ARGV[14], 1)
return {'created', ''}
"""


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


@dataclass(frozen=True)
class Accepted:
    job_id: str
    record: JobRecord | None  # None when an earlier request with the same key made the job
    replayed: bool


#: Inputs above this size are staged (see _SUBMIT): below it, the extra command costs more than it saves.
STAGE_INPUT_BYTES = 8 * 1024


@lru_cache(maxsize=8)
def _submit_script(redis: Redis) -> BatchedScript:
    """One per client, shared by every thread that submits through it: the submits an API process's
    threads make at the same moment travel together (tasks/batched_script.py)."""
    return BatchedScript(redis, _SUBMIT)


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
    input_key = keys.job_input(record.id)
    staged = len(input_bytes) > STAGE_INPUT_BYTES
    status, detail = _submit_script(store.redis)(
        # Idempotency keys are the tenant's own: another tenant's same key is another job.
        keys=[keys.job(record.id), input_key, queue,
              keys.idempotency(f"{tenant}:{idempotency_key}" if idempotency_key else ""),
              keys.queued_index(queue), keys.queue_sequence(queue),
              keys.tenant_jobs(tenant), keys.tenant_queued(tenant), keys.metric(job_metrics.JOBS_ACCEPTED.name)],
        args=[json.dumps(encode_fields(fields)), store.queued_record_ttl, b"" if staged else input_bytes,
              store.input_ttl,
              job_message(celery_app, record.id, analyzer, queue), max_queue_depth,
              f"{fingerprint}|{record.id}" if idempotency_key else "", store.queued_record_ttl, record.id,
              tenant_max_queued, repr(record.created_at), keys.job(""),
              repr(record.created_at - store.queued_record_ttl),
              _accepted_field(analyzer), "1" if staged else ""],
        staged=[("SET", input_key, input_bytes, "EX", store.input_ttl)] if staged else (),
    )
    status, detail = status.decode(), detail.decode()
    if status == "full":
        raise QueueFull(analyzer, int(detail), max_queue_depth)
    if status == "tenant_full":
        raise TenantQueueFull(tenant, int(detail), tenant_max_queued)
    if status == "input_lost":
        raise RuntimeError(f"the input of job {record.id} was not in Redis when its submit ran; nothing was written")
    if status == "existing":
        earlier_fingerprint, _, job_id = detail.partition("|")
        if earlier_fingerprint != fingerprint:
            raise IdempotencyConflict(f"Idempotency-Key {idempotency_key!r} was used for a different request")
        return Accepted(job_id=job_id, record=None, replayed=True)
    return Accepted(job_id=record.id, record=record, replayed=False)
