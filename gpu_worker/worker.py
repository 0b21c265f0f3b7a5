"""The Celery worker side: the task body of ``gpuq.run`` and the process hooks.

Run as ``celery -A gpu_worker.worker worker -P prefork -c 1`` (the launcher
does this, one per GPU). The parent process never loads a model nor touches
CUDA; each pool child loads the analyzers in ``worker_process_init``, before
it is handed a job. A child that cannot load them stops the whole worker with
a clear message, rather than failing jobs one by one.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from functools import lru_cache

from billiard.exceptions import WorkerLostError
from celery import signals
from celery.exceptions import TimeLimitExceeded
from kombu import Exchange, Queue

from gpu_worker.janitor import Janitor
from gpu_worker.joblock import JobLock, parse_owner
from gpu_worker.registry import DEFAULT_ANALYZERS, resolve_analyzers
from gpu_worker.runtime import WorkerRuntime, worker_redis
from gpu_worker.spec_renewal import SpecRenewal
from gpu_worker.webhooks import WebhookDispatcher
from tasks.app import RUN_TASK, create_celery, queue_for
from tasks.jobs import CANCELED, CANCELING, FAILED, QUEUED, RUNNING, JobStore
from tasks.settings import Settings

__all__ = ["EXIT_SETUP_FAILED", "app"]

log = logging.getLogger("gpuq.worker")

#: Exit status of a pool child whose models failed to load.
EXIT_SETUP_FAILED = 78

app = create_celery()
_settings = Settings.from_env()
# Task events for Flower leave in batches a few ms apart, off each job's path (gpu_worker/event_batching.py).
app.conf.worker_consumer = "gpu_worker.event_batching:EventBatchingConsumer"
app.conf.gpuq_event_flush_interval = _settings.event_flush_interval
# Importing the analyzer classes here, in the parent, checks them before any
# child forks and names the queues to consume (one per analyzer). Importing
# is fine; only loading a model or touching CUDA belongs to the child.
_analyzer_classes = resolve_analyzers(os.environ.get("GPUQ_ANALYZERS", DEFAULT_ANALYZERS))
app.conf.task_queues = [Queue(queue_for(cls.name), Exchange(queue_for(cls.name)), routing_key=queue_for(cls.name))
                         for cls in _analyzer_classes]
_runtime: WorkerRuntime | None = None


def worker_name() -> str:
    return os.environ.get("GPUQ_WORKER_NAME") or f"cpu0@{socket.gethostname()}"


@app.task(name=RUN_TASK, bind=True, ignore_result=True, acks_late=True,
          retry_on_worker_lost=True, max_retries=_settings.max_attempts - 1, default_retry_delay=1)
def run_job(self, job_id: str) -> None:
    if _runtime is None:
        raise RuntimeError("gpuq.run needs the prefork pool: models load in worker_process_init")
    _runtime.run(job_id)


@signals.worker_process_init.connect
def _load_models(**_) -> None:
    global _runtime
    name = worker_name()
    try:
        _runtime = WorkerRuntime.start(name=name, settings=_settings, backend=app.backend,
                                       analyzer_classes=_analyzer_classes, environ=dict(os.environ))
    except BaseException as error:
        log.critical("gpuq worker %s cannot start: loading its analyzers failed: %s: %s",
                     name, type(error).__name__, error, exc_info=True)
        print(f"gpuq worker {name}: analyzer setup failed: {type(error).__name__}: {error}",
              file=sys.stderr, flush=True)
        # Stop the whole worker: a parent left running would fork a new child
        # that fails the same way, forever.
        os.kill(os.getppid(), signal.SIGTERM)
        os._exit(EXIT_SETUP_FAILED)


@signals.worker_process_shutdown.connect
def _stop_runtime(**_) -> None:
    if _runtime is not None:
        _runtime.stop()


@lru_cache(maxsize=1)
def _parent_store() -> JobStore:
    """A store for the parent process, which records what its child could not."""
    return JobStore(worker_redis(_settings), result_ttl=_settings.result_ttl,
                    tombstone_ttl=_settings.tombstone_ttl, input_ttl=_settings.input_ttl)


@lru_cache(maxsize=1)
def _parent_lock() -> JobLock:
    return JobLock(_parent_store().lifecycle, ttl=_settings.job_time_limit + 120, local_worker=worker_name())


def _release_dead_childs_lock(job_id: str) -> None:
    holder = _parent_lock().holder(job_id)
    if holder and _parent_lock().is_local(holder) and not _parent_lock().is_alive(holder):
        _parent_lock().release(job_id, holder)


@signals.worker_ready.connect
def _start_janitor(**_) -> None:
    # In the main process: it outlives pool children and never touches CUDA.
    janitor = Janitor(_parent_store(), _parent_lock(), app, dead_after=_settings.heartbeat_ttl,
                      interval=_settings.janitor_interval)
    janitor.start()
    # Keeps this worker's analyzers published while a pool child reloads its models.
    SpecRenewal.for_ttl(_parent_store().redis, [cls.name for cls in _analyzer_classes],
                        max(_settings.analyzer_ttl, _settings.heartbeat_ttl)).start()
    if _settings.webhook_secret:  # without a secret the API refuses webhooks, so none are queued
        WebhookDispatcher(_parent_store(), _settings, backend=app.backend, name=worker_name()).start()


@signals.task_revoked.connect
def _record_cancel(request=None, terminated=False, **_) -> None:
    if request is not None:
        _parent_store().lifecycle.end_unowned(request.id, CANCELED, [CANCELING, RUNNING, QUEUED])
        _release_dead_childs_lock(request.id)


@signals.task_failure.connect
def _record_lost_or_timed_out(task_id=None, exception=None, **_) -> None:
    # Sent in the parent when the child died or hit the hard limit: the child
    # could not write the record itself.
    if isinstance(exception, WorkerLostError):
        code, message = "worker_lost", f"the process running the job died: {exception}"
    elif isinstance(exception, TimeLimitExceeded):
        code, message = "timeout", f"the job ran past its hard time limit ({_settings.job_time_limit}s)"
    else:
        return
    # Only the run this process's child held: if the job was given to another worker meanwhile (the
    # child was paused past a heartbeat TTL, say), that run's outcome is the one that counts.
    holder = _parent_lock().holder(task_id)
    if holder and _parent_lock().is_local(holder) and parse_owner(holder)[2] == os.getpid():
        _parent_store().lifecycle.end_unowned(task_id, FAILED, [RUNNING, CANCELING], holder=holder,
                                              error={"code": code, "message": message})
