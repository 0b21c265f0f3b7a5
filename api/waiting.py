"""Long-poll: block until a job reaches a terminal status, or a deadline passes.

Subscribes to the job's event channel before reading the record, so a change
that lands between the read and the wait is never missed. What is read is the
caller's: the record and, in the same round trip, whatever the answer needs
with it (a result), so the answer goes out one round trip after the change.
Every change publishes the status it left the job in; a message naming a
status on the way (``running`` when a worker claims the job, for one) is no
reason to read again, so a long-poll reads the record about twice, not once a
change.

Each serving thread keeps one pub/sub connection and reuses it from one wait
to the next (subscribe, wait, unsubscribe): redis-py's ``PubSub.close``
disconnects, and a new connection per long-poll costs several round trips
(connect, handshake), more than the rest of the wait's work. A message left
over from an earlier wait, on another channel, is let pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from redis import Redis
from redis.client import PubSub

from tasks import keys
from tasks.jobs import CANCELING, QUEUED, RUNNING, JobRecord

__all__ = ["wait_for_terminal"]

_per_thread = threading.local()

#: Statuses a job passes through: a message naming one of them is no reason to read the record.
_ON_THE_WAY = frozenset({QUEUED, RUNNING, CANCELING})
#: The longest a wait goes without reading the record.
_REREAD_SECONDS = 1.0

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
        record, extra = read()
        last_read = time.monotonic()
        while True:
            now = time.monotonic()
            if record is None or record.is_terminal or now >= deadline:
                pubsub.unsubscribe(channel)
                return record, extra
            message = pubsub.get_message(timeout=max(0.0, min(deadline, last_read + _REREAD_SECONDS) - now))
            now = time.monotonic()
            # Read again when the job may have ended, and at least every _REREAD_SECONDS in
            # case a message was lost (a reconnect), and at the deadline to answer what is.
            if _may_have_ended(message, channel) or now - last_read >= _REREAD_SECONDS or now >= deadline:
                record, extra = read()
                last_read = time.monotonic()
    except BaseException:
        # Broken, or left in an unknown state: the next wait starts afresh.
        _per_thread.pubsub = None
        pubsub.close()
        raise


def _may_have_ended(message: dict | None, channel: str) -> bool:
    """Whether ``message`` may tell of the job's end: a message on its channel that names no status
    on the way (each change publishes the status it left the job in: a claim ``running``, a
    progress update the status it found)."""
    if message is None or message.get("type") != "message" or _text(message.get("channel")) != channel:
        return False  # a subscription's confirmation, or one left over from an earlier wait
    return _text(message.get("data")) not in _ON_THE_WAY


def _text(value: object) -> str | None:
    return value.decode() if isinstance(value, bytes) else value if isinstance(value, str) else None


def _thread_pubsub(redis: Redis) -> PubSub:
    pubsub = getattr(_per_thread, "pubsub", None)
    if pubsub is None or pubsub.connection_pool is not redis.connection_pool:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        _per_thread.pubsub = pubsub
    return pubsub
