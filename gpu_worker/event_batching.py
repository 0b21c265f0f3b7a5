"""The worker's task events (for Flower) sent a few milliseconds late, several in one publish.

Celery's prefork worker already buffers task events (task-received, -started,
-succeeded ...) and publishes a buffer as one ``task.multi`` message, but it
flushes on the event loop's very next turn: in practice one publish per event,
three per job. On the worker's critical path that turn comes before the job is
written to the pool child, so each job waited for a Redis publish (about
0.25 ms of CPU here: kombu makes a new client per publish) before it started,
and on a machine of few cores the publishes took CPU from everything else a
job needs. Measured with ``bench/throughput.py``'s one-at-a-time no-op jobs on
this 2-core machine: POST to result read 7.4-7.6 ms with Celery's flush,
6.3-6.6 ms with this one, 6.2 ms with no events at all.

Here a buffered event schedules one flush ``GPUQ_EVENT_FLUSH_INTERVAL`` seconds
later (default 0.02, the app's ``gpuq_event_flush_interval``); events sent
meanwhile ride along. Flower sees them that much later, which it cannot tell
from network delay; a buffer of ``buffer_limit`` events (24) is still
published at once, and the worker flushes what it holds when it shuts down.

Used through ``worker_consumer`` (gpu_worker/worker.py).
"""

from __future__ import annotations

import threading
import time

from celery.worker.consumer import Consumer

__all__ = ["EventBatchingConsumer"]

#: A flush this late never ran (its timer went with a reset event loop): schedule another.
_OVERDUE_S = 1.0


class EventBatchingConsumer(Consumer):
    _flush_due: float | None = None

    def on_send_event_buffered(self) -> None:
        hub = self.hub
        if hub is None or threading.get_ident() != getattr(hub, "_loop_thread", None):
            # Not on the event loop's own thread (its timer is not thread-safe): Celery's way.
            super().on_send_event_buffered()
            return
        now = time.monotonic()
        due = self._flush_due
        if due is not None and now < due + _OVERDUE_S:
            return  # a flush is already on its way and will take this event too
        delay = self.app.conf.gpuq_event_flush_interval  # set beside worker_consumer (gpu_worker/worker.py)
        self._flush_due = now + delay
        hub.call_later(delay, self._flush_buffered_events)

    def _flush_buffered_events(self) -> None:
        self._flush_due = None
        self._flush_events()

    def shutdown(self) -> None:
        # Events still waiting for their flush would otherwise never reach Flower.
        try:
            self._flush_events()
        finally:
            super().shutdown()
