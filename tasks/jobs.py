"""Job records: the source of truth for a job's status, written at acceptance.

Celery cannot tell an unknown task from a queued one (both read PENDING), so
every job has its own hash in Redis from the moment it is accepted. Status
changes go through one Lua script, so a check and a write never interleave
with another process's (a cancel racing a start, say), and every change is
announced on the job's pub/sub channel for long-polling clients.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from tasks import keys
from tasks.pipelined import Pipelined

__all__ = ["JobRecord", "JobStore", "parse_transition", "QUEUED", "RUNNING", "CANCELING", "SUCCEEDED", "FAILED",
           "CANCELED", "TERMINAL"]

QUEUED, RUNNING, CANCELING = "queued", "running", "canceling"
SUCCEEDED, FAILED, CANCELED = "succeeded", "failed", "canceled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED})

_JSON_FIELDS = ("params", "error", "progress", "timings", "provenance")
_FLOAT_FIELDS = ("created_at", "started_at", "finished_at", "expires_at")

# KEYS: job hash, events channel, running set, webhook outbox, input. ARGV: allowed statuses (JSON
# list), fields to set (JSON object of strings), TTL in seconds (0: leave it),
# job id. Returns {1, previous status} when written, {0, status} when refused,
# {} when absent. The running set follows the status, so the janitor can find
# jobs whose worker died. A job with a webhook gets "id|new status" (empty for
# a progress write) on the outbox in the same step, so no change, whoever
# makes it (worker, API cancel, janitor), is missed by its webhook. A job that
# ends has no more use for its input: it goes in the same step, and only then.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {} end
local allowed = cjson.decode(ARGV[1])
local permitted = false
for _, s in ipairs(allowed) do
  if s == current then permitted = true break end
end
if not permitted then return {0, current} end
local updates = cjson.decode(ARGV[2])
local flat = {}
for k, v in pairs(updates) do
  flat[#flat + 1] = k
  flat[#flat + 1] = v
end
if #flat > 0 then redis.call('HSET', KEYS[1], unpack(flat)) end
local ttl = tonumber(ARGV[3])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
local new = updates['status']
if new == 'running' or new == 'canceling' then
  redis.call('SADD', KEYS[3], ARGV[4])
elseif new then
  redis.call('SREM', KEYS[3], ARGV[4])
end
if new == 'succeeded' or new == 'failed' or new == 'canceled' then redis.call('DEL', KEYS[5]) end
redis.call('PUBLISH', KEYS[2], new or current)
local hook = redis.call('HGET', KEYS[1], 'webhook')
if hook and hook ~= '' then redis.call('LPUSH', KEYS[4], ARGV[4] .. '|' .. (new or '')) end
return {1, current}
"""


@dataclass
class JobRecord:
    id: str
    analyzer: str
    status: str
    created_at: float
    input_media_type: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    attempts: int = 0
    worker: str | None = None
    device: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    #: Which analyzer, version and weights made the result (set when the job succeeds).
    provenance: dict[str, Any] | None = None
    #: URL told of the job's start, progress and end (see tasks/webhooks.py).
    webhook: str | None = None
    #: Who submitted it (api/auth.py); only that tenant sees, lists or cancels it.
    tenant: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> JobRecord:
        data = {k.decode(): v.decode() for k, v in raw.items()}
        known = set(cls.__dataclass_fields__)
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known:
                continue
            if name in _JSON_FIELDS:
                values[name] = json.loads(value) if value else None
            elif name in _FLOAT_FIELDS:
                values[name] = float(value) if value else None
            elif name == "attempts":
                values[name] = int(value)
            else:
                values[name] = value or None
        values.setdefault("params", {})
        values["params"] = values["params"] or {}
        values["input_media_type"] = values.get("input_media_type") or ""
        return cls(**values)


def _transition_call(job_id: str, allowed_from: Iterable[str], fields: dict[str, Any], ttl: int
                     ) -> tuple[list[str], list[Any]]:
    """(keys, args) of the transition script for one job."""
    return ([keys.job(job_id), keys.job_events(job_id), keys.RUNNING, keys.WEBHOOK_OUTBOX, keys.job_input(job_id)],
            [json.dumps(list(allowed_from)), json.dumps(encode_fields(fields)), ttl, job_id])


