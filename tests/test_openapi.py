"""/openapi.json matches the routes, and schemathesis finds no 5xx and no answer outside it on a live API,
with a key and without one, over at least 5,000 requests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter

import pytest
import requests

from api.auth import hash_key
from api.openapi import document
from tests.stack import Stack

KEY = "fuzz-key"
#: Examples per operation and phase, and the longest one run may take. With a key, 400 examples
#: make some 6,000 requests (about 3 minutes on 2 cores); without one every /v1 call is a 401, so
#: fewer examples find what there is to find.
KEYED_EXAMPLES, KEYLESS_EXAMPLES, MAX_TIME = 400, 60, 480
#: Requests the two runs must make together, at the least.
LEAST_REQUESTS = 5000
#: schemathesis's own checks, less two that cannot hold for a job API whose analyzers come and go:
#: positive_data_acceptance (a schema-valid body naming no served analyzer is rightly a 422) and
#: use_after_free (a canceled job still answers 202 to a second cancel, by design).
_EXCLUDED = "positive_data_acceptance,use_after_free"
#: A request the document forbids may also be refused as too large: 413 by the API, 414 by gunicorn
#: (a request line over 4094 bytes, before the app sees it), besides schemathesis's own list.
_CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "414", "415", "422", "428", "429"]
"""


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("openapi"), analyzers="tests.fixtures.analyzers:Echo",
                  GPUQ_API_KEYS=f"fuzz:{hash_key(KEY)}")
    try:
        yield stack.start()
    finally:
        stack.stop()


def _flask_routes() -> set[tuple[str, str]]:
    from api import create_app
    from tasks.settings import Settings

    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", auth="off"))
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        routes |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return routes


def test_the_document_names_every_route_and_no_other(celery_app):
    paths = document()["paths"]
    documented = {(path, method) for path, item in paths.items() for method in item if method != "parameters"}
    assert documented == _flask_routes()


def test_the_document_is_valid_openapi():
    from schemathesis import openapi

    schema = openapi.from_dict(document())
    assert len(list(schema.get_all_operations())) == len(
        [m for item in document()["paths"].values() for m in item if m != "parameters"])


def test_the_live_api_serves_the_document(keyed_stack):
    response = requests.get(f"{keyed_stack.url}/openapi.json", timeout=5)  # no key needed
    # The served document names the analyzers served: submissions' analyzer is their enum.
    assert response.status_code == 200 and response.json() == document(["echo"])


@pytest.mark.parametrize("path, headers, status", [
    ("/v1/jobs?cursor=" + "a" * 5000, {}, 414),
    ("/healthz", {"X-Padding": "a" * 9000}, 431),
    ("/v1/analyzers", {f"X-{n}": "a" for n in range(120)}, 431),
], ids=["request line", "long header", "many headers"])
def test_what_gunicorn_answers_before_the_app_is_in_the_document(keyed_stack, path, headers, status):
    response = requests.get(keyed_stack.url + path, headers=headers, timeout=5)
    assert response.status_code == status
    documented = document()["paths"][path.split("?")[0]]["get"]["responses"][str(status)]
    assert response.headers["Content-Type"].split(";")[0] in documented["content"]


def _fuzz(url: str, artifacts, name: str, examples: int, headers: list[str]) -> list[dict]:
    """Run schemathesis against the live document; the HAR entries of every request it made."""
    started = time.monotonic()
    har, config = artifacts / f"schemathesis-{name}.har", artifacts / "schemathesis.toml"
    config.write_text(_CONFIG)
    # One worker: two generating at once tripped CPython 3.11's parser ("AST constructor recursion depth
    # mismatch") inside hypothesis, an error of the fuzzer's, not of the API.
    done = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{url}/openapi.json",
         *headers, "--max-examples", str(examples), "--checks", "all", "--exclude-checks", _EXCLUDED, "--workers", "1",
         "--seed", "20261122", "--request-timeout", "20", "--no-color", "--report", "har",
         "--report-har-path", str(har)],
        capture_output=True, text=True, timeout=MAX_TIME, cwd=artifacts)  # its cache lands there, not in the repo
    output = done.stdout + done.stderr
    (artifacts / f"schemathesis-{name}.txt").write_text(output)
    summary = output[output.rfind("SUMMARY"):]
    entries = json.loads(har.read_text())["log"]["entries"]
    print(f"schemathesis {name} ({time.monotonic() - started:.0f} s, {len(entries)} requests):\n{summary}")
    assert done.returncode == 0, output[-6000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", summary)
    assert selected and selected.group(1) == selected.group(2), summary  # every operation selected
    assert re.search(rf"Tested: {selected.group(1)}\b", summary), summary  # and every one tested
    return entries


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(keyed_stack, artifacts):
    keyed = _fuzz(keyed_stack.url, artifacts, "keyed", KEYED_EXAMPLES, ["-H", f"Authorization: Bearer {KEY}"])
    keyless = _fuzz(keyed_stack.url, artifacts, "keyless", KEYLESS_EXAMPLES, [])
    statuses = Counter(entry["response"]["status"] for entry in keyed + keyless)
    print(f"requests: {len(keyed)} with a key, {len(keyless)} without; by status: {dict(sorted(statuses.items()))}")
    assert not [status for status in statuses if status >= 500], statuses
    assert len(keyed) + len(keyless) >= LEAST_REQUESTS
    # Without a key nothing under /v1 answers but 401 (or 414 from gunicorn, before any route).
    assert {e["response"]["status"] for e in keyless if "/v1/" in e["request"]["url"]} <= {401, 414}
    # With one, jobs were made and read: the fuzzer got past validation, not only bounced off it.
    assert statuses[202] > 0 and statuses[200] > 0
