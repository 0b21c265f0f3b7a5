"""/healthz, /readyz and /metrics when the fleet is not all there: Redis away, no worker, a worker gone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis

from gpuq.redis_server import RedisServer, free_port
from tasks import catalog
from tests.stack import ROOT, base_env

# The app in a process of its own: celeryconfig reads GPUQ_REDIS_URL once, at import.
_PROBE = """
import json, api
client = api.create_app().test_client()
out = {}
for path in ("/healthz", "/readyz", "/metrics"):
    response = client.get(path)
    out[path] = [response.status_code, response.get_data(as_text=True)]
print(json.dumps(out))
"""


def probe(redis_url: str) -> dict[str, tuple[int, str]]:
    env = base_env(redis_url, GPUQ_REDIS_SOCKET_TIMEOUT="1")
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def empty_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_redis_unreachable(tmp_path):
    answers = probe(f"redis://127.0.0.1:{free_port()}/0")
    assert answers["/healthz"][0] == 200  # the process answers: alive
    status, body = answers["/readyz"]
    assert status == 503
    assert json.loads(body)["reasons"][0].startswith("redis unreachable")
    status, body = answers["/metrics"]
    assert status == 200 and "gpuq_redis_up 0.0" in body


def test_not_ready_without_a_live_worker_for_each_analyzer(empty_redis):
    status, body = probe(empty_redis.url)["/readyz"]
    assert status == 503
    assert "no analyzer served now" in " ".join(json.loads(body)["reasons"])

    client = redis.Redis.from_url(empty_redis.url)
    catalog.publish_analyzers(client, [{"name": "digits"}, {"name": "simulate"}])
    catalog.publish_heartbeat(client, "cpu0@h", {"name": "cpu0@h", "state": "ready", "device": "cpu",
                                                  "analyzers": ["digits"]}, ttl=30)
    status, body = probe(empty_redis.url)["/readyz"]
    assert status == 503
    assert json.loads(body)["reasons"] == ["no live worker serves 'simulate'"]

    catalog.publish_heartbeat(client, "cpu1@h", {"name": "cpu1@h", "state": "busy", "device": "cpu",
                                                  "analyzers": ["simulate"]}, ttl=30)
    answers = probe(empty_redis.url)
    assert answers["/readyz"][0] == 200 and json.loads(answers["/readyz"][1])["ready"] is True
    metrics = answers["/metrics"][1]
    assert 'gpuq_workers_live{analyzer="digits"} 1.0' in metrics
    assert 'gpuq_worker_busy{device="cpu",worker="cpu1@h"} 1.0' in metrics

    catalog.forget_worker(client, "cpu1@h")  # its heartbeat gone: not ready again
    assert probe(empty_redis.url)["/readyz"][0] == 503
