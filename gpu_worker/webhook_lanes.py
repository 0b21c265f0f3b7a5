"""Deliveries waiting per destination, handed to a pool of senders so that no destination holds up another.

A destination is a receiver's ``scheme://host:port``. Each has its own lane:
two queues (first attempts, then retries, so a receiver's new events are not
stuck behind its failing ones) and a count of deliveries being sent to it,
which never exceeds ``per_destination``. Senders take from the lanes round
robin, so a slow or dead receiver occupies at most ``per_destination``
senders and the others keep serving everyone else.

A lane holds at most ``backlog`` waiting deliveries (``offer`` says no past
it: the caller keeps the delivery elsewhere), and ``held`` counts all
deliveries waiting or being sent, which the caller bounds with
``wait_for_room``. Everything is in memory and in one process; the caller
keeps the durable copy.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["DestinationLanes"]

T = TypeVar("T")


@dataclass
class _Lane(Generic[T]):
    first: deque[T] = field(default_factory=deque)
    retries: deque[T] = field(default_factory=deque)
    sending: int = 0

    @property
    def waiting(self) -> int:
        return len(self.first) + len(self.retries)


class DestinationLanes(Generic[T]):
    def __init__(self, per_destination: int, backlog: int):
        self.per_destination = per_destination
        self.backlog = backlog
        self._lanes: dict[str, _Lane[T]] = {}
        # Destinations with a delivery waiting and a sending slot free, in the order they are served.
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._held = 0
        self._closed = False
        self._changed = threading.Condition()

    @property
    def held(self) -> int:
        """Deliveries waiting or being sent, all destinations together."""
        return self._held

    def offer(self, destination: str, item: T, *, retry: bool) -> bool:
        """Queue ``item`` for ``destination``; False (and nothing queued) when its lane's backlog is full."""
        with self._changed:
            lane = self._lanes.setdefault(destination, _Lane())
            if lane.waiting >= self.backlog:
                return False
            (lane.retries if retry else lane.first).append(item)
            self._held += 1
            self._mark_ready(destination, lane)
            self._changed.notify_all()
            return True

    def take(self, timeout: float) -> tuple[str, T] | None:
        """The next delivery to send and its destination, or None after ``timeout`` s or once closed."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._ready or self._closed, timeout) or not self._ready:
                return None
            destination = self._ready.popleft()
            self._queued.discard(destination)
            lane = self._lanes[destination]
            item = lane.first.popleft() if lane.first else lane.retries.popleft()
            lane.sending += 1
            self._mark_ready(destination, lane)  # to the back: the other destinations go first
            return destination, item

    def done(self, destination: str) -> None:
        """A delivery ``take`` gave out was handled (sent, or given back): its slot is free again."""
        with self._changed:
            lane = self._lanes[destination]
            lane.sending -= 1
            self._held -= 1
            if lane.waiting or lane.sending:
                self._mark_ready(destination, lane)
            else:
                del self._lanes[destination]
            self._changed.notify_all()

    def wait_for_room(self, most: int, timeout: float) -> bool:
        """True once fewer than ``most`` deliveries are held; False after ``timeout`` s or once closed."""
        with self._changed:
            return self._changed.wait_for(lambda: self._held < most or self._closed, timeout) and not self._closed

    def close(self) -> None:
        """Wake every waiting sender and taker: they return None or False from now on."""
        with self._changed:
            self._closed = True
            self._ready.clear()
            self._queued.clear()
            self._changed.notify_all()

    def _mark_ready(self, destination: str, lane: _Lane[T]) -> None:
        if (not self._closed and lane.waiting and lane.sending < self.per_destination
                and destination not in self._queued):
            self._ready.append(destination)
            self._queued.add(destination)
