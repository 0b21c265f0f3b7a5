"""Job records against a real Redis: status changes are atomic and announced."""

from __future__ import annotations

import time

import pytest

from tasks import keys
from tasks.jobs import CANCELED, QUEUED, RUNNING, SUCCEEDED, JobRecord, JobStore


@pytest.fixture
def store(redis_client):
    return JobStore(redis_client, result_ttl=100, tombstone_ttl=1000, input_ttl=50)


def _new(store: JobStore, job_id: str) -> None:
    pipe = store.redis.pipeline()
    store.create_in(pipe, JobRecord(id=job_id, analyzer="a", status=QUEUED, created_at=time.time(),
                                    params={"x": 1}), b"input")
    pipe.execute()


def test_create_writes_record_and_input_with_ttls(store, redis_client):
    _new(store, "s1")
    record = store.get("s1")
    assert record.status == QUEUED and record.params == {"x": 1} and record.attempts == 0
    assert 0 < redis_client.ttl(keys.job_input("s1")) <= 50
    assert 1000 < redis_client.ttl(keys.job("s1")) <= 1150


def test_cancel_wins_over_a_later_start(store):
    _new(store, "s2")
    assert store.finish("s2", CANCELED, [QUEUED])
    written, status = store.transition("s2", [QUEUED, RUNNING], RUNNING, worker="w")
    assert (written, status) == (False, CANCELED)
    assert store.get("s2").worker is None


def test_finish_sets_expiry_drops_input_and_publishes(store, redis_client):
    _new(store, "s3")
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.job_events("s3"))
    pubsub.get_message(timeout=1)
    assert store.transition("s3", [QUEUED], RUNNING) == (True, QUEUED)
    assert store.finish("s3", SUCCEEDED, [RUNNING])
    messages = [pubsub.get_message(timeout=1) for _ in range(2)]
    pubsub.close()
    assert [m["data"] for m in messages] == [b"running", b"succeeded"]
    record = store.get("s3")
    assert record.status == SUCCEEDED and abs(record.expires_at - record.finished_at - 100) < 1
    assert redis_client.exists(keys.job_input("s3")) == 0
    assert 1000 < redis_client.ttl(keys.job("s3")) <= 1100
    assert not store.finish("s3", CANCELED, [QUEUED, RUNNING])  # terminal stays terminal


def test_absent_job(store):
    assert store.get("nope") is None
    assert store.transition("nope", [QUEUED], RUNNING) == (False, None)
