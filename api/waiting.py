"""Long-poll: block until a job reaches a terminal status, or a deadline passes.

Subscribes to the job's event channel before reading the record, so a change
that lands between the read and the wait is never missed.
"""

from __future__ import annotations

import time

from redis import Redis

from tasks import keys
from tasks.jobs import JobRecord, JobStore

__all__ = ["wait_for_terminal"]


def wait_for_terminal(redis: Redis, store: JobStore, job_id: str, timeout: float) -> JobRecord | None:
    deadline = time.monotonic() + timeout
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(keys.job_events(job_id))
        while True:
            record = store.get(job_id)
            remaining = deadline - time.monotonic()
            if record is None or record.is_terminal or remaining <= 0:
                return record
            # Any message means the record changed: read it again.
            pubsub.get_message(timeout=min(remaining, 1.0))
    finally:
        pubsub.close()
