"""Every transition of a job, in one place: the job state machine.

```
            accept.lua                 claim_lead.lua / gather.lua (token n+1)
  (none) ───────────────▶ queued ──────────────────────────────────────────▶ running
                           │  ▲                                                │ │ │
              cancel.lua   │  │ requeue.lua (holder dead) or hand_back.lua     │ │ │ progress.lua (token n)
                           │  └────────────────────────────────────────────────┘ │ │
                           ▼                                                      │ │ cancel.lua
                       canceled ◀── finish.lua (token n) / end_unowned.lua ── canceling
                                                                                  │
         succeeded / failed ◀── finish.lua (token n), claim_lead.lua (attempts     │
                                exhausted), end_unowned.lua (worker lost, timeout) ◀┘
         (terminal; the record, then its tombstone, expire: 410, then 404)
```

``requeue.lua`` gives back a job whose lock holder was found dead (token n+1);
``hand_back.lua`` one whose GPU broke under its run, its attempt not counted, or
fails it at its second such fault (``gpu_worker.device_faults``).

Each arrow is one Lua script in ``tasks/lua/`` (``tasks.lua_scripts`` loads
them by name), atomic in Redis, written with the shared fragments (push to
queue and its index, mark running, end a job, notify its events channel and
webhook outbox) once.

Fencing. Every claim of a job (the lead Celery delivered, a batch member, a
run after a requeue) increments the job's ``fence`` and hands the new value
to the run as its token; a requeue, and any end by a process not running the
job, increments it too. Every write a run makes for its job (progress, its
end with the result in the result backend, the webhook event that goes with
them, its metrics) is accepted only while the record's fence equals the
run's token and the job is still running: a paused or cut-off run that wakes
after its job was given to another is refused, atomically, and its result
discarded. An ended job (succeeded, failed, canceled) never changes again:
no script writes over a terminal status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from tasks import keys
from tasks.jobs import CANCELED, FAILED, JobRecord, encode_fields
from tasks.lua_scripts import BoundScript, load
from tasks.pipelined import Pipelined

__all__ = ["FencedReply", "GatherReply", "LeadClaim", "Lifecycle", "accept_script"]


def accept_script():
    """``accept.lua``: the submit path calls it through its own batched sender (``tasks.submission``)."""
    return load("accept")


@dataclass
class LeadClaim:
    """What claiming the delivered job found: ``outcome`` is ``claimed``, ``locked``,
    ``exhausted`` (the job was failed), ``absent`` or the job's status when it is not runnable."""

    outcome: str
    record: JobRecord | None = None
    input: bytes | None = None
    holder: str | None = None
    attempts: int = 0
    #: Messages waiting in the claimed job's analyzer's queue just after the claim.
    waiting: int = 0


@dataclass
class GatherReply:
    claimed: list[str] = field(default_factory=list)
    records: list[JobRecord] = field(default_factory=list)
    inputs: list[bytes | None] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    refused: list[bytes] = field(default_factory=list)
    stopped: bool = False


@dataclass(frozen=True)
class FencedReply:
    """What a run's fenced write (``progress.lua``, ``finish.lua``) found: written or not, the status, the fence."""

    written: bool
    status: str | None
    fence: str

    @classmethod
    def parse(cls, reply: list) -> FencedReply:
        written, status, fence = reply
        return cls(bool(written), status.decode() or None, fence.decode())

    def lease_lost(self, token: int) -> bool:
        """Refused because the job's fence moved past ``token``: another run holds the job now."""
        return not self.written and self.fence != str(token)


