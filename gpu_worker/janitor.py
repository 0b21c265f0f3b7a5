"""The janitor: finds jobs whose worker died and delivers them again.

When a whole worker is killed, its job's message waits in Redis's unacked
hash until the visibility timeout (hours, by design: it must exceed the
longest job). Rather than wait that long, every worker's main process sweeps
the jobs marked running: one whose lock holder has been dead for a full
heartbeat TTL is put back to ``queued`` and its message pushed again, in one
script. The attempt counter in its record bounds how often that happens, and
the lock makes the late, restored original harmless.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery

from gpu_worker.joblock import JobLock
from tasks import keys
from tasks.app import queue_for
from tasks.jobs import CANCELED, CANCELING, RUNNING, JobStore
from tasks.publish import job_message

__all__ = ["Janitor"]

log = logging.getLogger("gpuq.janitor")

# KEYS: job, lock, queue, running set, events.
# ARGV: lock holder seen dead ('' for none), message, job id.
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'status', 'queued', 'worker', '', 'device', '', 'progress', '')
redis.call('SREM', KEYS[4], ARGV[3])
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('PUBLISH', KEYS[5], 'queued')
return 1
"""


class Janitor:
    def __init__(self, store: JobStore, lock: JobLock, celery_app: Celery, *, dead_after: float, interval: float):
        self.store = store
        self.lock = lock
        self.celery_app = celery_app
        self.dead_after = dead_after
        self.interval = interval
        self._suspects: dict[tuple[str, str], float] = {}
        self._requeue = store.redis.register_script(_REQUEUE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gpuq-janitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
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
            # Dead for a whole heartbeat TTL, not just a missed beat (Redis just restarted, say).
            suspect = (job_id, holder)
            seen.add(suspect)
            first_seen = self._suspects.setdefault(suspect, now)
            if now - first_seen < self.dead_after:
                continue
            if record.status == CANCELING:
                self.store.finish(job_id, CANCELED, [CANCELING])
                acted.append(job_id)
                continue
            queue = queue_for(record.analyzer)
            if self._requeue(keys=[keys.job(job_id), keys.job_lock(job_id), queue, keys.RUNNING,
                                   keys.job_events(job_id)],
                             args=[holder, job_message(self.celery_app, job_id, queue), job_id]):
                log.warning("job %s: its worker (%s) is gone; delivered again", job_id, holder or "no lock")
                acted.append(job_id)
        self._suspects = {k: v for k, v in self._suspects.items() if k in seen}
        return acted
