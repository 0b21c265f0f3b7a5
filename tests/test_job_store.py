"""Job records against a real Redis: status changes are atomic and announced."""

from __future__ import annotations

import base64
import json
import time

import pytest

from tasks import keys
from tasks import metrics as job_metrics
from tasks.jobs import CANCELED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore
from tasks.pipelined import Pipelined
from tasks.submission import STAGE_INPUT_BYTES, IdempotencyConflict, QueueFull, submit_job


@pytest.fixture
def store(redis_client):
    return JobStore(redis_client, result_ttl=100, tombstone_ttl=1000, input_ttl=50)


@pytest.fixture
def new_job(store, celery_app):
    """Accepts a job on a queue no worker reads; returns its id."""
    def make(**extra) -> str:
        accepted = submit_job(store, celery_app, analyzer="storetest", input_bytes=b"input",
                              input_media_type="application/json", params={"x": 1}, **extra)
        return accepted.job_id
    yield make
    store.redis.delete("gpuq.storetest")


def test_submit_writes_record_input_and_message_with_ttls(store, redis_client, new_job):
    job_id = new_job()
    record = store.get(job_id)
    assert record.status == QUEUED and record.params == {"x": 1} and record.attempts == 0
    assert redis_client.get(keys.job_input(job_id)) == b"input"
    assert 0 < redis_client.ttl(keys.job_input(job_id)) <= 50
    assert 1000 < redis_client.ttl(keys.job(job_id)) <= 1150
    message = json.loads(redis_client.lindex("gpuq.storetest", 0))
    assert message["headers"]["task"] == "gpuq.run" and message["headers"]["id"] == job_id
    assert message["content-type"] == "application/json"  # never pickle
    assert json.loads(base64.b64decode(message["body"]))[0] == [job_id]


def test_get_with_reads_the_record_and_another_key_together(store, new_job):
    job_id = new_job()
    record, value = store.get_with(job_id, keys.job_input(job_id))
    assert record == store.get(job_id) and value == b"input"
    assert store.get_with("no-such-job", keys.job_input("no-such-job")) == (None, None)


def test_queue_depth_limit_refuses_without_writing(store, redis_client, new_job):
    new_job(max_queue_depth=2)
    new_job(max_queue_depth=2)
    jobs_before = len(list(redis_client.scan_iter("gpuq:job:*")))
    with pytest.raises(QueueFull):
        new_job(max_queue_depth=2)
    assert redis_client.llen("gpuq.storetest") == 2
    assert len(list(redis_client.scan_iter("gpuq:job:*"))) == jobs_before


def test_idempotency_key_replays_the_same_job(store, celery_app, redis_client, new_job):
    first = new_job(idempotency_key="order-17")
    again = submit_job(store, celery_app, analyzer="storetest", input_bytes=b"input",
                       input_media_type="application/json", params={"x": 1}, idempotency_key="order-17")
    assert again.replayed and again.job_id == first
    assert redis_client.llen("gpuq.storetest") == 1
    with pytest.raises(IdempotencyConflict):
        submit_job(store, celery_app, analyzer="storetest", input_bytes=b"other",
                   input_media_type="application/json", params={"x": 1}, idempotency_key="order-17")


def _inputs(redis_client) -> set[bytes]:
    return set(redis_client.scan_iter(keys.job_input("*")))


