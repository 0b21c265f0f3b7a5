"""Dynamic batching in the worker's runner, in process against the session's real Redis.

The runner is given the lead job as Celery would deliver it (its message
popped from the queue) and must gather the rest from the queue itself.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from celery.exceptions import SoftTimeLimitExceeded

from gpu_worker.device_faults import DeviceFault
from gpu_worker.joblock import JobLock
from gpu_worker.runner import JobFailed, JobRunner
from tasks import keys
from tasks.app import queue_for
from tasks.jobs import CANCELED, CANCELING, QUEUED, RUNNING, JobStore
from tasks.submission import submit_job
from tests.fixtures.batching import Batcher, Patient, batches
from tests.fixtures.device_faults import BrokenGpu


class CancelsOneMidBatch(Batcher):
    """Cancels the job whose input says so while the batch runs, as a client's DELETE would."""

    name = "cancels"

    def predict(self, batch):
        for item in batch:
            if item.data.get("cancel_me"):
                assert self.store.lifecycle.cancel(item.job_id) == (CANCELING, None)
        return super().predict(batch)


@pytest.fixture
def store(redis_client) -> JobStore:
    return JobStore(redis_client, result_ttl=600, tombstone_ttl=600, input_ttl=600)


@pytest.fixture
def make_runner(store, celery_app, redis_client):
    def make(analyzer_class=Batcher, batching: bool = True) -> JobRunner:
        analyzer = analyzer_class()
        analyzer.setup("cpu")
        analyzer.store = store
        redis_client.delete(f"test:batches:{analyzer.name}", queue_for(analyzer.name))
        return JobRunner(store, celery_app.backend, {analyzer.name: analyzer}, worker="batch-test",
                         device_label="cpu", max_attempts=3,
                         lock=JobLock(store.lifecycle, ttl=60, local_worker="batch-test"), batching=batching)
    return make


@pytest.fixture
def submit(store, celery_app):
    def submit(data: dict, analyzer: str = "batcher") -> str:
        return submit_job(store, celery_app, analyzer=analyzer, input_bytes=json.dumps(data).encode(),
                          input_media_type="application/json", params={}).job_id
    return submit


def deliver(redis_client, analyzer: str = "batcher") -> str:
    """Take the next message off the queue, as Celery's consumer does, and return its job id."""
    raw = redis_client.rpop(queue_for(analyzer))
    assert raw is not None, "the queue is empty"
    return json.loads(raw)["headers"]["id"]


def result_of(celery_app, job_id: str):
    meta = celery_app.backend.get_task_meta(job_id)
    assert meta["status"] == "SUCCESS", meta
    return meta["result"]


def test_waiting_jobs_run_in_one_batch_each_with_its_own_result(make_runner, submit, store, redis_client,
                                                                 celery_app):
    runner = make_runner()
    ids = [submit({"n": n}) for n in range(5)]
    runner.run(deliver(redis_client))
    assert batches(redis_client) == [ids]
    for n, job_id in enumerate(ids):
        record = store.get(job_id)
        assert record.status == "succeeded" and record.attempts == 1
        assert record.timings["batch_size"] == 5 and record.worker == "batch-test"
        assert result_of(celery_app, job_id) == {"echo": {"n": n}, "batch": 5}
        assert redis_client.get(keys.job_lock(job_id)) is None
        assert redis_client.get(keys.job_input(job_id)) is None
    assert not set(ids) & set(store.running_ids())
    assert redis_client.llen(queue_for("batcher")) == 0
    assert runner.handled == ids


def test_a_lead_with_nothing_behind_it_runs_without_looking_for_more(make_runner, submit, store, redis_client,
                                                                    celery_app):
    runner = make_runner()
    looks = []
    gather = runner.claimer.gather
    runner.claimer.gather = lambda *a, **kw: looks.append(1) or gather(*a, **kw)
    lead = submit({"n": 0})
    runner.run(deliver(redis_client))
    assert looks == []  # the claim said the queue was empty: no round trip to gather from it
    assert store.get(lead).status == "succeeded" and result_of(celery_app, lead) == {"echo": {"n": 0}, "batch": 1}
    ids = [submit({"n": n}) for n in range(3)]
    runner.run(deliver(redis_client))
    assert looks == [1] and batches(redis_client)[-1] == ids


