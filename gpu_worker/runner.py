"""Running jobs on a loaded analyzer: from the job id Celery delivered to stored results.

Celery delivers one job (the lead). When the analyzer batches
(``max_batch_size`` > 1) and batching is on, the runner gathers more jobs of
that analyzer waiting in its queue (``gpu_worker.claims``) and runs them all
in one ``predict``. Each job gets its own result or its own error
(``gpu_worker.isolation``), and its record says how large its batch was.
While more of that analyzer's jobs wait, the same task runs on with the next
batch, for up to ``run_on_seconds`` (``fair_share_seconds`` once the
worker's other analyzers have jobs waiting): a batch then follows the last
at once, not after the task's end and the next delivery went through Celery. While a
batch that ran on runs, a recorder thread writes the end of the one before
and claims the one after.

If the GPU breaks under a batch (a sticky CUDA error, ``gpu_worker.device_faults``),
no job of it fails for that: each goes back to its queue, its attempt not
counted (``hand_back.lua``), and the runtime ends the model process.

Every way out leaves each job's record terminal, queued again, or in the hands of the
janitor: a result is stored with the end that says ``succeeded``, in one
script, and any exception becomes ``failed`` with a code; nothing turns a
failure into success. A job canceled while its batch ran ends ``canceled``,
its result discarded. Every write carries the run's fencing token
(``tasks.lifecycle``): a run whose job was given to another (it was paused,
or cut off from Redis, past its lease) has its writes refused and logged,
and stops at its next progress report.

Celery sends the lead's task events (for Flower); the runner sends its
members' (``gpu_worker.member_events``): received and started when claimed,
succeeded, failed or revoked once their end is written.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import EncodeError

from gpu_worker.analyzer import Analyzer, AnalyzerError, Item, OutOfMemory
from gpu_worker.claims import Claimer
from gpu_worker.device_faults import FAULTS_BEFORE_FAILING_A_JOB, DeviceFault
from gpu_worker.isolation import predict_isolating
from gpu_worker.job_metrics import observe_ended, record_run_seconds
from gpu_worker.joblock import JobLock, batch_member, is_batch_member, owner_of
from gpu_worker.member_events import MemberEvents
from gpu_worker.progress import LeaseLost, ProgressWriter
from gpu_worker.results import encode_result, result_key, result_ttl
from tasks import logs, strict_json
from tasks.app import queue_for
from tasks.jobs import CANCELED, CANCELING, FAILED, RUNNING, SUCCEEDED, JobRecord, JobStore
from tasks.lifecycle import FencedReply
from tasks.pipelined import Pipelined
from tasks.publish import job_message

__all__ = ["JobFailed", "JobRunner"]

log = logging.getLogger("gpuq.runner")

JSON_MEDIA_TYPE = "application/json"

#: How many times its last claim's duration before the running batch's expected
#: end a batch that runs on claims the next one: late, so that most jobs that
#: come in meanwhile join it, but with room for a claim slower than the last.
CLAIM_MARGIN = 2.0


class JobFailed(Exception):
    """Raised after the lead job was recorded as failed, so Celery and Flower see a failure too."""


@dataclass
class _Claimed:
    """A job this process holds: running, locked by ``holder``, its input in hand."""

    record: JobRecord
    holder: str
    started_at: float
    input: bytes | None
    #: Messages waiting behind it in its analyzer's queue when it was claimed (the lead's only).
    waiting: int = 0

    @property
    def job_id(self) -> str:
        return self.record.id

    @property
    def token(self) -> int:
        """This run's fencing token: its writes are accepted only while the job's fence is still this."""
        return self.record.fence


@dataclass
class _Ran:
    """A batch's ``predict``: its items with their outputs (results or errors), in order."""

    ready: list[tuple[_Claimed, Item]] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)
    seconds: float = 0.0
    #: Ends known without running (an expired input): job id -> (status, fields).
    endings: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def timed_out(self) -> bool:
        """Whether the task's soft time limit ended this batch."""
        return any(isinstance(output, SoftTimeLimitExceeded) for output in self.outputs)


@dataclass(frozen=True)
class _Recording:
    """A batch whose end the recorder thread is writing."""

    batch: list[_Claimed]
    future: Future


