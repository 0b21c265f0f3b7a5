"""gpu_worker.fast_json: orjson's text only where it means what the backend's encoder writes."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from celery.result import AsyncResult
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from gpu_worker.fast_json import dumps_like
from gpu_worker.results import encode_result, result_key, result_ttl
from tasks.jobs import JobStore
from tasks.pipelined import Pipelined
from tasks.submission import submit_job


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Tag(str):
    pass


@dataclasses.dataclass
class Point:
    x: int


PLAIN = [
    {"frames": [{"digit": 7, "confidence": 0.998123}, {"digit": 1, "confidence": 1e-06}], "count": 2},
    {"text": "naïve café ✓ 日本", "empty": "", "nested": [[[]], {}], "none": None, "flag": True, "neg": -0.0},
    [1, 2.5, "three", None, False],
    "just a string",
    2**63 - 1,
]

NOT_PLAIN = {
    "NaN": {"confidence": float("nan")},
    "Infinity": [float("inf"), -float("inf")],
    "UUID": {"id": uuid.UUID(int=7)},
    "str subclass": [Tag("x")],
    "tuple": {"pair": (1, 2)},
    "datetime": {"at": datetime.datetime(2026, 12, 2, 3, 4, 5, tzinfo=datetime.UTC)},
    "date": {"on": datetime.date(2026, 12, 2)},
    "int key": {1: "one"},
    "int beyond 64 bits": {"big": 2**70},
    "bytes": {"raw": b"abc"},
}


@pytest.mark.parametrize("value", PLAIN, ids=range(len(PLAIN)))
def test_plain_values_are_orjson_text_read_back_as_the_same_value(value):
    text = dumps_like(value, kombu_dumps)
    assert isinstance(text, bytes)  # orjson's, not the fallback's str
    assert json.loads(text) == value == kombu_loads(text) == kombu_loads(kombu_dumps(value))


@pytest.mark.parametrize("name", list(NOT_PLAIN))
def test_anything_orjson_would_write_differently_goes_to_the_fallback(name):
    value = NOT_PLAIN[name]
    assert dumps_like(value, kombu_dumps) == kombu_dumps(value)


@pytest.mark.parametrize("value", [{"colour": Colour.RED}, {"point": Point(1)}], ids=["Enum", "dataclass"])
def test_what_the_backend_refuses_is_still_refused(value):
    # orjson would write both (an enum's value, a dataclass's fields): a job that fails stays failed.
    with pytest.raises(TypeError):
        kombu_dumps(value)
    with pytest.raises(TypeError):
        dumps_like(value, kombu_dumps)


def test_an_int_enum_means_its_number_either_way():
    value = {"level": Level.HIGH}
    assert json.loads(dumps_like(value, kombu_dumps)) == json.loads(kombu_dumps(value)) == {"level": 3}


def test_nan_stays_nan_rather_than_becoming_null():
    decoded = kombu_loads(dumps_like({"confidence": float("nan")}, kombu_dumps))
    assert math.isnan(decoded["confidence"])


def test_what_neither_can_encode_still_raises():
    with pytest.raises(TypeError):
        dumps_like({"array": np.zeros(2)}, kombu_dumps)
    with pytest.raises(TypeError):
        dumps_like({"thing": object()}, kombu_dumps)


def test_a_stored_result_reads_back_through_celery_as_the_backend_would_give_it(celery_app, redis_client):
    backend = celery_app.backend
    store = JobStore(redis_client, result_ttl=600, tombstone_ttl=600, input_ttl=600)
    values = {"plain": {"frames": [{"digit": 3, "confidence": 0.5}], "count": 1},
              "nan": {"confidence": float("nan")},
              "uuid": {"id": uuid.UUID(int=9)}}
    ids = {name: submit_job(store, celery_app, analyzer="fastjson", input_bytes=b"{}",
                            input_media_type="application/json", params={}).job_id for name in values}
    redis_client.delete("gpuq.fastjson")
    encoded = {name: encode_result(backend, ids[name], value) for name, value in values.items()}
    assert isinstance(encoded["plain"], bytes)
    assert isinstance(encoded["nan"], str) and isinstance(encoded["uuid"], str)
    batch = Pipelined(redis_client)
    for name, job_id in ids.items():  # stored as a run's end stores them: with the job's end, fenced
        claim = store.lifecycle.claim_lead(job_id, owner="fast|1|1", lock_ttl=60, max_attempts=3,
                                           queue_prefix="gpuq.", running_fields={"status": "running"})
        store.lifecycle.queue_finish(batch, job_id, claim.record.fence, "succeeded", {}, now=time.time(),
                                     result=encoded[name], result_key=result_key(backend, job_id),
                                     result_ttl=result_ttl(backend))
    batch.execute()
    plain = AsyncResult(ids["plain"], app=celery_app)
    assert plain.state == "SUCCESS" and plain.get(timeout=5) == values["plain"]
    assert math.isnan(AsyncResult(ids["nan"], app=celery_app).get(timeout=5)["confidence"])
    assert AsyncResult(ids["uuid"], app=celery_app).get(timeout=5) == values["uuid"]  # a UUID again


def test_the_bench_measures_each_encoder_beside_the_model():
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "bench/result_encoding.py", "--rounds", "1", "--seconds", "0.2", "--jobs", "2"]
    out = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True, timeout=300).stdout
    assert "round 1: alone" in out and "; backend " in out and "; fast " in out
    assert "fast/backend, median of 1 rounds:" in out
