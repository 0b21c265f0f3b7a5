"""Task events, Flower's feed: every job's received, started and succeeded reach a listener,
several events to one publish, and none is lost when the worker stops.

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

from tests.stack import Stack

TASK_EVENTS = ("task-received", "task-started", "task-succeeded")


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

    def wait_for(self, job_ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(set(TASK_EVENTS) <= set(self.of_job(j)) for j in job_ids):
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
        started = next(e for e in listener.events if e.get("uuid") == job_id and e["type"] == "task-started")
        succeeded = next(e for e in listener.events if e.get("uuid") == job_id and e["type"] == "task-succeeded")
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
    stack = Stack(tmp_path, analyzers="tests.fixtures.analyzers:Echo", GPUQ_EVENT_FLUSH_INTERVAL="30").start()
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
