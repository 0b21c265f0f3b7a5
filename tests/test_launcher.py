"""The worker launcher: models loaded once per process, restarts, clean stops, refusing broken models."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis
import requests

from gpu_worker.launcher import plan_slots
from gpuq.redis_server import RedisServer
from tests.fixtures.nvidia_smi import NO_DRIVER, path_with, runs
from tests.stack import base_env, start_api, start_workers, wait_for_status, wait_for_workers


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of this test's own, so its workers' names cannot clash with the session's."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_broken_model_stops_the_worker_with_a_clear_message(own_redis, tmp_path):
    env = base_env(own_redis.url, GPUQ_ANALYZERS="tests.fixtures.analyzers:BrokenSetup")
    process = start_workers(env, tmp_path)
    code = process.popen.wait(timeout=90)
    output = process.output()
    assert code == 1
    assert "weights file /nonexistent/model.safetensors is missing" in output
    assert "failed to start 3 times in a row" in output
    assert redis.Redis.from_url(own_redis.url).hlen("gpuq:analyzers") == 0  # nothing advertised


def test_unimportable_analyzer_is_refused(own_redis, tmp_path):
    env = base_env(own_redis.url, GPUQ_ANALYZERS="no_such_package.models:Thing")
    process = start_workers(env, tmp_path)
    assert process.popen.wait(timeout=90) == 1
    assert "cannot import 'no_such_package.models'" in process.output()


def test_model_loads_once_and_a_dead_worker_is_restarted(own_redis, tmp_path):
    env = base_env(own_redis.url, GPUQ_ANALYZERS="tests.fixtures.analyzers:Echo")
    process = start_workers(env, tmp_path)
    api_process, api = start_api(env, tmp_path, workers=1)
    try:
        first = wait_for_workers(own_redis.url, {"echo"}, process)[0]
        results = []
        for n in range(3):
            job = requests.post(f"{api}/v1/jobs", json={"analyzer": "echo", "input": {"n": n}}, timeout=5).json()
            results.append(wait_for_status(api, job["id"], {"succeeded"})["result"])
        assert [r["echo"] for r in results] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert {r["pid"] for r in results} == {first["pid"]}  # the same warm process served all three
        assert {r["setups"] for r in results} == {1}  # and set the model up once

        celery_main = _parent_of(first["pid"])
        os.kill(celery_main, signal.SIGKILL)  # the whole worker dies
        deadline = time.monotonic() + 60
        while True:
            live = wait_for_workers(own_redis.url, {"echo"}, process)
            if live[0]["pid"] != first["pid"] and _parent_of(live[0]["pid"]) != celery_main:
                break
            assert time.monotonic() < deadline, "the launcher did not restart the worker"
            time.sleep(0.2)
        job = requests.post(f"{api}/v1/jobs", json={"analyzer": "echo", "input": {}}, timeout=5).json()
        assert wait_for_status(api, job["id"], {"succeeded"})["result"]["pid"] == live[0]["pid"]
        assert "restarting in" in process.output()
    finally:
        api_process.stop()
        process.stop()


def test_sigterm_lets_the_running_job_finish(own_redis, tmp_path):
    env = base_env(own_redis.url, GPUQ_ANALYZERS="simulate")
    process = start_workers(env, tmp_path)
    api_process, api = start_api(env, tmp_path, workers=1)
    try:
        wait_for_workers(own_redis.url, {"simulate"}, process)
        job = requests.post(f"{api}/v1/jobs", json={"analyzer": "simulate", "params": {"seconds": 2}},
                            timeout=5).json()
        wait_for_status(api, job["id"], {"running"})
        process.popen.send_signal(signal.SIGTERM)
        assert process.popen.wait(timeout=60) == 0
        done = requests.get(f"{api}/v1/jobs/{job['id']}", timeout=5).json()
        assert done["status"] == "succeeded" and done["result"]["seconds"] >= 1.9
        assert redis.Redis.from_url(own_redis.url).scard("gpuq:workers") == 0  # it said goodbye
    finally:
        api_process.stop()
        process.stop()


def test_one_worker_per_gpu_without_touching_cuda(tmp_path):
    slots = plan_slots({"GPUQ_GPUS": "0,3", "GPUQ_REDIS_URL": "redis://x:1/0"}, tmp_path)
    assert [s.name.split("@")[0] for s in slots] == ["gpu0", "gpu3"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "3"]
    assert {s.env["GPUQ_DEVICE"] for s in slots} == {"cuda"}
    assert {s.env["PYTORCH_NVML_BASED_CUDA_CHECK"] for s in slots} == {"1"}
    cpu = plan_slots({"GPUQ_GPUS": "none", "GPUQ_CPU_WORKERS": "2"}, tmp_path)
    assert [s.name.split("@")[0] for s in cpu] == ["cpu0", "cpu1"]
    assert {s.env["GPUQ_DEVICE"] for s in cpu} == {"cpu"} and {s.env["CUDA_VISIBLE_DEVICES"] for s in cpu} == {""}


def test_a_host_meant_to_have_gpus_starts_no_worker_when_its_driver_is_broken(tmp_path):
    smi = tmp_path / "bin"
    # No Redis: the launcher must stop before anything would need one.
    env = base_env("redis://127.0.0.1:1/0", PATH=path_with(smi, NO_DRIVER, os.environ["PATH"]))
    del env["GPUQ_GPUS"]  # nothing says CPU workers on purpose; nvidia-smi is there, so GPUs are expected
    env.pop("CUDA_VISIBLE_DEVICES", None)
    started = time.monotonic()
    process = start_workers(env, tmp_path)
    code = process.popen.wait(timeout=60)
    output = process.output()
    assert code != 0 and time.monotonic() - started < 30
    assert "gpuq worker: GPUs are expected" in output
    assert "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver" in output
    assert "set GPUQ_GPUS=none to run CPU workers on purpose" in output
    assert runs(smi) == 1
    assert "started worker" not in output and "celery" not in output.lower()


def test_broken_user_analyzers_are_refused_each_with_its_reason(own_redis, tmp_path):
    # Three workers, each routed to one broken class: every reason shows in one run.
    broken = ["BadSchema", "NoPredict", "BadWeightsHash"]
    routes = ";".join(f"cpu{i}:tests.fixtures.analyzers:{name}" for i, name in enumerate(broken))
    env = base_env(own_redis.url, GPUQ_CPU_WORKERS="3", GPUQ_ROUTES=routes)
    process = start_workers(env, tmp_path)
    assert process.popen.wait(timeout=120) == 1
    output = process.output()
    assert "'tests.fixtures.analyzers:BadSchema' has an invalid params_schema at $.properties.threshold.type" in output
    assert "'tests.fixtures.analyzers:NoPredict' does not implement predict(batch)" in output
    assert "analyzer 'bad-hash' set weights_sha256 to 'md5:1234'; expected 64 lowercase hex digits" in output
    assert "every worker failed to load its analyzers" in output
    assert redis.Redis.from_url(own_redis.url).hlen("gpuq:analyzers") == 0  # nothing advertised
