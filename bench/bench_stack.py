"""The benchmark's own stack: Redis on a free port, the API, workers started and stopped per phase.

Built from the test suite's process helpers (``tests/stack.py``) but with the
production settings a benchmark should see (heartbeat, janitor, log level),
an API sized for the benchmark's clients, and workers that phases replace
(batching on, then off) while Redis and the API stay up. Every process it
starts is stopped by ``close``, and only those.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import redis

from bench.cpu_usage import CpuMeter
from gpuq.redis_server import RedisServer
from tasks import catalog
from tests.stack import Process, base_env, start_api, start_workers

__all__ = ["BenchStack"]

ROOT = Path(__file__).resolve().parent.parent
_WORKER_START_TIMEOUT = 300  # loading torch and a model on a busy 2-core machine
#: Settings of how a model runs, passed from the benchmark's environment to its workers.
_MODEL_SETTINGS = ("GPUQ_TORCH_THREADS", "GPUQ_PRECISION", "GPUQ_EMBED_RANDOM_WEIGHTS")


class BenchStack:
    def __init__(self, directory: Path, device: str, worker_env: dict[str, str] | None = None):
        self.directory = directory
        self.device = device
        self.redis_server = RedisServer(directory / "redis").start()
        self.redis_url = self.redis_server.url
        # cuda: the launcher gives its one worker GPU 0 (CUDA_VISIBLE_DEVICES=0, GPUQ_DEVICE=cuda).
        # The model settings the raw loop read in this process reach the workers too: like for like.
        model_settings = {name: os.environ[name] for name in _MODEL_SETTINGS if name in os.environ}
        # worker_env: settings for every worker, gpuq's and the plain Celery baseline (their cores).
        self.env = base_env(self.redis_url, GPUQ_GPUS="0" if device == "cuda" else "none", **model_settings,
                            **(worker_env or {}))
        self.redis = redis.Redis.from_url(self.redis_url)
        self.api: Process | None = None
        self.url = ""
        self._processes: list[Process] = []
        self._started = 0

    def start_api(self, clients: int, workers: int = 2) -> str:
        # Each waiting client holds a gunicorn thread for its long-poll: let every client have
        # one in any process (the kernel may hand one process more than its share of
        # connections; the clients are one tenant), with threads for streams and submits
        # beside them, so the API never queues or refuses a request.
        long_polls = max(8, clients)
        threads = long_polls + 4 + 4  # GPUQ_MAX_STREAMS is 4
        env = {**self.env, "GPUQ_API_THREADS": str(threads), "GPUQ_MAX_LONG_POLLS": str(long_polls),
               "GPUQ_TENANT_MAX_LONG_POLLS": str(long_polls)}
        self.api, self.url = start_api(env, self.directory, workers=workers)
        self._processes.append(self.api)
        self.api_shape = f"{workers} gunicorn processes x {threads} threads"
        return self.url

    def start_workers(self, analyzer: str, *, batching: bool, wait: bool = True) -> Process:
        """One worker (launcher + Celery worker) serving ``analyzer``, with batching on or off."""
        self._started += 1
        env = {**self.env, "GPUQ_ANALYZERS": analyzer, "GPUQ_CPU_WORKERS": "1",
               "GPUQ_BATCHING": "on" if batching else "off"}
        process = start_workers(env, self.directory, name=f"workers-{self._started}-{analyzer}")
        self._processes.append(process)
        if wait:
            self.wait_for_worker(analyzer, process)
        return process

    def wait_for_worker(self, analyzer: str, process: Process, timeout: float = _WORKER_START_TIMEOUT) -> dict:
        """The live worker of ``process`` once it serves ``analyzer``; not one a stopped launcher left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for worker in catalog.live_workers(self.redis):
                if (worker["state"] in ("ready", "busy") and analyzer in worker["analyzers"]
                        and _descends_from(worker["pid"], process.pid)):
                    return worker
            if process.popen.poll() is not None:
                raise RuntimeError(f"the worker exited at start:\n{process.output()[-4000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"no worker serving {analyzer} came up in {timeout:.0f}s:\n{process.output()[-4000:]}")

    def start_plain_celery(self, queue: str) -> Process:
        """The baseline: a plain Celery worker (bench/plain_celery.py) on the same Redis."""
        command = [sys.executable, "-m", "celery", "-A", "bench.plain_celery", "worker", "-P", "prefork", "-c", "1",
                   "-Q", queue, "--loglevel", "WARNING", "--hostname", f"plain-{os.getpid()}@%h"]
        process = Process(command, self.env, self.directory / "plain-celery.log")
        self._processes.append(process)
        return process

    def stop(self, process: Process) -> None:
        process.stop(timeout=60)
        if process in self._processes:
            self._processes.remove(process)

    def cpu_meter(self, workers: Process | None = None) -> CpuMeter:
        meter = CpuMeter()
        meter.watch("redis", self.redis_server.process.pid)
        if self.api is not None:
            meter.watch("api (gunicorn)", self.api.pid)
        if workers is not None:
            meter.watch("worker (launcher + celery)", workers.pid)
        return meter

    def close(self, interrupted: bool = False) -> None:
        """Stops what this stack started, newest first, whatever state it is in.

        ``interrupted``: clients may still be long-polling, which a graceful API
        stop would wait out; the API goes first then, and is given little time.
        """
        order = list(reversed(self._processes))
        if interrupted and self.api in order:
            order.remove(self.api)
            order.insert(0, self.api)
        for process in order:
            try:
                process.stop(timeout=5 if interrupted and process is self.api else 60)
            except Exception as error:  # keep going: the others must stop too
                print(f"could not stop pid {process.pid}: {error}", file=sys.stderr)
        self._processes.clear()
        self.redis.close()
        self.redis_server.stop()


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return False
    return False
