"""Real processes for tests: the API under gunicorn and workers under the launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import requests

from gpuq.redis_server import free_port
from tasks import catalog

ROOT = Path(__file__).resolve().parent.parent


def base_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUQ_")}
    env.update({
        "GPUQ_REDIS_URL": redis_url,
        "GPUQ_GPUS": "none",
        # The suite's stacks run without API keys; tests/test_auth.py and others that need keys pass GPUQ_API_KEYS.
        "GPUQ_AUTH": "off",
        "GPUQ_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    if env.get("GPUQ_API_KEYS"):
        env.pop("GPUQ_AUTH")
    return env


class Process:
    def __init__(self, command: list[str], env: dict[str, str], log: Path):
        self.log_path = log
        with open(log, "wb") as sink:  # the child keeps its own descriptor
            self.popen = subprocess.Popen(command, env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                          start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        return self.popen.returncode


def start_api(env: dict[str, str], log_dir: Path, workers: int = 2) -> tuple[Process, str]:
    port = free_port()
    env = {**env, "GPUQ_API_PORT": str(port), "GPUQ_API_WORKERS": str(workers), "GPUQ_API_ACCESS_LOG": "",
           "GPUQ_API_HOST": "127.0.0.1"}
    process = Process([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")], env,
                      log_dir / f"api-{port}.log")
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(process, url)
    return process, url


def wait_until_serving(process: Process, url: str, timeout: float = 30) -> None:
    """Return once the API at ``url`` answers /healthz; stop it and raise if it exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"API exited at start:\n{process.output()}")
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    process.stop()
    raise RuntimeError(f"API did not start:\n{process.output()}")


def start_workers(env: dict[str, str], log_dir: Path, name: str = "workers") -> Process:
    return Process([sys.executable, "-m", "gpu_worker.launcher"], {**env, "GPUQ_STATE_DIR": str(log_dir / name)},
                   log_dir / f"{name}.log")


def wait_for_workers(redis_url: str, analyzers: set[str], process: Process | None = None, count: int = 1,
                     timeout: float = 90) -> list[dict]:
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [w for w in catalog.live_workers(client) if w["state"] in ("ready", "busy")]
        serving = [w for w in live if analyzers <= set(w["analyzers"])]
        if len(serving) >= count:
            return serving
        if process is not None and process.popen.poll() is not None:
            raise RuntimeError(f"workers exited:\n{process.output()}")
        time.sleep(0.1)
    raise RuntimeError(f"no worker serving {analyzers} came up" + (f":\n{process.output()}" if process else ""))


def wait_until(predicate, timeout: float, what: str):
    """``predicate()``'s first true value, looked for every 50 ms; raises if none comes within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_status(url: str, job_id: str, statuses: set[str], timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = requests.get(f"{url}/v1/jobs/{job_id}", timeout=5).json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} stayed {job['status']}: {job}")
        time.sleep(0.05)


class Stack:
    """A whole stack of a test's own: Redis (AOF), workers under the launcher, the API."""

    def __init__(self, directory: Path, analyzers: str = "tests.fixtures.analyzers:Faulty", **env: str):
        from gpuq.redis_server import RedisServer

        self.directory = directory
        self.redis_server = RedisServer(directory / "redis").start()
        self.env = base_env(self.redis_server.url, **{"GPUQ_ANALYZERS": analyzers, "GPUQ_HEARTBEAT_TTL": "3",
                                                      "GPUQ_JANITOR_INTERVAL": "0.5", **env})
        self.redis = redis.Redis.from_url(self.redis_server.url)
        self.workers: Process | None = None
        self.api_process: Process | None = None
        self.url = ""

    def start(self, workers: int = 1) -> Stack:
        names = {entry.rsplit(":", 1)[-1].lower() for entry in self.env["GPUQ_ANALYZERS"].split(",")}
        self.workers = start_workers({**self.env, "GPUQ_CPU_WORKERS": str(workers)}, self.directory)
        wait_for_workers(self.redis_server.url, names, self.workers, count=workers)
        self.api_process, self.url = start_api(self.env, self.directory, workers=1)
        return self

    def submit(self, analyzer: str = "faulty", expect: int = 202, headers: dict | None = None, **body) -> dict:
        response = requests.post(f"{self.url}/v1/jobs", json={"analyzer": analyzer, **body}, headers=headers,
                                 timeout=10)
        assert response.status_code == expect, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        return requests.get(f"{self.url}/v1/jobs/{job_id}", timeout=10).json()

    def wait(self, job_id: str, statuses: set[str] = frozenset({"succeeded", "failed", "canceled"}),
             timeout: float = 60) -> dict:
        return wait_for_status(self.url, job_id, set(statuses), timeout=timeout)

    def counter(self, name: str, job_id: str) -> int:
        return int(self.redis.get(f"test:{name}:{job_id}") or 0)

    def live_workers(self) -> list[dict]:
        return [w for w in catalog.live_workers(self.redis) if w["state"] in ("ready", "busy")]

    def stop(self) -> None:
        for process in (self.api_process, self.workers):
            if process is not None:
                process.stop(timeout=30)
        self.redis.close()
        self.redis_server.stop()


def parent_pid(pid: int) -> int:
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    if parent <= 1:  # orphaned: never hand init's pid to a test that kills what it gets
        raise ProcessLookupError(f"process {pid} has no parent left")
    return parent
