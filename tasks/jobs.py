"""Job records: the source of truth for a job's status, written at acceptance.

Celery cannot tell an unknown task from a queued one (both read PENDING), so
every job has its own hash in Redis from the moment it is accepted. This
module reads records; every change of one is a transition of the job state
machine in ``tasks.lifecycle``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from tasks import keys

__all__ = ["JobRecord", "JobStore", "QUEUED", "RUNNING", "CANCELING", "SUCCEEDED", "FAILED",
           "CANCELED", "TERMINAL"]

QUEUED, RUNNING, CANCELING = "queued", "running", "canceling"
SUCCEEDED, FAILED, CANCELED = "succeeded", "failed", "canceled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED})

_JSON_FIELDS = ("params", "error", "progress", "timings", "provenance")
_FLOAT_FIELDS = ("created_at", "started_at", "finished_at", "expires_at")

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
    #: The token of the job's current run (tasks/lifecycle.py): only its writes are accepted.
    fence: int = 0
    #: Runs of the job whose GPU broke under them (``hand_back.lua``); such a job runs alone.
    device_faults: int = 0
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
    #: Fields whose stored JSON could not be read back (too deep, say): the job fails as invalid input.
    unreadable: list[str] | None = None

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
                try:
                    values[name] = json.loads(value) if value else None
                except (ValueError, RecursionError):  # one job's bad data fails that job, not its reader
                    values.setdefault("unreadable", []).append(name)
            elif name in _FLOAT_FIELDS:
                values[name] = float(value) if value else None
            elif name in ("attempts", "fence", "device_faults"):
                values[name] = int(value)
            else:
                values[name] = value or None
        values.setdefault("params", {})
        values["params"] = values["params"] or {}
        values["input_media_type"] = values.get("input_media_type") or ""
        return cls(**values)


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
        self._lifecycle = None

    @property
    def lifecycle(self):
        """The job state machine over the same connection and TTLs (``tasks.lifecycle``)."""
        if self._lifecycle is None:
            from tasks.lifecycle import Lifecycle  # it reads records with this module's types

            self._lifecycle = Lifecycle(self.redis, result_ttl=self.result_ttl, tombstone_ttl=self.tombstone_ttl,
                                        input_ttl=self.input_ttl)
        return self._lifecycle

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

    def running_ids(self) -> list[str]:
        return [m.decode() for m in self.redis.smembers(keys.RUNNING)]

    def forget_running(self, job_id: str) -> None:
        self.redis.srem(keys.RUNNING, job_id)
