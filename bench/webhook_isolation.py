"""Webhook isolation: how late a tenant's ``completed`` event arrives while another's receiver is slow.

One dispatcher (gpu_worker/webhooks.py, its real sender threads and lanes)
runs in this process against a Redis of its own, with two real HTTP
receivers on loopback: a slow one that answers each request after
``--slow-seconds`` (10 s), and a prompt one. Jobs are ended the way the
transition scripts end them (the record written, ``"<id>|<status>"`` pushed
on the outbox); the delay of an event is its arrival at the prompt receiver
minus that push.

Scenarios: the prompt receiver's jobs alone; the same beside ``--slow-jobs``
(6) jobs whose ``started`` and ``completed`` events go to the slow receiver,
queued just before; and that again with one sender thread, the shape of the
dispatcher before it had lanes and a pool. The figure to quote is the
median delay beside the slow receiver over the median alone.

Then a retry storm: ``--dead`` (20) receivers that accept connections and
never answer each have a retry due when a job of the prompt receiver ends;
the delay of its event is measured the same way (its first attempt should
not wait behind the retries).

    python -m bench.webhook_isolation [--slow-seconds 10] [--slow-jobs 6] [--jobs 5] [--dead 20]
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis as redis_lib

from gpu_worker.webhooks import WebhookDispatcher
from gpuq.redis_server import RedisServer
from tasks import keys
from tasks.jobs import RUNNING, SUCCEEDED, JobStore, encode_fields
from tasks.settings import Settings

__all__ = ["Arrival", "Hanging", "Receiver", "IsolationRun", "end_job", "run_beside_retries", "run_scenario"]

SECRET = "bench-secret"


@dataclass(frozen=True)
class Arrival:
    at: float
    host: str
    path: str
    body: bytes

    def event(self) -> dict:
        return json.loads(self.body)


class Receiver:
    """A webhook receiver on loopback that notes what arrives when; answers ``status`` after ``delay`` s.

    ``port`` 0 takes a free one; ``ssl_context`` serves https with it.
    """

    def __init__(self, delay: float = 0.0, host: str = "127.0.0.1", port: int = 0, status: int = 200,
                 headers: dict[str, str] | None = None, ssl_context: ssl.SSLContext | None = None):
        self.arrivals: list[Arrival] = []
        self.concurrent = 0
        self.most_concurrent = 0
        self.released = threading.Event()  # set: answer at once from now on
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.arrivals.append(Arrival(time.time(), self.headers.get("Host", ""), self.path, body))
                    receiver.concurrent += 1
                    receiver.most_concurrent = max(receiver.most_concurrent, receiver.concurrent)
                receiver.released.wait(delay)
                with receiver._lock:
                    receiver.concurrent -= 1
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_port
        self.url = f"{'https' if ssl_context else 'http'}://{host}:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arrival(self, job_id: str, event: str) -> float | None:
        with self._lock:
            return next((a.at for a in self.arrivals
                         if a.event()["job"]["id"] == job_id and a.event()["event"] == event), None)

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Hanging:
    """A receiver that never answers: connections are accepted (by the kernel) and requests never read."""

    def __init__(self, host: str = "127.0.0.1"):
        self.listener = socket.create_server((host, 0), backlog=64)
        self.url = f"http://{host}:{self.listener.getsockname()[1]}/hook"

    def close(self) -> None:
        self.listener.close()


def end_job(redis: redis_lib.Redis, webhook: str, statuses: tuple[str, ...] = (SUCCEEDED,)) -> tuple[str, float]:
    """A job's record written as ended and its events pushed on the outbox, as the transition scripts do."""
    job_id = f"j{uuid.uuid4().hex}"
    now = time.time()
    redis.hset(keys.job(job_id), mapping=encode_fields({
        "id": job_id, "analyzer": "simulate", "status": statuses[-1], "created_at": now, "started_at": now,
        "finished_at": now, "webhook": webhook}))
    redis.expire(keys.job(job_id), 600)
    for status in statuses:
        redis.lpush(keys.WEBHOOK_OUTBOX, f"{job_id}|{status}")
    return job_id, time.time()


@dataclass
class IsolationRun:
    #: Seconds from each prompt job's end to its ``completed`` event's arrival, in job order.
    delays: list[float]
    #: Most requests the slow receiver was sent at once.
    slow_most_concurrent: int

    @property
    def median(self) -> float:
        return statistics.median(self.delays)


