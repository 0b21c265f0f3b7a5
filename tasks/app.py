"""The one Celery app, shared by the API (to send) and the workers (to run)."""

from __future__ import annotations

from celery import Celery

from tasks import logs

__all__ = ["RUN_TASK", "create_celery", "queue_for", "task_label"]

#: The task every job runs as; the workers define its body, the API only names it.
RUN_TASK = "gpuq.run"

_QUEUE_PREFIX = "gpuq."


def queue_for(analyzer: str) -> str:
    """One queue per analyzer, so workers serve only what they have loaded."""
    return _QUEUE_PREFIX + analyzer


def task_label(analyzer: str) -> str:
    """The name a job shows under in Flower and in the workers' log lines, e.g. ``gpuq.run:digits``.

    Sent as Celery's ``shadow`` name: the message still names ``RUN_TASK``, so
    routing and the task body are untouched; only what operators read changes.
    """
    return f"{RUN_TASK}:{analyzer}"


def create_celery() -> Celery:
    """Build the app from ``celeryconfig`` (which reads the environment)."""
    app = Celery("gpuq")
    app.config_from_object("celeryconfig")
    # A worker built from this app logs in gpuq's format (text or JSON), job ids included.
    logs.connect_celery()
    return app