def test_a_large_input_is_staged_and_stored_whole(store, celery_app, redis_client):
    data = bytes(range(256)) * ((STAGE_INPUT_BYTES // 256) + 40)
    accepted = submit_job(store, celery_app, analyzer="storetest", input_bytes=data,
                          input_media_type="image/png", params={})
    assert redis_client.get(keys.job_input(accepted.job_id)) == data
    assert 0 < redis_client.ttl(keys.job_input(accepted.job_id)) <= 50
    assert store.get(accepted.job_id).status == QUEUED
    assert redis_client.llen("gpuq.storetest") == 1
    redis_client.delete("gpuq.storetest")


def test_a_refused_large_input_leaves_nothing_behind(store, celery_app, redis_client, new_job):
    """The staged SET has already run when the script refuses: the script must take the input back."""
    big = b"x" * (STAGE_INPUT_BYTES + 1)
    redis_client.delete("gpuq.storetest")
    before = _inputs(redis_client)
    first = submit_job(store, celery_app, analyzer="storetest", input_bytes=big, input_media_type="image/png",
                       params={}, idempotency_key="upload-1", max_queue_depth=1)
    inputs = _inputs(redis_client)
    assert inputs - before == {keys.job_input(first.job_id).encode()}
    again = submit_job(store, celery_app, analyzer="storetest", input_bytes=big, input_media_type="image/png",
                       params={}, idempotency_key="upload-1", max_queue_depth=1)
    assert again.replayed and again.job_id == first.job_id
    with pytest.raises(QueueFull):
        submit_job(store, celery_app, analyzer="storetest", input_bytes=big, input_media_type="image/png",
                   params={}, max_queue_depth=1)
    assert _inputs(redis_client) == inputs
    assert redis_client.llen("gpuq.storetest") == 1


def test_cancel_wins_over_a_later_start(store, new_job):
    job_id = new_job()
    assert store.lifecycle.cancel(job_id) == ("canceled", None)
    claim = store.lifecycle.claim_lead(job_id, owner="w|1|1", lock_ttl=60, max_attempts=3, queue_prefix="gpuq.",
                                       running_fields={"status": RUNNING, "worker": "w"})
    assert claim.outcome == CANCELED
    assert store.get(job_id).worker is None


def _claim(store, job_id: str):
    return store.lifecycle.claim_lead(job_id, owner="w|1|1", lock_ttl=60, max_attempts=3, queue_prefix="gpuq.",
                                      running_fields={"status": RUNNING, "worker": "w"})


def _finish(store, job_id: str, token: int, status: str = SUCCEEDED, **fields):
    batch = Pipelined(store.redis)
    index = store.lifecycle.queue_finish(batch, job_id, token, status, fields, now=time.time())
    return store.lifecycle.parse_end(batch.execute()[index])


def test_finish_sets_expiry_drops_input_and_publishes(store, redis_client, new_job):
    s3 = new_job()
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.job_events(s3))
    pubsub.get_message(timeout=1)
    claim = _claim(store, s3)
    assert claim.outcome == "claimed" and claim.record.status == RUNNING
    assert s3 in store.running_ids()
    assert _finish(store, s3, claim.record.fence).written
    assert s3 not in store.running_ids()
    messages = [pubsub.get_message(timeout=1) for _ in range(2)]
    pubsub.close()
    assert [m["data"] for m in messages] == [b"running", b"succeeded"]
    record = store.get(s3)
    assert record.status == SUCCEEDED and abs(record.expires_at - record.finished_at - 100) < 1
    assert redis_client.exists(keys.job_input(s3)) == 0
    assert 1000 < redis_client.ttl(keys.job(s3)) <= 1100
    assert store.lifecycle.cancel(s3) == ("unchanged", SUCCEEDED)  # terminal stays terminal
    assert not _finish(store, s3, claim.record.fence, FAILED).written
    assert store.get(s3).status == SUCCEEDED


def test_absent_job(store):
    assert store.get("nope") is None
    assert store.lifecycle.cancel("nope") == ("absent", None)
    assert _claim(store, "nope").outcome == "absent"


def test_an_accepted_job_is_counted_with_it_and_a_replay_or_refusal_is_not(redis_client, new_job):
    def accepted() -> float:
        return job_metrics.read_counter(redis_client, job_metrics.JOBS_ACCEPTED).get(("storetest",), 0)

    before = accepted()
    new_job(idempotency_key="counted-once")
    new_job(idempotency_key="counted-once")
    with pytest.raises(QueueFull):
        new_job(max_queue_depth=1)
    assert accepted() - before == 1
