"""``GET /metrics``: parsed by prometheus_client's own parser, the same from every gunicorn worker, moving with jobs."""

from __future__ import annotations

import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from tasks import catalog
from tasks import metrics as job_metrics
from tests.stack import wait_for_status

SCRAPES = 8  # fresh connections each: the API under test runs two gunicorn workers


def scrape(api: str) -> dict[tuple[str, tuple], float]:
    response = requests.get(f"{api}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def submit(api: str, body: dict) -> requests.Response:
    return requests.post(f"{api}/v1/jobs", json=body, timeout=10)


def test_counters_and_histograms_move_as_jobs_run_and_every_worker_agrees(api):
    before = scrape(api)
    ids = [submit(api, {"analyzer": "simulate", "params": {"seconds": 0.2}}).json()["id"] for _ in range(3)]
    assert submit(api, {"analyzer": "simulate", "params": {"seconds": "soon"}}).status_code == 422
    assert submit(api, {"analyzer": "no-such-thing"}).status_code == 422
    not_an_image = requests.post(f"{api}/v1/jobs", data={"analyzer": "digits"},
                                 files={"file": ("seven.png", b"plain text", "image/png")}, timeout=10)
    assert not_an_image.status_code == 415
    over_the_server_limit = requests.post(f"{api}/v1/jobs", data={"analyzer": "digits"},
                                          files={"file": ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(5 << 20))},
                                          timeout=30)
    assert over_the_server_limit.status_code == 413  # the form was never read: counted, analyzer unknown
    for job_id in ids:
        assert wait_for_status(api, job_id, {"succeeded"})["status"] == "succeeded"

    # The worker records a job just after it finishes it: allow it a moment.
    deadline = time.monotonic() + 10
    while True:
        after = scrape(api)
        done = value(after, "gpuq_job_total_seconds_count", analyzer="simulate", status="succeeded")
        if done - value(before, "gpuq_job_total_seconds_count", analyzer="simulate", status="succeeded") >= 3:
            break
        assert time.monotonic() < deadline, "finished jobs never reached the histograms"
        time.sleep(0.2)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("gpuq_jobs_accepted_total", analyzer="simulate") == 3
    assert delta("gpuq_jobs_rejected_total", analyzer="simulate", reason="invalid_field") == 1
    assert delta("gpuq_jobs_rejected_total", analyzer="", reason="unknown_analyzer") == 1
    assert delta("gpuq_jobs_rejected_total", analyzer="digits", reason="unsupported_media_type") == 1
    assert delta("gpuq_jobs_rejected_total", analyzer="", reason="payload_too_large") == 1
    for histogram in ("gpuq_job_queue_wait_seconds", "gpuq_job_run_seconds", "gpuq_job_total_seconds"):
        assert delta(f"{histogram}_count", analyzer="simulate", status="succeeded") == 3, histogram
        assert delta(f"{histogram}_bucket", analyzer="simulate", status="succeeded", le="+Inf") == 3
    # Each ran about 0.2 s: above the 0.1 s bucket of run time, within the 1 s one (a loaded machine is slow).
    assert delta("gpuq_job_run_seconds_bucket", analyzer="simulate", status="succeeded", le="1.0") == 3
    assert delta("gpuq_job_run_seconds_bucket", analyzer="simulate", status="succeeded", le="0.1") == 0
    assert delta("gpuq_job_run_seconds_sum", analyzer="simulate", status="succeeded") >= 0.55
    assert delta("gpuq_job_batch_size_bucket", analyzer="simulate", le="1.0") == 3

    # Counters live in Redis: whichever gunicorn worker answers, the numbers are the same.
    stable = {k: v for k, v in after.items() if k[0].startswith(("gpuq_jobs_", "gpuq_job_"))}
    for _ in range(SCRAPES):
        again = scrape(api)
        assert {k: again.get(k) for k in stable} == stable


