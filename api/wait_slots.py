"""Bounds on requests that hold a serving thread while they wait: event streams and long-polls.

A gthread worker has a fixed number of threads (gunicorn.conf.py), and a
request that waits (``?wait=30``, an event stream) holds one for its whole
wait. Unbounded, sixteen long-polls from one tenant left no thread for another
tenant's submit. So each kind of wait has a number of slots per API process,
and one tenant may hold only some of them; a request past either bound is
answered ``503`` with ``Retry-After`` at once, never queued behind the others.
Together the slots stay below the process's threads: the rest always serve
submits and reads.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from flask import current_app

from api.errors import ServiceUnavailable
from tasks.settings import Settings

__all__ = ["WaitSlots", "take_wait_slot"]

_RETRY_AFTER_BUSY = 2


class WaitSlots:
    """At most ``limit`` waits in this process, and at most ``per_tenant`` of them for one tenant."""

    def __init__(self, limit: int, per_tenant: int):
        self.limit = limit
        self.per_tenant = min(per_tenant, limit)
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def try_take(self, tenant: str) -> str | None:
        """None when a slot was taken for ``tenant`` (give it back with ``give_back``); else which bound is full."""
        with self._lock:
            if self._held.total() >= self.limit:
                return "process"
            if self._held[tenant] >= self.per_tenant:
                return "tenant"
            self._held[tenant] += 1
            return None

    def give_back(self, tenant: str) -> None:
        with self._lock:
            self._held[tenant] -= 1
            if self._held[tenant] <= 0:
                del self._held[tenant]

    def held(self) -> int:
        with self._lock:
            return self._held.total()


def take_wait_slot(kind: str, settings: Settings, tenant: str, advice: str) -> Callable[[], None]:
    """A slot of ``kind`` (``streams``, ``long_polls``: ``GPUQ_MAX_<KIND>`` and ``GPUQ_TENANT_MAX_<KIND>``)
    for ``tenant`` in this process, or ``503`` with ``Retry-After``. Returns the function that gives it
    back; call it exactly once."""
    limit = getattr(settings, f"max_{kind}")
    # With auth off there is one tenant, the whole API's: a share would only halve its waits.
    per_tenant = limit if settings.auth_off else getattr(settings, f"tenant_max_{kind}")
    key = f"gpuq.wait_slots.{kind}"
    slots: WaitSlots | None = current_app.extensions.get(key)
    if slots is None:  # the first wait of this process; a race here at worst makes one spare
        slots = current_app.extensions.setdefault(key, WaitSlots(limit, per_tenant))
    full = slots.try_take(tenant)
    if full is not None:
        what = kind.replace("_", "-")
        bound = (f"this API process already serves {slots.limit} {what}" if full == "process"
                 else f"this tenant already holds {slots.per_tenant} {what} on this API process")
        busy = ServiceUnavailable(f"{bound}; retry in {_RETRY_AFTER_BUSY} s, or {advice}")
        busy.code, busy.retry_after = f"too_many_{kind}", _RETRY_AFTER_BUSY
        raise busy
    returned = threading.Event()

    def give_back() -> None:
        if not returned.is_set():
            returned.set()
            slots.give_back(tenant)

    return give_back
