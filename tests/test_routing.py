"""GPUQ_ROUTES: analyzers given to particular workers, and the API showing who serves what."""

from __future__ import annotations

import pytest
import requests

from gpu_worker.launcher import plan_slots
from gpu_worker.routing import RouteError, route_analyzers
from tests.stack import ROOT, base_env, start_workers, wait_for_status

FOUR_GPUS = {"GPUQ_GPUS": "0,1,2,3", "GPUQ_REDIS_URL": "redis://x:1/0", "GPUQ_ANALYZERS": "digits,simulate"}


def _served(slots) -> dict[str, str | None]:
    return {s.name.split("@")[0]: s.env.get("GPUQ_ANALYZERS") for s in slots}


def test_gpus_are_routed_to_their_analyzers(tmp_path):
    slots = plan_slots({**FOUR_GPUS, "GPUQ_ROUTES": "0-1:embed;2-3:digits,simulate"}, tmp_path)
    assert _served(slots) == {"gpu0": "embed", "gpu1": "embed", "gpu2": "digits,simulate", "gpu3": "digits,simulate"}
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1", "2", "3"]


def test_unrouted_workers_keep_the_hosts_analyzers(tmp_path):
    slots = plan_slots({**FOUR_GPUS, "GPUQ_ROUTES": " 1,3 : embed , tests.fixtures.analyzers:Echo ;"}, tmp_path)
    assert _served(slots) == {"gpu0": "digits,simulate", "gpu1": "embed,tests.fixtures.analyzers:Echo",
                              "gpu2": "digits,simulate", "gpu3": "embed,tests.fixtures.analyzers:Echo"}
    assert _served(plan_slots(FOUR_GPUS, tmp_path)) == dict.fromkeys(["gpu0", "gpu1", "gpu2", "gpu3"],
                                                                     "digits,simulate")


def test_cpu_workers_are_routed_by_index(tmp_path):
    slots = plan_slots({"GPUQ_GPUS": "none", "GPUQ_CPU_WORKERS": "3", "GPUQ_ROUTES": "cpu0:embed;cpu1-2:digits"},
                       tmp_path)
    assert _served(slots) == {"cpu0": "embed", "cpu1": "digits", "cpu2": "digits"}


@pytest.mark.parametrize(("routes", "message"), [
    ("4:embed", "names worker gpu4, but this host runs gpu0, gpu1, gpu2, gpu3"),
    ("2-5:embed", "names worker gpu4"),
    ("cpu0:embed", "names worker cpu0"),
    ("0-1 embed", "is not 'workers:analyzers'"),
    (":embed", "is not 'workers:analyzers'"),
    ("0:", "needs a comma-separated list of analyzers"),
    ("0:embed,,digits", "needs a comma-separated list of analyzers"),
    ("0:embd", "'embd' in '0:embd' is neither a built-in analyzer"),
    ("0-1:embed;1:digits", "worker gpu1 is routed twice"),
    ("3-1:embed", "range '3-1' in '3-1:embed' runs backwards"),
    ("0,,1:embed", "empty worker id"),
])
def test_bad_routes_are_refused_with_the_reason(tmp_path, routes, message):
    with pytest.raises(RouteError, match="GPUQ_ROUTES") as error:
        plan_slots({**FOUR_GPUS, "GPUQ_ROUTES": routes}, tmp_path)
    assert message in str(error.value)


def test_a_gpu_named_as_gpuq_gpus_spells_it_can_be_routed():
    assert route_analyzers("GPU-8f2a:embed", ["gpuGPU-8f2a", "gpuGPU-11c0"]) == {"gpuGPU-8f2a": "embed"}


def test_launcher_with_a_bad_route_starts_no_worker(tmp_path):
    env = base_env("redis://127.0.0.1:1/0", GPUQ_CPU_WORKERS="2", GPUQ_ROUTES="cpu0:embed;cpu2:digits")
    process = start_workers(env, tmp_path)
    assert process.popen.wait(timeout=60) == 1
    output = process.output()
    assert "gpuq worker: GPUQ_ROUTES: 'cpu2:digits' names worker cpu2, but this host runs cpu0, cpu1" in output
    assert "started worker" not in output


def test_analyzers_and_readiness_show_which_worker_serves_what(routed_stack):
    api = routed_stack.api
    listing = {a["name"]: a for a in requests.get(f"{api}/v1/analyzers", timeout=5).json()["analyzers"]}
    assert set(listing) == {"embed", "digits", "simulate"}
    assert [w["name"].split("@")[0] for w in listing["embed"]["workers"]] == ["cpu0"]
    assert [w["name"].split("@")[0] for w in listing["digits"]["workers"]] == ["cpu1"]
    assert [w["name"].split("@")[0] for w in listing["simulate"]["workers"]] == ["cpu1"]
    assert listing["embed"]["batching"] == {"max_batch_size": 32, "max_wait_ms": 10}

    ready = requests.get(f"{api}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert {name: [w.split("@")[0] for w in workers] for name, workers in body["analyzers"].items()} == {
        "digits": ["cpu1"], "embed": ["cpu0"], "simulate": ["cpu1"]}
    assert {w["name"].split("@")[0]: w["analyzers"] for w in body["workers"]} == {
        "cpu0": ["embed"], "cpu1": ["digits", "simulate"]}


def test_jobs_go_to_the_worker_routed_for_them(routed_stack):
    api = routed_stack.api
    with open(ROOT / "examples" / "seven.png", "rb") as image:
        digits = requests.post(f"{api}/v1/jobs", data={"analyzer": "digits"}, files={"file": image}, timeout=10)
    simulate = requests.post(f"{api}/v1/jobs", json={"analyzer": "simulate", "params": {"seconds": 0}}, timeout=10)
    embed = requests.post(f"{api}/v1/jobs", json={"analyzer": "embed", "input": "hello"}, timeout=10)
    done = {name: wait_for_status(api, r.json()["id"], {"succeeded", "failed"}, timeout=60)
            for name, r in (("digits", digits), ("simulate", simulate), ("embed", embed))}
    assert {name: job["status"] for name, job in done.items()} == dict.fromkeys(done, "succeeded")
    assert {name: job["worker"].split("@")[0] for name, job in done.items()} == {
        "digits": "cpu1", "simulate": "cpu1", "embed": "cpu0"}
    assert done["digits"]["result"]["digit"] == 7
