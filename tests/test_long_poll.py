"""api/waiting.py against the session's real Redis: a long-poll reads the record when it may have ended."""

from __future__ import annotations

import threading
import time

from api.waiting import wait_for_terminal
from tasks import keys
from tasks.jobs import JobRecord


def _record(status: str) -> JobRecord:
    return JobRecord.from_hash({b"id": b"j1", b"status": status.encode(), b"analyzer": b"echo", b"created_at": b"1"})


class Job:
    """A job whose status a test changes, publishing as the store does; counts the waiter's reads."""

    def __init__(self, redis_client, job_id: str):
        self.redis, self.job_id, self.status, self.reads = redis_client, job_id, "queued", 0

    def read(self):
        self.reads += 1
        return _record(self.status), f"read {self.reads}"

    def change(self, status: str, after: float) -> threading.Thread:
        def later():
            time.sleep(after)
            self.status = status
            self.redis.publish(keys.job_events(self.job_id), status)
        thread = threading.Thread(target=later)
        thread.start()
        return thread


def test_a_wait_reads_again_only_when_the_job_may_have_ended(redis_client):
    job = Job(redis_client, "long-poll-1")
    changes = [job.change("running", 0.1)]
    for n in range(5):  # progress updates publish the status they found
        changes.append(job.change("running", 0.15 + n * 0.02))
    changes.append(job.change("succeeded", 0.4))
    began = time.monotonic()
    record, extra = wait_for_terminal(redis_client, job.read, job.job_id, timeout=5)
    assert record.status == "succeeded" and time.monotonic() - began < 0.9
    assert job.reads == 2 and extra == "read 2"  # once after subscribing, once at the end
    for thread in changes:
        thread.join()


def test_a_wait_without_messages_still_reads_once_a_second_and_answers_at_its_deadline(redis_client):
    job = Job(redis_client, "long-poll-2")
    began = time.monotonic()
    record, _ = wait_for_terminal(redis_client, job.read, job.job_id, timeout=2.5)
    assert record.status == "queued" and 2.4 < time.monotonic() - began < 3.0
    assert job.reads == 4  # at 0, 1, 2 and at the deadline


def test_a_message_on_another_channel_is_let_pass(redis_client):
    job = Job(redis_client, "long-poll-3")
    other = threading.Thread(target=lambda: (time.sleep(0.1), redis_client.publish(keys.job_events("x"), "succeeded")))
    other.start()
    finish = job.change("failed", 0.3)
    record, _ = wait_for_terminal(redis_client, job.read, job.job_id, timeout=5)
    assert record.status == "failed" and job.reads == 2
    other.join()
    finish.join()
