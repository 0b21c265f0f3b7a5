"""The job state machine (tasks/lifecycle.py) against a real Redis: tokens, refusals, final answers, voided ids."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import redis as redis_lib
from redis.exceptions import TimeoutError as RedisTimeoutError

from gpuq.redis_server import RedisServer
from tasks import keys
from tasks.jobs import CANCELED, CANCELING, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore
from tasks.lua_scripts import load
from tasks.pipelined import Pipelined
from tasks.submission import OutcomeUnknown, submit_job
from tests.tcp_proxy import TcpProxy

OWNER = "w|1|1"


@pytest.fixture
def store(redis_client) -> JobStore:
    return JobStore(redis_client, result_ttl=100, tombstone_ttl=1000, input_ttl=50)


@pytest.fixture
def new_job(store, celery_app):
    def make() -> str:
        return submit_job(store, celery_app, analyzer="lifecycletest", input_bytes=b"{}",
                          input_media_type="application/json", params={}).job_id
    yield make
    store.redis.delete("gpuq.lifecycletest")


def claim(store: JobStore, job_id: str, owner: str = OWNER):
    got = store.lifecycle.claim_lead(job_id, owner=owner, lock_ttl=60, max_attempts=3, queue_prefix="gpuq.",
                                     running_fields={"status": RUNNING, "worker": owner.split("|")[0]})
    assert got.outcome == "claimed", got
    return got.record.fence


def finish(store: JobStore, job_id: str, token: int, status: str = SUCCEEDED, result: bytes = b""):
    batch = Pipelined(store.redis)
    index = store.lifecycle.queue_finish(batch, job_id, token, status, {"error": None}, now=time.time(),
                                         result=result, result_key=f"test-result-{job_id}" if result else "",
                                         result_ttl=100)
    return store.lifecycle.parse_end(batch.execute()[index])


def requeue(store: JobStore, job_id: str, holder: str = OWNER) -> bool:
    return store.lifecycle.requeue(job_id, holder=holder, queue="gpuq.lifecycletest", message="{}")


def test_every_claim_and_requeue_moves_the_fence_on(store, new_job):
    job_id = new_job()
    first = claim(store, job_id)
    assert requeue(store, job_id)
    second = claim(store, job_id, "v|2|2")
    assert first == 1 and second == 3  # the requeue revoked the first lease too
    assert store.get(job_id).fence == second and store.get(job_id).attempts == 2


def test_a_revoked_run_writes_nothing_and_the_current_one_decides(store, redis_client, new_job):
    job_id = new_job()
    stale = claim(store, job_id)
    assert requeue(store, job_id)
    current = claim(store, job_id, "v|2|2")
    assert not store.lifecycle.progress(job_id, stale, {"fraction": 0.5}).written
    refused = finish(store, job_id, stale, result=b"stale")
    assert not refused.written and refused.lease_lost(stale) and refused.fence == str(current)
    assert store.get(job_id).status == RUNNING and redis_client.get(f"test-result-{job_id}") is None
    assert store.lifecycle.progress(job_id, current, {"fraction": 0.5}).written
    assert finish(store, job_id, current, result=b"current").written
    assert redis_client.get(f"test-result-{job_id}") == b"current"


def test_an_ended_job_never_changes(store, redis_client, new_job):
    job_id = new_job()
    token = claim(store, job_id)
    assert finish(store, job_id, token, result=b"first").written
    ended = redis_client.hgetall(keys.job(job_id))
    assert not finish(store, job_id, token, FAILED, result=b"second").written  # the same run, twice
    assert not store.lifecycle.end_unowned(job_id, FAILED, [QUEUED, RUNNING, CANCELING])
    assert store.lifecycle.cancel(job_id) == ("unchanged", SUCCEEDED)
    assert not requeue(store, job_id)
    assert redis_client.hgetall(keys.job(job_id)) == ended
    assert redis_client.get(f"test-result-{job_id}") == b"first"


def test_a_job_canceled_while_it_ran_ends_canceled_and_its_result_is_discarded(store, redis_client, new_job):
    job_id = new_job()
    token = claim(store, job_id)
    assert store.lifecycle.cancel(job_id) == (CANCELING, None)
    end = finish(store, job_id, token, result=b"late")
    assert end.written and end.status == CANCELED
    assert store.get(job_id).status == CANCELED and redis_client.get(f"test-result-{job_id}") is None


def test_an_end_by_another_process_needs_the_lock_it_saw(store, new_job):
    job_id = new_job()
    token = claim(store, job_id)
    assert not store.lifecycle.end_unowned(job_id, FAILED, [RUNNING], holder="someone|9|9",
                                           error={"code": "worker_lost", "message": "x"})
    assert store.lifecycle.end_unowned(job_id, FAILED, [RUNNING], holder=OWNER,
                                       error={"code": "worker_lost", "message": "x"})
    assert store.get(job_id).status == FAILED
    assert not finish(store, job_id, token).written  # the run it ended cannot write after it


def test_the_attempt_bound_fails_the_job_in_the_claim(store, new_job):
    job_id = new_job()
    for _ in range(3):
        claim(store, job_id)
        assert requeue(store, job_id)
    got = store.lifecycle.claim_lead(job_id, owner=OWNER, lock_ttl=60, max_attempts=3, queue_prefix="gpuq.",
                                     running_fields={"status": RUNNING})
    assert got.outcome == "exhausted" and got.attempts == 4
    record = store.get(job_id)
    assert record.status == FAILED and record.error["code"] == "worker_lost" and "lost 3 times" in record.error[
        "message"]


def hand_back(store: JobStore, job_id: str, token: int, holder: str = OWNER, blame: bool = True):
    batch = Pipelined(store.redis)
    index = store.lifecycle.queue_hand_back(batch, job_id, token, holder, queue="gpuq.lifecycletest",
                                            message=f"message-of-{job_id}", now=time.time(), most_faults=2,
                                            error={"code": "device_error", "message": "the GPU broke twice"},
                                            blame=blame)
    return store.lifecycle.parse_end(batch.execute()[index])


def test_a_job_handed_back_after_a_device_fault_is_queued_again_without_an_attempt(store, redis_client, new_job):
    job_id = new_job()
    redis_client.delete("gpuq.lifecycletest")
    token = claim(store, job_id)
    back = hand_back(store, job_id, token)
    assert back.written and back.status == QUEUED
    record = store.get(job_id)
    assert record.status == QUEUED and record.attempts == 0 and record.device_faults == 1
    assert record.fence == token + 1  # the run that handed it back writes nothing more
    assert redis_client.get(keys.job_lock(job_id)) is None
    assert redis_client.lrange("gpuq.lifecycletest", 0, -1) == [f"message-of-{job_id}".encode()]
    assert not finish(store, job_id, token).written


def test_a_job_at_its_second_device_fault_fails_as_their_cause(store, new_job):
    job_id = new_job()
    hand_back(store, job_id, claim(store, job_id))
    second = hand_back(store, job_id, claim(store, job_id, "v|2|2"), holder="v|2|2")
    assert second.written and second.status == FAILED
    record = store.get(job_id)
    assert record.error["code"] == "device_error" and record.device_faults == 2 and record.attempts == 1


def test_a_job_not_blamed_for_a_device_fault_is_queued_again_with_no_fault_counted(store, new_job):
    job_id = new_job()
    hand_back(store, job_id, claim(store, job_id))
    again = hand_back(store, job_id, claim(store, job_id, "v|2|2"), holder="v|2|2", blame=False)
    assert again.written and again.status == QUEUED
    assert store.get(job_id).device_faults == 1 and store.get(job_id).attempts == 0


def test_a_stale_or_ended_run_cannot_hand_its_job_back(store, new_job):
    job_id = new_job()
    stale = claim(store, job_id)
    assert requeue(store, job_id)
    current = claim(store, job_id, "v|2|2")
    refused = hand_back(store, job_id, stale)
    assert not refused.written and refused.lease_lost(stale)
    assert finish(store, job_id, current).written
    assert not hand_back(store, job_id, current, holder="v|2|2").written
    assert store.get(job_id).status == SUCCEEDED and store.get(job_id).device_faults == 0


def test_a_job_canceled_while_its_gpu_broke_ends_canceled(store, new_job):
    job_id = new_job()
    token = claim(store, job_id)
    assert store.lifecycle.cancel(job_id)[0] == CANCELING
    back = hand_back(store, job_id, token)
    assert back.written and back.status == CANCELED and store.get(job_id).status == CANCELED


def test_an_accept_sent_twice_writes_once_and_a_voided_id_is_refused(store, redis_client, celery_app):
    script = load("accept")
    job_id = "lifecycle-accept-twice"

    def accept(job: str):
        ordered = script.order(
            keys={"job": keys.job(job), "input": keys.job_input(job), "queue": "gpuq.lifecycletest",
                  "idempotency": keys.idempotency(""), "queued_index": "test:qi", "sequence": "test:seq",
                  "tenant_jobs": "test:tj", "tenant_queued": "test:tq", "accepted_counter": "test:acc",
                  "void": keys.void_submit(job)},
            args={"fields": '{"status":"queued"}', "record_ttl": 100, "input": b"{}", "input_ttl": 100,
                  "message": "{}", "queue_limit": 0, "idempotency": "", "idempotency_ttl": 100, "id": job,
                  "tenant_limit": 0, "created_at": "1", "job_prefix": keys.job(""), "oldest_kept": "0",
                  "counter_field": "x", "staged": ""})
        return [part.decode() for part in redis_client.eval(script.source, len(ordered[0]), *ordered[0], *ordered[1])]

    redis_client.delete("gpuq.lifecycletest")
    assert accept(job_id) == ["created", ""] and accept(job_id) == ["created", ""]
    assert redis_client.llen("gpuq.lifecycletest") == 1  # one message, however often the call was sent
    assert store.lifecycle.void(job_id) == "exists"
    voided = "lifecycle-voided"
    assert store.lifecycle.void(voided) == "voided"
    assert accept(voided) == ["voided", ""]
    assert not redis_client.exists(keys.job(voided)) and redis_client.llen("gpuq.lifecycletest") == 1
    redis_client.delete("gpuq.lifecycletest")


def test_a_script_is_called_by_its_contract_names():
    script = load("void")
    assert script.keys == ("job", "input", "void") and script.args == ("ttl",)
    assert script.source.startswith("local KEY = {job = KEYS[1], input = KEYS[2], void = KEYS[3]}")
    with pytest.raises(TypeError, match=r"keys missing \['void'\], unknown \['voids'\]"):
        script.order(keys={"job": "a", "input": "b", "voids": "c"}, args={"ttl": 1})
    assert "local function mark_running" in load("gather").source  # fragments are included


def test_a_submit_redis_never_answers_is_an_unknown_outcome_with_its_id(tmp_path, celery_app):
    server = RedisServer(tmp_path / "redis").start()
    proxy = TcpProxy(server.port)
    try:
        client = redis_lib.Redis.from_url(proxy.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        store = JobStore(client, result_ttl=100, tombstone_ttl=100, input_ttl=100)
        client.ping()
        proxy.cut()
        began = time.monotonic()
        with pytest.raises(OutcomeUnknown) as unknown:
            submit_job(store, celery_app, analyzer="lifecycletest", input_bytes=b"{}",
                       input_media_type="application/json", params={})
        assert time.monotonic() - began < 8  # bounded: a 503, never a hang
        proxy.restore()
        direct = redis_lib.Redis.from_url(server.url)
        assert not direct.exists(keys.job(unknown.value.job_id))  # the script never reached Redis
        direct.close()
    finally:
        proxy.close()
        server.stop()


def test_a_submit_whose_reply_redis_held_back_is_found_or_voided_never_half(tmp_path, celery_app):
    server = RedisServer(tmp_path / "redis").start()
    try:
        client = redis_lib.Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        direct = redis_lib.Redis.from_url(server.url)
        store = JobStore(client, result_ttl=100, tombstone_ttl=100, input_ttl=100)
        outcomes = []
        for _ in range(3):
            client.ping()
            os.kill(server.process.pid, signal.SIGSTOP)
            # Resumed after the submit's own timeout (0.5 s), within the time it takes to find out.
            timer = threading.Timer(1.5, os.kill, args=(server.process.pid, signal.SIGCONT))
            timer.start()
            try:
                job_id = submit_job(store, celery_app, analyzer="lifecycletest", input_bytes=b"{}",
                                    input_media_type="application/json", params={}).job_id
                outcomes.append("accepted")
            except RedisTimeoutError:
                outcomes.append("refused")
                job_id = None
            finally:
                timer.join()
            time.sleep(0.5)  # anything still in flight has reached Redis by now
            written = [k.decode().removeprefix(keys.job("")) for k in direct.scan_iter(keys.job("*"))]
            if job_id is not None:
                assert job_id in written and direct.llen("gpuq.lifecycletest") == 1
            else:
                assert written == [] and direct.llen("gpuq.lifecycletest") == 0
            direct.flushdb()
        print(f"submits held back by a paused Redis: {outcomes}")
    finally:
        server.stop()


def test_an_idempotency_key_lives_as_long_as_its_jobs_record(redis_client, celery_app):
    # The input may wait 1 s; the run ends 1.5 s after the submit, later than the key's first TTL
    # (input + result + tombstone) allowed for: the end gives the key the record's new TTL.
    store = JobStore(redis_client, result_ttl=100, tombstone_ttl=100, input_ttl=1)
    job_id = submit_job(store, celery_app, analyzer="lifecycletest", input_bytes=b"{}",
                        input_media_type="application/json", params={}, idempotency_key="k-1", tenant="t").job_id
    try:
        token = claim(store, job_id)
        time.sleep(1.5)
        assert finish(store, job_id, token).written
        key_ttl = redis_client.pttl(keys.idempotency("t:k-1"))
        record_ttl = redis_client.pttl(keys.job(job_id))
        assert record_ttl > 199_000 and abs(key_ttl - record_ttl) < 100, (key_ttl, record_ttl)
    finally:
        redis_client.delete("gpuq.lifecycletest", keys.idempotency("t:k-1"))
