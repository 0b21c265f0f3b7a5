"""Analyzers live as long as a worker renews them: a dropped one is retired, and the stack is ready again."""

from __future__ import annotations

import time

import flask
import pytest
import redis
import requests

from api.body_limit import bound_submission_body
from api.errors import PayloadTooLarge
from gpu_worker.runtime import WorkerRuntime
from gpu_worker.spec_renewal import SpecRenewal
from gpuq.redis_server import RedisServer
from tasks import catalog, keys
from tasks.settings import Settings
from tests.stack import Stack, start_workers, wait_for_workers, wait_until

#: Short, so that the test waits seconds for a spec to expire, not the default's half minute.
SHORT_TTL = 10
#: With the default lifetime, a changed GPUQ_ANALYZERS is ready again within a minute.
READY_WITHIN = 60


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()
    server.stop()


def _now(client) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1_000_000


def _expiry(client, name: str) -> float | None:
    return client.zscore(keys.ANALYZER_EXPIRIES, name)


def _expire(client, name: str) -> None:
    """Move a spec's expiry into the past on Redis's clock, as if its lifetime had run out."""
    client.zadd(keys.ANALYZER_EXPIRIES, {name: _now(client) - 1})


def test_a_spec_lives_until_its_last_renewal_expires(own_redis):
    catalog.publish_analyzers(own_redis, [{"name": "kept"}, {"name": "dropped"}], ttl=100)
    granted = _expiry(own_redis, "kept")
    assert 99 <= granted - _now(own_redis) <= 100
    catalog.publish_analyzers(own_redis, [{"name": "kept"}], ttl=1)  # a shorter renewal never cuts it short
    assert _expiry(own_redis, "kept") == granted
    catalog.publish_analyzers(own_redis, [{"name": "kept"}], ttl=200, replace=False)
    assert _expiry(own_redis, "kept") > granted

    _expire(own_redis, "dropped")
    assert catalog.analyzer_specs(own_redis) == {"kept": {"name": "kept"}}
    assert own_redis.hkeys(keys.ANALYZERS) == [b"kept"]  # gone from Redis (and its AOF), not just hidden
    assert _expiry(own_redis, "dropped") is None


def test_a_spec_published_without_a_lifetime_is_kept_and_given_one(own_redis):
    # What a worker older than lifetimes writes, once: its API, upgraded first, must still accept it.
    own_redis.hset(keys.ANALYZERS, "simulate", '{"name": "simulate"}')
    assert catalog.analyzer_specs(own_redis, ttl=30) == {"simulate": {"name": "simulate"}}
    granted = _expiry(own_redis, "simulate")
    assert granted is not None and 29 <= granted - _now(own_redis) <= 30
    # Read again, it keeps the lifetime it was given rather than a new one: nothing renews it.
    assert catalog.analyzer_specs(own_redis, ttl=300) == {"simulate": {"name": "simulate"}}
    assert _expiry(own_redis, "simulate") == granted
    _expire(own_redis, "simulate")
    assert catalog.analyzer_specs(own_redis) == {}


def test_only_a_first_publish_writes_over_a_live_spec(own_redis):
    catalog.publish_analyzers(own_redis, [{"name": "digits", "version": 1}], ttl=100)
    # Another worker's later beats, with its own version: renewed, not written over.
    catalog.publish_analyzers(own_redis, [{"name": "digits", "version": 2}], ttl=100, replace=False)
    assert catalog.analyzer_specs(own_redis)["digits"]["version"] == 1
    # A worker starting (its first publish) writes its version.
    catalog.publish_analyzers(own_redis, [{"name": "digits", "version": 2}], ttl=100)
    catalog.publish_analyzers(own_redis, [{"name": "digits", "version": 1}], ttl=100, replace=False)
    assert catalog.analyzer_specs(own_redis)["digits"]["version"] == 2
    # An expired spec is no one's: any beat writes its own.
    _expire(own_redis, "digits")
    catalog.publish_analyzers(own_redis, [{"name": "digits", "version": 1}], ttl=100, replace=False)
    assert catalog.analyzer_specs(own_redis)["digits"]["version"] == 1


def test_renewal_pushes_a_live_spec_later_and_never_publishes_one(own_redis):
    catalog.publish_analyzers(own_redis, [{"name": "live"}, {"name": "lapsed"}], ttl=10)
    granted = _expiry(own_redis, "live")
    _expire(own_redis, "lapsed")

    assert catalog.renew_analyzers(own_redis, ["live", "lapsed", "never"], ttl=100) == 1
    assert _expiry(own_redis, "live") > granted + 80
    assert own_redis.hget(keys.ANALYZERS, "never") is None and _expiry(own_redis, "never") is None
    assert catalog.analyzer_specs(own_redis) == {"live": {"name": "live"}}
    # A shorter lifetime never cuts one short.
    renewed = _expiry(own_redis, "live")
    assert catalog.renew_analyzers(own_redis, ["live"], ttl=1) == 0
    assert _expiry(own_redis, "live") == renewed


