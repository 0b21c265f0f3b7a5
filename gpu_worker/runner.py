"""Running jobs on a loaded analyzer: from the job id Celery delivered to stored results.

Celery delivers one job (the lead). When the analyzer batches
(``max_batch_size`` > 1) and batching is on, the runner gathers more jobs of
that analyzer waiting in its queue (``gpu_worker.batch_gathering``) and runs
them all in one ``predict``. Each job gets its own result or its own error
(``gpu_worker.isolation``), and its record says how large its batch was.

Every way out leaves each job's record terminal or in the hands of the
janitor: a result is stored before the record says ``succeeded``, and any
exception becomes ``failed`` with a code; nothing turns a failure into
success. A job canceled while its batch ran ends ``canceled``, its result
discarded.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from gpu_worker.analyzer import Analyzer, AnalyzerError, Item, OutOfMemory
from gpu_worker.batch_gathering import BatchGatherer
from gpu_worker.isolation import predict_isolating
from gpu_worker.joblock import JobLock, batch_member, owner_of
from gpu_worker.progress import ProgressWriter
from gpu_worker.results import store_results
from tasks import keys, logs
from tasks.app import queue_for
from tasks.jobs import CANCELED, CANCELING, FAILED, QUEUED, RUNNING, SUCCEEDED, JobRecord, JobStore

__all__ = ["JobFailed", "JobRunner"]

log = logging.getLogger("gpuq.runner")

JSON_MEDIA_TYPE = "application/json"


class JobFailed(Exception):
    """Raised after the lead job was recorded as failed, so Celery and Flower see a failure too."""


@dataclass
class _Claimed:
    """A job this process holds: running, locked by ``holder``."""

    record: JobRecord
    holder: str
    started_at: float

    @property
    def job_id(self) -> str:
        return self.record.id


class JobRunner:
    def __init__(self, store: JobStore, backend: Any, analyzers: dict[str, Analyzer], *,
                 worker: str, device_label: str, max_attempts: int, lock: JobLock, batching: bool = True):
        self.store = store
        self.backend = backend
        self.analyzers = analyzers
        self.worker = worker
        self.device_label = device_label
        self.max_attempts = max_attempts
        self.lock = lock
        self.batching = batching
        self.gatherer = BatchGatherer(store.redis, lock_ttl=lock.ttl)
        #: The jobs the last ``run`` took on (the lead first), for the runtime's metrics.
        self.handled: list[str] = []

    def run(self, job_id: str) -> None:
        self.handled = [job_id]
        owner = owner_of(self.worker)
        # Never twice at the same time: a redelivered copy of a message whose
        # first copy still runs elsewhere finds the lock held and stands down.
        if not self.lock.acquire(job_id, owner):
            log.warning("job %s is running elsewhere (lock held by %s); dropping this copy",
                        job_id, self.lock.holder(job_id))
            return
        members: list[_Claimed] = []
        try:
            lead = self._claim_lead(job_id, owner)
            if lead is None:
                return
            analyzer = self.analyzers.get(lead.record.analyzer)
            if analyzer is None:
                self._fail(job_id, "no_analyzer", f"this worker does not serve analyzer {lead.record.analyzer!r}")
            members = self._gather_members(lead, analyzer)
            self.handled += [m.job_id for m in members]
            failure = self._run_batch(analyzer, [lead, *members])
            if failure is not None:
                raise JobFailed(failure)
        finally:
            # A member left unfinished (Redis gone for minutes, say) is then the
            # janitor's to deliver again: running, and nobody holds its lock.
            if members:
                self.lock.release_many({m.job_id: m.holder for m in members})
            self.lock.release(job_id, owner)

    def _claim_lead(self, job_id: str, owner: str) -> _Claimed | None:
        record = self.store.get(job_id)
        if record is None:
            log.warning("job %s has no record (expired or never accepted); dropping its message", job_id)
            return None
        if record.is_terminal:
            log.info("job %s is already %s; not running it", job_id, record.status)
            return None
        if record.status == CANCELING:
            self.store.finish(job_id, CANCELED, [CANCELING])
            return None
        record.attempts = self.store.add_attempt(job_id)
        if record.attempts > self.max_attempts:
            self._fail(job_id, "worker_lost",
                       f"the worker running this job was lost {record.attempts - 1} times; giving up")
        started = time.time()
        written, status = self.store.transition(job_id, [QUEUED, RUNNING], RUNNING, started_at=started,
                                                worker=self.worker, device=self.device_label, progress=None)
        if not written:
            log.info("job %s became %s before it started; not running it", job_id, status)
            if status == CANCELING:
                self.store.finish(job_id, CANCELED, [CANCELING])
            return None
        return _Claimed(record, owner, started)

    def _gather_members(self, lead: _Claimed, analyzer: Analyzer) -> list[_Claimed]:
        """Jobs waiting behind the lead, claimed to share its batch (none when batching is off)."""
        # A job on its second attempt runs alone: its last run may have crashed its process.
        if not self.batching or analyzer.max_batch_size <= 1 or lead.record.attempts > 1:
            return []
        # Wait at most max_wait_ms from the lead's acceptance: a job that already
        # waited in the queue that long goes with whatever is waiting beside it.
        wait = analyzer.max_wait_ms / 1000
        wait = max(0.0, min(wait, lead.record.created_at + wait - time.time()))
        holder, started = batch_member(lead.holder), time.time()
        gathered = self.gatherer.gather(
            queue_for(analyzer.name), analyzer.max_batch_size - 1, owner=holder, deadline=time.monotonic() + wait,
            running_fields={"status": RUNNING, "started_at": started, "worker": self.worker,
                            "device": self.device_label, "progress": None})
        if gathered.dropped:
            log.info("dropped the messages of %d jobs no longer queued", len(gathered.dropped))
        if not gathered.job_ids:
            return []
        read = self.store.redis.pipeline(transaction=False)
        for job_id in gathered.job_ids:
            read.hgetall(keys.job(job_id))
        members = []
        for job_id, raw in zip(gathered.job_ids, read.execute(), strict=True):
            if raw:
                members.append(_Claimed(JobRecord.from_hash(raw), holder, started))
            else:  # expired between the claim and now: nothing to run, nothing to record
                self.lock.release(job_id, holder)
        return members

    def _run_batch(self, analyzer: Analyzer, batch: list[_Claimed]) -> str | None:
        """Run ``batch`` and record every job's end; returns the lead's failure ("code: message"), if any."""
        read = self.store.redis.pipeline(transaction=False)
        for claimed in batch:
            read.get(keys.job_input(claimed.job_id))
        endings: dict[str, tuple[str, dict[str, Any]]] = {}  # job id -> (status, fields)
        ready: list[tuple[_Claimed, Item]] = []
        for claimed, raw in zip(batch, read.execute(), strict=True):
            if raw is None:
                endings[claimed.job_id] = _failure("input_expired", "the job's input expired before it could run")
                continue
            record = claimed.record
            if record.input_media_type == JSON_MEDIA_TYPE:
                data, media_type = json.loads(raw), None
            else:
                data, media_type = raw, record.input_media_type
            ready.append((claimed, Item(job_id=claimed.job_id, data=data, media_type=media_type,
                                        params=record.params,
                                        report_progress=ProgressWriter(self.store, claimed.job_id))))

        run_started = time.perf_counter()
        outputs = predict_isolating(analyzer, [item for _, item in ready]) if ready else []
        run_ms = round((time.perf_counter() - run_started) * 1000, 1)

        results: dict[str, Any] = {}
        for (claimed, _), output in zip(ready, outputs, strict=True):
            if not isinstance(output, BaseException):
                try:
                    json.dumps(output)  # fail here, clearly, rather than in the result backend
                except (TypeError, ValueError) as error:
                    output = error
            if isinstance(output, BaseException):
                code, message = _classify(output)
                if code == "analyzer_error":
                    with logs.job_context(claimed.job_id):
                        log.error("job %s: analyzer %s raised", claimed.job_id, analyzer.name, exc_info=output)
                endings[claimed.job_id] = _failure(code, message)
                continue
            results[claimed.job_id] = output
            endings[claimed.job_id] = (SUCCEEDED, {
                "error": None,
                "timings": {"queued_ms": round((claimed.started_at - claimed.record.created_at) * 1000, 1),
                            "run_ms": run_ms, "batch_size": len(ready)},
                "progress": {"fraction": 1.0, "stage": "done"},
                "provenance": analyzer.provenance(),
            })
        # Results first: a record that says succeeded always has one to show.
        store_results(self.store.redis, self.backend, results)
        return self._record_endings(batch, endings)

    def _record_endings(self, batch: list[_Claimed], endings: dict[str, tuple[str, dict[str, Any]]]) -> str | None:
        ordered = [c.job_id for c in batch if c.job_id in endings]
        # QUEUED too: a janitor that took this worker for dead may have queued a job
        # again meanwhile; the outcome in hand is real, and the copy will see it.
        replies = self.store.finish_many([
            (job_id, status, [RUNNING, QUEUED] if status == SUCCEEDED else [QUEUED, RUNNING, CANCELING], fields)
            for job_id in ordered for status, fields in [endings[job_id]]])
        canceled = [job_id for job_id, (written, before) in zip(ordered, replies, strict=True)
                    if not written and before == CANCELING]
        if canceled:  # canceled while the batch ran: the result is discarded
            self.store.finish_many([(job_id, CANCELED, [CANCELING], {}) for job_id in canceled])
        lead = batch[0].job_id
        status, fields = endings.get(lead, (None, {}))
        if status == FAILED and lead not in canceled:
            return f"{fields['error']['code']}: {fields['error']['message']}"
        return None

    def _fail(self, job_id: str, code: str, message: str) -> None:
        self.store.finish(job_id, FAILED, [QUEUED, RUNNING, CANCELING], error={"code": code, "message": message})
        raise JobFailed(f"{code}: {message}")


def _failure(code: str, message: str) -> tuple[str, dict[str, Any]]:
    return FAILED, {"error": {"code": code, "message": message}}


def _classify(error: BaseException) -> tuple[str, str]:
    if isinstance(error, AnalyzerError):
        return error.code, str(error)
    if isinstance(error, SoftTimeLimitExceeded):
        return "timeout", "the job ran past its time limit"
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return OutOfMemory.code, f"out of memory: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    if isinstance(error, (TypeError, ValueError)) and "JSON serializable" in str(error):
        return "analyzer_error", f"the analyzer returned a result that is not JSON: {error}"
    return "analyzer_error", f"{type(error).__name__}: {error}"
