"""Bad input gets a 4xx naming the field at fault, and nothing is enqueued."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import requests


@pytest.fixture
def nothing_enqueued(redis_client):
    """Asserts, after the test, that no job record, input or message was written."""
    def in_flight() -> bool:
        for key in redis_client.scan_iter("gpuq:input:*"):
            analyzer, status = redis_client.hmget(key.replace(b":input:", b":job:"), "analyzer", "status")
            if analyzer in (b"digits", b"simulate", b"echo") and status in (b"queued", b"running"):
                return True
        return False

    def snapshot():
        # Jobs an earlier test left in flight end meanwhile (their inputs go): let them settle first.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and in_flight():
            time.sleep(0.05)
        return (sorted(redis_client.scan_iter("gpuq:job:*")), sorted(redis_client.scan_iter("gpuq:input:*")),
                {q: redis_client.llen(q) for q in ("gpuq.digits", "gpuq.simulate", "gpuq.echo")})
    before = snapshot()
    yield
    assert snapshot() == before


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "field"} <= set(body["error"])
    assert "Traceback" not in response.text
    return body["error"]


def post_file(api, data: bytes, analyzer: str = "digits", **form):
    return requests.post(f"{api}/v1/jobs", data={"analyzer": analyzer, **form},
                         files={"file": ("upload.png", io.BytesIO(data), "image/png")}, timeout=10)


def test_unknown_analyzer(api, nothing_enqueued):
    error = error_of(requests.post(f"{api}/v1/jobs", json={"analyzer": "resnet9000"}, timeout=5), 422)
    assert error["field"] == "analyzer" and "resnet9000" in error["message"] and "digits" in error["message"]


def test_missing_analyzer(api, nothing_enqueued):
    error = error_of(requests.post(f"{api}/v1/jobs", json={"input": {}}, timeout=5), 422)
    assert error["field"] == "analyzer"


def test_missing_file(api, nothing_enqueued):
    error = error_of(requests.post(f"{api}/v1/jobs", data={"analyzer": "digits"}, timeout=5), 422)
    assert error["field"] == "file"


def test_bytes_that_are_not_an_image(api, nothing_enqueued):
    error = error_of(post_file(api, b"GIF89a this is not a png at all"), 415)
    assert error["field"] == "file" and "image/png" in error["message"]


def test_upload_over_the_analyzer_limit(api, nothing_enqueued):
    # simulate takes at most 64 KiB of input.
    big = {"blob": "x" * 70_000}
    error = error_of(requests.post(f"{api}/v1/jobs", json={"analyzer": "simulate", "input": big}, timeout=5), 413)
    assert error["field"] == "input"


def test_upload_over_the_server_limit(api, nothing_enqueued):
    # The test stack sets GPUQ_MAX_REQUEST_BYTES to 4 MiB.
    error = error_of(post_file(api, b"\x89PNG\r\n\x1a\n" + b"\0" * (5 * 1024 * 1024)), 413)
    assert error["field"] == "body" and str(4 * 1024 * 1024) in error["message"]


def test_malformed_json_body(api, nothing_enqueued):
    response = requests.post(f"{api}/v1/jobs", data='{"analyzer": "simulate",',
                             headers={"Content-Type": "application/json"}, timeout=5)
    assert error_of(response, 400)["field"] == "body"


def test_body_that_is_not_an_object(api, nothing_enqueued):
    response = requests.post(f"{api}/v1/jobs", json=["simulate"], timeout=5)
    assert error_of(response, 400)["field"] == "body"


def test_params_of_the_wrong_type(api, nothing_enqueued):
    response = requests.post(f"{api}/v1/jobs", json={"analyzer": "simulate", "params": {"seconds": "ten"}},
                             timeout=5)
    error = error_of(response, 422)
    assert error["field"] == "params.seconds" and "number" in error["message"]


def test_unknown_param(api, nothing_enqueued):
    response = requests.post(f"{api}/v1/jobs", json={"analyzer": "simulate", "params": {"sconds": 1}}, timeout=5)
    assert error_of(response, 422)["field"] == "params"


def test_params_not_an_object(api, nothing_enqueued):
    response = requests.post(f"{api}/v1/jobs", json={"analyzer": "simulate", "params": [1]}, timeout=5)
    assert error_of(response, 422)["field"] == "params"


def test_multipart_params_that_are_not_json(api, nothing_enqueued):
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
    assert error_of(post_file(api, png, params="{dataset: frames"), 400)["field"] == "params"


def test_json_input_to_a_file_analyzer(api, nothing_enqueued):
    response = requests.post(f"{api}/v1/jobs", json={"analyzer": "digits", "input": [[0] * 8] * 8}, timeout=5)
    assert error_of(response, 422)["field"] == "input"


def test_input_that_breaks_the_schema(api, nothing_enqueued):
    response = requests.post(f"{api}/v1/jobs", json={"analyzer": "echo", "input": "a string"}, timeout=5)
    assert error_of(response, 422)["field"] == "input"


def test_unsupported_content_type(api, nothing_enqueued):
    response = requests.post(f"{api}/v1/jobs", data="analyzer=simulate",
                             headers={"Content-Type": "text/plain"}, timeout=5)
    assert error_of(response, 415)["field"] == "body"


@pytest.mark.parametrize("wait", ["soon", "-1", "3600"])
def test_bad_wait(api, wait):
    error = error_of(requests.get(f"{api}/v1/jobs/x?wait={wait}", timeout=5), 400)
    assert error["field"] == "wait"


def test_npy_upload_is_accepted_by_its_bytes_whatever_its_name(api):
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((8, 8), dtype=np.float32))
    response = post_file(api, buffer.getvalue())  # sent as "upload.png" with image/png
    assert response.status_code == 202, response.text
    assert json.loads(response.text)["status"] == "queued"


def test_unknown_route_is_json_404(api):
    error = error_of(requests.get(f"{api}/v2/nothing", timeout=5), 404)
    assert error["code"] == "not_found"


@pytest.mark.parametrize("body, reason", [
    ('{"analyzer": "echo", "input": ' + "[" * 950 + "]" * 950 + "}", "nested more than 64 levels"),
    ('{"analyzer": "echo", "input": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested more than 64 levels"),
    ('{"analyzer": "echo", "input": ' + "[" * 65 + "]" * 65 + "}", "nested more than 64 levels"),
    ('{"analyzer": "echo", "input": {"x": NaN}}', "NaN is not a JSON number"),
    ('{"analyzer": "echo", "input": {"x": -Infinity}}', "-Infinity is not a JSON number"),
    ('{"analyzer": "echo", "input": {"x": 1e999}}', "out of range"),
], ids=["950 levels", "100,000 levels", "65 levels", "NaN", "-Infinity", "1e999"])
def test_json_a_worker_could_not_read_is_refused_at_the_door(api, nothing_enqueued, body, reason):
    response = requests.post(f"{api}/v1/jobs", data=body, headers={"Content-Type": "application/json"}, timeout=5)
    error = error_of(response, 400)
    assert error["field"] == "body" and error["code"] == "malformed_json" and reason in error["message"]


def test_json_at_the_depth_limit_is_taken_and_read_back_by_the_worker(api):
    from tasks.strict_json import MAX_DEPTH

    nested = 0
    for _ in range(MAX_DEPTH - 2):  # the body is level 1, the input object level 2: 64 in all
        nested = [nested]
    job = requests.post(f"{api}/v1/jobs", json={"analyzer": "echo", "input": {"deep": nested}}, timeout=5)
    assert job.status_code == 202, job.text
    done = requests.get(f"{api}/v1/jobs/{job.json()['id']}?wait=20", timeout=30).json()
    assert done["status"] == "succeeded" and done["result"]["echo"] == {"deep": nested}


@pytest.mark.parametrize("field", ["params", "input"])
def test_form_json_fields_too_deep_are_refused(api, nothing_enqueued, field):
    response = requests.post(f"{api}/v1/jobs", data={"analyzer": "echo", field: "[" * 100 + "]" * 100},
                             timeout=5)
    error = error_of(response, 400)
    assert error["field"] == field and "nested more than 64 levels" in error["message"]


@pytest.mark.parametrize("body, form", [({"analyzer": "simulate", "param": {"seconds": 1}}, None),
                                        (None, {"analyzer": "simulate", "parms": "{}"})], ids=["json", "form"])
def test_an_unknown_member_or_field_is_named_not_dropped(api, nothing_enqueued, body, form):
    response = requests.post(f"{api}/v1/jobs", json=body, data=form, timeout=5)
    error = error_of(response, 422)
    unknown = "param" if body else "parms"
    assert error["field"] == unknown and error["code"] == "unknown_field" and "params" in error["message"]


def test_an_unknown_file_part_is_named(api, nothing_enqueued):
    response = requests.post(f"{api}/v1/jobs", data={"analyzer": "digits"}, timeout=5,
                             files={"upload": ("seven.png", b"\x89PNG\r\n\x1a\n", "image/png")})
    assert error_of(response, 422)["field"] == "upload"


def test_a_validation_error_quotes_a_short_excerpt_of_the_value(api, nothing_enqueued):
    # simulate's input is at most 64 KiB; params.seconds is a number: give it a long list instead.
    response = requests.post(f"{api}/v1/jobs", json={"analyzer": "simulate", "params": {"seconds": [0] * 10_000}},
                             timeout=5)
    error = error_of(response, 422)
    assert error["field"] == "params.seconds" and len(response.content) < 1000, response.text[:2000]
    assert "characters)" in error["message"]