def test_the_main_process_renewal_keeps_specs_alive_with_no_pool_child_beating(own_redis):
    catalog.publish_analyzers(own_redis, [{"name": "noop"}], ttl=5)
    granted = _expiry(own_redis, "noop")
    renewal = SpecRenewal(own_redis, ["noop"], ttl=50, interval=0.05).start()
    try:
        wait_until(lambda: (_expiry(own_redis, "noop") or 0) > granted + 40, 10, "the spec's expiry renewed")
    finally:
        renewal.stop()


class _SpeclessAnalyzer:
    """An analyzer whose spec cannot be built: publishing it fails."""

    weights_sha256 = None

    @classmethod
    def spec(cls) -> dict:
        raise RuntimeError("no spec")


def test_a_failed_spec_publish_leaves_the_heartbeat_beating(own_redis):
    runtime = WorkerRuntime(name="w1", settings=Settings(redis_url="redis://unused"), redis=own_redis, device="cpu",
                            device_label="cpu", analyzers={"specless": _SpeclessAnalyzer()}, runner=None)
    runtime._beat()
    assert [w["name"] for w in catalog.live_workers(own_redis)] == ["w1"]


def test_the_default_lifetime_retires_a_dropped_analyzer_within_a_minute_of_a_restart():
    # A restarted worker loads its models in seconds to tens of seconds; the spec it no longer
    # renews then lives at most one lifetime more.
    assert Settings.analyzer_ttl <= 30


def _ready(url: str) -> tuple[int, dict]:
    response = requests.get(f"{url}/readyz", timeout=5)
    return response.status_code, response.json()


def _served(url: str) -> set[str]:
    return {a["name"] for a in requests.get(f"{url}/v1/analyzers", timeout=5).json()["analyzers"]}


def test_dropping_an_analyzer_and_restarting_the_workers_makes_the_stack_ready_again(tmp_path):
    stack = Stack(tmp_path, analyzers="noop,simulate", GPUQ_ANALYZER_TTL=str(SHORT_TTL)).start()
    try:
        # A run measured, so that a queued simulate job would have an ETA if a worker served it.
        stack.wait(stack.submit("simulate", params={"seconds": 0})["id"])
        stack.workers.stop()

        # No live worker, spec within its lifetime: accepted, and it waits for a worker, with no ETA.
        stranded = stack.submit("simulate", params={"seconds": 0})
        waiting = stack.job(stranded["id"])
        assert (waiting["status"], waiting["queue_position"]) == ("queued", 0)
        assert waiting["eta_seconds"] is None and waiting["eta"] is None
        assert _ready(stack.url)[1]["reasons"] == ["no live worker serves 'noop'", "no live worker serves 'simulate'"]

        restarted = time.monotonic()
        stack.workers = start_workers({**stack.env, "GPUQ_ANALYZERS": "noop", "GPUQ_CPU_WORKERS": "1"}, tmp_path,
                                      name="workers-noop")
        wait_until(lambda: _ready(stack.url)[0] == 200 and _served(stack.url) == {"noop"}, READY_WITHIN,
                   "/readyz 200 with simulate retired")
        seconds_to_ready = time.monotonic() - restarted
        # With the default lifetime in place of the short one, add its difference to this figure.
        print(f"ready {seconds_to_ready:.1f} s after the workers restarted without simulate "
              f"(lifetime {SHORT_TTL} s, default {Settings.analyzer_ttl} s)")

        refused = requests.post(f"{stack.url}/v1/jobs", json={"analyzer": "simulate"}, timeout=10)
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "unknown_analyzer"
        assert refused.json()["error"]["field"] == "analyzer" and "known: noop" in refused.json()["error"]["message"]

        # The job accepted before keeps its place, still without an ETA, and sweeps leave it be.
        time.sleep(2 * float(stack.env["GPUQ_JANITOR_INTERVAL"]))
        waiting = stack.job(stranded["id"])
        assert (waiting["status"], waiting["queue_position"], waiting["eta"]) == ("queued", 0, None)
        assert "janitor sweep failed" not in stack.workers.output()

        # A worker serving simulate again runs it.
        stack.workers.stop()
        stack.workers = start_workers({**stack.env, "GPUQ_CPU_WORKERS": "1"}, tmp_path, name="workers-back")
        wait_for_workers(stack.redis_server.url, {"noop", "simulate"}, stack.workers)
        assert stack.wait(stranded["id"])["status"] == "succeeded"
    finally:
        stack.stop()


def test_a_body_for_no_served_analyzer_is_bounded_by_the_server_limit_only():
    # With every spec expired no analyzer takes any input; the body is still read, so that
    # validation answers 422 unknown_analyzer rather than a 413 for a limit no analyzer set.
    app = flask.Flask(__name__)
    with app.test_request_context("/v1/jobs", method="POST", content_type="application/json",
                                  data=b" " * (1024 * 1024)):
        assert bound_submission_body(flask.request, [], server_limit=64 * 1024 * 1024) == 64 * 1024 * 1024
    with app.test_request_context("/v1/jobs", method="POST", content_type="application/json",
                                  data=b" " * (1024 * 1024)):
        with pytest.raises(PayloadTooLarge):
            bound_submission_body(flask.request, [{"name": "small", "max_input_bytes": 1024, "input_schema": {}}],
                                  server_limit=64 * 1024 * 1024)