def run_scenario(redis_url: str, *, slow_jobs: int, slow_seconds: float, jobs: int, senders: int = 16,
                 per_destination: int = 2, timeout: float = 120.0) -> IsolationRun:
    """Queue ``slow_jobs`` jobs' events for a slow receiver, then end ``jobs`` jobs one by one for a prompt one."""
    redis = redis_lib.Redis.from_url(redis_url)
    settings = Settings(redis_url=redis_url, webhook_secret=SECRET, url_allowlist="127.0.0.1",
                        webhook_senders=senders, webhook_per_destination=per_destination)
    store = JobStore(redis, result_ttl=600, tombstone_ttl=600, input_ttl=600)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    dispatcher = WebhookDispatcher(store, settings, name=name)
    slow, prompt = Receiver(delay=slow_seconds), Receiver()
    try:
        redis.delete(keys.WEBHOOK_OUTBOX, keys.WEBHOOK_RETRIES)
        dispatcher.start()
        for _ in range(slow_jobs):
            end_job(redis, slow.url, statuses=(RUNNING, SUCCEEDED))
        if slow_jobs:  # the slow receiver holds its senders before the first prompt job ends
            _wait_until(lambda: slow.arrivals, timeout)
        delays = []
        for _ in range(jobs):
            job_id, ended = end_job(redis, prompt.url)
            arrived = _wait_until(lambda job_id=job_id: prompt.arrival(job_id, "completed"), timeout)
            delays.append(arrived - ended)
        return IsolationRun(delays, slow.most_concurrent)
    finally:
        slow.close()
        prompt.close()
        dispatcher.stop()
        redis.delete(keys.webhook_inflight(name))  # what it still held: this run's, of no use to another
        redis.close()


def run_beside_retries(redis_url: str, *, dead: int, read_timeout: float, senders: int = 16,
                       timeout: float = 120.0) -> float:
    """Seconds from a prompt receiver's job's end to its event's arrival, while ``dead`` receivers that
    never answer each have a retry due."""
    redis = redis_lib.Redis.from_url(redis_url)
    settings = Settings(redis_url=redis_url, webhook_secret=SECRET, url_allowlist="127.0.0.1",
                        webhook_senders=senders, webhook_connect_timeout=1.0, webhook_read_timeout=read_timeout)
    store = JobStore(redis, result_ttl=600, tombstone_ttl=600, input_ttl=600)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    dispatcher = WebhookDispatcher(store, settings, name=name)
    hanging = [Hanging() for _ in range(dead)]
    prompt = Receiver()
    try:
        redis.delete(keys.WEBHOOK_OUTBOX, keys.WEBHOOK_RETRIES)
        due = time.time() - 1
        redis.zadd(keys.WEBHOOK_RETRIES, {json.dumps({
            "delivery": str(uuid.uuid4()), "job_id": f"j{uuid.uuid4().hex}", "event": "completed",
            "url": receiver.url, "body": "{}", "attempt": 2}): due for receiver in hanging})
        job_id, ended = end_job(redis, prompt.url)
        dispatcher.start()
        return _wait_until(lambda: prompt.arrival(job_id, "completed"), timeout) - ended
    finally:
        prompt.close()
        for receiver in hanging:
            receiver.close()
        dispatcher.stop()
        redis.delete(keys.webhook_inflight(name), keys.WEBHOOK_RETRIES)
        redis.close()


def _wait_until(check, timeout: float):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError("the event never arrived")
        time.sleep(0.01)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow-seconds", type=float, default=10.0)
    parser.add_argument("--slow-jobs", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=5, help="prompt receiver's jobs per scenario")
    parser.add_argument("--dead", type=int, default=20, help="receivers that never answer, a retry due to each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory), appendonly=False).start()
        try:
            alone = run_scenario(server.url, slow_jobs=0, slow_seconds=args.slow_seconds, jobs=args.jobs)
            beside = run_scenario(server.url, slow_jobs=args.slow_jobs, slow_seconds=args.slow_seconds,
                                  jobs=args.jobs)
            one_sender = run_scenario(server.url, slow_jobs=args.slow_jobs, slow_seconds=args.slow_seconds,
                                      jobs=args.jobs, senders=1, per_destination=1)
            storm = run_beside_retries(server.url, dead=args.dead, read_timeout=args.slow_seconds)
        finally:
            server.stop()
    print(f"completed-event delay at the prompt receiver, {args.jobs} jobs each "
          f"(slow receiver: {args.slow_jobs} jobs x 2 events, {args.slow_seconds:g} s per answer)")
    for name, run in (("alone", alone), ("beside the slow receiver", beside),
                      ("beside it, one sender thread", one_sender)):
        print(f"  {name:30s} median {run.median * 1000:8.1f} ms   max {max(run.delays) * 1000:8.1f} ms   "
              f"slow receiver's most concurrent requests: {run.slow_most_concurrent}")
    print(f"beside / alone (medians): {beside.median / alone.median:.2f}")
    print(f"a first attempt while {args.dead} receivers that never answer have a retry due: "
          f"arrived {storm * 1000:.1f} ms after its job ended")


if __name__ == "__main__":
    main()
