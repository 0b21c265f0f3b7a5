"""On a GPU machine: one worker per GPU, the model on its own device, real CUDA out-of-memory.

Deselected by default (no GPU on CI); run with ``pytest -m gpu`` where CUDA exists.
"""

from __future__ import annotations

import pytest
import requests

from gpu_worker.devices import discover_gpus
from gpuq.redis_server import RedisServer
from tests.stack import base_env, start_api, start_workers, wait_for_status, wait_for_workers

pytestmark = pytest.mark.gpu

SEVEN = "examples/seven.png"


@pytest.fixture
def gpu_stack(tmp_path):
    gpus = discover_gpus({})
    assert gpus, "pytest -m gpu needs nvidia-smi to list at least one GPU"
    server = RedisServer(tmp_path / "redis").start()
    env = base_env(server.url, GPUQ_ANALYZERS="digits,simulate")
    del env["GPUQ_GPUS"]
    workers = start_workers(env, tmp_path)
    api_process, api = start_api(env, tmp_path, workers=1)
    try:
        live = wait_for_workers(server.url, {"digits", "simulate"}, workers, count=len(gpus), timeout=180)
        yield api, live, gpus
    finally:
        api_process.stop()
        workers.stop(timeout=60)
        server.stop()


def test_one_worker_per_gpu_on_its_own_device(gpu_stack):
    api, live, gpus = gpu_stack
    assert sorted(w["name"].split("@")[0] for w in live) == sorted(f"gpu{g}" for g in gpus)
    assert all(w["device"].startswith("cuda:") for w in live)
    with open(SEVEN, "rb") as image:
        job = requests.post(f"{api}/v1/jobs", data={"analyzer": "digits"}, files={"file": image}, timeout=10).json()
    done = wait_for_status(api, job["id"], {"succeeded", "failed"}, timeout=60)
    assert done["status"] == "succeeded" and done["result"]["digit"] == 7
    assert done["device"].startswith("cuda:")


def test_cuda_out_of_memory_fails_the_job_and_the_worker_keeps_serving(gpu_stack):
    api, _, _ = gpu_stack
    job = requests.post(f"{api}/v1/jobs", json={"analyzer": "simulate", "params": {"seconds": 0, "oom": True}},
                        timeout=10).json()
    done = wait_for_status(api, job["id"], {"succeeded", "failed"}, timeout=60)
    assert done["status"] == "failed" and done["error"]["code"] == "out_of_memory"
    assert "CUDA" in done["error"]["message"] and done["attempts"] == 1
    follow = requests.post(f"{api}/v1/jobs", json={"analyzer": "simulate", "params": {"seconds": 0}}, timeout=10)
    assert wait_for_status(api, follow.json()["id"], {"succeeded", "failed"}, timeout=60)["status"] == "succeeded"
