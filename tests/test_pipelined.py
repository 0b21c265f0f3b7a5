"""Scripts and commands in one round trip, and a script Redis forgot (a restart) still runs once."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from tasks.pipelined import Pipelined

_INCR_BY = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def test_scripts_and_commands_reply_in_order(redis_client):
    script = redis_client.register_script(_INCR_BY)
    redis_client.delete("test:pipelined:n")
    batch = Pipelined(redis_client)
    batch.pipe.set("test:pipelined:n", 1)
    index = batch.script(script, ["test:pipelined:n"], [2])
    batch.pipe.get("test:pipelined:n")
    replies = batch.execute()
    assert replies[index] == 3 and replies[-1] == b"3"


def test_a_script_redis_no_longer_knows_is_loaded_and_run_exactly_once(redis_client):
    script = redis_client.register_script(_INCR_BY)
    redis_client.set("test:pipelined:once", 0)
    redis_client.script_flush()  # what a restart does to the script cache
    batch = Pipelined(redis_client)
    first = batch.script(script, ["test:pipelined:once"], [5])
    second = batch.script(script, ["test:pipelined:once"], [5])
    replies = batch.execute()
    assert sorted([replies[first], replies[second]]) == [5, 10]
    assert int(redis_client.get("test:pipelined:once")) == 10


def test_another_error_is_raised_after_the_rest_ran(redis_client):
    redis_client.delete("test:pipelined:list")
    redis_client.set("test:pipelined:str", "x")
    batch = Pipelined(redis_client)
    batch.pipe.incr("test:pipelined:str")  # not an integer
    batch.pipe.rpush("test:pipelined:list", "ran")
    with pytest.raises(ResponseError):
        batch.execute()
    assert redis_client.lrange("test:pipelined:list", 0, -1) == [b"ran"]
