"""Requests meant to hurt: bodies far over the limit, malformed query parameters, one tenant's waits
crowding out another's submits, and idempotency keys past their job's life. On a stack of its own, with
API keys for three tenants (one gunicorn process: the bounds below are per process)."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
import requests

from api.auth import hash_key
from bench.oversized_body import api_peak_rss_mb, send_oversized
from tests.stack import Stack, wait_until

TENANTS = ("alice", "bob", "carol")
HEADERS = {tenant: {"Authorization": f"Bearer key-of-{tenant}"} for tenant in TENANTS}
#: What the API process may hold at its peak after the oversized bodies: a few times its idle size.
RSS_CEILING_MB = 150


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("hostile"), analyzers="noop,simulate",
              GPUQ_API_KEYS=",".join(f"{t}:{hash_key(f'key-of-{t}')}" for t in TENANTS),
              GPUQ_RESULT_TTL="3", GPUQ_TOMBSTONE_TTL="3")
    try:
        yield s.start(workers=2)
    finally:
        s.stop()


def _send_oversized(url: str, *, chunked: bool, mimetype: str = "application/json") -> tuple[bytes, float]:
    return send_oversized(url, chunked=chunked, mimetype=mimetype, headers="Authorization: Bearer key-of-alice\r\n")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_far_over_the_analyzers_limit_is_refused_before_it_is_read(stack, chunked):
    # noop and simulate take 64 KiB inputs: a JSON body may be 128 KiB here, and this one is 60 MiB.
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _send_oversized(stack.url, chunked=chunked), range(4)))
    for status_line, seconds in answers:
        assert status_line.startswith(b"HTTP/1.1 413"), status_line
        assert seconds < 0.5, answers
    peaks = api_peak_rss_mb(stack.api_process.pid)
    print(f"\n60 MiB bodies ({'chunked' if chunked else 'Content-Length'}): answered in "
          f"{max(s for _, s in answers) * 1000:.0f} ms at most; API processes' peak RSS {peaks} MB")
    assert peaks and max(peaks.values()) < RSS_CEILING_MB, peaks


def test_an_oversized_form_is_refused_before_it_is_read_too(stack):
    status_line, seconds = _send_oversized(stack.url, chunked=False,
                                           mimetype="multipart/form-data; boundary=xyz")
    assert status_line.startswith(b"HTTP/1.1 413") and seconds < 0.5, (status_line, seconds)


def test_the_413_names_the_body_and_the_limit(stack):
    body = {"analyzer": "noop", "input": "x" * (200 * 1024)}
    response = requests.post(f"{stack.url}/v1/jobs", json=body, headers=HEADERS["alice"], timeout=10)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["field"] == "body" and str(192 * 1024) in error["message"]  # 2 x 64 KiB input + 64 KiB


def test_an_input_within_its_limit_is_taken_however_the_body_encodes_it(stack):
    # Inputs of some 55 KB (noop takes 64 KiB, counted compact), in bodies over 128 KiB: indented JSON,
    # and a url-encoded form whose %XX escapes triple every bracket and comma.
    indented = json.dumps({"analyzer": "noop", "input": [f"w{i:05d}" for i in range(6000)]}, indent=10).encode()
    escaped = urlencode({"analyzer": "noop", "input": json.dumps([[]] * 18000, separators=(",", ":"))}).encode()
    assert len(indented) > 128 * 1024 and len(escaped) > 128 * 1024
    for body, mimetype in ((indented, "application/json"), (escaped, "application/x-www-form-urlencoded")):
        response = requests.post(f"{stack.url}/v1/jobs", data=body, timeout=10,
                                 headers={**HEADERS["alice"], "Content-Type": mimetype})
        assert response.status_code == 202, (mimetype, response.text)


def test_a_chunked_body_over_the_limit_is_refused_and_one_within_it_taken(stack):
    def chunks():
        yield b'{"analyzer": "noop", "input": "'
        for _ in range(64):  # 4 MiB, of which the API may read 192 KiB
            yield b"x" * 65536
        yield b'"}'

    response = requests.post(f"{stack.url}/v1/jobs", data=chunks(), timeout=10,
                             headers={**HEADERS["alice"], "Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["field"] == "body", response.text
    small = requests.post(f"{stack.url}/v1/jobs", data=iter([b'{"analyzer": ', b'"noop", "input": [1]}']),
                          timeout=10, headers={**HEADERS["alice"], "Content-Type": "application/json"})
    assert small.status_code == 202, small.text


def _raw_status(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(65536).split(b"\r\n", 1)[0]


@pytest.mark.parametrize("framing", [b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}XX0\r\n\r\n", b"2;\x01\r\n{}\r\n0\r\n\r\n"],
                         ids=["chunk size", "terminator", "extension"])
def test_a_malformed_chunked_body_is_a_400(stack, framing):
    request = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-of-alice\r\n"
               b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + framing)
    assert _raw_status(stack.url, request).startswith(b"HTTP/1.1 400"), framing


def test_a_well_formed_chunked_body_is_taken(stack):
    body = b'{"analyzer": "noop", "input": {"n": 1}}'
    request = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-of-alice\r\n"
               b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    assert _raw_status(stack.url, request).startswith(b"HTTP/1.1 202")


@pytest.mark.parametrize("query", ["limit=²", "limit=١٢", "limit=0x10", "limit=", "limit=101", "status=done",
                                   "cursor=.."])
def test_a_malformed_query_parameter_is_a_400_naming_it(stack, query):
    response = requests.get(f"{stack.url}/v1/jobs?{query}", headers=HEADERS["alice"], timeout=5)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == query.split("=", 1)[0]


def _long_poll(url: str, job_id: str, tenant: str, wait: float) -> requests.Response:
    return requests.get(f"{url}/v1/jobs/{job_id}", params={"wait": wait}, headers=HEADERS[tenant],
                        timeout=wait + 10)


def test_long_polls_are_bounded_per_tenant_and_per_process_and_never_starve_a_submit(stack):
    jobs = {t: requests.post(f"{stack.url}/v1/jobs", json={"analyzer": "simulate", "params": {"seconds": 8}},
                             headers=HEADERS[t], timeout=10).json()["id"] for t in TENANTS}
    with ThreadPoolExecutor(72) as pool:
        # 64 long-polls from one tenant: 4 (its share of this process) wait, the rest are refused at once.
        began = time.monotonic()
        alice = [pool.submit(_long_poll, stack.url, jobs["alice"], "alice", 5) for _ in range(64)]
        refused = wait_until(lambda: [f.result() for f in alice if f.done()], 5, "the refused long-polls")
        assert time.monotonic() - began < 3
        assert all(r.status_code == 503 for r in refused), [r.text for r in refused]
        first = refused[0]
        assert first.json()["error"]["code"] == "too_many_long_polls" and first.headers["Retry-After"] == "2"
        wait_until(lambda: sum(1 for f in alice if f.done()) == 60, 5, "60 of 64 long-polls refused")
        # Another tenant's submit beside them answers at once, and its own long-polls still get their share.
        seconds = []
        for _ in range(5):
            started = time.monotonic()
            submitted = requests.post(f"{stack.url}/v1/jobs", json={"analyzer": "noop"}, headers=HEADERS["bob"],
                                      timeout=10)
            seconds.append(time.monotonic() - started)
            assert submitted.status_code == 202, submitted.text
        submit_seconds = sorted(seconds)[2]  # the median: one slow answer on a busy 2-core machine is noise
        assert submit_seconds < 0.2, seconds
        bob = [pool.submit(_long_poll, stack.url, jobs["bob"], "bob", 3) for _ in range(4)]
        time.sleep(0.5)
        # The process's 8 slots are now all held: a third tenant is refused too, naming the process.
        carol = _long_poll(stack.url, jobs["carol"], "carol", 1)
        assert carol.status_code == 503 and "API process" in carol.json()["error"]["message"], carol.text
        held = [f.result() for f in alice if f.result().status_code == 200] + [f.result() for f in bob]
    print(f"\nsubmit beside 64 long-polls: {submit_seconds * 1000:.0f} ms (median of 5)")
    assert len(held) == 8 and all(r.json()["status"] in ("queued", "running", "succeeded") for r in held)
    # Given back: the same tenant long-polls again.
    assert _long_poll(stack.url, jobs["alice"], "alice", 0.2).status_code == 200


def test_the_client_reads_instead_when_its_long_poll_is_refused(stack):
    from gpuq.client import Client

    job = requests.post(f"{stack.url}/v1/jobs", json={"analyzer": "simulate", "params": {"seconds": 2}},
                        headers=HEADERS["carol"], timeout=10).json()["id"]
    with ThreadPoolExecutor(4) as pool:  # carol's share of long-polls, all held
        held = [pool.submit(_long_poll, stack.url, job, "carol", 6) for _ in range(4)]
        time.sleep(0.5)
        done = Client(stack.url, api_key="key-of-carol").wait(job, timeout=30)
        assert done.status == "succeeded"
        assert all(f.result().status_code == 200 for f in held)


def test_an_idempotency_key_lives_and_dies_with_its_jobs_record(stack):
    headers = {**HEADERS["bob"], "Idempotency-Key": "order-7"}
    post = lambda: requests.post(f"{stack.url}/v1/jobs", json={"analyzer": "noop"}, headers=headers,  # noqa: E731
                                 timeout=10)
    first = post()
    assert first.status_code == 202
    job_id = first.json()["id"]
    wait_until(lambda: requests.get(f"{stack.url}/v1/jobs/{job_id}", headers=HEADERS["bob"], timeout=5)
               .json().get("status") == "succeeded", 30, "the job to succeed")
    replay = post()
    assert replay.status_code == 202 and replay.json()["id"] == job_id and replay.headers["Idempotent-Replayed"]
    # Its result expires (GPUQ_RESULT_TTL=3): a replay answers as GET does, 410, and makes no job.
    gone = _first_answer(post, 410, within=10)
    assert gone.json()["error"]["code"] == "expired"
    # The record goes too (GPUQ_TOMBSTONE_TTL=3 later), and the key with it: the same request is a new job.
    fresh = _first_answer(post, 202, within=15)
    assert fresh.json()["id"] != job_id and "Idempotent-Replayed" not in fresh.headers


def _first_answer(send, status: int, within: float) -> requests.Response:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        response = send()
        if response.status_code == status:
            return response
        time.sleep(0.1)
    raise AssertionError(f"no {status} within {within} s; last: {response.status_code} {response.text}")
