"""A Redis Sentinel URL: the API, the workers and Celery find the master through a real sentinel."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from gpuq.redis_server import RedisServer, find_redis_server, free_port
from tasks.redis_client import sentinel_parts
from tests.stack import base_env, start_api, start_workers, wait_for_status, wait_for_workers


def test_sentinel_url_parts():
    addresses, password, db = sentinel_parts("sentinel://:p%40ss@s1:26380/2;sentinel://s2;sentinel://s3:26381")
    assert addresses == [("s1", 26380), ("s2", 26379), ("s3", 26381)]
    assert (password, db) == ("p@ss", 2)
    with pytest.raises(ValueError):
        sentinel_parts("redis://localhost:6379/0")


@pytest.fixture
def sentinel(tmp_path):
    master = RedisServer(tmp_path / "master").start()
    port = free_port()
    config = tmp_path / "sentinel.conf"  # a sentinel rewrites its own config file: it must be writable
    config.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                      f"sentinel monitor gpuqmaster 127.0.0.1 {master.port} 1\n")
    process = subprocess.Popen([find_redis_server(), str(config), "--sentinel"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield master, f"sentinel://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        master.stop()


def test_a_job_runs_with_a_sentinel_url(sentinel, tmp_path):
    master, url = sentinel
    env = base_env(url, GPUQ_REDIS_SENTINEL_MASTER="gpuqmaster", GPUQ_ANALYZERS="tests.fixtures.analyzers:Echo")
    workers = start_workers(env, tmp_path)
    api_process, api = start_api(env, tmp_path, workers=1)
    try:
        wait_for_workers(master.url, {"echo"}, workers)
        job = requests.post(f"{api}/v1/jobs", json={"analyzer": "echo", "input": {"via": "sentinel"}}, timeout=10)
        assert job.status_code == 202, job.text
        done = wait_for_status(api, job.json()["id"], {"succeeded", "failed"})
        assert done["status"] == "succeeded" and done["result"]["echo"] == {"via": "sentinel"}
        assert requests.get(f"{api}/readyz", timeout=5).status_code == 200
    finally:
        api_process.stop()
        workers.stop()


def test_a_sentinel_url_without_the_master_name_is_refused(tmp_path):
    env = base_env("sentinel://127.0.0.1:26379/0")
    done = subprocess.run([sys.executable, "-c", "import celeryconfig"], env=env, capture_output=True, text=True,
                          cwd=tmp_path.parent)
    assert done.returncode != 0 and "GPUQ_REDIS_SENTINEL_MASTER" in done.stderr
