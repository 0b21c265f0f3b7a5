"""Property tests of upload parsing (hypothesis), and no response ever carrying a traceback.

``parse_submission`` runs on a real Flask request built from generated
multipart bodies, forms and JSON: whatever arrives, it returns a checked
submission or raises one of the API's own 4xx errors, and never reads more
than the analyzer's limit.
"""

from __future__ import annotations

import io
import json

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.errors import ApiError
from api.validation import parse_submission
from tasks.media import MEDIA_SIGNATURES

LIMIT = 4096
SPECS = {
    "images": {"name": "images", "media_types": ["image/png", "application/x-npy"], "input_schema": None,
               "params_schema": {"type": "object", "properties": {"n": {"type": "integer", "maximum": 5}}},
               "max_input_bytes": LIMIT},
    "json": {"name": "json", "media_types": [], "params_schema": {"type": "object"}, "max_input_bytes": LIMIT,
             "input_schema": {"type": "object", "properties": {"x": {"type": "number"}},
                              "additionalProperties": False}},
}
APP = Flask("fuzz")
APP.config["MAX_CONTENT_LENGTH"] = 4 * LIMIT

prefixes = st.sampled_from([b""] + [sig for sigs in MEDIA_SIGNATURES.values() for sig in sigs])
uploads = st.builds(lambda p, rest: p + rest, prefixes, st.binary(max_size=2 * LIMIT))
text = st.text(max_size=40)
#: What a client can put in a multipart part's name and type (no control characters).
header_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                           max_leaves=12)
analyzers = st.sampled_from(["images", "json", "", "nope"]) | text


def _parse(**request_kwargs):
    with APP.test_request_context("/v1/jobs", method="POST", **request_kwargs) as ctx:
        try:
            return parse_submission(ctx.request, SPECS.get, lambda: sorted(SPECS))
        except ApiError as error:
            assert 400 <= error.status < 500 and error.code and error.message
            return error


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(analyzer=analyzers, upload=uploads, filename=header_text, content_type=header_text, params=json_values | text)
def test_multipart_uploads_are_judged_by_their_bytes_and_never_crash(analyzer, upload, filename, content_type,
                                                                      params):
    data = {"analyzer": analyzer, "params": params if isinstance(params, str) else json.dumps(params),
            "file": (io.BytesIO(upload), filename or "f", content_type or "application/octet-stream")}
    outcome = _parse(data=data, content_type="multipart/form-data")
    if not isinstance(outcome, ApiError):
        # Accepted: the declared name and type played no part; the bytes did.
        assert outcome.analyzer == "images" and 0 < len(outcome.input_bytes) <= LIMIT
        assert outcome.input_bytes == upload
        assert any(upload.startswith(sig) for sig in MEDIA_SIGNATURES[outcome.input_media_type])
        assert outcome.input_media_type in SPECS["images"]["media_types"]


@settings(max_examples=300, deadline=None)
@given(body=json_values | st.binary(max_size=200).map(lambda b: b.decode("latin-1")), mimetype=st.sampled_from(
    ["application/json", "application/x-www-form-urlencoded", "text/plain", "application/xml", ""]))
def test_json_and_odd_bodies_never_crash(body, mimetype):
    raw = body if isinstance(body, str) else json.dumps(body)
    outcome = _parse(data=raw.encode("utf-8", "surrogatepass"), content_type=mimetype or None)
    if not isinstance(outcome, ApiError):
        assert outcome.analyzer == "json" and len(outcome.input_bytes) <= LIMIT
        assert isinstance(json.loads(outcome.input_bytes), dict)


@given(size=st.integers(min_value=LIMIT + 1, max_value=3 * LIMIT))
@settings(max_examples=20, deadline=None)
def test_an_upload_over_the_analyzers_limit_is_413(size):
    upload = MEDIA_SIGNATURES["image/png"][0] + b"\x00" * size
    outcome = _parse(data={"analyzer": "images", "file": (io.BytesIO(upload), "a.png")},
                     content_type="multipart/form-data")
    assert isinstance(outcome, ApiError) and outcome.status == 413


# --- no traceback, ever -------------------------------------------------------------------------------

_LEAKS = ("Traceback", 'File "/', "site-packages", "Error:", "werkzeug", "<html")


def _no_leak(response) -> None:
    body = response.get_data(as_text=True)
    if response.status_code >= 400:
        assert response.is_json, (response.status_code, body[:300])
        assert set(response.json) == {"error"}, body[:300]
    for leak in _LEAKS:
        assert leak not in body, (response.status_code, body[:300])


def test_an_unexpected_error_answers_500_without_its_traceback(celery_app, redis_server):
    from api import create_app
    from tasks.settings import Settings

    app = create_app(Settings(redis_url=redis_server.url, auth="off"))

    @app.get("/boom")
    def boom():
        raise RuntimeError('secret detail File "/etc/passwd", line 1')

    app.testing = False  # as in production: errors are handled, not re-raised
    response = app.test_client().get("/boom")
    assert response.status_code == 500 and response.json["error"]["code"] == "internal"
    assert "secret" not in response.get_data(as_text=True)
    _no_leak(response)


@pytest.mark.parametrize("method, path, kwargs", [
    ("post", "/v1/jobs", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}),
    ("post", "/v1/jobs", {"data": b"--x\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=x"}}),
    ("post", "/v1/jobs", {"data": b"\xff\xfe\x00", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
    ("post", "/v1/jobs", {"data": b"x" * (5 * 1024 * 1024), "headers": {"Content-Type": "application/json"}}),
    ("post", "/v1/jobs", {"json": {"analyzer": "digits", "params": {"dataset": {"$ref": "x"}}}}),
    ("post", "/v1/jobs", {"json": {"analyzer": ["digits"]}}),
    ("post", "/v1/jobs", {"json": {"analyzer": "simulate", "params": {"seconds": 1e308}}}),
    ("get", "/v1/jobs/%00%ff", {}),
    ("get", "/v1/jobs/x?wait=nan", {}),
    ("get", "/v1/jobs/x?wait=1e999", {}),
    ("get", "/v1/jobs?limit=-1&status=%00", {}),
    ("delete", "/v1/jobs/../../etc/passwd", {}),
    ("put", "/v1/jobs", {}),
    ("get", "/nope", {}),
    ("post", "/v1/jobs", {"data": b"", "headers": {"Content-Type": "application/json", "Idempotency-Key": "\x01"}}),
])
def test_no_answer_of_the_live_api_carries_a_traceback(api, method, path, kwargs):
    import requests

    response = getattr(requests, method)(api + path, timeout=10, **kwargs)
    assert response.status_code < 500, response.text[:300]
    body = response.text
    if response.headers.get("Content-Type", "").startswith("text/html"):
        # gunicorn's own short page for a request it will not parse (a control character in a
        # header, a request line over its limit): the app never saw it, and it names no code.
        assert response.status_code in (400, 414) and len(body) < 400, body
    elif response.status_code >= 400:
        assert set(response.json()) == {"error"}, body[:300]
    for leak in _LEAKS[:-1]:
        assert leak not in body, body[:300]
