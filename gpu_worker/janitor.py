"""The janitor: finds jobs whose worker died and delivers them again.

When a whole worker is killed, the messages it held wait in kombu's unacked
hash until the visibility timeout (hours, by design: it must exceed the
longest job). Rather than wait that long, every worker's main process sweeps:

- jobs marked running whose lock holder has been dead for a full heartbeat
  TTL are put back to ``queued`` and their message pushed again, in one script
  that also revokes the lost run's fencing token (``tasks.lifecycle``): if
  that run was only paused or cut off, nothing it writes later is accepted;
- messages unacknowledged for that long whose job is still ``queued`` were
  taken by a worker that died before starting them (a live worker starts what
  it takes at once): they go back to their queue, as kombu's own restore would;
- unacknowledged messages of finished jobs are dropped (their ack was lost).

The attempt counter in the record bounds how often a job is delivered again,
and the per-job lock makes any late duplicate harmless.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from celery import Celery

from gpu_worker.joblock import JobLock, is_batch_member, parse_owner
from tasks import catalog, keys
from tasks.app import queue_for
from tasks.jobs import CANCELED, CANCELING, QUEUED, RUNNING, JobStore
from tasks.publish import job_message

__all__ = ["Janitor"]

log = logging.getLogger("gpuq.janitor")

#: Messages read from a queue's oldest end to find one whose push is numbered.
_TAIL_PROBE = 20


class Janitor:
    def __init__(self, store: JobStore, lock: JobLock, celery_app: Celery, *, dead_after: float, interval: float):
        self.store = store
        self.lock = lock
        self.celery_app = celery_app
        self.dead_after = dead_after
        self.interval = interval
        self._suspects: dict[tuple[str, str], float] = {}
        self._lost_suspects: dict[tuple[str, str], float] = {}
        #: Every queue this janitor has seen served: a retired analyzer's queue, whose spec has
        #: expired, may still hold jobs and lost deliveries to sweep.
        self._seen_queues: set[str] = set()
        self.lifecycle = store.lifecycle
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gpuq-janitor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:  # a daemon thread: it ends with the worker's main process
            time.sleep(self.interval)
            try:
                self.sweep()
            except Exception as error:  # Redis away for a moment: sweep again next time
                log.warning("janitor sweep failed: %s", error)

    def sweep(self, now: float | None = None) -> list[str]:
        """One pass; returns the ids delivered again (or canceled)."""
        now = time.monotonic() if now is None else now
        acted, seen = [], set()
        for job_id in self.store.running_ids():
            record = self.store.get(job_id)
            if record is None or record.status not in (RUNNING, CANCELING):
                self.store.forget_running(job_id)
                continue
            holder = self.lock.holder(job_id) or ""
            if holder and self.lock.is_alive(holder):
                continue
            # Dead for a whole heartbeat TTL, not just a missed beat (Redis just restarted, say),
            # unless the holder ran on this host, where its pid is proof enough: under an
            # earlier incarnation of this very worker, or as a batch member (a job the child
            # took from the queue itself, which Celery will not retry). The task Celery gave a
            # pool child of this process that died is Celery's to retry or fail first
            # (task_retry_on_worker_lost), so it gets the full wait.
            suspect = (job_id, holder)
            seen.add(suspect)
            first_seen = self._suspects.setdefault(suspect, now)
            if now - first_seen < self.dead_after and not self._certainly_dead(holder):
                continue
            if record.status == CANCELING:
                if self.lifecycle.end_unowned(job_id, CANCELED, [CANCELING]):
                    acted.append(job_id)
                continue
            queue = queue_for(record.analyzer)
            if self.lifecycle.requeue(job_id, holder=holder, queue=queue,
                                      message=job_message(self.celery_app, job_id, record.analyzer, queue)):
                log.warning("job %s: its worker (%s) is gone; delivered again", job_id, holder or "no lock")
                acted.append(job_id)
        self._suspects = {k: v for k, v in self._suspects.items() if k in seen}
        return acted + self.sweep_unacked() + self.sweep_lost_deliveries()

    def _certainly_dead(self, holder: str) -> bool:
        """A dead local holder that no one but the janitor will deliver again."""
        if not holder or not self.lock.is_local(holder):
            return False
        if is_batch_member(holder):
            return True
        main = parse_owner(holder)[2]
        return main is not None and main != os.getpid()

    def sweep_unacked(self) -> list[str]:
        """Give back messages held by dead consumers; drop those of finished jobs."""
        acted = []
        stale = self.store.redis.zrangebyscore(keys.KOMBU_UNACKED_INDEX, 0, time.time() - self.dead_after)
        for tag in stale:
            raw = self.store.redis.hget(keys.KOMBU_UNACKED, tag)
            if raw is None:
                continue
            message, _exchange, routing_key = json.loads(raw)
            job_id = message.get("headers", {}).get("id", "")
            record = self.store.get(job_id)
            if record is not None and record.status == QUEUED:
                push = json.dumps(message)
            elif record is None or record.is_terminal:
                push = ""
            else:
                continue  # running: the lock and the sweep above decide
            if self.lifecycle.restore_unacked(tag, queue=routing_key, message=push, job_id=job_id):
                if push:
                    log.warning("job %s: taken by a worker that died before starting it; back in %s",
                                job_id, routing_key)
                acted.append(job_id)
        return acted

    def sweep_lost_deliveries(self, now: float | None = None) -> list[str]:
        """Push again the messages that a consumer popped and died before recording.

        kombu's Redis transport pops with BRPOP and only then writes the message
        to its unacked hash; a worker killed in between (or a BRPOP that Redis
        answers to a connection already dead) takes the message with it. The
        list is FIFO and every push is numbered, so every queued job numbered
        below the oldest message still in the list has been popped: one that is
        in no consumer's unacked hash for a whole heartbeat TTL was lost.
        """
        now = time.monotonic() if now is None else now
        redis, acted = self.store.redis, []
        in_delivery = {json.loads(raw)[0].get("headers", {}).get("id") for raw in redis.hvals(keys.KOMBU_UNACKED)}
        seen = set()
        for queue in self._queues():
            index = keys.queued_index(queue)
            oldest = self._oldest_number(queue, index)
            for raw_id in redis.zrangebyscore(index, "-inf", f"({oldest}" if oldest is not None else "+inf"):
                job_id = raw_id.decode()
                record = self.store.get(job_id)
                if record is None or record.status != QUEUED:
                    redis.zrem(index, job_id)
                    continue
                if job_id in in_delivery:
                    continue
                suspect = (job_id, "lost")
                seen.add(suspect)
                if now - self._lost_suspects.setdefault(suspect, now) < self.dead_after:
                    continue
                message = job_message(self.celery_app, job_id, record.analyzer, queue)
                if self.lifecycle.repush(job_id, queue=queue, message=message):
                    log.warning("job %s: its message was lost in delivery to a dead worker; pushed again", job_id)
                    acted.append(job_id)
        self._lost_suspects = {k: v for k, v in self._lost_suspects.items() if k in seen}
        return acted

    def _queues(self) -> list[str]:
        self._seen_queues.update(queue_for(name) for name in catalog.analyzer_specs(self.store.redis))
        return sorted(self._seen_queues)

    def _oldest_number(self, queue: str, index: str) -> float | None:
        """The push number of the oldest message still in ``queue`` (None: the list is empty)."""
        tail = self.store.redis.lrange(queue, -_TAIL_PROBE, -1)
        if not tail:
            return None
        for raw in reversed(tail):  # the tail end is the oldest
            job_id = json.loads(raw).get("headers", {}).get("id", "")
            number = self.store.redis.zscore(index, job_id)
            if number is not None:
                return number
        return float("-inf")  # none of the oldest is numbered (retries): judge nothing this time
