"""The per-job lock: never two runs of one job at the same time.

A message can be delivered twice (a connection reset restores a running
message, a dead worker's job is delivered again). Whoever runs a job holds
``gpuq:lock:{id}`` with its worker name and pid; another copy that finds the
lock held by a live process stands down. A lock left by a dead process is
taken over, compare-and-set, so a crash never blocks a job for the lock's TTL.

The lock says which process runs a job, so that the janitor can tell a dead
run from a live one; what a run may write is decided by its fencing token
(``tasks.lifecycle``), which the lock's holder does not stand in for.
"""

from __future__ import annotations

import json
import os

from redis import Redis

from tasks import keys
from tasks.lifecycle import Lifecycle
from tasks.pipelined import Pipelined

__all__ = ["JobLock", "batch_member", "is_batch_member", "owner_of", "parse_owner"]

def owner_of(worker: str, pid: int | None = None, main_pid: int | None = None) -> str:
    """``worker|pid|main pid``: the process running the job and the Celery main process above it."""
    pid = os.getpid() if pid is None else pid
    return f"{worker}|{pid}|{os.getppid() if main_pid is None else main_pid}"


#: Marks the lock of a job a pool child took from the queue itself to fill a batch
#: (``gpu_worker.claims``): Celery knows nothing of it and will not retry it.
_BATCH_MEMBER = "batch"


def batch_member(owner: str) -> str:
    """The lock holder for a job ``owner`` runs as a batch member rather than as Celery's task."""
    return f"{owner}|{_BATCH_MEMBER}"


def is_batch_member(holder: str) -> bool:
    return holder.split("|")[3:4] == [_BATCH_MEMBER]


def parse_owner(holder: str) -> tuple[str, int, int | None]:
    """(worker, pid, main pid or None) of a lock holder."""
    worker, pid_text, *rest = holder.split("|")
    pid = int(pid_text) if pid_text.isdigit() else -1
    main = int(rest[0]) if rest and rest[0].isdigit() else None
    return worker, pid, main


class JobLock:
    def __init__(self, lifecycle: Lifecycle, ttl: int, local_worker: str | None = None):
        self.lifecycle = lifecycle
        self.redis: Redis = lifecycle.redis
        self.ttl = ttl
        self.local_worker = local_worker

    def holder(self, job_id: str) -> str | None:
        value = self.redis.get(keys.job_lock(job_id))
        return value.decode() if value is not None else None

    def acquire(self, job_id: str, owner: str) -> bool:
        if self.redis.set(keys.job_lock(job_id), owner, nx=True, ex=self.ttl):
            return True
        holder = self.holder(job_id)
        if holder is None:
            return bool(self.redis.set(keys.job_lock(job_id), owner, nx=True, ex=self.ttl))
        if holder == owner or not self.is_alive(holder):
            return self.lifecycle.swap_lock(job_id, holder, owner, self.ttl)
        return False

    def release(self, job_id: str, owner: str) -> bool:
        return self.lifecycle.swap_lock(job_id, owner, "", 0)

    def release_many(self, holders: dict[str, str]) -> None:
        """Release ``{job id: holder}`` in one round trip (each only if still held by that holder)."""
        batch = Pipelined(self.redis)
        for job_id, holder in holders.items():
            self.queue_release(batch, job_id, holder)
        batch.execute()

    def queue_release(self, batch: Pipelined, job_id: str, holder: str) -> None:
        self.lifecycle.queue_release_lock(batch, job_id, holder)

    def is_local(self, holder: str) -> bool:
        """Whether ``holder`` was this worker's own process: its pid can then be checked directly."""
        return parse_owner(holder)[0] == self.local_worker

    def is_alive(self, holder: str) -> bool:
        """Whether the process named by ``holder`` still runs.

        On this worker's own host the pid answers; elsewhere the worker's
        heartbeat must name that pid (a restarted worker beats with a new one).
        """
        worker, pid, _main = parse_owner(holder)
        if worker == self.local_worker:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        beat = self.redis.get(keys.worker(worker))
        return beat is not None and json.loads(beat).get("pid") == pid