@dataclass(frozen=True)
class _Claiming:
    """The next batch, being claimed on the recorder thread while the current one runs."""

    #: Set once the current batch's ``predict`` has ended (or failed): the claim waits no longer.
    predicted: threading.Event
    #: Set when the GPU broke under the current batch: a claim not yet made is not made.
    abandoned: threading.Event
    #: The claimed jobs (a list of ``_Claimed``, empty when none waited).
    future: Future


@dataclass(frozen=True)
class _BatchEnd:
    #: The failure ("code: message") of the batch's first job, the lead in the batch Celery delivered.
    failure: str | None
    #: Messages waiting in the analyzer's queue once the batch was recorded.
    waiting: int
    #: Seconds the batch's ``predict`` took.
    predict_seconds: float
    #: What each job's end write found (job id -> reply).
    written: dict[str, FencedReply]


@dataclass(frozen=True)
class _PredictPace:
    """The last batch's ``predict``: how long it took, over how many input bytes."""

    seconds: float
    input_bytes: int

    def expected_seconds(self, input_bytes: int) -> float:
        """How long a batch of ``input_bytes`` should take to ``predict``: the last one's time, less if it is smaller.

        Never more: a claim made early only leaves a job that comes later to the batch
        after, where one made after ``predict`` ended keeps the model waiting for it
        (a gather of a dozen 64 KB stacks took 4-10 ms on a busy 2-core machine).
        Batches of a closed-loop load swing between 1 and 16 jobs from one to the next.
        """
        if self.input_bytes <= 0:
            return self.seconds
        return self.seconds * min(1.0, input_bytes / self.input_bytes)


def _input_bytes(batch: list[_Claimed]) -> int:
    """The batch's inputs' size: what its ``predict`` takes is about in proportion."""
    return sum(len(claimed.input) for claimed in batch if claimed.input is not None)


