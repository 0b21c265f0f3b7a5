"""Running one job on a loaded analyzer: the path from job id to stored result.

Every way out leaves the job record terminal or untouched for a retry: a
result is stored before the record says ``succeeded``, and any exception
becomes ``failed`` with a code; nothing turns a failure into success.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from celery import states
from celery.exceptions import SoftTimeLimitExceeded

from gpu_worker.analyzer import Analyzer, AnalyzerError, Item, OutOfMemory
from gpu_worker.joblock import JobLock, owner_of
from gpu_worker.progress import ProgressWriter
from tasks.jobs import CANCELED, CANCELING, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore

__all__ = ["JobFailed", "JobRunner"]

log = logging.getLogger("gpuq.runner")

JSON_MEDIA_TYPE = "application/json"


class JobFailed(Exception):
    """Raised after a job was recorded as failed, so Celery and Flower see a failure too."""


class JobRunner:
    def __init__(self, store: JobStore, backend: Any, analyzers: dict[str, Analyzer], *,
                 worker: str, device_label: str, max_attempts: int, lock: JobLock):
        self.store = store
        self.backend = backend
        self.analyzers = analyzers
        self.worker = worker
        self.device_label = device_label
        self.max_attempts = max_attempts
        self.lock = lock

    def run(self, job_id: str) -> None:
        owner = owner_of(self.worker)
        # Never twice at the same time: a redelivered copy of a message whose
        # first copy still runs elsewhere finds the lock held and stands down.
        if not self.lock.acquire(job_id, owner):
            log.warning("job %s is running elsewhere (lock held by %s); dropping this copy",
                        job_id, self.lock.holder(job_id))
            return
        try:
            self._run_locked(job_id)
        finally:
            self.lock.release(job_id, owner)

    def _run_locked(self, job_id: str) -> None:
        record = self.store.get(job_id)
        if record is None:
            log.warning("job %s has no record (expired or never accepted); dropping its message", job_id)
            return
        if record.is_terminal:
            log.info("job %s is already %s; not running it", job_id, record.status)
            return
        if record.status == CANCELING:
            self.store.finish(job_id, CANCELED, [CANCELING])
            return
        attempts = self.store.add_attempt(job_id)
        if attempts > self.max_attempts:
            self._fail(job_id, "worker_lost",
                       f"the worker running this job was lost {attempts - 1} times; giving up")
        started = time.time()
        written, status = self.store.transition(job_id, [QUEUED, RUNNING], RUNNING, started_at=started,
                                                worker=self.worker, device=self.device_label, progress=None)
        if not written:
            log.info("job %s became %s before it started; not running it", job_id, status)
            if status == CANCELING:
                self.store.finish(job_id, CANCELED, [CANCELING])
            return

        analyzer = self.analyzers.get(record.analyzer)
        if analyzer is None:
            self._fail(job_id, "no_analyzer", f"this worker does not serve analyzer {record.analyzer!r}")
        raw = self.store.read_input(job_id)
        if raw is None:
            self._fail(job_id, "input_expired", "the job's input expired before it could run")
        if record.input_media_type == JSON_MEDIA_TYPE:
            data, media_type = json.loads(raw), None
        else:
            data, media_type = raw, record.input_media_type
        item = Item(job_id=job_id, data=data, media_type=media_type, params=record.params,
                    report_progress=ProgressWriter(self.store, job_id))

        run_started = time.perf_counter()
        try:
            output = analyzer.predict([item])
            if len(output) != 1:
                raise AnalyzerError(f"predict returned {len(output)} results for 1 input", code="analyzer_error")
            result = output[0]
            if isinstance(result, BaseException):
                raise result
            json.dumps(result)  # fail here, clearly, rather than in the result backend
        except Exception as error:  # every failure is recorded; JobFailed re-raises it to Celery
            code, message = _classify(error)
            if code == "analyzer_error":
                log.exception("job %s: analyzer %s raised", job_id, record.analyzer)
            self._fail(job_id, code, message)
        run_ms = (time.perf_counter() - run_started) * 1000
        self.backend.store_result(job_id, result, states.SUCCESS)
        # QUEUED too: a janitor that took this worker for dead may have queued it
        # again meanwhile; the result in hand is real, and the copy will see it.
        self.store.finish(job_id, SUCCEEDED, [RUNNING, CANCELING, QUEUED], error=None, timings={
            "queued_ms": round((started - record.created_at) * 1000, 1),
            "run_ms": round(run_ms, 1),
            "batch_size": 1,
        }, progress={"fraction": 1.0, "stage": "done"}, provenance=analyzer.provenance())

    def _fail(self, job_id: str, code: str, message: str) -> None:
        self.store.finish(job_id, FAILED, [QUEUED, RUNNING, CANCELING], error={"code": code, "message": message})
        raise JobFailed(f"{code}: {message}")


def _classify(error: BaseException) -> tuple[str, str]:
    if isinstance(error, AnalyzerError):
        return error.code, str(error)
    if isinstance(error, SoftTimeLimitExceeded):
        return "timeout", "the job ran past its time limit"
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return OutOfMemory.code, f"out of memory: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    if isinstance(error, TypeError) and "JSON serializable" in str(error):
        return "analyzer_error", f"the analyzer returned a result that is not JSON: {error}"
    return "analyzer_error", f"{type(error).__name__}: {error}"