def test_the_lead_claim_counts_the_messages_behind_it(make_runner, submit, redis_client):
    runner = make_runner()
    ids = [submit({"n": n}) for n in range(3)]
    lead = deliver(redis_client)
    claim = runner.claimer.claim_lead(lead, owner="counting", max_attempts=3, running_fields={"status": RUNNING})
    assert claim.outcome == "claimed" and claim.record.id == ids[0]
    assert claim.waiting == 2


def test_batching_off_runs_the_delivered_job_alone(make_runner, submit, store, redis_client):
    runner = make_runner(batching=False)
    ids = [submit({"n": n}) for n in range(3)]
    runner.run(deliver(redis_client))
    assert batches(redis_client) == [ids[:1]]
    assert store.get(ids[0]).timings["batch_size"] == 1
    assert [store.get(i).status for i in ids[1:]] == [QUEUED, QUEUED]
    assert redis_client.llen(queue_for("batcher")) == 2


def test_a_bad_input_fails_only_its_own_job(make_runner, submit, store, redis_client, celery_app):
    runner = make_runner()
    ids = [submit({"n": 0}), submit({"n": 1}), submit({"bad": True}), submit({"n": 3})]
    runner.run(deliver(redis_client))
    bad = store.get(ids[2])
    assert bad.status == "failed" and bad.error["code"] == "analyzer_error"
    assert "cannot read one of the inputs" in bad.error["message"]
    for job_id in ids[:2] + ids[3:]:
        assert store.get(job_id).status == "succeeded"
        assert result_of(celery_app, job_id)["echo"] != {"bad": True}
    calls = batches(redis_client)
    assert calls[0] == ids and [ids[2]] in calls  # the whole batch first, then split down to the culprit


def test_the_lead_failing_fails_its_celery_task_after_the_batch_is_recorded(make_runner, submit, store,
                                                                            redis_client):
    runner = make_runner()
    ids = [submit({"bad": True}), submit({"n": 1})]
    with pytest.raises(JobFailed, match="analyzer_error"):
        runner.run(deliver(redis_client))
    assert [store.get(i).status for i in ids] == ["failed", "succeeded"]


def test_a_job_canceled_while_queued_is_left_out(make_runner, submit, store, redis_client):
    runner = make_runner()
    ids = [submit({"n": n}) for n in range(3)]
    assert store.lifecycle.cancel(ids[1]) == (CANCELED, None)  # what DELETE does to a queued job
    runner.run(deliver(redis_client))
    assert batches(redis_client) == [[ids[0], ids[2]]]
    assert store.get(ids[1]).status == CANCELED and store.get(ids[1]).attempts == 0
    assert redis_client.llen(queue_for("batcher")) == 0  # its message dropped, not left behind


def test_a_job_canceled_while_its_batch_runs_ends_canceled(make_runner, submit, store, redis_client):
    runner = make_runner(CancelsOneMidBatch)
    ids = [submit({"n": 0}, "cancels"), submit({"cancel_me": True}, "cancels"), submit({"n": 2}, "cancels")]
    runner.run(deliver(redis_client, "cancels"))
    assert [store.get(i).status for i in ids] == ["succeeded", CANCELED, "succeeded"]


def test_a_job_that_had_an_attempt_is_left_to_celery_and_runs_alone(make_runner, submit, store, redis_client):
    runner = make_runner()
    ids = [submit({"n": n}) for n in range(3)]
    redis_client.hset(keys.job(ids[1]), "attempts", 1)  # its last run's process died
    runner.run(deliver(redis_client))
    assert batches(redis_client) == [ids[:1]]
    assert deliver(redis_client) == ids[1]  # put back where Celery takes the next message
    runner.run(ids[1])
    assert batches(redis_client) == [ids[:1], ids[1:2]]
    assert store.get(ids[1]).attempts == 2 and store.get(ids[1]).status == "succeeded"
    assert store.get(ids[2]).status == QUEUED