class JobRunner:
    def __init__(self, store: JobStore, backend: Any, analyzers: dict[str, Analyzer], *,
                 worker: str, device_label: str, max_attempts: int, lock: JobLock, batching: bool = True,
                 run_on_seconds: float = 5.0, fair_share_seconds: float = 1.0, host_cores: set[int] | None = None):
        self.store = store
        self.backend = backend
        self.analyzers = analyzers
        self.worker = worker
        self.device_label = device_label
        self.max_attempts = max_attempts
        self.lock = lock
        self.batching = batching
        #: How long one Celery task may go on taking batches of its analyzer's waiting jobs, and
        #: how long once the worker's other analyzers have jobs waiting too (``_may_run_on``).
        self.run_on_seconds = run_on_seconds
        self.fair_share_seconds = fair_share_seconds
        #: Jobs of the worker's other analyzers waiting when the last batch was recorded.
        self._others_waiting = 0
        #: Cores the recorder thread runs on when the model process is pinned (``GPUQ_WORKER_CPUS``).
        self.host_cores = host_cores
        self._recorder_pool: ThreadPoolExecutor | None = None
        #: How long the last claim made during a batch took (``_claim_during``).
        self._claim_seconds = 0.0
        self.claimer = Claimer(store, lock_ttl=lock.ttl)
        self.lifecycle = store.lifecycle
        #: Flower's task events of the jobs taken as batch members (Celery sends the lead's).
        self.member_events = MemberEvents(backend.app, hostname=worker)
        #: The jobs the last ``run`` took on (the lead first), and those of them it observed for
        #: the metrics itself; the runtime records the others from their records.
        self.handled: list[str] = []
        self.observed: set[str] = set()
        #: Batches this process ran ``predict`` on to the end (its device worked).
        self.batches_run = 0
        #: The device fault a batch met, once one did: this process can run nothing more.
        self.device_broken: DeviceFault | None = None
        #: Whether a device fault now is counted on the batch's jobs (``hand_back.lua``); the
        #: runtime says not when that fault would stop the worker, its GPU taken for the cause.
        self.blame_jobs: Callable[[], bool] = lambda: True

    def run(self, job_id: str) -> None:
        self.handled, self.observed = [job_id], set()
        began = time.monotonic()
        lead = self._claim_lead(job_id, owner_of(self.worker))
        if lead is None:
            return
        analyzer = self.analyzers.get(lead.record.analyzer)
        if analyzer is None:
            self._settle([lead], partial(self._fail_claimed, lead, "no_analyzer",
                                         f"this worker does not serve analyzer {lead.record.analyzer!r}"))
            return
        batch = [lead, *self._settle([lead], partial(self._gather_members, lead, analyzer))]
        self.handled += [c.job_id for c in batch[1:]]
        end = self._settle(batch, partial(self._run_batch, analyzer, batch))
        if end.failure is not None:
            raise JobFailed(end.failure)
        if end.waiting:
            self._run_on(analyzer, lead, began, _PredictPace(end.predict_seconds, _input_bytes(batch)))

    def _run_on(self, analyzer: Analyzer, lead: _Claimed, began: float, pace: _PredictPace) -> None:
        """Batch after batch of ``analyzer``'s waiting jobs, while they wait and ``_may_run_on`` allows.

        The next batch starts here, without the round trips of handing this task
        back to Celery and being delivered another. Each batch's end is recorded
        on the recorder thread while the next one runs, and the batch after it
        is claimed there too, late in the current one's ``predict``: the model
        process then goes from one ``predict`` to the next without waiting on Redis.
        """
        holder = batch_member(lead.holder)
        recording: _Recording | None = None
        claiming: _Claiming | None = None
        try:
            batch = (self._claim_waiting(analyzer, holder, wait=0.0)
                     if self._may_run_on(analyzer, lead, began) else [])
            while batch:
                self.handled += [c.job_id for c in batch]
                size = _input_bytes(batch)
                expected = pace.expected_seconds(size)
                # Judged at this batch's expected end, where the next one starts: the task still
                # hands back to Celery about its run-on time after it began, not a batch later.
                if self._may_run_on(analyzer, lead, began - expected):
                    claiming = self._claim_during(analyzer, holder, expected)
                ran = self._settle(batch, partial(self._predict_batch, analyzer, batch), claiming)
                if claiming is not None:
                    claiming.predicted.set()  # a claim not yet made is made now
                # The last batch recorded before this one's is queued: ends are written in order,
                # and one failing to be written leaves this batch (and the next) to the janitor too.
                previous, recording = recording, None
                self._settle(batch, partial(self._wait_recorded, previous), claiming)
                recording = _Recording(batch, self._recorder().submit(self._record_batch, analyzer, batch, ran))
                pace = _PredictPace(ran.seconds, size)
                batch = self._settle([], claiming.future.result, claiming) if claiming is not None else []
                if ran.timed_out:  # the task's time is up: the batch claimed next is the janitor's
                    if batch:
                        log.warning("time limit reached while running on; %d claimed jobs left to be "
                                    "delivered again", len(batch))
                        self._release(batch)
                    batch = []
                elif claiming is not None and not batch:
                    # Nothing waited when the claim was made: jobs may have come since.
                    batch = self._claim_waiting(analyzer, holder, wait=0.0)
                claiming = None
        finally:
            self._wait_recorded(recording)

    def _claim_during(self, analyzer: Analyzer, holder: str, predict_seconds: float) -> _Claiming:
        """The next batch, claimed on the recorder thread while the current one runs.

        The claim is made ``CLAIM_MARGIN`` times the last claim's duration before
        the current ``predict`` should end (``predict_seconds``, from
        ``_PredictPace``), or once it has ended: jobs that come in meanwhile, typically from
        the clients of the batch just recorded, then join the next batch rather
        than the one after it. The recorder thread runs it after the last batch's end.
        """
        predicted, abandoned = threading.Event(), threading.Event()
        due = time.monotonic() + max(0.0, predict_seconds - CLAIM_MARGIN * self._claim_seconds)

        def claim() -> list[_Claimed]:
            predicted.wait(max(0.0, due - time.monotonic()))
            if abandoned.is_set():
                return []
            began = time.monotonic()
            claimed = self._claim_waiting(analyzer, holder, wait=0.0)
            self._claim_seconds = time.monotonic() - began
            return claimed

        return _Claiming(predicted, abandoned, self._recorder().submit(claim))

    def _recorder(self) -> ThreadPoolExecutor:
        """The one thread that records ended batches, started on first use.

        It runs on ``host_cores``: encoding results and waiting on Redis is the
        service's work, and the cores the model process is pinned to are the model's.
        """
        if self._recorder_pool is None:
            cores = self.host_cores
            self._recorder_pool = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="gpuq-recorder",
                initializer=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
        return self._recorder_pool

    def _wait_recorded(self, recording: _Recording | None) -> None:
        """Until ``recording``'s batch is recorded; if that failed, its locks are released and it raises."""
        if recording is not None:
            self._settle(recording.batch, recording.future.result)

    def _settle(self, held: list[_Claimed], step, claiming: _Claiming | None = None):
        """``step()``; if it raises, the locks of ``held`` and of the jobs ``claiming`` took are released first.

        A job left unfinished (Redis gone for minutes, say) is then the janitor's
        to deliver again: running, and nobody holds its lock. After a device fault
        they all go back to their queues at once instead (``_hand_back``).
        """
        try:
            return step()
        except BaseException as error:
            fault = error if isinstance(error, DeviceFault) else None
            unran: list[_Claimed] = []  # claimed for the next batch: never on the broken device
            if claiming is not None:
                if fault is not None:
                    claiming.abandoned.set()
                claiming.predicted.set()
                try:
                    unran = claiming.future.result()
                except Exception:  # Redis gone: what that claim took is left to the lock's TTL
                    log.warning("could not learn which jobs were claimed for the next batch", exc_info=True)
            if fault is None:
                self._release([*held, *unran])
            else:
                self.device_broken = fault
                self._hand_back(held, unran, fault)
            raise

    def _hand_back(self, ran: list[_Claimed], unran: list[_Claimed], fault: DeviceFault) -> None:
        """Every job of ``ran`` and ``unran`` back to its queue after the GPU broke, its attempt not counted.

        The fault is counted on the jobs that ran when it struck (unless ``blame_jobs``
        says the GPU is taken for the cause), and a job at its ``FAULTS_BEFORE_FAILING_A_JOB``-th
        fails instead (``device_error``); one canceled meanwhile ends canceled. If Redis
        cannot be reached the locks are released, and the janitor delivers the jobs again.
        """
        blamed, ran_ids = self.blame_jobs(), {claimed.job_id for claimed in ran}
        held = [*ran, *unran]
        if not held:
            return
        error = {"code": "device_error", "message": (
            f"the GPU failed under this job {FAULTS_BEFORE_FAILING_A_JOB} times, in different model "
            f"processes (the last: {fault}); it is taken for the cause and not run again")}
        try:
            writes, now = Pipelined(self.store.redis), time.time()
            sent = {}
            for claimed in held:
                analyzer, queue = claimed.record.analyzer, queue_for(claimed.record.analyzer)
                sent[claimed.job_id] = self.lifecycle.queue_hand_back(
                    writes, claimed.job_id, claimed.token, claimed.holder, queue=queue,
                    message=job_message(self.backend.app, claimed.job_id, analyzer, queue), error=error, now=now,
                    most_faults=FAULTS_BEFORE_FAILING_A_JOB, blame=blamed and claimed.job_id in ran_ids)
            replies = writes.execute()
        except Exception:
            log.warning("could not give back the jobs of a batch whose GPU broke; left to the janitor", exc_info=True)
            self._release(held)
            return
        for claimed in held:
            end = self.lifecycle.parse_end(replies[sent[claimed.job_id]])
            with logs.job_context(claimed.job_id):
                if end.written and end.status == FAILED:
                    log.error("job %s: failed, the GPU broke under it %d times (%s)", claimed.job_id,
                              FAULTS_BEFORE_FAILING_A_JOB, fault)
                    if is_batch_member(claimed.holder):
                        self.member_events.failed(claimed.job_id, JobFailed(_failure_text({"error": error})))
                elif end.written:
                    log.warning("job %s: %s after the GPU broke under its batch (%s)", claimed.job_id,
                                "back in its queue" if end.status == "queued" else end.status, fault)
                    if is_batch_member(claimed.holder):
                        self.member_events.retried(claimed.job_id, fault)
                else:
                    self._report_refused(claimed, end)

    def _release(self, held: list[_Claimed]) -> None:
        """Let go of ``held``'s locks: jobs left running for the janitor to deliver again."""
        if held:
            self.lock.release_many({c.job_id: c.holder for c in held})

    def _may_run_on(self, analyzer: Analyzer, lead: _Claimed, began: float) -> bool:
        """Whether this task may take one more batch of ``analyzer``'s waiting jobs.

        Only a batching analyzer runs on, and only for ``run_on_seconds`` after the
        task began, so Flower and a warm shutdown wait no longer than that and one
        batch; once the last batch's end found jobs of the worker's other analyzers
        waiting, only for ``fair_share_seconds``: Celery then delivers the next job,
        which may be theirs. Each hand-back costs the model tens of milliseconds
        (the last batch's recording, Celery's round trip, the next lead's claim),
        which is why a worker that has nothing else to do runs on for longer.
        """
        limit = self.fair_share_seconds if self._others_waiting else self.run_on_seconds
        return (self.batching and analyzer.max_batch_size > 1 and lead.record.attempts == 1
                and not lead.record.device_faults and time.monotonic() - began < limit)

    def _claim_lead(self, job_id: str, owner: str) -> _Claimed | None:
        started = time.time()
        fields = self._running_fields(started)
        claim = self.claimer.claim_lead(job_id, owner=owner, max_attempts=self.max_attempts, running_fields=fields)
        if claim.outcome == "locked":
            # Never twice at the same time: a redelivered copy of a message whose first
            # copy still runs elsewhere stands down; a dead holder's lock is taken over.
            if not self.lock.acquire(job_id, owner):
                log.warning("job %s is running elsewhere (lock held by %s); dropping this copy", job_id, claim.holder)
                return None
            claim = self.claimer.claim_lead(job_id, owner=owner, max_attempts=self.max_attempts,
                                            running_fields=fields)
            if claim.outcome != "claimed":
                self.lock.release(job_id, owner)
        if claim.outcome == "claimed":
            return _Claimed(claim.record, owner, started, claim.input, claim.waiting)
        if claim.outcome == "exhausted":  # the claim failed the job in the same step
            raise JobFailed(f"worker_lost: the worker running this job was lost {claim.attempts - 1} times")
        if claim.outcome == CANCELING:  # its run was stopped before it could end it
            self.lifecycle.end_unowned(job_id, CANCELED, [CANCELING])
        elif claim.outcome == "absent":
            log.warning("job %s has no record (expired or never accepted); dropping its message", job_id)
        else:
            log.info("job %s is already %s; not running it", job_id, claim.outcome)
        return None

    def _running_fields(self, started: float) -> dict[str, Any]:
        return {"status": RUNNING, "started_at": started, "worker": self.worker, "device": self.device_label,
                "progress": None}

    def _gather_members(self, lead: _Claimed, analyzer: Analyzer) -> list[_Claimed]:
        """Jobs waiting behind the lead, claimed to share its batch (none when batching is off)."""
        # A job on its second attempt runs alone: its last run may have crashed its process.
        # So does one whose GPU broke under it before: if its input broke it, it breaks no other job's run.
        if not self.batching or analyzer.max_batch_size <= 1 or lead.record.attempts > 1 or lead.record.device_faults:
            return []
        # Wait at most max_wait_ms from the lead's acceptance: a job that already
        # waited in the queue that long goes with whatever is waiting beside it.
        wait = analyzer.max_wait_ms / 1000
        wait = max(0.0, min(wait, lead.record.created_at + wait - time.time()))
        if lead.waiting == 0 and wait == 0:
            return []  # nothing behind it and no time to wait: the lead runs alone, a round trip sooner
        return self._claim_waiting(analyzer, batch_member(lead.holder), wait=wait,
                                   most=analyzer.max_batch_size - 1)

    def _claim_waiting(self, analyzer: Analyzer, holder: str, *, wait: float, most: int | None = None
                       ) -> list[_Claimed]:
        """Up to ``most`` (default ``max_batch_size``) of ``analyzer``'s waiting jobs, claimed
        for ``holder``, waiting at most ``wait`` seconds for them to come."""
        started = time.time()
        gathered = self.claimer.gather(queue_for(analyzer.name), most or analyzer.max_batch_size, owner=holder,
                                       deadline=time.monotonic() + wait,
                                       running_fields=self._running_fields(started))
        if gathered.dropped:
            log.info("dropped the messages of %d jobs no longer queued", len(gathered.dropped))
        claimed = [_Claimed(record, holder, started, data)
                   for record, data in zip(gathered.records, gathered.inputs, strict=True)]
        for member in claimed:
            self.member_events.claimed(member.job_id, member.record.analyzer)
        return claimed

    def _run_batch(self, analyzer: Analyzer, batch: list[_Claimed]) -> _BatchEnd:
        """Run ``batch`` and record every job's end."""
        return self._record_batch(analyzer, batch, self._predict_batch(analyzer, batch))

    def _predict_batch(self, analyzer: Analyzer, batch: list[_Claimed]) -> _Ran:
        """``predict`` on the batch's jobs that have a readable input; the others' ends are known already.

        Everything about one job is its own: an input or params that cannot be read fails that
        job (``invalid_input``), never its batch, and is no attempt of a lost worker."""
        ran = _Ran()
        for claimed in batch:
            if claimed.input is None:
                ran.endings[claimed.job_id] = _failure("input_expired",
                                                       "the job's input expired before it could run")
                continue
            record = claimed.record
            try:
                if record.unreadable:
                    raise strict_json.UnacceptableJson(f"its {', '.join(record.unreadable)} could not be read")
                strict_json.check(record.params)
                if record.input_media_type == JSON_MEDIA_TYPE:
                    data, media_type = strict_json.loads(claimed.input), None
                else:
                    data, media_type = claimed.input, record.input_media_type
            except strict_json.UnacceptableJson as error:
                ran.endings[claimed.job_id] = _failure("invalid_input", f"the job's input is not acceptable: {error}")
                continue
            ran.ready.append((claimed, Item(job_id=claimed.job_id, data=data, media_type=media_type,
                                            params=record.params,
                                            report_progress=ProgressWriter(self.lifecycle, claimed.job_id,
                                                                           claimed.token))))
        run_started = time.perf_counter()
        ran.outputs = predict_isolating(analyzer, [item for _, item in ran.ready]) if ran.ready else []
        ran.seconds = time.perf_counter() - run_started
        self.batches_run += 1
        return ran

    def _record_batch(self, analyzer: Analyzer, batch: list[_Claimed], ran: _Ran) -> _BatchEnd:
        """Encode the results and record every job's end."""
        endings = ran.endings
        results: dict[str, bytes | str] = {}  # job id -> result encoded as the backend stores it
        returned: dict[str, Any] = {}  # job id -> what the analyzer returned, for Flower
        for (claimed, _), output in zip(ran.ready, ran.outputs, strict=True):
            if not isinstance(output, BaseException):
                try:  # fail here, clearly, rather than in the result backend
                    encoded = encode_result(self.backend, claimed.job_id, output)
                except (TypeError, ValueError, EncodeError, RecursionError) as error:
                    output = error
            if isinstance(output, BaseException):
                code, message = _classify(output)
                if code == "analyzer_error":
                    with logs.job_context(claimed.job_id):
                        log.error("job %s: analyzer %s raised", claimed.job_id, analyzer.name, exc_info=output)
                endings[claimed.job_id] = _failure(code, message)
                continue
            results[claimed.job_id] = encoded
            returned[claimed.job_id] = output
            endings[claimed.job_id] = (SUCCEEDED, {
                "error": None,
                "timings": {"queued_ms": round((claimed.started_at - claimed.record.created_at) * 1000, 1),
                            "run_ms": round(ran.seconds * 1000, 1), "batch_size": len(ran.ready)},
                "progress": {"fraction": 1.0, "stage": "done"},
                "provenance": analyzer.provenance(),
            })
        end = self._end_batch(analyzer, batch, endings, results, ran.seconds, len(ran.ready))
        self._report_member_ends(batch, endings, returned, end.written)
        return end

    def _end_batch(self, analyzer: Analyzer, batch: list[_Claimed], endings: dict[str, tuple[str, dict[str, Any]]],
                   results: dict[str, Any], run_seconds: float, ran: int) -> _BatchEnd:
        """Every end write of the batch in one round trip: each job's end with its result (one script,
        fenced by the run's token), its metrics (fenced too), then the locks; and how many of the
        analyzer's jobs wait now."""
        writes, now = Pipelined(self.store.redis), time.time()
        key_of, ttl = partial(result_key, self.backend), result_ttl(self.backend)
        finishes = {}
        for claimed in batch:
            status, fields = endings[claimed.job_id]
            result = results.get(claimed.job_id, b"")
            finishes[claimed.job_id] = self.lifecycle.queue_finish(
                writes, claimed.job_id, claimed.token, status, fields, now=now, result=result,
                result_key=key_of(claimed.job_id) if result else "", result_ttl=ttl)
            observe_ended(writes, self.store.redis, claimed.record, status=status, started_at=claimed.started_at,
                          finished_at=now, run_seconds=run_seconds, batch_size=ran or None, token=claimed.token)
            self.observed.add(claimed.job_id)
        if results:
            record_run_seconds(writes, self.store.redis, analyzer.name, run_seconds, ran)
        for claimed in batch:
            self.lock.queue_release(writes, claimed.job_id, claimed.holder)
        # How many wait: in this analyzer's queue (to run on), and in the others' (``_may_run_on``).
        queues = [analyzer.name, *(name for name in self.analyzers if name != analyzer.name)]
        for name in queues:
            writes.pipe.llen(queue_for(name))
        replies = writes.execute()
        waiting, *others_waiting = (int(n) for n in replies[-len(queues):])
        self._others_waiting = sum(others_waiting)
        written = {job_id: self.lifecycle.parse_end(replies[index]) for job_id, index in finishes.items()}
        for claimed in batch:
            self._report_refused(claimed, written[claimed.job_id])
        first = batch[0]
        status, fields = endings[first.job_id]
        failure = None
        if status == FAILED and written[first.job_id].status == FAILED:
            failure = _failure_text(fields)
        return _BatchEnd(failure=failure, waiting=waiting, predict_seconds=run_seconds, written=written)

    def _report_member_ends(self, batch: list[_Claimed], endings: dict[str, tuple[str, dict[str, Any]]],
                            returned: dict[str, Any], written: dict[str, FencedReply]) -> None:
        """Each member's last task event, as its end was written; Celery reports the lead's from its return.

        An end refused sends none: the job is another run's now, and that run reports it."""
        now = time.time()
        for claimed in batch:
            end = written[claimed.job_id]
            if not (end.written and is_batch_member(claimed.holder)):
                continue
            job_id = claimed.job_id
            if end.status == SUCCEEDED:
                self.member_events.succeeded(job_id, returned.get(job_id), runtime=now - claimed.started_at)
            elif end.status == FAILED:
                self.member_events.failed(job_id, JobFailed(_failure_text(endings[job_id][1])))
            else:  # canceled while its batch ran
                self.member_events.revoked(job_id)

    @staticmethod
    def _report_refused(claimed: _Claimed, end: FencedReply) -> None:
        """Log an end the job state machine refused: its result is discarded, whatever it was."""
        if end.written:
            return
        with logs.job_context(claimed.job_id):
            if end.lease_lost(claimed.token):
                log.warning("job %s: this run's lease was revoked (its token %d, the job's now %s; the job is "
                            "%s): its end and result are discarded", claimed.job_id, claimed.token, end.fence,
                            end.status)
            else:
                log.info("job %s: already %s when this run ended; its end is discarded", claimed.job_id, end.status)

    def _fail_claimed(self, claimed: _Claimed, code: str, message: str) -> None:
        """End a claimed job as failed before it ran; raises ``JobFailed`` if that end was written."""
        writes = Pipelined(self.store.redis)
        index = self.lifecycle.queue_finish(writes, claimed.job_id, claimed.token, FAILED,
                                            {"error": {"code": code, "message": message}}, now=time.time())
        self.lock.queue_release(writes, claimed.job_id, claimed.holder)
        end = self.lifecycle.parse_end(writes.execute()[index])
        self._report_refused(claimed, end)
        if end.written:
            raise JobFailed(f"{code}: {message}")


def _failure(code: str, message: str) -> tuple[str, dict[str, Any]]:
    return FAILED, {"error": {"code": code, "message": message}}


def _failure_text(fields: dict[str, Any]) -> str:
    """A failed job's error as its task's failure reads in Flower: ``code: message``."""
    return f"{fields['error']['code']}: {fields['error']['message']}"


def _classify(error: BaseException) -> tuple[str, str]:
    if isinstance(error, LeaseLost):  # refused at its end like everything else this run writes
        return "lease_lost", str(error)
    if isinstance(error, AnalyzerError):
        return error.code, str(error)
    if isinstance(error, SoftTimeLimitExceeded):
        return "timeout", "the job ran past its time limit"
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return OutOfMemory.code, f"out of memory: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    if isinstance(error, (TypeError, ValueError, EncodeError)) and "JSON serializable" in str(error):
        return "analyzer_error", f"the analyzer returned a result that is not JSON: {error}"
    return "analyzer_error", f"{type(error).__name__}: {error}"
