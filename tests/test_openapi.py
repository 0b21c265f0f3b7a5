"""/openapi.json matches the routes, and schemathesis finds no 5xx and no answer outside it on a live API."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import requests

from api.auth import hash_key
from api.openapi import document
from tests.stack import Stack

KEY = "fuzz-key"
#: Examples per operation and phase, and the longest the run may take (it takes about a minute on 2 cores).
MAX_EXAMPLES, MAX_TIME = 50, 240
#: schemathesis's own checks, less two that cannot hold for a job API whose analyzers come and go:
#: positive_data_acceptance (a schema-valid body naming no served analyzer is rightly a 422) and
#: use_after_free (a canceled job still answers 202 to a second cancel, by design).
_EXCLUDED = "positive_data_acceptance,use_after_free"


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
    assert response.status_code == 200 and response.json() == document()


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(keyed_stack, artifacts):
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{keyed_stack.url}/openapi.json",
         "-H", f"Authorization: Bearer {KEY}", "--max-examples", str(MAX_EXAMPLES),
         "--checks", "all", "--exclude-checks", _EXCLUDED, "--workers", "2", "--seed", "20261122",
         "--request-timeout", "20", "--no-color"],
        capture_output=True, text=True, timeout=MAX_TIME, cwd=artifacts)  # its cache lands there, not in the repo
    output = done.stdout + done.stderr
    (artifacts / "schemathesis.txt").write_text(output)
    summary = output[output.rfind("SUMMARY"):]
    print(f"schemathesis ({time.monotonic() - started:.0f} s):\n{summary}")
    assert done.returncode == 0, output[-6000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", summary)
    assert selected and selected.group(1) == selected.group(2), summary  # every operation selected
    assert re.search(rf"Tested: {selected.group(1)}\b", summary), summary  # and every one tested