def test_a_batch_whose_gpu_broke_goes_back_to_the_queue_and_its_jobs_then_run_alone(make_runner, submit, store,
                                                                                   redis_client):
    runner = make_runner(BrokenGpu)
    ids = [submit({"n": n}, analyzer="brokengpu") for n in range(4)]
    BrokenGpu.broken = True
    try:
        with pytest.raises(DeviceFault):
            runner.run(deliver(redis_client, "brokengpu"))
    finally:
        BrokenGpu.broken = False
    for job_id in ids:
        record = store.get(job_id)
        assert (record.status, record.attempts, record.device_faults) == (QUEUED, 0, 1)
    assert redis_client.get(keys.job_lock(ids[0])) is None
    # Each is now left to Celery and runs alone: if its input broke the GPU, it breaks no other job's run.
    lead = deliver(redis_client, "brokengpu")
    runner.run(lead)
    assert runner.handled == [lead] and store.get(lead).status == "succeeded"
    assert redis_client.llen(queue_for("brokengpu")) == 3


class BreaksOnItsSecondBatch(Batcher):
    """Runs batches until its second, under which its GPU breaks (a sticky CUDA error)."""

    name = "breaks"

    def predict(self, batch):
        if len(batches(self.redis, self.name)) == 1:
            self.redis.rpush(f"test:batches:{self.name}", json.dumps([item.job_id for item in batch]))
            time.sleep(0.3)  # long enough for the next batch to be claimed meanwhile
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
        return super().predict(batch)


def test_a_fault_while_running_on_counts_only_on_the_batch_it_struck(make_runner, submit, store, redis_client):
    runner = make_runner(BreaksOnItsSecondBatch)
    ids = [submit({"n": n}, analyzer="breaks") for n in range(24)]
    with pytest.raises(DeviceFault):
        runner.run(deliver(redis_client, "breaks"))
    first, struck = batches(redis_client, "breaks")
    assert all(store.get(i).status == "succeeded" for i in first)
    assert runner.device_broken is not None and runner.batches_run == 1
    faults = {i: store.get(i).device_faults for i in ids if i not in first}
    assert {i for i, n in faults.items() if n} == set(struck)  # the batch claimed meanwhile never ran: not blamed
    assert all(store.get(i).status == QUEUED and store.get(i).attempts == 0 for i in faults)


def test_a_message_that_is_not_json_is_refused_and_the_batch_goes_on(make_runner, submit, store, redis_client):
    runner = make_runner()
    first = submit({"n": 0})
    pickled = json.loads(redis_client.lindex(queue_for("batcher"), 0))
    pickled["content-type"] = "application/x-python-serialize"
    pickled["headers"]["id"] = "not-a-job"
    redis_client.lpush(queue_for("batcher"), json.dumps(pickled))
    second = submit({"n": 1})
    runner.run(deliver(redis_client))
    assert batches(redis_client) == [[first, second]]
    assert redis_client.llen(queue_for("batcher")) == 0


def test_a_batch_waits_up_to_max_wait_for_more_jobs(make_runner, submit, store, redis_client):
    runner = make_runner(Patient)
    lead = submit({"n": 0}, "patient")
    later = threading.Timer(0.3, lambda: submit({"n": 1}, "patient"))
    later.start()
    began = time.monotonic()
    runner.run(deliver(redis_client, "patient"))
    later.join()
    assert len(batches(redis_client, "patient")[0]) == 2
    assert store.get(lead).timings["batch_size"] == 2
    assert time.monotonic() - began < 1.5 + 1.0  # never past max_wait_ms (plus the run itself)