def test_failed_jobs_are_measured_under_their_status(api):
    before = scrape(api)
    job = submit(api, {"analyzer": "simulate", "params": {"seconds": 0, "fail": "no"}}).json()
    assert wait_for_status(api, job["id"], {"failed"})["status"] == "failed"
    deadline = time.monotonic() + 10
    while value(scrape(api), "gpuq_job_run_seconds_count", analyzer="simulate", status="failed") \
            <= value(before, "gpuq_job_run_seconds_count", analyzer="simulate", status="failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_queue_depth_and_live_workers(api):
    samples = scrape(api)
    for analyzer in ("digits", "simulate", "echo"):
        assert value(samples, "gpuq_workers_live", analyzer=analyzer) >= 1
    assert value(samples, "gpuq_redis_up") == 1
    blocker = submit(api, {"analyzer": "simulate", "params": {"seconds": 1.5}}).json()
    wait_for_status(api, blocker["id"], {"running"})
    waiting = [submit(api, {"analyzer": "simulate", "params": {"seconds": 0}}).json() for _ in range(2)]
    during = scrape(api)
    # The one worker holds the blocker; with prefetch 1 it may hold one more, the rest waits.
    assert value(during, "gpuq_queue_depth", analyzer="simulate") >= 1
    # Busy or idle as of the last heartbeat (every few seconds): present for each live worker.
    assert any(name == "gpuq_worker_busy" and dict(labels)["worker"].startswith("cpu0@")
               for name, labels in during)
    for job in waiting:
        wait_for_status(api, job["id"], {"succeeded"})
    assert value(scrape(api), "gpuq_queue_depth", analyzer="simulate") == 0


def test_gpu_telemetry_from_heartbeats_is_relayed(api, redis_client):
    name = "gpu7@metrics-test-host"
    info = {"name": name, "state": "ready", "device": "cuda:7 Test GPU", "pid": 1, "analyzers": [], "job": None,
            "heartbeat_at": time.time(),
            "gpu": {"index": "7", "memory_used_bytes": 1234567, "memory_total_bytes": 8000000000,
                    "utilization": 0.42}}
    catalog.publish_heartbeat(redis_client, name, info, ttl=30)
    try:
        samples = scrape(api)
        assert value(samples, "gpuq_gpu_memory_used_bytes", worker=name, gpu="7") == 1234567
        assert value(samples, "gpuq_gpu_memory_total_bytes", worker=name, gpu="7") == 8000000000
        assert value(samples, "gpuq_gpu_utilization_ratio", worker=name, gpu="7") == 0.42
        # CPU workers carry no GPU sample, so they get no GPU series.
        assert not any(n.startswith("gpuq_gpu_") and ("worker", name) not in labels for n, labels in samples)
    finally:
        catalog.forget_worker(redis_client, name)


def test_a_worker_whose_gpu_failed_is_unhealthy_and_its_pass_sizes_are_shown(api, redis_client):
    name = "gpu3@metrics-test-host"
    info = {"name": name, "state": "unhealthy", "device": "cuda:3 Test GPU", "pid": 1, "analyzers": ["digits"],
            "job": None, "heartbeat_at": time.time(), "device_faults_in_a_row": 2,
            "unhealthy_because": "its GPU failed (AcceleratorError: CUDA error: device-side assert triggered)",
            "pass_sizes": {"digits": 64}}
    catalog.publish_heartbeat(redis_client, name, info, ttl=30)
    try:
        samples = scrape(api)
        assert value(samples, "gpuq_worker_unhealthy", worker=name, device="cuda:3 Test GPU") == 1
        assert value(samples, "gpuq_worker_device_faults_in_a_row", worker=name) == 2
        assert value(samples, "gpuq_analyzer_pass_size", worker=name, analyzer="digits") == 64
        ready = requests.get(f"{api}/readyz", timeout=10).json()
        [entry] = [w for w in ready["workers"] if w["name"] == name]
        assert entry["state"] == "unhealthy" and "device-side assert" in entry["unhealthy_because"]
        assert name not in ready.get("analyzers", {}).get("digits", [])  # an unhealthy worker serves nothing
    finally:
        catalog.forget_worker(redis_client, name)


def test_a_job_is_observed_once_however_often_it_is_reported(redis_client):
    job_id = "00000000-0000-0000-0000-00000000abcd"
    redis_client.hset(f"gpuq:job:{job_id}", mapping={"status": "succeeded"})
    redis_client.expire(f"gpuq:job:{job_id}", 60)
    key = f"gpuq:metrics:{job_metrics.RUN_TIME.name}"
    labels = '["once-test","succeeded"]'
    try:
        first = job_metrics.observe_job(redis_client, job_id, analyzer="once-test", status="succeeded",
                                        queue_wait=0.5, run=3.0, total=3.5, batch_size=2)
        second = job_metrics.observe_job(redis_client, job_id, analyzer="once-test", status="succeeded",
                                         queue_wait=0.5, run=3.0, total=3.5, batch_size=2)
        assert (first, second) == (True, False)
        assert int(redis_client.hget(key, f"{labels}|count")) == 1
        value_ = job_metrics.read_histogram(redis_client, job_metrics.RUN_TIME)[("once-test", "succeeded")]
        cumulative = dict(value_.cumulative(job_metrics.RUN_TIME.buckets))
        assert cumulative["2.5"] == 0 and cumulative["5.0"] == 1 and cumulative["+Inf"] == 1
        assert value_.sum == 3.0
        # A record already gone is not re-created (it would have no TTL).
        assert not job_metrics.observe_job(redis_client, "gone", analyzer="once-test", status="succeeded",
                                           queue_wait=0, run=0, total=0, batch_size=1)
        assert not redis_client.exists("gpuq:job:gone")
    finally:
        for histogram in job_metrics.HISTOGRAMS:
            fields = [f for f in redis_client.hkeys(f"gpuq:metrics:{histogram.name}") if b"once-test" in f]
            if fields:
                redis_client.hdel(f"gpuq:metrics:{histogram.name}", *fields)
        redis_client.delete(f"gpuq:job:{job_id}")
