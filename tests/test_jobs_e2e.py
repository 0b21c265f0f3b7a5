"""End to end: real HTTP into gunicorn, real Redis, a real celery worker, and back."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from tests.stack import ROOT, wait_for_status

SEVEN = ROOT / "examples" / "seven.png"


def submit(api: str, analyzer: str, **body) -> dict:
    response = requests.post(f"{api}/v1/jobs", json={"analyzer": analyzer, **body}, timeout=10)
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/v1/jobs/{response.json()['id']}"
    return response.json()


def test_simulate_job_goes_queued_running_succeeded(api):
    job = submit(api, "simulate", params={"seconds": 1.5}, input={"tag": "a"})
    assert job["status"] == "queued"
    seen, progress = [], []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = requests.get(f"{api}/v1/jobs/{job['id']}", timeout=5).json()
        if not seen or seen[-1] != current["status"]:
            seen.append(current["status"])
        if current["progress"]:
            progress.append(current["progress"]["fraction"])
        if current["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.05)
    assert seen == ["queued", "running", "succeeded"] or seen == ["running", "succeeded"], seen
    assert current["result"]["input"] == {"tag": "a"}
    assert current["result"]["seconds"] >= 1.4
    assert current["attempts"] == 1
    assert current["worker"].startswith("cpu0@") and current["device"] == "cpu"
    assert current["timings"]["run_ms"] >= 1400 and current["timings"]["batch_size"] == 1
    assert any(0 < f < 1 for f in progress), progress
    assert current["finished_at"] >= current["started_at"] >= current["created_at"]
    assert current["expires_at"] > current["finished_at"]


def test_failing_job_ends_failed_with_its_message(api):
    job = submit(api, "simulate", params={"seconds": 0.1, "fail": "the model says no"})
    done = requests.get(f"{api}/v1/jobs/{job['id']}?wait=20", timeout=30).json()
    assert done["status"] == "failed"
    assert done["error"] == {"code": "simulated_failure", "message": "the model says no"}
    assert done["result"] is None


def test_analyzer_exception_is_a_failure_not_a_success(api):
    job = submit(api, "simulate", params={"seconds": 0, "oom": True})
    done = requests.get(f"{api}/v1/jobs/{job['id']}?wait=20", timeout=30).json()
    assert done["status"] == "failed"
    assert done["error"]["code"] == "out_of_memory"


def test_long_poll_returns_when_the_job_ends(api):
    job = submit(api, "simulate", params={"seconds": 0.5})
    began = time.monotonic()
    done = requests.get(f"{api}/v1/jobs/{job['id']}?wait=25", timeout=30).json()
    waited = time.monotonic() - began
    assert done["status"] == "succeeded"
    assert waited < 10, waited  # woken by the job's event, not by the 25 s deadline


def test_unknown_job_is_404(api):
    response = requests.get(f"{api}/v1/jobs/00000000-0000-0000-0000-000000000000", timeout=5)
    assert response.status_code == 404
    assert response.json()["error"]["field"] == "id"
    assert requests.delete(f"{api}/v1/jobs/nope", timeout=5).status_code == 404


def test_queued_job_canceled_before_it_starts_never_runs(api, redis_client):
    blocker = submit(api, "simulate", params={"seconds": 2})
    victim = submit(api, "simulate", params={"seconds": 0.1})
    wait_for_status(api, blocker["id"], {"running"})
    response = requests.delete(f"{api}/v1/jobs/{victim['id']}", timeout=5)
    assert response.status_code == 202
    assert response.json()["status"] == "canceled"
    assert requests.get(f"{api}/v1/jobs/{blocker['id']}?wait=20", timeout=30).json()["status"] == "succeeded"
    # The worker is free now and has taken the canceled job's message: give it time to (not) run it.
    follower = submit(api, "simulate", params={"seconds": 0})
    assert requests.get(f"{api}/v1/jobs/{follower['id']}?wait=20", timeout=30).json()["status"] == "succeeded"
    after = requests.get(f"{api}/v1/jobs/{victim['id']}", timeout=5).json()
    assert after["status"] == "canceled"
    assert after["started_at"] is None and after["attempts"] == 0 and after["worker"] is None
    assert redis_client.exists(f"gpuq:input:{victim['id']}") == 0
    # A repeated cancel answers as the first did (README: HTTP API); canceling a finished job is a conflict.
    again = requests.delete(f"{api}/v1/jobs/{victim['id']}", timeout=5)
    assert again.status_code == 202 and again.json()["status"] == "canceled"
    conflict = requests.delete(f"{api}/v1/jobs/{follower['id']}", timeout=5)
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "already_finished"


def test_digits_upload_with_multipart_returns_the_digit(api):
    with Path(SEVEN).open("rb") as image:
        response = requests.post(f"{api}/v1/jobs", data={"analyzer": "digits"},
                                 files={"file": ("seven.png", image, "image/png")}, timeout=10)
    assert response.status_code == 202, response.text
    done = requests.get(f"{api}/v1/jobs/{response.json()['id']}?wait=20", timeout=30).json()
    assert done["status"] == "succeeded", done
    assert done["result"]["digit"] == 7


def test_analyzers_lists_specs_and_serving_workers(api):
    listing = requests.get(f"{api}/v1/analyzers", timeout=5).json()["analyzers"]
    by_name = {a["name"]: a for a in listing}
    assert {"digits", "simulate", "echo"} <= set(by_name)
    assert "image/png" in by_name["digits"]["media_types"]
    assert by_name["digits"]["batching"]["max_batch_size"] >= 1
    assert by_name["simulate"]["workers"][0]["device"] == "cpu"


def test_health_and_readiness(api):
    assert requests.get(f"{api}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{api}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["ready"] is True


def test_expired_result_answers_410_not_404(api, redis_client):
    job = submit(api, "simulate", params={"seconds": 0})
    assert requests.get(f"{api}/v1/jobs/{job['id']}?wait=20", timeout=30).json()["status"] == "succeeded"
    # Age the record as the result TTL would.
    redis_client.hset(f"gpuq:job:{job['id']}", "expires_at", repr(time.time() - 1))
    response = requests.get(f"{api}/v1/jobs/{job['id']}", timeout=5)
    assert response.status_code == 410 and response.json()["error"]["code"] == "expired"
