"""BatchedScript against a real Redis: each caller gets its own reply, whatever batch it travelled in."""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis as redis_lib

from gpuq.redis_server import free_port
from tasks.batched_script import BatchedScript

# Counts its runs, so a call sent twice would show; fails on request, to show a failure stays with its caller.
_ECHO = """
redis.call('INCR', KEYS[1])
if ARGV[1] == 'fail' then return redis.error_reply('asked to fail') end
return ARGV[1]
"""
_RUNS = "test:batched:runs"
_STRESS_CALLS = 20000


@pytest.fixture
def echo(redis_client):
    redis_client.delete(_RUNS)
    yield BatchedScript(redis_client, _ECHO)
    redis_client.delete(_RUNS)


def test_concurrent_callers_each_get_their_own_reply_and_every_call_runs_once(echo, redis_client):
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: echo(keys=[_RUNS], args=[f"call-{i}"]), range(400)))
    assert replies == [f"call-{i}".encode() for i in range(400)]
    assert int(redis_client.get(_RUNS)) == 400


def test_a_call_failing_in_redis_fails_alone(echo):
    def call(word: str):
        try:
            return echo(keys=[_RUNS], args=[word])
        except redis_lib.ResponseError as error:
            return error

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(call, ["ok", "fail"] * 20))
    assert all(r == b"ok" for r in replies[::2])
    assert all(isinstance(r, redis_lib.ResponseError) and "asked to fail" in str(r) for r in replies[1::2])


def test_a_script_redis_forgot_is_loaded_again_and_runs_once(echo, redis_client):
    assert echo(keys=[_RUNS], args=["before"]) == b"before"
    redis_client.script_flush()
    assert echo(keys=[_RUNS], args=["after"]) == b"after"
    assert int(redis_client.get(_RUNS)) == 2


def test_unreachable_redis_is_an_error_for_the_caller_not_a_hang():
    client = redis_lib.Redis(port=free_port(), socket_connect_timeout=1, socket_timeout=1)
    script = BatchedScript(client, _ECHO, reply_timeout=10)
    with pytest.raises(redis_lib.ConnectionError):
        script(keys=[_RUNS], args=["x"])


def test_a_forked_child_sends_with_a_sender_of_its_own(echo, redis_client):
    assert echo(keys=[_RUNS], args=["parent"]) == b"parent"  # the parent's sender thread is running
    pid = os.fork()
    if pid == 0:  # the child: none of the parent's threads came along; it must never return into pytest
        ok = False
        try:
            ok = echo(keys=[_RUNS], args=["child"]) == b"child"
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert int(redis_client.get(_RUNS)) == 2


def test_staged_commands_run_just_before_their_call_on_the_same_connection(redis_client):
    """What a call stages is there when its script runs, whatever batch it travels in."""
    read_back = BatchedScript(redis_client, "return redis.call('GET', KEYS[1])")
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(
            lambda i: read_back(keys=[f"test:staged:{i}"], args=[],
                                staged=[("SET", f"test:staged:{i}", f"value-{i}".encode() * 500, "EX", 60)]),
            range(200)))
    assert replies == [f"value-{i}".encode() * 500 for i in range(200)]
    redis_client.delete(*[f"test:staged:{i}" for i in range(200)])


def test_a_failing_staged_command_does_not_take_its_call_or_others_with_it(redis_client):
    read_back = BatchedScript(redis_client, "return redis.call('EXISTS', KEYS[1])")
    redis_client.set("test:staged:plain", "x")
    # LPUSH on a string key fails (WRONGTYPE); the script still runs, and finds the key as it is.
    assert read_back(keys=["test:staged:plain"], staged=[("LPUSH", "test:staged:plain", "y")]) == 1
    assert read_back(keys=["test:staged:absent"], staged=[("LPUSH", "test:staged:plain", "y")]) == 0
    redis_client.delete("test:staged:plain")


def test_calls_handed_the_wire_at_any_moment_all_get_their_reply(echo, redis_client):
    """Stress the hand-over: with the interpreter switching threads as often as it can, a call is
    handed the wire at every point of its way in, before it waits as well as while it waits.
    Daemon threads, joined with a deadline: a stranded call fails the test instead of hanging it."""
    replies: dict[int, object] = {}

    def caller(first: int) -> None:
        for i in range(first, _STRESS_CALLS, 24):
            try:
                replies[i] = echo(keys=[_RUNS], args=[f"call-{i}"])
            except Exception as error:  # noqa: BLE001 - recorded, and the assertion below shows it
                replies[i] = error

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=caller, args=(n,), daemon=True) for n in range(24)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    finally:
        sys.setswitchinterval(interval)
    assert not any(thread.is_alive() for thread in threads), "calls stranded without a reply"
    assert [replies.get(i) for i in range(_STRESS_CALLS)] == [f"call-{i}".encode() for i in range(_STRESS_CALLS)]
    assert int(redis_client.get(_RUNS)) == _STRESS_CALLS
