"""Claiming jobs for a run: the one Celery delivered (the lead) and those gathered behind it.

A claim is one Lua script of the job state machine (``tasks.lifecycle``): the
job becomes ``running``, counts an attempt, gets a lock naming this process and
a new fencing token, and its record (the token in it) and input come back, in
one round trip. The lead's lock may be held: a live holder means this message is
a duplicate, a dead one is taken over (``JobLock``), then the claim is tried
again.

To batch across jobs the pool child takes more of the same analyzer's waiting
messages straight from the queue's Redis list, up to the analyzer's
``max_batch_size``, waiting at most its ``max_wait_ms`` for the batch to fill.
Taking a message and claiming its job are the same step, so there is no moment
when a crash could lose it: the record says who ran it, and when that process
is dead the janitor delivers the job again (at once on this host, see
``gpu_worker.janitor``), within the attempt bound. A member's "ack" is its
finish: the terminal record and the released lock.

Not every message is claimed:

- one whose job is no longer queued (canceled, finished, expired) is dropped:
  it has nothing left to do;
- one that is not a JSON ``gpuq.run`` message is dropped and reported, as
  Celery refuses it;
- one whose job already had an attempt (its worker died), or that carries an
  ETA (a Celery retry), or whose lock is held, goes back to the consuming end
  of the list and gathering stops: Celery delivers it next, as a lead, and a
  job that already crashed a process runs alone, so a poison input cannot take
  innocent jobs down with it twice.
"""

from __future__ import annotations

import logging
import time

from tasks.app import RUN_TASK, queue_for
from tasks.jobs import JobStore
from tasks.lifecycle import GatherReply, LeadClaim

__all__ = ["Claimer", "GatherReply", "LeadClaim"]

log = logging.getLogger("gpuq.batching")

#: Pause between two looks at an empty queue while a batch waits to fill.
_POLL_SECONDS = 0.001


class Claimer:
    def __init__(self, store: JobStore, *, lock_ttl: int):
        self.lifecycle = store.lifecycle
        self.lock_ttl = lock_ttl

    def claim_lead(self, job_id: str, *, owner: str, max_attempts: int, running_fields: dict) -> LeadClaim:
        return self.lifecycle.claim_lead(job_id, owner=owner, lock_ttl=self.lock_ttl, max_attempts=max_attempts,
                                         queue_prefix=queue_for(""), running_fields=running_fields)

    def gather(self, queue: str, most: int, *, owner: str, running_fields: dict, deadline: float) -> GatherReply:
        """Claim up to ``most`` jobs waiting in ``queue``, polling until ``deadline`` (``time.monotonic``):
        what every look claimed and dropped, together (refused messages are logged, not kept)."""
        gathered = GatherReply()
        while len(gathered.claimed) < most:
            reply = self.lifecycle.gather(queue, most - len(gathered.claimed), owner=owner, lock_ttl=self.lock_ttl,
                                          task=RUN_TASK, running_fields=running_fields)
            gathered.claimed += reply.claimed
            gathered.records += reply.records
            gathered.inputs += reply.inputs
            gathered.dropped += reply.dropped
            for raw in reply.refused:
                log.error("refused a message in %s that is not a JSON %s message (dropped): %.200r",
                          queue, RUN_TASK, raw)
            if reply.stopped or len(gathered.claimed) >= most:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not reply.claimed and not reply.dropped and not reply.refused:
                time.sleep(min(_POLL_SECONDS, remaining))
        return gathered
