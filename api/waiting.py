"""Long-poll: block until a job reaches a terminal status, or a deadline passes.

Subscribes to the job's event channel before reading the record, so a change
that lands between the read and the wait is never missed. What is read is the
caller's: the record and, in the same round trip, whatever the answer needs
with it (a result), so the answer goes out one round trip after the change.

Each serving thread keeps one pub/sub connection and reuses it from one wait
to the next (subscribe, wait, unsubscribe): redis-py's ``PubSub.close``
disconnects, and a new connection per long-poll costs several round trips
(connect, handshake), more than the rest of the wait's work. A message left
over from an earlier wait only makes the loop read the record once more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from redis import Redis
from redis.client import PubSub

from tasks import keys
from tasks.jobs import JobRecord

__all__ = ["wait_for_terminal"]

_per_thread = threading.local()

Extra = TypeVar("Extra")


def wait_for_terminal(redis: Redis, read: Callable[[], tuple[JobRecord | None, Extra]], job_id: str,
                      timeout: float) -> tuple[JobRecord | None, Extra]:
    """``read()`` gives the job's record (None if there is none) and what the caller reads with it;
    returned as soon as the record is terminal or gone, or when ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    channel = keys.job_events(job_id)
    pubsub = _thread_pubsub(redis)
    try:
        pubsub.subscribe(channel)
        while True:
            record, extra = read()
            remaining = deadline - time.monotonic()
            if record is None or record.is_terminal or remaining <= 0:
                pubsub.unsubscribe(channel)
                return record, extra
            # Any message means the record changed: read it again.
            pubsub.get_message(timeout=min(remaining, 1.0))
    except BaseException:
        # Broken, or left in an unknown state: the next wait starts afresh.
        _per_thread.pubsub = None
        pubsub.close()
        raise


def _thread_pubsub(redis: Redis) -> PubSub:
    pubsub = getattr(_per_thread, "pubsub", None)
    if pubsub is None or pubsub.connection_pool is not redis.connection_pool:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        _per_thread.pubsub = pubsub
    return pubsub
