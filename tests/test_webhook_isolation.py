"""A slow or dead webhook receiver delays only its own events.

The lanes on their own, then a real dispatcher (its sender threads) against
the test Redis and real receivers on loopback, as bench/webhook_isolation.py
measures it.
"""

from __future__ import annotations

import json
import time

import pytest

from bench.webhook_isolation import SECRET, end_job, run_beside_retries, run_scenario
from gpu_worker.webhook_lanes import DestinationLanes
from gpu_worker.webhooks import WebhookDispatcher
from tasks import keys
from tasks.jobs import JobStore
from tasks.settings import Settings

# -- lanes ----------------------------------------------------------------------------------------


def sent_in_order(lanes: DestinationLanes[str]) -> list[str]:
    """What the lanes give out, each handed back done before the next is taken (one sender)."""
    order = []
    while (handout := lanes.take(timeout=0)) is not None:
        order.append(handout.item)
        lanes.done(handout)
    return order


def test_a_destination_gets_at_most_its_share_of_senders_and_the_others_are_served_meanwhile():
    lanes: DestinationLanes[str] = DestinationLanes(per_destination=2, backlog=10, retry_senders=8)
    for n in range(5):
        lanes.offer("http://slow:80", f"slow-{n}", retry=False)
    lanes.offer("http://prompt:80", "prompt-0", retry=False)
    taken = [lanes.take(timeout=0) for _ in range(4)]
    assert [t.item if t else None for t in taken] == ["slow-0", "prompt-0", "slow-1", None]
    assert lanes.held == 6
    lanes.done(taken[0])  # one slow delivery finished: the lane may send its next
    handout = lanes.take(timeout=0)
    assert (handout.destination, handout.item) == ("http://slow:80", "slow-2")


def test_within_a_destination_first_attempts_go_before_retries():
    lanes: DestinationLanes[str] = DestinationLanes(per_destination=1, backlog=10, retry_senders=1)
    lanes.offer("d", "retry-a", retry=True)
    lanes.offer("d", "first-a", retry=False)
    lanes.offer("d", "first-b", retry=False)
    assert sent_in_order(lanes) == ["first-a", "first-b", "retry-a"] and lanes.held == 0


def test_a_destination_with_a_first_attempt_goes_before_destinations_with_retries_only():
    lanes: DestinationLanes[str] = DestinationLanes(per_destination=2, backlog=10, retry_senders=8)
    for dead in "abc":
        lanes.offer(f"http://dead-{dead}:80", f"retry-{dead}", retry=True)
    lanes.offer("http://healthy:80", "first-d", retry=False)
    lanes.offer("http://dead-b:80", "first-b", retry=False)  # queued for its retry, now for a first attempt
    assert sent_in_order(lanes) == ["first-d", "first-b", "retry-a", "retry-c", "retry-b"]


def test_retries_get_at_most_their_share_of_senders_and_first_attempts_the_rest():
    lanes: DestinationLanes[str] = DestinationLanes(per_destination=2, backlog=10, retry_senders=2)
    for dead in range(5):
        lanes.offer(f"http://dead-{dead}:80", f"retry-{dead}", retry=True)
    sending = [lanes.take(timeout=0) for _ in range(3)]
    assert [h.item if h else None for h in sending] == ["retry-0", "retry-1", None]
    assert lanes.held == 5 and lanes.held_retries == 5
    lanes.offer("http://healthy:80", "first", retry=False)
    assert lanes.take(timeout=0).item == "first"
    lanes.done(sending[0])  # a retry finished: the next may go
    assert lanes.take(timeout=0).item == "retry-2" and lanes.held_retries == 4


def test_a_full_lane_refuses_more_and_the_total_held_is_bounded():
    lanes: DestinationLanes[int] = DestinationLanes(per_destination=1, backlog=2, retry_senders=1)
    assert [lanes.offer("d", n, retry=False) for n in range(3)] == [True, True, False]
    assert lanes.offer("e", 9, retry=False)
    assert not lanes.wait_for_room(most=3, timeout=0.05) and lanes.wait_for_room(most=4, timeout=0)
    lanes.close()
    assert lanes.take(timeout=1) is None and not lanes.wait_for_room(most=100, timeout=0)


