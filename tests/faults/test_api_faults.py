"""The API side of reliability: idempotency, backpressure, expiry, crashes mid-submit, hostile messages."""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.stack import ROOT, start_api


def test_idempotency_key_gives_the_same_job_and_one_execution(make_stack):
    stack = make_stack()
    headers = {"Idempotency-Key": "upload-2026-11-22-0001"}
    first = stack.submit(params={"seconds": 0.3}, headers=headers)
    again = requests.post(f"{stack.url}/v1/jobs", json={"analyzer": "faulty", "params": {"seconds": 0.3}},
                          headers=headers, timeout=10)
    assert again.status_code == 202 and again.json()["id"] == first["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert stack.wait(first["id"])["status"] == "succeeded"
    replay_after = stack.submit(params={"seconds": 0.3}, headers=headers)
    assert replay_after["id"] == first["id"] and replay_after["status"] == "succeeded"
    other_body = requests.post(f"{stack.url}/v1/jobs", json={"analyzer": "faulty", "params": {"seconds": 9}},
                               headers=headers, timeout=10)
    assert other_body.status_code == 422
    assert other_body.json()["error"]["field"] == "Idempotency-Key"
    time.sleep(0.5)
    assert stack.counter("runs", first["id"]) == 1


def test_full_queue_answers_429_and_drops_nothing_accepted(make_stack):
    stack = make_stack(GPUQ_QUEUE_LIMITS="faulty=3")
    blocker = stack.submit(params={"seconds": 2})
    stack.wait(blocker["id"], {"running"})
    accepted = [stack.submit(params={"seconds": 0}) for _ in range(3)]
    refused = requests.post(f"{stack.url}/v1/jobs", json={"analyzer": "faulty", "params": {"seconds": 0}},
                            timeout=10)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert refused.json()["error"]["code"] == "queue_full"
    for job in [blocker, *accepted]:
        assert stack.wait(job["id"])["status"] == "succeeded"
    assert stack.submit(params={"seconds": 0})["status"] == "queued"  # room again once drained


def test_result_ttl_passed_answers_410_not_404(make_stack):
    stack = make_stack(GPUQ_RESULT_TTL="2")
    job = stack.submit(params={"seconds": 0})
    assert stack.wait(job["id"])["status"] == "succeeded"
    time.sleep(3)
    response = requests.get(f"{stack.url}/v1/jobs/{job['id']}", timeout=5)
    assert response.status_code == 410 and response.json()["error"]["code"] == "expired"
    assert stack.redis.exists(f"celery-task-meta-{job['id']}") == 0  # the result itself is gone
    assert requests.get(f"{stack.url}/v1/jobs/not-a-job", timeout=5).status_code == 404


def test_api_killed_mid_submit_leaves_no_job_queued_forever(make_stack):
    stack = make_stack()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                requests.post(f"{stack.url}/v1/jobs", json={"analyzer": "faulty", "params": {"seconds": 0}},
                              timeout=5)
            except requests.RequestException:
                pass

    with ThreadPoolExecutor(6) as pool:
        for _ in range(6):
            pool.submit(hammer)
        time.sleep(1.5)
        pid = stack.api_process.pid
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            os.kill(int(child), signal.SIGKILL)  # the gunicorn workers die mid-request
        time.sleep(0.5)
        stop.set()
    records = [k.decode().split(":")[-1] for k in stack.redis.scan_iter("gpuq:job:*")]
    assert len(records) > 10
    for job_id in records:
        assert stack.wait(job_id, timeout=60)["status"] == "succeeded", job_id
    assert stack.redis.llen("gpuq.faulty") == 0


def test_pickle_message_pushed_into_a_queue_is_refused_unexecuted(make_stack, tmp_path):
    stack = make_stack()
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    body = pickle.dumps(((Exploit(),), {}, {}))
    stack.redis.lpush("gpuq.faulty", json.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "binary",
        "content-type": "application/x-python-serialize",
        "headers": {"lang": "py", "task": "gpuq.run", "id": "evil-1", "retries": 0, "timelimit": [None, None],
                    "root_id": "evil-1", "parent_id": None, "argsrepr": "()", "kwargsrepr": "{}", "origin": "x"},
        "properties": {"correlation_id": "evil-1", "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": "gpuq.faulty"}, "priority": 0,
                       "body_encoding": "base64", "delivery_tag": "evil-tag"},
    }))
    follow = stack.submit(params={"seconds": 0})
    assert stack.wait(follow["id"])["status"] == "succeeded"
    time.sleep(0.5)
    assert not marker.exists()
    assert stack.redis.llen("gpuq.faulty") == 0
    assert "pickle" in stack.workers.output().lower()  # refused, and said so


def test_unanswering_redis_gives_503_within_5_seconds(tmp_path):
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)  # accepts connections into its backlog and never answers
    port = blackhole.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUQ_")}
    env.update(GPUQ_REDIS_URL=f"redis://127.0.0.1:{port}/0", GPUQ_AUTH="off", PYTHONPATH=str(ROOT))
    process, url = start_api(env, tmp_path, workers=1)
    try:
        began = time.monotonic()
        response = requests.post(f"{url}/v1/jobs", json={"analyzer": "simulate"}, timeout=30)
        assert response.status_code == 503 and time.monotonic() - began < 5
    finally:
        process.stop()
        blackhole.close()
