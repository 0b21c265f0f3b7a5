"""Clients end to end: the Python client, the ``gpuq`` command line, webhooks, event streams,
queue position and ETA, against a stack of this module's own (Redis, one CPU worker, the API).

Its own stack, because webhooks need a signing secret and fast retries in the
workers' environment. The tests share its one worker, so they run in order.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from gpuq.client import Client
from gpuq.client_errors import (
    AlreadyFinished,
    InvalidField,
    JobFailed,
    NotFound,
    OutcomeUnknown,
    QueueFull,
    TooManyStreams,
    Unavailable,
    UnknownAnalyzer,
    WaitTimeout,
    WebhooksDisabled,
)
from gpuq.redis_server import free_port
from tasks import webhooks
from tests.stack import ROOT, Process, Stack, wait_until_serving

sys.path.insert(0, str(ROOT / "scripts"))
from train_digits import heldout_split  # noqa: E402

SECRET = "test-webhook-secret"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("clients"), analyzers="digits,simulate", GPUQ_WEBHOOK_SECRET=SECRET,
              GPUQ_URL_ALLOWLIST="127.0.0.1,localhost",
              GPUQ_WEBHOOK_BACKOFF="0.2", GPUQ_WEBHOOK_MAX_ATTEMPTS="3", GPUQ_WEBHOOK_PROGRESS_INTERVAL="1.0",
              GPUQ_MAX_STREAMS="3")
    try:
        yield s.start(workers=1)
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(stack) -> Client:
    return Client(stack.url, api_key="any-key-for-now")


def digit_png(digit: np.ndarray) -> bytes:
    """An 8x8 held-out digit (0..16) as a 96x96 PNG, dark ink on white."""
    ink = Image.fromarray((digit / 16).astype(np.float32), mode="F").resize((96, 96), Image.Resampling.BILINEAR)
    page = 1 - np.clip(np.asarray(ink), 0, 1)
    buf = io.BytesIO()
    Image.fromarray(np.round(page * 255).astype(np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


# -- the Python client -------------------------------------------------------------


def test_submit_wait_get_and_typed_errors(client: Client) -> None:
    job = client.submit("simulate", input={"n": 1}, params={"seconds": 0.2})
    assert job.status == "queued" and job.analyzer == "simulate"
    done = client.wait(job.id, timeout=30)
    assert done.succeeded and done.done and done.result["input"] == {"n": 1}
    assert client.get(job.id).status == "succeeded"
    with pytest.raises(UnknownAnalyzer) as unknown:
        client.submit("no-such", input={})
    assert unknown.value.status == 422 and unknown.value.field == "analyzer"
    with pytest.raises(InvalidField) as invalid:
        client.submit("simulate", input={}, params={"seconds": -1})
    assert invalid.value.field == "params.seconds"
    with pytest.raises(NotFound):
        client.get("00000000-0000-0000-0000-000000000000")
    with pytest.raises(AlreadyFinished):
        client.cancel(job.id)
    # An idempotency key replays the same job.
    first = client.submit("simulate", input=None, params={"seconds": 0}, idempotency_key="k-1")
    again = client.submit("simulate", input=None, params={"seconds": 0}, idempotency_key="k-1")
    assert again.id == first.id
    client.wait(first.id, timeout=30)


def test_wait_times_out_and_cancel(client: Client) -> None:
    job = client.submit("simulate", input=None, params={"seconds": 5})
    with pytest.raises(WaitTimeout):
        client.wait(job.id, timeout=0.5)
    assert client.cancel(job.id).status in ("canceled", "canceling")
    assert client.wait(job.id, timeout=30).status == "canceled"


def test_map_over_200_digit_images(client: Client) -> None:
    _, x_test, _, y_test = heldout_split()
    images, labels = [digit_png(d) for d in x_test[:200]], y_test[:200]
    assert len(images) == 200
    began = time.monotonic()
    seen: dict[int, int] = {}
    order = []
    for index, job in client.map("digits", images, concurrency=8, timeout=120):
        assert job.status == "succeeded", job
        seen[index] = job.result["digit"]
        order.append(index)
    accuracy = float(np.mean([seen[i] == labels[i] for i in range(200)]))
    print(f"\nmap: 200 digits in {time.monotonic() - began:.1f}s, accuracy {accuracy:.3f}")
    assert sorted(seen) == list(range(200))
    assert accuracy >= 0.97


class _Stub(BaseHTTPRequestHandler):
    """Answers 429 then 503 (each with Retry-After: 1), then a job; records when each came."""

    calls: list[float] = []

    def do_POST(self):  # noqa: N802
        type(self).calls.append(time.monotonic())
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        n = len(type(self).calls)
        if n <= 2:
            status, body = (429, "queue_full") if n == 1 else (503, "unavailable")
            self._send(status, {"error": {"code": body, "message": body, "field": None}}, {"Retry-After": "1"})
        else:
            self._send(202, {"id": "j1", "analyzer": "x", "status": "queued",
                             "idem": self.headers.get("Idempotency-Key"), "auth": self.headers.get("Authorization")})

    def _send(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_retries_on_429_and_503_honour_retry_after() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = Client(f"http://127.0.0.1:{server.server_port}", api_key="secret-key", backoff=0.01)
        job = client.submit("x", input={})
        assert job.id == "j1" and job.raw["auth"] == "Bearer secret-key" and job.raw["idem"]
        calls = _Stub.calls
        assert len(calls) == 3
        assert calls[1] - calls[0] >= 0.9 and calls[2] - calls[1] >= 0.9  # waited Retry-After, not 0.01 s
        _Stub.calls = [0.0] * 10  # now it always answers 202... so make it refuse: retries run out
        no_retry = Client(f"http://127.0.0.1:{server.server_port}", max_retries=0)
        _Stub.calls = []
        with pytest.raises(QueueFull) as full:
            no_retry.submit("x", input={})
        assert full.value.retry_after == 1
    finally:
        server.shutdown()
        server.server_close()


class _UnknownOutcomeStub(_Stub):
    """Always answers 503 outcome_unknown, as an API whose Redis stalled mid-submit does; records the keys."""

    keys: list[str] = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).keys.append(self.headers.get("Idempotency-Key"))
        job_id = f"j{len(type(self).keys)}"
        self._send(503, {"error": {"code": "outcome_unknown", "message": "Redis did not answer in time",
                                   "field": None, "id": job_id}}, {"Location": f"/v1/jobs/{job_id}"})


def test_an_unknown_outcome_is_retried_with_the_same_key_then_raised_with_the_job_id() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _UnknownOutcomeStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = Client(f"http://127.0.0.1:{server.server_port}", backoff=0.01, max_retries=2)
        with pytest.raises(OutcomeUnknown) as unknown:
            client.submit("x", input={})
        keys = _UnknownOutcomeStub.keys
        assert len(keys) == 3 and len(set(keys)) == 1 and keys[0]  # a retry can never make a second job
        assert unknown.value.job_id == "j3" and unknown.value.status == 503
        assert isinstance(unknown.value, Unavailable)
        # The command line says which job may exist, and exits as for an API it could not use.
        _UnknownOutcomeStub.keys = []
        cli = subprocess.run([sys.executable, "-m", "gpuq.cli", "submit", "x", "--input", "{}", "--json",
                              "--url", f"http://127.0.0.1:{server.server_port}"], capture_output=True, text=True,
                             timeout=120, cwd=ROOT)
        assert cli.returncode == 6, cli.stderr
        job_id = json.loads(cli.stdout)["error"]["id"]
        assert job_id.startswith("j") and f"gpuq status {job_id}" in cli.stderr
    finally:
        server.shutdown()
        server.server_close()


# -- queue position and ETA ----------------------------------------------------------


def test_queue_position_and_eta(client: Client) -> None:
    client.wait(client.submit("simulate", input=None, params={"seconds": 0.5}).id, timeout=30)  # a measured run
    blocker = client.submit("simulate", input=None, params={"seconds": 3})
    waiting = [client.submit("simulate", input=None, params={"seconds": 0.5}) for _ in range(3)]
    deadline = time.monotonic() + 10
    while client.get(blocker.id).status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    running = client.get(blocker.id)
    assert running.queue_position is None and running.eta_seconds is not None and running.eta_seconds <= 10
    jobs = [client.get(j.id) for j in waiting]
    assert [j.queue_position for j in jobs] == [0, 1, 2]
    etas = [j.eta_seconds for j in jobs]
    assert all(e is not None and e > 0 for e in etas) and etas[0] < etas[1] < etas[2], etas
    assert jobs[0].eta is not None
    # Once the blocker's progress says how long it runs (3 s, far over the average), the first in line
    # waits for what is left of it, then runs.
    while not (client.get(blocker.id).progress or {}).get("fraction"):
        assert time.monotonic() < deadline + 5
        time.sleep(0.05)
    left = client.get(blocker.id).eta_seconds
    assert left > 1 and client.get(waiting[0].id).eta_seconds >= left, (left, etas)
    for j in waiting:
        finished = client.wait(j.id, timeout=30)
        assert finished.queue_position is None and finished.eta_seconds is None


# -- webhooks ----------------------------------------------------------------------


class Receiver:
    """A local webhook receiver that checks every signature; ``/flaky`` answers 500 the first time."""

    def __init__(self):
        self.hits: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ok = webhooks.verify(SECRET, self.headers.get("Gpuq-Signature", ""), body, now=time.time())
                event = json.loads(body)
                earlier = [h for h in receiver.hits if h["path"] == self.path]
                receiver.hits.append({"path": self.path, "verified": ok, "event": event,
                                      "delivery": self.headers.get("Gpuq-Delivery")})
                status = 500 if self.path == "/down" or (self.path == "/flaky" and not earlier) else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, path: str) -> list[dict]:
        return [h for h in self.hits if h["path"] == path]


def _until(check, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_webhooks_signed_retried_and_recorded(client: Client, stack) -> None:
    receiver = Receiver()
    try:
        job = client.submit("simulate", input=None, params={"seconds": 1.5}, webhook=receiver.url + "/flaky")
        assert job.webhook == receiver.url + "/flaky"
        assert client.wait(job.id, timeout=30).succeeded
        hits = _until(lambda: [h for h in receiver.events("/flaky") if h["event"]["event"] == "completed"]
                      and receiver.events("/flaky"))
        assert all(h["verified"] for h in hits)
        kinds = [h["event"]["event"] for h in hits]
        # The first delivery was answered 500 and came again, the same delivery id.
        assert [h["delivery"] for h in hits].count(hits[0]["delivery"]) == 2
        assert {"started", "progress", "completed"} <= set(kinds), kinds
        completed = [h["event"] for h in hits if h["event"]["event"] == "completed"][-1]
        assert completed["job"]["status"] == "succeeded" and completed["job"]["result"]["seconds"] >= 1.4
        # Throttled to one a second: the record's progress changes about every 0.25 s.
        assert 1 <= kinds.count("progress") <= 3, kinds
        # Every attempt recorded, the completed event's success included (recorded after it was sent).
        deliveries = _until(lambda: (d := client.deliveries(job.id))
                            and any(x["event"] == "completed" and x["ok"] for x in d) and d[-1]["ok"] and d)
        assert deliveries[0]["status_code"] == 500 and not deliveries[0]["ok"] and deliveries[0]["next_attempt_at"]
        retried = [d for d in deliveries if d["delivery"] == deliveries[0]["delivery"]]
        assert [(d["attempt"], d["ok"]) for d in retried] == [(1, False), (2, True)]
        assert all(d["ok"] for d in deliveries[1:])
        assert {d["event"] for d in deliveries} == {"started", "progress", "completed"}

        # A webhook that always fails: tried 3 times per event, and the job still succeeds.
        down = client.submit("simulate", input=None, params={"seconds": 0.2}, webhook=receiver.url + "/down")
        assert client.wait(down.id, timeout=30).succeeded
        tried = _until(lambda: [d for d in client.deliveries(down.id) if d["event"] == "completed"]
                       if len([d for d in client.deliveries(down.id) if d["event"] == "completed"]) == 3 else None)
        assert [d["attempt"] for d in tried] == [1, 2, 3] and not any(d["ok"] for d in tried)
        assert tried[-1]["next_attempt_at"] is None
        # Unreachable receiver: connection errors are retried too.
        gone = client.submit("simulate", input=None, params={"seconds": 0},
                             webhook=f"http://127.0.0.1:{free_port()}/nobody")
        assert client.wait(gone.id, timeout=30).succeeded
        failed = _until(lambda: len(d := client.deliveries(gone.id)) >= 4 and d)
        assert all(d["status_code"] is None and d["error"] for d in failed)

        # Events a dispatcher took and never handled (its worker killed) go out when it starts again.
        from gpu_worker.webhooks import WebhookDispatcher
        from tasks import keys
        from tasks.jobs import JobStore
        from tasks.settings import Settings

        store = JobStore(stack.redis, result_ttl=60, tombstone_ttl=60, input_ttl=60)
        stack.redis.lpush(keys.webhook_inflight("killed"), f"{job.id}|succeeded")
        assert WebhookDispatcher(store, Settings(redis_url="unused"), name="killed").recover() == 1
        assert stack.redis.llen(keys.webhook_inflight("killed")) == 0
        _until(lambda: len([h for h in receiver.events("/flaky") if h["event"]["event"] == "completed"]) == 2)
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def test_webhook_url_is_checked(client: Client, stack) -> None:
    for bad in ("ftp://example.com/x", "not a url", "http://", 42):
        with pytest.raises(InvalidField) as refused:
            client.submit("simulate", input=None, webhook=bad)
        assert refused.value.field == "webhook"
    # A multipart submission carries it too.
    png = digit_png(heldout_split()[1][0])
    with pytest.raises(InvalidField):
        client.submit("digits", file=png, webhook="file:///etc/passwd")
    # Without a secret the API refuses webhooks (checked through an app of its own on the same Redis).
    from api import create_app
    from tasks.settings import Settings

    app = create_app(Settings(redis_url=stack.redis_server.url, auth="off"))
    try:
        answer = app.test_client().post("/v1/jobs", json={"analyzer": "simulate", "webhook": "http://127.0.0.1/x"})
    finally:
        app.extensions["gpuq"].redis.close()
    assert answer.status_code == 422 and answer.json["error"]["code"] == "webhooks_disabled"
    assert WebhooksDisabled.code == "webhooks_disabled"
    # No server-side request forgery: a private address not on the allow-list is refused.
    with pytest.raises(InvalidField) as unsafe:
        client.submit("simulate", input=None, webhook="http://10.1.2.3/hook")
    assert unsafe.value.field == "webhook" and "not a public address" in str(unsafe.value)


# -- server-sent events --------------------------------------------------------------


def test_event_stream_until_the_job_ends(client: Client) -> None:
    job = client.submit("simulate", input=None, params={"seconds": 1.5})
    events = list(client.events(job.id))
    kinds = [e.kind for e in events]
    assert kinds[0] == "status" and events[-1].kind == "status" and events[-1].job.status == "succeeded"
    statuses = [e.job.status for e in events if e.kind == "status"]
    assert "running" in statuses
    fractions = [e.job.fraction for e in events if e.kind == "progress"]
    assert len(fractions) >= 3 and fractions == sorted(fractions), fractions
    raw = requests.get(f"{client.url}/v1/jobs/{job.id}/events", timeout=10)
    assert raw.headers["Content-Type"].startswith("text/event-stream") and "event: status" in raw.text
    assert requests.get(f"{client.url}/v1/jobs/nope/events", timeout=10).status_code == 404


def test_streams_are_capped_per_process(client: Client, stack) -> None:
    job = client.submit("simulate", input=None, params={"seconds": 3})
    opened = [requests.get(f"{stack.url}/v1/jobs/{job.id}/events", stream=True, timeout=10) for _ in range(3)]
    try:
        assert all(r.status_code == 200 for r in opened)
        refused = requests.get(f"{stack.url}/v1/jobs/{job.id}/events", timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "too_many_streams"
        assert refused.headers["Retry-After"]
        with pytest.raises(TooManyStreams):
            Client(stack.url, max_retries=0).events(job.id).__next__()
        # Streams do not starve the API: reads and submits still answer at once.
        began = time.monotonic()
        assert client.get(job.id).status in ("queued", "running")
        assert time.monotonic() - began < 2
    finally:
        for r in opened:
            r.close()
    client.wait(job.id, timeout=30)
    # Closed streams give their slots back.
    again = _until(lambda: (r := requests.get(f"{stack.url}/v1/jobs/{job.id}/events", timeout=10)).status_code
                   == 200 and r)
    assert "succeeded" in again.text


# -- the command line ----------------------------------------------------------------


def gpuq(stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpuq.cli", *args, "--url", stack.url], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=stack.env)


def test_cli(stack, tmp_path: Path) -> None:
    listed = gpuq(stack, "analyzers", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {"digits", "simulate"} <= {a["name"] for a in json.loads(listed.stdout)}
    assert "digits" in gpuq(stack, "analyzers").stdout

    seven = gpuq(stack, "submit", "digits", str(ROOT / "examples" / "seven.png"), "--wait", "--json")
    assert seven.returncode == 0, seven.stderr
    assert json.loads(seven.stdout)["result"]["digit"] == 7

    submitted = gpuq(stack, "submit", "simulate", "--input", "null", "--params", '{"seconds": 1.5}', "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    waited = gpuq(stack, "wait", job_id)
    assert waited.returncode == 0, waited.stderr
    assert "%" in waited.stderr and "[" in waited.stderr and "100%" in waited.stderr  # the progress bar
    assert "succeeded" in waited.stdout
    status = gpuq(stack, "status", job_id, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "succeeded"
    assert "status:    succeeded" in gpuq(stack, "status", job_id).stdout

    failing = gpuq(stack, "submit", "simulate", "--input", "null", "--params", '{"seconds": 0, "fail": "boom"}',
                   "--wait")
    assert failing.returncode == 1 and "boom" in failing.stdout

    long = json.loads(gpuq(stack, "submit", "simulate", "--input", "null", "--params", '{"seconds": 30}',
                           "--json").stdout)["id"]
    assert gpuq(stack, "wait", long, "--timeout", "0.5").returncode == 4
    assert gpuq(stack, "cancel", long).returncode == 0
    assert gpuq(stack, "wait", long).returncode == 3
    again = gpuq(stack, "cancel", long)
    assert again.returncode in (0, 5)  # canceling twice answers as the first time, once canceled 409
    unknown = gpuq(stack, "status", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 5 and "not_found" in unknown.stderr
    invalid = gpuq(stack, "submit", "simulate", "--input", "null", "--params", '{"seconds": -1}', "--json")
    assert invalid.returncode == 5 and json.loads(invalid.stdout)["error"]["field"] == "params.seconds"

    folder = tmp_path / "digits"
    folder.mkdir()
    _, x_test, _, y_test = heldout_split()
    for i in range(12):
        (folder / f"{i:02d}.png").write_bytes(digit_png(x_test[i]))
    out = tmp_path / "results.jsonl"
    batch = gpuq(stack, "batch", "digits", str(folder), "--out", str(out), "--concurrency", "4")
    assert batch.returncode == 0, batch.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["file"] for line in lines) == [f"{i:02d}.png" for i in range(12)]
    right = sum(line["result"]["digit"] == y_test[int(line["file"][:2])] for line in lines)
    assert right >= 11 and "12/12" in batch.stderr and "12 succeeded" in batch.stderr


def test_batch_goes_on_past_bad_files(stack, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    _, x_test, _, y_test = heldout_split()
    for i in range(47):
        (folder / f"{i:02d}.png").write_bytes(digit_png(x_test[i]))
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "truncated.png").write_bytes(digit_png(x_test[47])[:100])
    batch = gpuq(stack, "batch", "digits", str(folder))
    assert batch.returncode == 1, batch.stderr
    lines = {line["file"]: line for line in map(json.loads, batch.stdout.splitlines())}
    assert len(batch.stdout.splitlines()) == len(lines) == 50
    good = [line for name, line in lines.items() if name[:2].isdigit()]
    assert all(line["status"] == "succeeded" and line["id"] for line in good)
    assert sum(line["result"]["digit"] == y_test[int(line["file"][:2])] for line in good) >= 44
    # Refused at submit: no job, the API's code and message. Accepted, then failed decoding: a job.
    assert lines["empty.png"]["status"] == "rejected" and lines["empty.png"]["id"] is None
    assert lines["empty.png"]["error"] == {"code": "invalid_field", "message": "file is empty", "field": "file"}
    assert lines["notes.txt"]["status"] == "rejected"
    assert lines["notes.txt"]["error"]["code"] == "unsupported_media_type" and lines["notes.txt"]["error"]["message"]
    assert lines["truncated.png"]["status"] == "failed" and lines["truncated.png"]["id"]
    assert lines["truncated.png"]["error"]["code"] == "invalid_input"
    assert "50 files: 47 succeeded, 1 failed, 2 rejected, 0 canceled" in batch.stderr
    for name, code in (("empty.png", "invalid_field"), ("notes.txt", "unsupported_media_type"),
                       ("truncated.png", "invalid_input")):
        assert f"{name}: {lines[name]['status']}, {code}: " in batch.stderr


def test_map_yields_rejected_inputs_and_raises_what_every_input_would_meet(client: Client, tmp_path: Path) -> None:
    png = digit_png(heldout_split()[1][0])
    inputs = [png, b"", b"plain text", tmp_path / "missing.png", png]
    jobs = dict(client.map("digits", inputs, concurrency=2, timeout=60))
    assert [jobs[i].status for i in range(5)] == ["succeeded", "rejected", "rejected", "rejected", "succeeded"]
    assert jobs[1].error["code"] == "invalid_field" and jobs[1].error["field"] == "file" and jobs[1].id is None
    assert jobs[2].error["code"] == "unsupported_media_type"
    assert jobs[3].error["code"] == "unreadable_file" and "missing.png" in jobs[3].error["message"]
    with pytest.raises(JobFailed, match="input rejected: invalid_field file is empty"):
        jobs[1].raise_for_status()
    # A JSON input the analyzer takes makes a job like any other.
    accepted = dict(client.map("simulate", [{"fine": True}], params={"seconds": 0}))
    assert accepted[0].succeeded
    assert dict(client.map("digits", [{"not": "a file"}]))[0].error["field"] == "input"
    # What would refuse every input stops the map.
    with pytest.raises(UnknownAnalyzer):
        list(client.map("no-such", [png, png]))
    with pytest.raises(InvalidField) as invalid:
        list(client.map("simulate", [None, None], params={"seconds": -1}))
    assert invalid.value.field == "params.seconds"


def test_status_is_plain_text(stack) -> None:
    submitted = gpuq(stack, "submit", "simulate", "--input", "null", "--params", '{"seconds": 3}')
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    running = _until(lambda: "status:    running" in (out := gpuq(stack, "status", job_id).stdout) and
                     "progress:" in out and out)
    assert "{" not in running and "'" not in running, running
    progress = next(line for line in running.splitlines() if line.startswith("progress:"))
    assert progress.split()[1].endswith("%") and progress.split()[2] == "simulate", progress
    assert gpuq(stack, "wait", job_id).returncode == 0
    finished = gpuq(stack, "status", job_id).stdout
    assert "{" not in finished and "'" not in finished, finished
    timings = next(line for line in finished.splitlines() if line.startswith("timings:"))
    assert " ms" in timings and "run" in timings, timings
    rows = [row.split() for row in finished.split("result:\n", 1)[1].splitlines()]
    assert [row[0] for row in rows] == ["seconds", "input"] and rows[1] == ["input", "null"], finished
    assert float(rows[0][1]) >= 3
    assert json.loads(gpuq(stack, "status", job_id, "--json").stdout)["id"] == job_id


def test_cli_says_at_once_that_nothing_listens(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    (tmp_path / "seven.png").write_bytes((ROOT / "examples" / "seven.png").read_bytes())
    for args in (["status", "some-id"], ["submit", "digits", str(tmp_path / "seven.png"), "--wait"],
                 ["batch", "digits", str(tmp_path)], ["analyzers", "--json"]):
        began = time.monotonic()
        cli = subprocess.run([sys.executable, "-m", "gpuq.cli", *args, "--url", url], capture_output=True,
                             text=True, timeout=60, cwd=ROOT)
        assert cli.returncode == 6, (args, cli.stderr)
        assert time.monotonic() - began < 10  # no backoff: 16 s of it before
        assert cli.stderr.splitlines() == [f"gpuq: cannot reach the API at {url}: connection refused; "
                                           "is it running there? (`make up` serves http://127.0.0.1:8000; "
                                           "--url or GPUQ_URL names another)"], cli.stderr
        assert cli.stdout == ""


def test_cli_shows_each_retry_of_a_broken_connection() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hang_up() -> None:  # accepts, then closes without an answer: not refused, so retried
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    cli = subprocess.Popen([sys.executable, "-m", "gpuq.cli", "status", "some-id", "--url",
                            f"http://127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=ROOT)
    try:
        first, second = cli.stderr.readline(), cli.stderr.readline()
        assert first.startswith(f"gpuq: cannot reach the API at http://127.0.0.1:{port}: ") and \
            first.rstrip().endswith("trying again in 0.5s"), first
        assert second.rstrip().endswith("trying again in 1.0s"), second
        assert cli.poll() is None  # it goes on retrying
    finally:
        cli.kill()
        cli.wait()
        listener.close()


def test_cli_wait_outlives_an_api_restart(stack) -> None:
    """Refused connections fail fast only before the API's first answer: a wait that has begun rides out
    an API that crashes and comes back on its port, saying each retry."""
    job_id = requests.post(f"{stack.url}/v1/jobs", json={"analyzer": "simulate", "input": None,
                                                        "params": {"seconds": 6}}, timeout=10).json()["id"]
    cli = subprocess.Popen([sys.executable, "-m", "gpuq.cli", "wait", job_id, "--json", "--url", stack.url],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=stack.env)
    try:
        time.sleep(1.5)  # its long-poll is in flight
        os.killpg(stack.api_process.pid, signal.SIGKILL)  # a crash: no graceful end for the long-poll
        stack.api_process.popen.wait()
        time.sleep(1.5)  # long enough for the wait's retries to meet a refused connection
        assert cli.poll() is None, cli.communicate()
        port = stack.url.rsplit(":", 1)[1]
        stack.api_process = Process([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")],
                                    {**stack.env, "GPUQ_API_PORT": port, "GPUQ_API_WORKERS": "1",
                                     "GPUQ_API_ACCESS_LOG": "", "GPUQ_API_HOST": "127.0.0.1"},
                                    stack.directory / f"api-{port}-restarted.log")
        wait_until_serving(stack.api_process, stack.url)
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 0, err
    assert json.loads(out)["status"] == "succeeded"
    assert "connection refused" in err and "trying again in" in err, err