# -- the dispatcher -------------------------------------------------------------------------------


@pytest.fixture
def redis(redis_client):
    """The test Redis without webhook work left by another test."""
    redis_client.delete(keys.WEBHOOK_OUTBOX, keys.WEBHOOK_RETRIES, keys.webhook_inflight("isolation"))
    yield redis_client
    redis_client.delete(keys.WEBHOOK_OUTBOX, keys.WEBHOOK_RETRIES, keys.webhook_inflight("isolation"))


def test_a_receiver_answering_after_10_s_does_not_delay_another_tenants_completed_event(redis, redis_server):
    # 6 jobs' started and completed events queued for the slow receiver, then 3 jobs of another tenant end.
    run = run_scenario(redis_server.url, slow_jobs=6, slow_seconds=10, jobs=3)
    assert max(run.delays) < 2.0, run.delays
    assert run.slow_most_concurrent == 2  # GPUQ_WEBHOOK_PER_DESTINATION, while 12 deliveries wait for it


def test_a_destination_past_its_backlog_waits_in_redis_without_an_attempt(redis):
    store = JobStore(redis, result_ttl=600, tombstone_ttl=600, input_ttl=600)
    taker = WebhookDispatcher(store, Settings(redis_url="unused", webhook_secret=SECRET), name="isolation")
    jobs = [end_job(redis, "http://127.0.0.1:9/dead")[0] for _ in range(55)]
    for _ in jobs:
        taker.take_next(block=0.01)  # no sender runs: the lane fills
    assert taker.lanes.held == 50 and redis.llen(keys.webhook_inflight("isolation")) == 50
    deferred = [json.loads(raw) for raw in redis.zrange(keys.WEBHOOK_RETRIES, 0, -1)]
    assert len(deferred) == 5 and {d["attempt"] for d in deferred} == {1}
    assert all(not redis.exists(keys.webhook_deliveries(job_id)) for job_id in jobs)


def test_past_the_held_bound_nothing_more_is_taken_from_the_outbox(redis):
    store = JobStore(redis, result_ttl=600, tombstone_ttl=600, input_ttl=600)
    settings = Settings(redis_url="unused", webhook_secret=SECRET, webhook_max_held=4)
    taker = WebhookDispatcher(store, settings, name="isolation")
    for port in range(10, 20):  # ten destinations, so no lane's backlog is what stops it
        end_job(redis, f"http://127.0.0.1:{port}/dead")
    for _ in range(10):
        taker.take_next(block=0.01)
    assert taker.lanes.held == 4 and redis.llen(keys.WEBHOOK_OUTBOX) == 6


def retry_due(redis, url: str) -> None:
    redis.zadd(keys.WEBHOOK_RETRIES, {json.dumps({"delivery": "d", "job_id": "j", "event": "completed", "url": url,
                                                  "body": "{}", "attempt": 2}): time.time() - 1})


def test_retries_hold_at_most_half_the_bound_and_new_events_are_taken_first(redis):
    store = JobStore(redis, result_ttl=600, tombstone_ttl=600, input_ttl=600)
    settings = Settings(redis_url="unused", webhook_secret=SECRET, webhook_max_held=4)
    taker = WebhookDispatcher(store, settings, name="isolation")
    for port in range(10, 20):  # ten dead destinations, each with a retry due
        retry_due(redis, f"http://127.0.0.1:{port}/dead")
    for port in range(20, 23):
        end_job(redis, f"http://127.0.0.1:{port}/new")
    for _ in range(5):
        taker.take_next(block=0.01)
    assert redis.llen(keys.WEBHOOK_OUTBOX) == 0  # all three new events taken
    assert taker.lanes.held == 4 and taker.lanes.held_retries == 1
    assert redis.zcard(keys.WEBHOOK_RETRIES) == 9


def test_a_first_attempt_goes_out_at_once_while_20_receivers_that_never_answer_have_retries_due(redis, redis_server):
    # 16 senders: before first attempts had precedence, all of them went to the retries (answer deadline 3 s).
    delay = run_beside_retries(redis_server.url, dead=20, read_timeout=2.0)
    assert delay < 1.0, delay