def test_a_job_that_already_waited_max_wait_does_not_wait_more(make_runner, submit, store, redis_client):
    runner = make_runner(Patient)
    lead = submit({"n": 0}, "patient")
    redis_client.hset(keys.job(lead), "created_at", repr(time.time() - 5))  # queued 5 s behind others
    began = time.monotonic()
    runner.run(deliver(redis_client, "patient"))
    assert time.monotonic() - began < 0.5
    assert batches(redis_client, "patient") == [[lead]]


def test_a_copy_of_a_job_whose_lock_a_live_process_holds_stands_down(make_runner, submit, store, redis_client):
    import subprocess
    import sys

    runner = make_runner()
    job_id = submit({"n": 0})
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        redis_client.set(keys.job_lock(job_id), f"batch-test|{other.pid}|1")  # another live process of this worker
        runner.run(deliver(redis_client))
    finally:
        other.kill()
        other.wait()
    assert batches(redis_client) == [] and store.get(job_id).status == QUEUED


def test_a_lock_left_by_a_dead_process_is_taken_over(make_runner, submit, store, redis_client):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    runner = make_runner()
    job_id = submit({"n": 0})
    redis_client.set(keys.job_lock(job_id), f"batch-test|{dead}|1")
    runner.run(deliver(redis_client))
    assert store.get(job_id).status == "succeeded" and redis_client.get(keys.job_lock(job_id)) is None


class ReturnsNonJson(Batcher):
    name = "nonjson"

    def predict(self, batch):
        return [{"value": object()} if item.data.get("odd") else {"ok": True} for item in batch]


def test_a_result_that_is_not_json_fails_only_its_job(make_runner, submit, store, redis_client, celery_app):
    runner = make_runner(ReturnsNonJson)
    ids = [submit({"odd": False}, "nonjson"), submit({"odd": True}, "nonjson")]
    runner.run(deliver(redis_client, "nonjson"))
    assert result_of(celery_app, ids[0]) == {"ok": True}
    failed = store.get(ids[1])
    assert failed.status == "failed" and "not JSON" in failed.error["message"]


def test_the_task_runs_on_with_the_next_batches_while_jobs_wait(make_runner, submit, store, redis_client,
                                                                celery_app):
    runner = make_runner()  # batches of up to 8
    ids = [submit({"n": n}) for n in range(20)]
    runner.run(deliver(redis_client))
    assert batches(redis_client) == [ids[:8], ids[8:16], ids[16:]]
    for n, job_id in enumerate(ids):
        record = store.get(job_id)
        assert record.status == "succeeded" and record.attempts == 1
        assert record.timings["batch_size"] == (8 if n < 16 else 4)
        assert result_of(celery_app, job_id) == {"echo": {"n": n}, "batch": record.timings["batch_size"]}
        assert redis_client.get(keys.job_lock(job_id)) is None
    assert runner.handled == ids and runner.observed == set(ids)
    assert redis_client.llen(queue_for("batcher")) == 0 and not set(ids) & set(store.running_ids())


def test_the_task_hands_back_to_celery_once_its_run_on_time_is_spent(make_runner, submit, store, redis_client):
    runner = make_runner()
    runner.run_on_seconds = 0.0
    ids = [submit({"n": n}) for n in range(12)]
    runner.run(deliver(redis_client))
    assert batches(redis_client) == [ids[:8]]
    assert [store.get(i).status for i in ids[8:]] == [QUEUED] * 4
    assert redis_client.llen(queue_for("batcher")) == 4  # Celery delivers the next lead


def test_a_worker_with_nothing_else_waiting_runs_on_past_its_fair_share(make_runner, submit, store, redis_client):
    runner = make_runner()  # the defaults: 5 s of run-on, 1 s once other analyzers have jobs waiting
    ids = [submit({"n": n, "seconds": 0.3}) for n in range(48)]  # six batches of 0.3 s
    runner.run(deliver(redis_client))
    assert batches(redis_client) == [ids[k:k + 8] for k in range(0, 48, 8)]
    assert {store.get(i).status for i in ids} == {"succeeded"}


