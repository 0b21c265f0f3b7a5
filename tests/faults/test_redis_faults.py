"""Redis killed, restarted, unreachable, or dropping connections: every accepted job still ends once."""

from __future__ import annotations

import time

import requests

from gpuq.redis_server import RedisServer


def _restart(stack) -> None:
    stack.redis_server = RedisServer(stack.redis_server.directory, port=stack.redis_server.port).start()


def test_redis_killed_and_restarted_with_aof_loses_nothing(make_stack):
    stack = make_stack()
    api_pid, workers_pid = stack.api_process.pid, stack.workers.pid
    running = stack.submit(params={"seconds": 4})
    stack.wait(running["id"], {"running"})
    queued = [stack.submit(params={"seconds": 0.2}) for _ in range(5)]
    stack.redis_server.kill()  # SIGKILL: what AOF wrote is all there is
    time.sleep(2)
    restarted_at = time.monotonic()
    _restart(stack)
    jobs = [stack.wait(j["id"], timeout=90) for j in [running, *queued]]
    assert [j["status"] for j in jobs] == ["succeeded"] * 6, jobs
    for job in jobs:
        assert stack.counter("done", job["id"]) == 1, job
        assert stack.counter("maxactive", job["id"]) == 1, job
    fresh = stack.submit(params={"seconds": 0})
    assert stack.wait(fresh["id"], timeout=30)["status"] == "succeeded"
    print(f"redis restart: all 6 jobs done and a new one through {time.monotonic() - restarted_at:.1f} s after")
    assert time.monotonic() - restarted_at < 60
    assert (stack.api_process.pid, stack.workers.pid) == (api_pid, workers_pid)
    assert stack.api_process.popen.poll() is None and stack.workers.popen.poll() is None


def test_connection_reset_mid_job_never_runs_a_second_copy_in_parallel(make_stack):
    stack = make_stack(workers=2)
    job = stack.submit(params={"seconds": 4})
    stack.wait(job["id"], {"running"})
    time.sleep(0.5)
    # Drop every client connection: the workers' broker channels included.
    stack.redis.execute_command("CLIENT", "KILL", "TYPE", "normal")
    done = stack.wait(job["id"], timeout=90)
    assert done["status"] == "succeeded"
    assert stack.counter("done", job["id"]) == 1
    assert stack.counter("maxactive", job["id"]) == 1
    after = stack.submit(params={"seconds": 0})
    assert stack.wait(after["id"], timeout=60)["status"] == "succeeded"
    duplicates = stack.workers.output().count("dropping this copy")
    print(f"connection reset: {stack.counter('runs', job['id'])} run(s), {duplicates} duplicate copy(ies) dropped")


def test_redis_down_at_submit_is_503_fast_and_the_api_recovers(make_stack):
    stack = make_stack()
    stack.redis_server.kill()
    began = time.monotonic()
    response = requests.post(f"{stack.url}/v1/jobs", json={"analyzer": "faulty", "params": {"seconds": 0}},
                             timeout=30)
    elapsed = time.monotonic() - began
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable" and "Retry-After" in response.headers
    assert elapsed < 5, elapsed
    assert requests.get(f"{stack.url}/readyz", timeout=30).status_code == 503
    _restart(stack)
    job = stack.submit(params={"seconds": 0})
    assert stack.wait(job["id"], timeout=60)["status"] == "succeeded"
