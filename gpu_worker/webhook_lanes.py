"""Deliveries waiting per destination, handed to a pool of senders so that no destination holds up another.

A destination is a receiver's ``scheme://host:port``. Each has its own lane:
two queues (first attempts, then retries, so a receiver's new events are not
stuck behind its failing ones) and a count of deliveries being sent to it,
which never exceeds ``per_destination``. So a slow or dead receiver occupies
at most ``per_destination`` senders and the others keep serving everyone else.

Destinations are served round robin, but those with a first attempt waiting
before those with only retries: retries pile up at dead receivers, and a
healthy receiver's new event should not queue behind a retry to each of
them. Retries are also capped at ``retry_senders`` being sent at once, so
that however many dead receivers have retries due, senders stay free for
first attempts. (First attempts can starve retries only while they keep
every sender busy, which is when the retries could not go anyway.)

A lane holds at most ``backlog`` waiting deliveries (``offer`` says no past
it: the caller keeps the delivery elsewhere), and ``held`` counts all
deliveries waiting or being sent (``held_retries`` the retries among them),
which the caller bounds with ``wait_for_room``. Everything is in memory and
in one process; the caller keeps the durable copy.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["DestinationLanes", "Handout"]

T = TypeVar("T")


@dataclass
class _Lane(Generic[T]):
    first: deque[T] = field(default_factory=deque)
    retries: deque[T] = field(default_factory=deque)
    #: Deliveries of this lane being sent now.
    sending: list[T] = field(default_factory=list)

    @property
    def waiting(self) -> int:
        return len(self.first) + len(self.retries)


@dataclass(frozen=True, eq=False)
class Handout(Generic[T]):
    """A delivery given to a sender, to be handed back to ``done`` once it was sent (or given up)."""

    destination: str
    item: T
    retry: bool


class DestinationLanes(Generic[T]):
    def __init__(self, per_destination: int, backlog: int, retry_senders: int):
        self.per_destination = per_destination
        self.backlog = backlog
        self.retry_senders = retry_senders
        self._lanes: dict[str, _Lane[T]] = {}
        # Destinations with a delivery waiting and a sending slot free, in the order they are served: those
        # with a first attempt waiting, then those with retries only. A destination is in one at most.
        self._ready_first: deque[str] = deque()
        self._ready_retry: deque[str] = deque()
        self._queued_in: dict[str, deque[str]] = {}
        self._held = 0
        self._held_retries = 0
        self._sending_retries = 0
        self._closed = False
        self._changed = threading.Condition()

    @property
    def held(self) -> int:
        """Deliveries waiting or being sent, all destinations together."""
        return self._held

    @property
    def held_retries(self) -> int:
        """Of ``held``, the retries."""
        return self._held_retries

    def items(self) -> list[T]:
        """Every delivery held, waiting or being sent."""
        with self._changed:
            return [item for lane in self._lanes.values() for queue in (lane.first, lane.retries, lane.sending)
                    for item in queue]

    def offer(self, destination: str, item: T, *, retry: bool) -> bool:
        """Queue ``item`` for ``destination``; False (and nothing queued) when its lane's backlog is full."""
        with self._changed:
            lane = self._lanes.setdefault(destination, _Lane())
            if lane.waiting >= self.backlog:
                return False
            (lane.retries if retry else lane.first).append(item)
            self._held += 1
            self._held_retries += retry
            self._mark_ready(destination, lane)
            self._changed.notify_all()
            return True

    def take(self, timeout: float) -> Handout[T] | None:
        """The next delivery to send, or None after ``timeout`` s or once closed."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._next_queue() is not None or self._closed, timeout):
                return None
            queue = self._next_queue()
            if queue is None:  # closed
                return None
            destination = queue.popleft()
            del self._queued_in[destination]
            lane = self._lanes[destination]
            retry = not lane.first
            item = lane.retries.popleft() if retry else lane.first.popleft()
            lane.sending.append(item)
            self._sending_retries += retry
            self._mark_ready(destination, lane)  # to the back: the other destinations go first
            return Handout(destination, item, retry)

    def done(self, handout: Handout[T]) -> None:
        """A delivery ``take`` gave out was handled (sent, or given back): its slot is free again."""
        with self._changed:
            lane = self._lanes[handout.destination]
            lane.sending.remove(handout.item)
            self._held -= 1
            self._held_retries -= handout.retry
            self._sending_retries -= handout.retry
            if lane.waiting or lane.sending:
                self._mark_ready(handout.destination, lane)
            else:
                del self._lanes[handout.destination]
            self._changed.notify_all()

    def wait_for_room(self, most: int, timeout: float) -> bool:
        """True once fewer than ``most`` deliveries are held; False after ``timeout`` s or once closed."""
        with self._changed:
            return self._changed.wait_for(lambda: self._held < most or self._closed, timeout) and not self._closed

    def close(self) -> None:
        """Wake every waiting sender and taker: they return None or False from now on."""
        with self._changed:
            self._closed = True
            self._ready_first.clear()
            self._ready_retry.clear()
            self._queued_in.clear()
            self._changed.notify_all()

    def _next_queue(self) -> deque[str] | None:
        if self._ready_first:
            return self._ready_first
        if self._ready_retry and self._sending_retries < self.retry_senders:
            return self._ready_retry
        return None

    def _mark_ready(self, destination: str, lane: _Lane[T]) -> None:
        """Queue ``destination`` in the ready queue its lane now belongs in, unless it is queued there."""
        if self._closed or not lane.waiting or len(lane.sending) >= self.per_destination:
            return
        queue = self._ready_first if lane.first else self._ready_retry
        queued_in = self._queued_in.get(destination)
        if queued_in is queue:
            return
        if queued_in is not None:  # queued for its retries, and since given a first attempt
            queued_in.remove(destination)
        queue.append(destination)
        self._queued_in[destination] = queue