def parse_transition(reply: list) -> tuple[bool, str | None]:
    """(written, status before) from the transition script's reply; status None: the job is absent."""
    if not reply:
        return False, None
    return bool(reply[0]), reply[1].decode()


def encode_fields(fields: dict[str, Any]) -> dict[str, str]:
    """Hash values are strings: JSON for structures, plain text otherwise."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        if name in _JSON_FIELDS:
            out[name] = json.dumps(value, separators=(",", ":"))
        elif value is None:
            out[name] = ""
        else:
            out[name] = repr(value) if isinstance(value, float) else str(value)
    return out


class JobStore:
    """Reads and changes job records; the Redis connection is passed in."""

    def __init__(self, redis: Redis, *, result_ttl: int, tombstone_ttl: int, input_ttl: int):
        self.redis = redis
        self.result_ttl = result_ttl
        self.tombstone_ttl = tombstone_ttl
        self.input_ttl = input_ttl
        self._transition = redis.register_script(_TRANSITION)

    @property
    def queued_record_ttl(self) -> int:
        """A job never run still disappears in the end, after its input did."""
        return self.input_ttl + self.result_ttl + self.tombstone_ttl

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.redis.hgetall(keys.job(job_id))
        return JobRecord.from_hash(raw) if raw else None

    def get_with(self, job_id: str, key: str) -> tuple[JobRecord | None, bytes | None]:
        """The record and the value at ``key`` (its result, say) in one round trip, the record read first."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.job(job_id))
        pipe.get(key)
        raw, value = pipe.execute()
        return (JobRecord.from_hash(raw) if raw else None), value

    def read_input(self, job_id: str) -> bytes | None:
        return self.redis.get(keys.job_input(job_id))

    def delete(self, job_id: str) -> None:
        self.redis.delete(keys.job(job_id), keys.job_input(job_id))

    def transition(self, job_id: str, allowed_from: Iterable[str], to: str | None = None,
                   ttl: int = 0, **fields: Any) -> tuple[bool, str | None]:
        """Write ``fields`` (and status ``to``) only if the status is in ``allowed_from``.

        Returns (written, status before); status before is ``None`` for an absent job.
        """
        if to is not None:
            fields["status"] = to
        script_keys, args = _transition_call(job_id, allowed_from, fields, ttl)
        return parse_transition(self._transition(keys=script_keys, args=args))

    def finish(self, job_id: str, status: str, allowed_from: Iterable[str], **fields: Any) -> bool:
        """Move a job to a terminal status; its record then lives out the result TTL."""
        return self.finish_many([(job_id, status, allowed_from, fields)])[0][0]

    def finish_many(self, endings: list[tuple[str, str, Iterable[str], dict[str, Any]]]
                    ) -> list[tuple[bool, str | None]]:
        """``finish`` for many jobs in one round trip: (job id, status, allowed from, fields) each.

        Returns (written, status before) per ending, in order, as ``transition`` does.
        """
        batch = Pipelined(self.redis)
        now = time.time()
        indexes = [self.queue_finish(batch, job_id, status, allowed_from, fields, now=now)
                   for job_id, status, allowed_from, fields in endings]
        replies = batch.execute()
        return [parse_transition(replies[i]) for i in indexes]

    def queue_finish(self, batch: Pipelined, job_id: str, status: str, allowed_from: Iterable[str],
                     fields: dict[str, Any], *, now: float) -> int:
        """Queue ``finish`` on ``batch``; read its reply with ``parse_transition``."""
        return batch.script(self._transition, *_transition_call(
            job_id, allowed_from, {**fields, "status": status, "finished_at": now, "expires_at": now + self.result_ttl},
            self.result_ttl + self.tombstone_ttl))

    def add_attempt(self, job_id: str) -> int:
        return int(self.redis.hincrby(keys.job(job_id), "attempts", 1))

    def running_ids(self) -> list[str]:
        return [m.decode() for m in self.redis.smembers(keys.RUNNING)]

    def forget_running(self, job_id: str) -> None:
        self.redis.srem(keys.RUNNING, job_id)
