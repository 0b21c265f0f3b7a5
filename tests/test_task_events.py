"""Task events, Flower's feed: every job's received, started and succeeded (or failed) reach a
listener, several events to one publish, and none is lost when the worker stops; the jobs a
batch takes from the queue itself (its members) send the same events as the job Celery delivered.

Listens as Flower does (Celery's event ``Receiver`` on the broker) and, beside it,
counts the publishes on Redis's event channels.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
import redis as redis_lib
import requests
from celery import Celery

from gpu_worker.joblock import JobLock
from gpu_worker.runner import JobRunner
from tasks.app import queue_for
from tasks.jobs import CANCELING, RUNNING, JobStore
from tasks.submission import submit_job
from tests.fixtures.batching import Batcher, batches
from tests.stack import ROOT, Stack, wait_for_status

TASK_EVENTS = ("task-received", "task-started", "task-succeeded")
ENDS = ("task-succeeded", "task-failed")
#: A PNG cut short: accepted at submit, it fails decoding in the worker (invalid_input).
BROKEN_PNG = (ROOT / "examples" / "seven.png").read_bytes()[:100]


class EventListener:
    """Celery's event receiver (what Flower runs) and a raw count of event publishes, both in threads."""

    def __init__(self, redis_url: str):
        self.events: list[dict] = []
        self.publishes: list[list[dict]] = []  # the task events each publish carried
        app = Celery("listener", broker=redis_url)
        app.conf.update(accept_content=["json"], event_serializer="json")
        self._connection = app.connection_for_read()
        self._receiver = app.events.Receiver(self._connection, handlers={"*": self.events.append})
        self._pubsub = redis_lib.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe("*celeryev*")
        self._threads = [threading.Thread(target=self._receive, daemon=True),
                         threading.Thread(target=self._count, daemon=True)]
        for thread in self._threads:
            thread.start()
        time.sleep(1)  # both subscribed before anything is sent

    def _receive(self) -> None:
        self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def _count(self) -> None:
        while not self._receiver.should_stop:
            message = self._pubsub.get_message(timeout=0.2)
            if message is None:
                continue
            envelope = json.loads(message["data"])
            body = json.loads(base64.b64decode(envelope["body"]))
            events = body if isinstance(body, list) else [body]
            task_events = [e for e in events if e.get("type", "").startswith("task-")]
            if task_events:
                self.publishes.append(task_events)

    def of_job(self, job_id: str) -> list[str]:
        return [e["type"] for e in list(self.events) if e.get("uuid") == job_id]

    def event(self, job_id: str, kind: str) -> dict:
        return next(e for e in list(self.events) if e.get("uuid") == job_id and e["type"] == kind)

    def wait_for(self, job_ids: list[str], timeout: float) -> None:
        """Until each job was received, started and ended (succeeded or failed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all({"task-received", "task-started"} <= set(self.of_job(j)) and set(ENDS) & set(self.of_job(j))
                   for j in job_ids):
                return
            time.sleep(0.05)
        raise AssertionError(f"events seen: {[(j, self.of_job(j)) for j in job_ids]}")

    def close(self) -> None:
        self._receiver.should_stop = True
        for thread in self._threads:
            thread.join(timeout=5)
        self._pubsub.close()
        self._connection.release()


def _run_one(url: str, n: int) -> str:
    job = requests.post(f"{url}/v1/jobs", json={"analyzer": "echo", "input": {"n": n}}, timeout=10).json()
    done = requests.get(f"{url}/v1/jobs/{job['id']}", params={"wait": 30}, timeout=40).json()
    assert done["status"] == "succeeded", done
    return job["id"]


def test_each_job_sends_its_task_events_several_to_a_publish(api, redis_server):
    listener = EventListener(redis_server.url)
    try:
        job_ids = [_run_one(api, n) for n in range(5)]
        listener.wait_for(job_ids, timeout=10)
    finally:
        listener.close()
    for job_id in job_ids:
        seen = listener.of_job(job_id)
        assert all(seen.count(kind) == 1 for kind in TASK_EVENTS), seen
        started, succeeded = listener.event(job_id, "task-started"), listener.event(job_id, "task-succeeded")
        assert started["hostname"] == succeeded["hostname"] and started["hostname"].startswith("cpu0@")
    ours = [p for p in listener.publishes if any(e.get("uuid") in job_ids for e in p)]
    events = sum(len(p) for p in ours)
    assert events == len(job_ids) * len(TASK_EVENTS)
    # Celery's own flush publishes each event alone (one publish per event); here a job's
    # events, sent within a few ms of each other, share publishes.
    assert len(ours) < events, [[e["type"] for e in p] for p in ours]


@pytest.fixture()
def slow_flush_stack(tmp_path):
    # Events wait 30 s for their flush: only the worker's stop sends them within the test.
    stack = Stack(tmp_path, analyzers="tests.fixtures.analyzers:Echo,tests.fixtures.batching:Batcher",
                  GPUQ_EVENT_FLUSH_INTERVAL="30").start()
    try:
        yield stack
    finally:
        stack.stop()


def test_events_waiting_for_their_flush_are_sent_when_the_worker_stops(slow_flush_stack):
    stack = slow_flush_stack
    listener = EventListener(stack.redis_server.url)
    try:
        job_id = _run_one(stack.url, 1)
        time.sleep(1)
        assert "task-succeeded" not in listener.of_job(job_id), "the flush did not wait its interval"
        assert stack.workers.stop(timeout=30) == 0, stack.workers.output()
        listener.wait_for([job_id], timeout=10)
    finally:
        listener.close()


def test_member_events_waiting_for_their_flush_are_sent_when_the_worker_stops(slow_flush_stack):
    stack = slow_flush_stack
    listener = EventListener(stack.redis_server.url)
    try:
        # Queued behind a running batcher job, these three run on in its task as members.
        blocker = stack.submit("batcher", input={"seconds": 1})["id"]
        stack.wait(blocker, {"running"})
        members = [stack.submit("batcher", input={"n": n})["id"] for n in range(3)]
        assert [stack.wait(m)["status"] for m in members] == ["succeeded"] * 3
        assert members in batches(stack.redis)
        time.sleep(1)
        assert not any(listener.of_job(m) for m in members), "the flush did not wait its interval"
        assert stack.workers.stop(timeout=30) == 0, stack.workers.output()
        listener.wait_for(members, timeout=10)
    finally:
        listener.close()
    assert all(sorted(listener.of_job(m)) == sorted(TASK_EVENTS) for m in members)


def _post(url: str, **request) -> str:
    response = requests.post(f"{url}/v1/jobs", timeout=10, **request)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _upload_digit(url: str, png: bytes) -> str:
    return _post(url, data={"analyzer": "digits"}, files={"file": ("digit.png", png, "image/png")})


def test_jobs_run_as_batch_members_send_the_task_events_celery_sends_for_its_own(api, redis_server):
    listener = EventListener(redis_server.url)
    try:
        # The worker is busy with a slow job while six digits jobs queue: Celery then delivers
        # the first (the lead), which takes the other five from the queue as its batch's members.
        blocker = _post(api, json={"analyzer": "simulate", "input": None, "params": {"seconds": 2}})
        wait_for_status(api, blocker, {"running"})
        seven = (ROOT / "examples" / "seven.png").read_bytes()
        job_ids = [_upload_digit(api, BROKEN_PNG if n == 3 else seven) for n in range(6)]
        ends = [wait_for_status(api, job_id, {"succeeded", "failed"}, timeout=60) for job_id in job_ids]
        listener.wait_for([blocker, *job_ids], timeout=10)
    finally:
        listener.close()
    assert [end["status"] for end in ends] == ["succeeded"] * 3 + ["failed"] + ["succeeded"] * 2, ends
    assert ends[3]["error"]["code"] == "invalid_input"
    assert {end["timings"]["batch_size"] for end in ends if end["status"] == "succeeded"} == {6}

    # Celery's events leave from the worker's main process, the members' from its pool child.
    celerys = listener.event(blocker, "task-received")["pid"]
    lead, *members = sorted(job_ids, key=lambda j: listener.event(j, "task-received")["pid"] != celerys)
    assert listener.event(lead, "task-received")["pid"] == celerys
    assert all(listener.event(m, "task-received")["pid"] != celerys for m in members) and len(members) == 5
    assert job_ids[3] in members, "the bad input must be a member for its failure to be one"

    for job_id, end in zip(job_ids, ends, strict=True):
        seen = listener.of_job(job_id)
        last = "task-succeeded" if end["status"] == "succeeded" else "task-failed"
        assert sorted(seen) == sorted(["task-received", "task-started", last]), (job_id, seen)
    for kind in ("task-received", "task-started", "task-succeeded"):
        theirs = listener.event(lead, kind)
        for member in (m for m in members if m != job_ids[3] or kind != "task-succeeded"):
            ours = listener.event(member, kind)
            assert ours.keys() == theirs.keys(), (kind, sorted(ours), sorted(theirs))
            assert ours["hostname"] == theirs["hostname"] and ours["hostname"].startswith("cpu0@")
            for field in ("name", "kwargs", "parent_id", "retries", "eta", "expires"):
                assert ours.get(field) == theirs.get(field), (kind, field, ours, theirs)
            if kind == "task-received":  # these name the job: the same, with its own id
                assert ours["args"] == theirs["args"].replace(lead, member) and theirs["root_id"] == lead
                assert ours["root_id"] == member, ours
    # A member's result is summarized as Celery summarizes a task's return value (the lead's task returns None).
    member_success = listener.event(members[0], "task-succeeded")
    assert member_success["runtime"] > 0 and "'digit': 7" in member_success["result"], member_success
    failure = listener.event(job_ids[3], "task-failed")
    assert failure["exception"].startswith("JobFailed('invalid_input: "), failure
    assert failure["hostname"] == listener.event(lead, "task-started")["hostname"]


def test_a_member_canceled_while_its_batch_runs_shows_as_revoked(redis_server, redis_client, celery_app):
    store = JobStore(redis_client, result_ttl=600, tombstone_ttl=600, input_ttl=600)
    analyzer = Batcher()
    analyzer.setup("cpu")
    redis_client.delete(queue_for(analyzer.name))
    runner = JobRunner(store, celery_app.backend, {analyzer.name: analyzer}, worker="events-test",
                       device_label="cpu", max_attempts=3, lock=JobLock(store.lifecycle, ttl=60, local_worker="x"))
    lead, member = (submit_job(store, celery_app, analyzer=analyzer.name, input_bytes=json.dumps(data).encode(),
                               input_media_type="application/json", params={}).job_id
                    for data in ({"seconds": 1}, {"n": 1}))
    redis_client.rpop(queue_for(analyzer.name))  # the lead's message, taken as Celery's consumer does
    listener = EventListener(redis_server.url)
    try:
        batch = threading.Thread(target=runner.run, args=(lead,))
        batch.start()
        deadline = time.monotonic() + 10
        while store.get(member).status != RUNNING:  # claimed as the lead's member; the batch sleeps 1 s
            assert time.monotonic() < deadline, store.get(member)
            time.sleep(0.01)
        assert store.lifecycle.cancel(member) == (CANCELING, None)
        batch.join(timeout=10)
        deadline = time.monotonic() + 10
        while "task-revoked" not in listener.of_job(member):
            assert time.monotonic() < deadline, listener.of_job(member)
            time.sleep(0.05)
    finally:
        listener.close()
    assert listener.of_job(member) == ["task-received", "task-started", "task-revoked"]
    assert listener.event(member, "task-revoked")["hostname"] == "events-test"
    assert listener.of_job(lead) == [], "the lead's events are Celery's, not the runner's"
