"""The one Celery app, shared by the API (to send) and the workers (to run)."""

from __future__ import annotations

from celery import Celery

__all__ = ["RUN_TASK", "create_celery", "queue_for"]

#: The task every job runs as; the workers define its body, the API only names it.
RUN_TASK = "gpuq.run"

_QUEUE_PREFIX = "gpuq."


def queue_for(analyzer: str) -> str:
    """One queue per analyzer, so workers serve only what they have loaded."""
    return _QUEUE_PREFIX + analyzer


def create_celery() -> Celery:
    """Build the app from ``celeryconfig`` (which reads the environment)."""
    app = Celery("gpuq")
    app.config_from_object("celeryconfig")
    return app
