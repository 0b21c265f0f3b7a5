"""Flower's task events for the jobs a run took from the queue itself to fill a batch (its members).

Celery sends a job's task events (received, started, succeeded or failed) from
the worker's main process as it hands the job to the pool child and gets its
end back. A batch's members never pass through Celery: the pool child takes
their messages straight from the queue (``gpu_worker.claims``), so without
these Flower would list only each batch's lead. Here the pool child sends them
itself, with the fields Celery gives a job it delivered and the worker's
hostname, through Celery's event dispatcher (``app.events``, as a task's own
``send_event`` does), so Flower lists, counts and finds each job once, whatever
batch it ran in.

Like the main process's (``gpu_worker.event_batching``) they leave
``gpuq_event_flush_interval`` seconds late, several in one ``task.multi``
publish, from a thread of their own: claiming a batch and recording its end
never wait on a publish. What is still held when the pool child stops is sent then.
"""

from __future__ import annotations

import logging
import reprlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from celery import Celery, signals
from celery.app.task import Task
from kombu.utils.encoding import safe_repr

from tasks.app import task_label
from tasks.settings import Settings

__all__ = ["MemberEvents"]

log = logging.getLogger("gpuq.member_events")

#: Events one publish carries at most: a batch of 128 announces its members (two events
#: each) in one publish, and no publish grows past a few hundred KB.
EVENTS_PER_PUBLISH = 256

#: How long a stopping pool child waits for the events it still holds to be published.
_CLOSE_TIMEOUT_S = 5.0


class MemberEvents:
    """Task events of batch members, queued by the runner's threads and published by one of its own."""

    def __init__(self, app: Celery, hostname: str):
        self.app = app
        self.hostname = hostname
        self.enabled = bool(app.conf.worker_send_task_events)
        # Set beside the worker's consumer (gpu_worker/worker.py); a runner built elsewhere takes the default.
        self.flush_interval = app.conf.get("gpuq_event_flush_interval", Settings.event_flush_interval)
        #: (event type, its fields' maker, the maker's arguments), oldest first.
        self._pending: deque[tuple[str, Callable[..., dict[str, Any]], tuple[Any, ...]]] = deque()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()
        self._dispatcher = None
        # A pool child leaves through os._exit after this signal: atexit would never run.
        signals.worker_process_shutdown.connect(self._on_process_shutdown)

    def claimed(self, job_id: str, analyzer: str) -> None:
        """The member was taken from its queue and runs now: received and started, as Celery sends them."""
        now = time.time()
        self._queue("task-received", self._received_fields, job_id, analyzer, now)
        self._queue("task-started", _job_fields, job_id, now)

    def succeeded(self, job_id: str, result: Any, runtime: float) -> None:
        self._queue("task-succeeded", _succeeded_fields, job_id, time.time(), result, runtime)

    def failed(self, job_id: str, exception: BaseException) -> None:
        self._queue("task-failed", _failed_fields, job_id, time.time(), exception)

    def retried(self, job_id: str, exception: BaseException) -> None:
        """Given back to its queue (the GPU broke under its batch): it runs again, as a retried task does."""
        self._queue("task-retried", _failed_fields, job_id, time.time(), exception)

    def revoked(self, job_id: str) -> None:
        """Canceled while its batch ran: Flower shows it as Celery shows a revoked task."""
        self._queue("task-revoked", _revoked_fields, job_id, time.time())

    def close(self) -> None:
        """Publish what is held and stop the events thread."""
        self._closing.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(_CLOSE_TIMEOUT_S)

    def _on_process_shutdown(self, **_) -> None:
        self.close()

    def _queue(self, kind: str, fields: Callable[..., dict[str, Any]], *args: Any) -> None:
        """Queue an event whose ``fields(*args)`` the events thread makes: a batch's claim and end
        take no reprs of inputs and results (tens of microseconds a job)."""
        if not self.enabled:
            return
        self._pending.append((kind, fields, args))
        if self._thread is None:
            self._start()
        self._wake.set()

    def _start(self) -> None:
        with self._starting:
            if self._thread is None:
                self._thread = threading.Thread(target=self._publish_forever, name="gpuq-member-events",
                                                daemon=True)
                self._thread.start()

    def _publish_forever(self) -> None:
        try:
            while not (self._closing.is_set() and not self._pending):
                self._wake.wait()
                # Events sent meanwhile ride along in the same publish.
                self._closing.wait(self.flush_interval)
                self._wake.clear()  # before taking the pending events: one queued after this wakes the next turn
                try:
                    self._publish_pending()
                except Exception:  # a lost publish must not stop the ones after it
                    log.warning("could not publish task events for Flower", exc_info=True)
        finally:
            if self._dispatcher is not None:
                self._dispatcher.close()
                self._dispatcher.connection.release()

    def _publish_pending(self) -> None:
        dispatcher = self._dispatcher
        if dispatcher is None:
            # Made on this thread, its only user; kombu connects on the first publish. A publish
            # that fails is kept by the dispatcher and sent again with the next one.
            dispatcher = self._dispatcher = self.app.events.Dispatcher(
                self.app.connection_for_write(), hostname=self.hostname, buffer_group=["task"],
                buffer_limit=EVENTS_PER_PUBLISH)
        while self._pending:
            kind, fields, args = self._pending.popleft()
            dispatcher.send(kind, **fields(*args))
        dispatcher.flush()

    def _received_fields(self, job_id: str, analyzer: str, at: float) -> dict[str, Any]:
        """Celery's task-received fields for a member.

        Gathering takes only a job's first delivery, never a retry or a message with an ETA
        (``gpu_worker.claims``), and ``tasks.publish`` writes every message with no parent:
        hence no retries, ETA or expiry, and the job as its own root.
        """
        # A job's only argument is its id: the repr Celery's saferepr would make, without its cost.
        return {**_job_fields(job_id, at), "name": task_label(analyzer), "args": repr([job_id]), "kwargs": "{}",
                "root_id": job_id, "parent_id": None, "retries": 0, "eta": None, "expires": None}


def _job_fields(job_id: str, at: float) -> dict[str, Any]:
    return {"uuid": job_id, "timestamp": at}


def _succeeded_fields(job_id: str, at: float, result: Any, runtime: float) -> dict[str, Any]:
    # A summary of at most the length Celery cuts a task's return value to, whose cost does not grow
    # with the result: reprlib looks at a few items of each list and dict (an embedding of 256 texts
    # would be a repr of megabytes), where Celery's saferepr walked every no-op job's result in pure
    # Python and took a drain of them from 0.82 to 0.66 of its rate without member events.
    text = _SUMMARY.repr(result)
    most = Task.resultrepr_maxsize
    return {**_job_fields(job_id, at), "result": text if len(text) <= most else text[:most - 3] + "...",
            "runtime": runtime}


_SUMMARY = reprlib.Repr()
_SUMMARY.maxlevel, _SUMMARY.maxlist, _SUMMARY.maxdict, _SUMMARY.maxstring = 4, 8, 8, 160


def _failed_fields(job_id: str, at: float, exception: BaseException) -> dict[str, Any]:
    # No traceback: the job's error is its code and message, which the exception's repr carries.
    return {**_job_fields(job_id, at), "exception": safe_repr(exception), "traceback": None}


def _revoked_fields(job_id: str, at: float) -> dict[str, Any]:
    return {**_job_fields(job_id, at), "terminated": False, "signum": None, "expired": False}