def test_the_task_hands_back_after_its_fair_share_once_another_analyzer_has_jobs_waiting(
        make_runner, submit, store, redis_client):
    runner = make_runner()
    other = Alone()
    other.setup("cpu")
    runner.analyzers[other.name] = other  # this worker serves a second analyzer
    redis_client.delete(queue_for(other.name))
    ids = [submit({"n": n, "seconds": 0.3}) for n in range(48)]
    theirs = submit({"n": 0}, other.name)
    runner.run(deliver(redis_client))
    ran = batches(redis_client)
    assert 2 <= len(ran) < 6, ran  # about a second of batches, then Celery's turn
    done = sum(len(b) for b in ran)
    assert [store.get(i).status for i in ids[done:]] == [QUEUED] * (48 - done)
    assert store.get(theirs).status == QUEUED and deliver(redis_client, other.name) == theirs


def test_a_job_with_an_attempt_stops_the_run_on_and_waits_for_celery(make_runner, submit, store, redis_client):
    runner = make_runner()
    ids = [submit({"n": n}) for n in range(12)]
    redis_client.hset(keys.job(ids[9]), "attempts", 1)  # its last run's process died
    runner.run(deliver(redis_client))
    assert batches(redis_client) == [ids[:8], ids[8:9]]
    assert [store.get(i).status for i in ids[9:]] == [QUEUED] * 3
    assert deliver(redis_client) == ids[9]  # next for Celery, to run alone


def test_a_failure_in_a_later_batch_fails_only_its_job_not_the_lead_task(make_runner, submit, store,
                                                                         redis_client):
    runner = make_runner()
    ids = [submit({"n": n}) for n in range(8)] + [submit({"bad": True}), submit({"n": 9})]
    runner.run(deliver(redis_client))  # no JobFailed: the lead succeeded
    assert [store.get(i).status for i in ids] == ["succeeded"] * 8 + ["failed", "succeeded"]


def test_a_failed_lead_hands_its_failure_to_celery_before_running_on(make_runner, submit, store, redis_client):
    runner = make_runner()
    ids = [submit({"bad": True})] + [submit({"n": n}) for n in range(1, 12)]
    with pytest.raises(JobFailed, match="analyzer_error"):
        runner.run(deliver(redis_client))
    assert store.get(ids[0]).status == "failed"
    assert [store.get(i).status for i in ids[1:8]] == ["succeeded"] * 7
    assert [store.get(i).status for i in ids[8:]] == [QUEUED] * 4


def test_an_analyzer_that_does_not_batch_never_runs_on(make_runner, submit, store, redis_client):
    runner = make_runner(Alone)
    ids = [submit({"n": n}, "alone") for n in range(3)]
    runner.run(deliver(redis_client, "alone"))
    assert batches(redis_client, "alone") == [ids[:1]]
    assert [store.get(i).status for i in ids[1:]] == [QUEUED] * 2


class Alone(Batcher):
    name = "alone"
    max_batch_size = 1


class SignalsEachBatch(Batcher):
    """Sets ``started`` each time a batch begins, so a test can see what ran meanwhile."""

    name = "signals"

    def setup(self, device):
        super().setup(device)
        self.started: list[threading.Event] = []

    def predict(self, batch):
        self.started.append(threading.Event())
        self.started[-1].set()
        return super().predict(batch)


def test_a_batch_that_runs_on_is_recorded_while_the_next_one_runs(make_runner, submit, store, redis_client):
    runner = make_runner(SignalsEachBatch)
    analyzer = runner.analyzers["signals"]
    ids = [submit({"n": n}, "signals") for n in range(24)]  # batches of 8: the lead's, then two that run on
    overlapped = []
    end_batch = runner._end_batch

    def end_batch_after_the_next_began(analyzer_, batch, *args):
        if batch[0].job_id == ids[8]:  # the first batch that ran on: wait for the third to start
            began = len(analyzer.started) >= 3 or _wait_for(lambda: len(analyzer.started) >= 3, 5.0)
            overlapped.append(began)
        return end_batch(analyzer_, batch, *args)

    runner._end_batch = end_batch_after_the_next_began
    runner.run(deliver(redis_client, "signals"))
    assert overlapped == [True]
    assert batches(redis_client, "signals") == [ids[:8], ids[8:16], ids[16:]]
    assert {store.get(i).status for i in ids} == {"succeeded"}  # every end written before run returned
    assert all(redis_client.get(keys.job_lock(i)) is None for i in ids)


