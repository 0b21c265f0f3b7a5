"""docker-compose.yml's services run as local processes (no Docker engine here) and complete a job.

Each service starts from its own command and environment in the compose file
(CPU variant), with service names on loopback and ports moved to free ones;
readiness is each service's own health check. See tests/local_compose.py.
"""

from __future__ import annotations

import json

import pytest
import requests

from tests.compose import API_KEY

#: Compose runs with auth on (tests/conftest.py gives it this key's hash).
KEY = {"Authorization": f"Bearer {API_KEY}"}


def test_a_job_completes_through_the_compose_services(compose_stack, finished_job):
    assert finished_job["status"] == "succeeded", finished_job
    assert finished_job["result"]["digit"] == 7
    assert finished_job["worker"].startswith("cpu0@")
    ready = requests.get(compose_stack.url("api", 8000) + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_the_compose_api_wants_a_key(compose_stack):
    api = compose_stack.url("api", 8000)
    assert requests.get(f"{api}/v1/jobs", timeout=5).status_code == 401
    assert requests.get(f"{api}/v1/jobs", headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    assert requests.get(f"{api}/v1/jobs", headers=KEY, timeout=5).status_code == 200


def test_redis_from_compose_wants_its_password(compose_stack):
    import redis

    port = compose_stack.port("redis", 6379)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    client = redis.Redis(port=port, password="compose-test-password")
    assert client.ping()
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"


def test_flower_from_compose_asks_for_its_credentials(compose_stack, finished_job):
    flower = compose_stack.url("flower", 5555)
    assert requests.get(f"{flower}/workers", timeout=10).status_code == 401
    assert requests.get(f"{flower}/workers", auth=("ops", "wrong"), timeout=10).status_code == 401
    page = requests.get(f"{flower}/workers", auth=("ops", "compose-test-secret"), timeout=10)
    assert page.status_code == 200 and "Flower" in page.text
    assert requests.get(f"{flower}/healthcheck", timeout=10).status_code == 200  # open, for the health check


def _json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
    return parsed


def test_logs_are_json_and_every_line_about_the_job_carries_its_id(compose_stack, finished_job):
    job_id = finished_job["id"]
    for service, least in (("api", 2), ("worker", 2)):
        lines = _json_lines(compose_stack.services[service].output())
        about = [entry for entry in lines if job_id in entry["message"] or entry.get("job_id") == job_id]
        assert len(about) >= least, (service, about)
        for entry in about:
            assert entry.get("job_id") == job_id, (service, entry)
            assert {"ts", "level", "logger", "message"} <= set(entry)
    worker_lines = [e for e in _json_lines(compose_stack.services["worker"].output()) if e.get("job_id") == job_id]
    assert any("succeeded" in e["message"] for e in worker_lines), worker_lines
    assert all(e.get("worker", "").startswith("cpu0@") for e in worker_lines)
