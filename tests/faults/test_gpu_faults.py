"""A GPU that breaks under a batch (a sticky CUDA error, simulated on the CPU): no job fails for a
fault that is not its own, the model process is replaced, and a GPU that stays broken stops its worker."""

from __future__ import annotations

import requests

from tasks import catalog
from tests.fixtures.device_faults import BROKEN_GPU_FILE
from tests.stack import wait_until

BROKEN_GPU = "tests.fixtures.device_faults:BrokenGpu"


def _heartbeats(stack) -> list[dict]:
    return catalog.live_workers(stack.redis)


def test_a_gpu_broken_by_one_input_fails_that_job_alone_and_a_fresh_process_runs_the_rest(make_stack):
    stack = make_stack(analyzers=BROKEN_GPU)
    first_pid = stack.live_workers()[0]["pid"]
    poison = stack.submit("brokengpu", input={"n": -1}, params={"break_gpu": True})
    others = [stack.submit("brokengpu", input={"n": n}) for n in range(11)]
    done = {job["id"]: stack.wait(job["id"], timeout=90) for job in [poison, *others]}

    bad = done[poison["id"]]
    assert bad["status"] == "failed" and bad["error"]["code"] == "device_error", bad
    assert "device-side assert" in bad["error"]["message"]
    for job in others:
        record = done[job["id"]]
        assert record["status"] == "succeeded", record
        assert record["attempts"] == 1  # given back after the fault without counting an attempt
        assert record["result"]["pid"] != first_pid  # run by a fresh model process
    log = stack.workers.output()
    assert "the GPU failed under a batch" in log and "back in its queue" in log
    # The poison's batch, then the poison alone: two faults, never three in a row, so the worker serves on.
    wait_until(lambda: [w for w in stack.live_workers() if w["pid"] not in (first_pid,)], 30, "a fresh process")
    assert stack.workers.popen.poll() is None
    follow = stack.submit("brokengpu", input={"n": 99})
    assert stack.wait(follow["id"])["status"] == "succeeded"
    metrics = requests.get(f"{stack.url}/metrics", timeout=10).text
    assert 'gpuq_worker_unhealthy{device="cpu",worker="cpu0@' in metrics  # 0 again: the fresh process serves
    wait_until(lambda: all(w.get("device_faults_in_a_row") == 0 for w in _heartbeats(stack)), 10,
               "the fault count to be settled by the batches that ran")


def test_a_gpu_that_stays_broken_stops_its_worker_after_three_faults_in_a_row(make_stack, tmp_path):
    broken = tmp_path / "gpu-broken"
    stack = make_stack(analyzers=BROKEN_GPU, **{BROKEN_GPU_FILE: str(broken)})
    broken.touch()  # from now on every predict, in every process, meets a broken device
    jobs = [stack.submit("brokengpu", input={"n": n}) for n in range(3)]

    unhealthy = wait_until(lambda: [w for w in _heartbeats(stack) if w["state"] == "unhealthy"], 30,
                           "the heartbeat to say the worker's GPU failed")
    assert "device-side assert" in unhealthy[0]["unhealthy_because"]
    ready = requests.get(f"{stack.url}/readyz", timeout=10)
    if ready.status_code == 503:  # unless a fresh process is already up again
        assert any(w.get("unhealthy_because") for w in ready.json()["workers"]) or not ready.json()["workers"]

    wait_until(lambda: stack.workers.popen.poll() is not None, 90, "the launcher to give up the worker")
    assert stack.workers.popen.returncode == 1
    log = stack.workers.output()
    assert "its GPU failed 3 times in a row" in log and "is not restarted" in log, log[-3000:]
    records = [stack.job(job["id"]) for job in jobs]
    statuses = sorted(record["status"] for record in records)
    assert set(statuses) <= {"failed", "queued"} and "queued" in statuses, records
    # Faults 1 and 2 are counted on their jobs (an input may set them off), the third, which stops the worker,
    # is the GPU's: at most one job ran into two counted faults.
    assert statuses.count("failed") <= 1, records
    for record in records:
        if record["status"] == "failed":
            assert record["error"]["code"] == "device_error", record
        else:
            assert record["attempts"] == 0  # none of its runs on the broken GPU counted
    assert requests.get(f"{stack.url}/readyz", timeout=10).status_code == 503