def test_an_end_that_cannot_be_written_hands_its_batch_and_the_next_to_the_janitor(make_runner, submit, store,
                                                                                   redis_client):
    runner = make_runner()
    ids = [submit({"n": n}) for n in range(24)]
    end_batch = runner._end_batch

    def end_batch_failing_once(analyzer_, batch, *args):
        if batch[0].job_id == ids[8]:
            raise ConnectionError("Redis went away")
        return end_batch(analyzer_, batch, *args)

    runner._end_batch = end_batch_failing_once
    with pytest.raises(ConnectionError):
        runner.run(deliver(redis_client))
    assert {store.get(i).status for i in ids[:8]} == {"succeeded"}
    # Running, and nobody holds their locks: the janitor delivers them again.
    assert {store.get(i).status for i in ids[8:]} == {RUNNING}
    assert all(redis_client.get(keys.job_lock(i)) is None for i in ids)


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_gathered_job_whose_input_expired_fails_alone_and_the_batch_goes_on(make_runner, submit, store,
                                                                              redis_client, celery_app):
    runner = make_runner()
    ids = [submit({"n": n}) for n in range(3)]
    redis_client.delete(keys.job_input(ids[1]))  # its input's TTL ran out while it waited
    runner.run(deliver(redis_client))
    assert batches(redis_client) == [[ids[0], ids[2]]]
    expired = store.get(ids[1])
    assert expired.status == "failed" and expired.error["code"] == "input_expired"
    assert result_of(celery_app, ids[2]) == {"echo": {"n": 2}, "batch": 2}
    assert redis_client.get(keys.job_lock(ids[1])) is None


class WatchesTheNextBatch(Batcher):
    """In each batch after the first two, notes whether the jobs queued behind it are claimed meanwhile."""

    name = "watches"

    def predict(self, batch):
        if len(batches(self.redis, self.name)) >= 2 and batch[0].data.get("watch"):
            behind = [job_id.decode() for job_id in self.redis.lrange("test:watched", 0, -1)]
            self.claimed_meanwhile = _wait_for(
                lambda: all(self.store.get(i).status == RUNNING for i in behind), 5.0)
        return super().predict(batch)


def test_the_next_batch_is_claimed_while_the_current_one_runs(make_runner, submit, store, redis_client):
    runner = make_runner(WatchesTheNextBatch)
    analyzer = runner.analyzers["watches"]
    # The lead's batch, one that runs on (claimed after it), then the watching one, and 8 behind that.
    ids = [submit({"n": n}, "watches") for n in range(16)]
    ids += [submit({"watch": True}, "watches")] + [submit({"n": n}, "watches") for n in range(7)]
    ids += [submit({"n": n}, "watches") for n in range(8)]
    redis_client.delete("test:watched")
    redis_client.rpush("test:watched", *ids[24:])
    runner.run(deliver(redis_client, "watches"))
    assert analyzer.claimed_meanwhile is True
    assert batches(redis_client, "watches") == [ids[:8], ids[8:16], ids[16:24], ids[24:]]
    assert {store.get(i).status for i in ids} == {"succeeded"}
    assert all(redis_client.get(keys.job_lock(i)) is None for i in ids)


