"""Bring your own model: the example under examples/my_models, served by import path, end to end."""

from __future__ import annotations

import os

import pytest
import requests

from gpu_worker.weights import state_dict_sha256
from gpuq.redis_server import RedisServer
from tests.stack import ROOT, base_env, start_api, start_workers, wait_for_status, wait_for_workers

EXAMPLE = "my_models.models:Segmenter"


@pytest.fixture(scope="module")
def own_model_stack(tmp_path_factory):
    """A worker started the way the README tells users: their package on PYTHONPATH, one setting."""
    work = tmp_path_factory.mktemp("own-model")
    server = RedisServer(work / "redis").start()
    env = base_env(server.url, GPUQ_ANALYZERS=f"simulate,{EXAMPLE}",
                   PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "examples")]))
    workers = start_workers(env, work)
    api_process = None
    try:
        wait_for_workers(server.url, {"segmenter", "simulate"}, workers)
        api_process, url = start_api(env, work, workers=1)
        yield url
    finally:
        if api_process is not None:
            api_process.stop()
        workers.stop(timeout=30)
        server.stop()


def test_the_example_model_serves_jobs_end_to_end(own_model_stack, monkeypatch):
    api = own_model_stack
    listing = {a["name"]: a for a in requests.get(f"{api}/v1/analyzers", timeout=5).json()["analyzers"]}
    assert "signal" in listing["segmenter"]["input_schema"]["properties"]
    signal = [0.0] * 10 + [1.0] * 10 + [0.0] * 10 + [2.0] * 5
    response = requests.post(f"{api}/v1/jobs", json={"analyzer": "segmenter", "input": {"signal": signal}},
                             timeout=10)
    assert response.status_code == 202, response.text
    done = wait_for_status(api, response.json()["id"], {"succeeded", "failed"}, timeout=30)
    assert done["status"] == "succeeded", done
    assert done["result"] == {"segments": [{"start": 10, "end": 20}, {"start": 29, "end": 35}], "count": 2,
                              "length": 35}

    monkeypatch.syspath_prepend(str(ROOT / "examples"))  # as the worker has it
    from my_models.models import SmoothingNet

    assert done["provenance"] == {"analyzer": "segmenter", "version": "1",
                                  "weights_sha256": state_dict_sha256(SmoothingNet())}


def test_the_example_models_schema_and_params_are_enforced(own_model_stack):
    api = own_model_stack
    missing = requests.post(f"{api}/v1/jobs", json={"analyzer": "segmenter", "input": {"sig": [1]}}, timeout=10)
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "input"
    wrong = requests.post(f"{api}/v1/jobs", json={"analyzer": "segmenter", "input": {"signal": [1, "two"]}},
                          timeout=10)
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "input.signal.1"
    high = requests.post(f"{api}/v1/jobs", json={"analyzer": "segmenter", "input": {"signal": [0, 1, 1, 1, 0]},
                                                 "params": {"threshold": 0.9}}, timeout=10)
    assert wait_for_status(api, high.json()["id"], {"succeeded"}, timeout=30)["result"]["count"] == 0


def test_a_bad_item_fails_only_its_job(own_model_stack):
    api = own_model_stack
    # NaN is refused at the door (400); 1e39 is a finite JSON number, but past float32's range, where the
    # model's tensor holds it as infinity: the model itself must refuse it.
    nan = requests.post(f"{api}/v1/jobs", data='{"analyzer": "segmenter", "input": {"signal": [1, NaN]}}',
                        headers={"Content-Type": "application/json"}, timeout=10)
    assert nan.status_code == 400 and nan.json()["error"]["code"] == "malformed_json"
    response = requests.post(f"{api}/v1/jobs", data='{"analyzer": "segmenter", "input": {"signal": [1, 1e39]}}',
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 202, response.text
    done = wait_for_status(api, response.json()["id"], {"succeeded", "failed"}, timeout=30)
    assert done["status"] == "failed"
    assert done["error"] == {"code": "invalid_input", "message": "signal holds a value that is not a finite number"}