class Lifecycle:
    """The transitions of jobs in one Redis; the connection and the record TTLs are passed in."""

    def __init__(self, redis: Redis, *, result_ttl: int, tombstone_ttl: int, input_ttl: int):
        self.redis = redis
        self.result_ttl = result_ttl
        self.end_ttl = result_ttl + tombstone_ttl
        #: A voided submit id stays refused as long as its job could have lived.
        self.void_ttl = input_ttl + result_ttl + tombstone_ttl
        self._scripts: dict[str, BoundScript] = {}

    def _script(self, name: str) -> BoundScript:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = load(name).bind(self.redis)
        return script

    def end_fields(self, now: float | None = None, **fields: Any) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {**fields, "finished_at": now, "expires_at": now + self.result_ttl}

    def _end_keys(self, job_id: str) -> dict[str, str]:
        return {"job": keys.job(job_id), "events": keys.job_events(job_id), "running": keys.RUNNING,
                "outbox": keys.WEBHOOK_OUTBOX, "input": keys.job_input(job_id)}

    # --- queued ---------------------------------------------------------------------------

    def void(self, job_id: str) -> str:
        """After a submit whose reply never came: ``'exists'`` (it ran) or ``'voided'`` (it never will)."""
        reply = self._script("void")(keys={"job": keys.job(job_id), "input": keys.job_input(job_id),
                                           "void": keys.void_submit(job_id)},
                                     args={"ttl": self.void_ttl})
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    # --- running --------------------------------------------------------------------------

    def claim_lead(self, job_id: str, *, owner: str, lock_ttl: int, max_attempts: int, queue_prefix: str,
                   running_fields: dict[str, Any]) -> LeadClaim:
        exhausted = self.end_fields(error={"code": "worker_lost", "message": (
            f"the worker running this job was lost {max_attempts} times; giving up")})
        reply = self._script("claim_lead")(
            keys={"job": keys.job(job_id), "running": keys.RUNNING, "input": keys.job_input(job_id),
                  "outbox": keys.WEBHOOK_OUTBOX, "lock": keys.job_lock(job_id), "events": keys.job_events(job_id)},
            args={"id": job_id, "owner": owner, "lock_ttl": lock_ttl, "max_attempts": max_attempts,
                  "queue_prefix": queue_prefix, "running_fields": _fields(running_fields),
                  "exhausted_fields": _fields(exhausted), "end_ttl": self.end_ttl})
        outcome = reply[0].decode()
        if outcome == "claimed":
            return LeadClaim(outcome, record=_record(reply[1]), input=reply[2] or None, waiting=int(reply[3]))
        if outcome == "locked":
            return LeadClaim(outcome, holder=reply[1].decode())
        if outcome == "exhausted":
            return LeadClaim(outcome, attempts=int(reply[1]))
        return LeadClaim(outcome)

    def gather(self, queue: str, most: int, *, owner: str, lock_ttl: int, task: str,
               running_fields: dict[str, Any]) -> GatherReply:
        """One look at ``queue``: up to ``most`` waiting jobs claimed for ``owner``."""
        claimed, dropped, refused, stopped, records, inputs = self._script("gather")(
            keys={"queue": queue, "running": keys.RUNNING, "queued_index": keys.queued_index(queue),
                  "outbox": keys.WEBHOOK_OUTBOX},
            args={"most": most, "owner": owner, "lock_ttl": lock_ttl, "task": task, "job_prefix": keys.job(""),
                  "lock_prefix": keys.job_lock(""), "events_prefix": keys.job_events(""),
                  "input_prefix": keys.job_input(""), "running_fields": _fields(running_fields)})
        return GatherReply(claimed=[i.decode() for i in claimed], records=[_record(flat) for flat in records],
                           inputs=[data or None for data in inputs], dropped=[i.decode() for i in dropped],
                           refused=list(refused), stopped=bool(stopped))

    # --- progress -------------------------------------------------------------------------

    def progress(self, job_id: str, token: int, progress: dict[str, Any]) -> FencedReply:
        return FencedReply.parse(self._script("progress")(
            keys={"job": keys.job(job_id), "events": keys.job_events(job_id), "outbox": keys.WEBHOOK_OUTBOX},
            args={"id": job_id, "token": token, "progress": json.dumps(progress, separators=(",", ":"))}))

    # --- succeeded, failed (or canceled) by the run ---------------------------------------

    def queue_finish(self, batch: Pipelined, job_id: str, token: int, status: str, fields: dict[str, Any], *,
                     now: float, result: bytes | str = b"", result_key: str = "", result_ttl: int = 0) -> int:
        """Queue a run's end on ``batch``; read its reply with ``parse_end``."""
        return self._script("finish").queue(
            batch, keys={**self._end_keys(job_id), "result": result_key or keys.job(job_id)},
            args={"id": job_id, "token": token, "status": status,
                  "fields": _fields(self.end_fields(now, **fields)), "ttl": self.end_ttl,
                  "result": result, "result_ttl": result_ttl})

    @staticmethod
    def parse_end(reply: list) -> FencedReply:
        return FencedReply.parse(reply)

    # --- queued again: the run's GPU broke ------------------------------------------------

    def queue_hand_back(self, batch: Pipelined, job_id: str, token: int, holder: str, *, queue: str,
                        message: str, error: dict[str, Any], now: float, most_faults: int, blame: bool) -> int:
        """Queue giving a job back after a device fault (``hand_back.lua``); read the reply with ``parse_end``.

        The job goes back to ``queue`` as ``message``, its attempt not counted; with ``blame``
        the fault is counted on it, and at its ``most_faults``-th it fails with ``error`` instead.
        """
        return self._script("hand_back").queue(
            batch, keys={**self._end_keys(job_id), "lock": keys.job_lock(job_id), "queue": queue,
                         "queued_index": keys.queued_index(queue), "sequence": keys.queue_sequence(queue)},
            args={"id": job_id, "token": token, "holder": holder, "message": message,
                  "fields": _fields(self.end_fields(now, error=error)), "ttl": self.end_ttl,
                  "most_faults": most_faults, "blame": "1" if blame else "0"})

    # --- canceled -------------------------------------------------------------------------

    def cancel(self, job_id: str) -> tuple[str, str | None]:
        """A client's cancel: (``canceled`` | ``canceling`` | ``absent`` | ``unchanged``, status found)."""
        reply = self._script("cancel")(keys=self._end_keys(job_id),
                                       args={"id": job_id, "end_fields": _fields(self.end_fields(error=None)),
                                             "ttl": self.end_ttl})
        outcome = reply[0].decode()
        return outcome, reply[1].decode() if len(reply) > 1 else None

    # --- failed or canceled by a process not running the job ------------------------------

    def end_unowned(self, job_id: str, status: str, allowed_from: Iterable[str], *, holder: str = "",
                    **fields: Any) -> bool:
        """End ``job_id`` as ``status`` if its status is in ``allowed_from`` (and ``holder`` still holds it)."""
        assert status in (FAILED, CANCELED), status
        written, _ = self._script("end_unowned")(
            keys={**self._end_keys(job_id), "lock": keys.job_lock(job_id)},
            args={"id": job_id, "status": status, "fields": _fields(self.end_fields(**fields)), "ttl": self.end_ttl,
                  "allowed": json.dumps(list(allowed_from)), "holder": holder})
        return bool(written)

    # --- requeued -------------------------------------------------------------------------

    def requeue(self, job_id: str, *, holder: str, queue: str, message: str) -> bool:
        """A running job whose lock ``holder`` (``''``: none) was found dead goes back to ``queue``."""
        return bool(self._script("requeue")(
            keys={"job": keys.job(job_id), "lock": keys.job_lock(job_id), "queue": queue, "running": keys.RUNNING,
                  "events": keys.job_events(job_id), "queued_index": keys.queued_index(queue),
                  "sequence": keys.queue_sequence(queue)},
            args={"id": job_id, "holder": holder, "message": message}))

    def restore_unacked(self, tag: str | bytes, *, queue: str, message: str, job_id: str) -> bool:
        """An unacknowledged message back to ``queue`` (``message``), or dropped (``''``)."""
        return bool(self._script("restore_unacked")(
            keys={"unacked": keys.KOMBU_UNACKED, "unacked_index": keys.KOMBU_UNACKED_INDEX, "queue": queue,
                  "queued_index": keys.queued_index(queue), "sequence": keys.queue_sequence(queue)},
            args={"tag": tag, "message": message, "id": job_id}))

    def repush(self, job_id: str, *, queue: str, message: str) -> bool:
        """A queued job's message lost in delivery, pushed again."""
        return bool(self._script("repush")(
            keys={"job": keys.job(job_id), "queue": queue, "queued_index": keys.queued_index(queue),
                  "sequence": keys.queue_sequence(queue)},
            args={"message": message, "id": job_id}))

    # --- the lock that names a run's process ----------------------------------------------

    def swap_lock(self, job_id: str, expected: str, holder: str, ttl: int) -> bool:
        """The lock passes from ``expected`` to ``holder`` (``''``: released)."""
        return bool(self._script("release_lock")(keys={"lock": keys.job_lock(job_id)},
                                                 args={"expected": expected, "holder": holder, "ttl": ttl}))

    def queue_release_lock(self, batch: Pipelined, job_id: str, holder: str) -> int:
        return self._script("release_lock").queue(batch, keys={"lock": keys.job_lock(job_id)},
                                                  args={"expected": holder, "holder": "", "ttl": 0})


def _fields(fields: dict[str, Any]) -> str:
    return json.dumps(encode_fields(fields), separators=(",", ":"))


def _record(flat: list[bytes]) -> JobRecord:
    """A record from HGETALL's reply inside a script: names and values in turn."""
    return JobRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
