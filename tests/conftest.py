"""Session-wide real parts: a redis-server on a free port, workers, the API.

Nothing here touches the machine's own Redis on 6379.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis as redis_lib

from gpuq.redis_server import RedisServer
from tests.stack import base_env, start_api, start_workers, wait_for_workers


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def celery_app(redis_server):
    """The project's Celery app in the test process, configured for the test Redis."""
    import os

    os.environ["GPUQ_REDIS_URL"] = redis_server.url
    from tasks.app import create_celery

    return create_celery()


@pytest.fixture(scope="session")
def redis_client(redis_server):
    client = redis_lib.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def stack_env(redis_server) -> dict[str, str]:
    return base_env(redis_server.url, GPUQ_ANALYZERS="digits,simulate,tests.fixtures.analyzers:Echo",
                    GPUQ_MAX_REQUEST_BYTES=str(4 * 1024 * 1024))


@pytest.fixture(scope="session")
def workers(stack_env, artifacts, redis_server):
    process = start_workers(stack_env, artifacts)
    wait_for_workers(redis_server.url, {"digits", "simulate", "echo"}, process)
    yield process
    process.stop(timeout=30)


@pytest.fixture(scope="session")
def api_server(stack_env, artifacts, workers):
    """(process, base URL) of the API, served by gunicorn with the repo's production config."""
    process, url = start_api(stack_env, artifacts)
    yield process, url
    process.stop()


@pytest.fixture(scope="session")
def api(api_server) -> str:
    return api_server[1]


@pytest.fixture(scope="session")
def routed_stack(tmp_path_factory):
    """Two CPU workers routed apart (cpu0: embed; cpu1: digits, simulate), with their own Redis and API.

    Its own Redis, because its workers are named cpu0 and cpu1 like the session's.
    """
    work = tmp_path_factory.mktemp("routed")
    server = RedisServer(work / "redis").start()
    env = base_env(server.url, GPUQ_CPU_WORKERS="2", GPUQ_ROUTES="cpu0:embed;cpu1:digits,simulate")
    workers = start_workers(env, work)
    api_process = None
    try:
        wait_for_workers(server.url, {"embed"}, workers, timeout=120)
        wait_for_workers(server.url, {"digits", "simulate"}, workers)
        api_process, url = start_api(env, work, workers=1)
        yield SimpleNamespace(api=url, redis_url=server.url, workers=workers)
    finally:
        if api_process is not None:
            api_process.stop()
        workers.stop(timeout=30)
        server.stop()


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory):
    """docker-compose.yml (with its CPU override) started as local processes; see tests/local_compose.py.

    Per module, so that its five processes do not stay up (and load the two
    cores) through the rest of the suite.
    """
    from tests.compose import API_KEY, COMPOSE_FILE, CPU_OVERRIDE, load
    from tests.local_compose import LocalCompose

    env = {"REDIS_PASSWORD": "compose-test-password", "FLOWER_BASIC_AUTH": "ops:compose-test-secret",
           # Auth on, as compose has it: the tests call the API with API_KEY.
           "GPUQ_API_KEYS": f"compose:{hashlib.sha256(API_KEY.encode()).hexdigest()}",
           "GPUQ_API_WORKERS": "2"}
    stack = LocalCompose(load(COMPOSE_FILE, CPU_OVERRIDE), env, tmp_path_factory.mktemp("compose"))
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def finished_job(compose_stack) -> dict:
    """A digits job sent through the compose stack's API (auth on) and waited for."""
    import requests

    from tests.compose import API_KEY
    from tests.stack import ROOT

    api, key = compose_stack.url("api", 8000), {"Authorization": f"Bearer {API_KEY}"}
    with (ROOT / "examples" / "seven.png").open("rb") as image:
        response = requests.post(f"{api}/v1/jobs", data={"analyzer": "digits"},
                                 files={"file": ("seven.png", image, "image/png")}, timeout=10, headers=key)
    assert response.status_code == 202, response.text
    done = requests.get(f"{api}/v1/jobs/{response.json()['id']}?wait=30", timeout=40, headers=key).json()
    assert done["status"] == "succeeded", done
    return done