class TakesItsTimePerJob(Batcher):
    """Takes 0.1 s a job; in a batch led by a ``watch`` job, submits three jobs (``submit_behind``)
    and notes whether they are claimed within 0.5 s, its predict lasting as long as that takes."""

    name = "per-job"

    def predict(self, batch):
        began = time.monotonic()
        if batch[0].data.get("watch"):
            behind = self.submit_behind()
            self.claimed_meanwhile = _wait_for(
                lambda: all(self.store.get(i).status == RUNNING for i in behind), 0.5)
        time.sleep(max(0.0, 0.1 * len(batch) - (time.monotonic() - began)))
        return super().predict(batch)


def test_a_smaller_batch_has_the_next_claimed_before_its_shorter_predict_ends(make_runner, submit, store,
                                                                            redis_client):
    runner = make_runner(TakesItsTimePerJob)
    analyzer = runner.analyzers["per-job"]
    behind: list[str] = []
    analyzer.submit_behind = lambda: behind.extend(submit({"n": n}, "per-job") for n in range(3)) or behind
    # A batch of 8 (0.8 s), then one of 2, whose claim of the next is due by its own size (about
    # 0.3 s in), not the last batch's 0.8 s: the three jobs it submits are claimed while it runs.
    ids = [submit({"n": n}, "per-job") for n in range(8)]
    ids += [submit({"watch": True}, "per-job"), submit({"n": 8}, "per-job")]
    runner.run(deliver(redis_client, "per-job"))
    assert analyzer.claimed_meanwhile is True
    assert batches(redis_client, "per-job") == [ids[:8], ids[8:], behind]
    assert {store.get(i).status for i in ids + behind} == {"succeeded"}


class Interrupted(BaseException):
    """Stands for what no analyzer raises and nothing catches (an interpreter shutting down, say)."""


class RaisesInTheThirdBatch(Batcher):
    """Its third call runs, then raises ``error``: the batch after it is claimed by then."""

    name = "interrupted"
    error: type[BaseException] = Interrupted

    def predict(self, batch):
        results = super().predict(batch)
        if len(batches(self.redis, self.name)) == 3:
            raise self.error()
        return results


def test_a_batch_that_ends_the_task_leaves_it_and_the_batch_claimed_behind_it_to_the_janitor(
        make_runner, submit, store, redis_client):
    runner = make_runner(RaisesInTheThirdBatch)
    ids = [submit({"n": n}, "interrupted") for n in range(40)]
    with pytest.raises(Interrupted):
        runner.run(deliver(redis_client, "interrupted"))
    assert {store.get(i).status for i in ids[:16]} == {"succeeded"}
    # The third batch and the fourth, claimed while the third ran: running, and nobody holds their locks.
    assert {store.get(i).status for i in ids[16:32]} == {RUNNING}
    assert all(redis_client.get(keys.job_lock(i)) is None for i in ids)
    assert [store.get(i).status for i in ids[32:]] == [QUEUED] * 8
    assert redis_client.llen(queue_for("interrupted")) == 8


class TimesOutInTheThirdBatch(RaisesInTheThirdBatch):
    """Its third batch ends as the task's soft time limit would end it."""

    name = "times-out"
    error = SoftTimeLimitExceeded


def test_a_time_limit_in_a_batch_that_ran_on_ends_the_run_on(make_runner, submit, store, redis_client):
    runner = make_runner(TimesOutInTheThirdBatch)
    ids = [submit({"n": n}, "times-out") for n in range(40)]
    runner.run(deliver(redis_client, "times-out"))  # the lead's job succeeded in the first batch
    assert batches(redis_client, "times-out") == [ids[:8], ids[8:16], ids[16:24]]
    assert {store.get(i).status for i in ids[:16]} == {"succeeded"}
    assert {store.get(i).error["code"] for i in ids[16:24]} == {"timeout"}
    # Claimed while the third batch ran, never run: for the janitor to deliver again.
    assert {store.get(i).status for i in ids[24:32]} == {RUNNING}
    assert all(redis_client.get(keys.job_lock(i)) is None for i in ids)
    assert [store.get(i).status for i in ids[32:]] == [QUEUED] * 8
