"""API keys, tenant isolation, per-tenant limits: the app in-process against a Redis of its own.

A published analyzer that no worker serves ("parked") keeps every job queued,
so limits and listings are exact.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import pytest

from api import create_app
from api.auth import ApiKeys, hash_key, new_key
from gpuq.redis_server import RedisServer
from tasks import catalog, keys
from tasks.settings import Settings, SettingsError
from tests.stack import ROOT

KEY_A, KEY_B = "key-of-team-a", "key-of-team-b"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
API_KEYS = f"team-a:{hash_key(KEY_A)},team-b:{hash_key(KEY_B)}"
PARKED = {"name": "parked", "description": "no worker serves it", "version": "1", "media_types": [],
          "input_schema": {"type": "object"}, "params_schema": {"type": "object"}, "max_input_bytes": 1024,
          "batching": {"max_batch_size": 1, "max_wait_ms": 0}, "max_queue_depth": 0}


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory, celery_app):  # celery_app: celeryconfig needs a Redis URL at import
    server = RedisServer(tmp_path_factory.mktemp("auth-redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis(own_redis):
    import redis as redis_lib

    client = redis_lib.Redis.from_url(own_redis.url)
    client.flushall()
    catalog.publish_analyzers(client, [PARKED])
    yield client
    client.close()


def make_client(own_redis, **overrides):
    settings = Settings(redis_url=own_redis.url, **{"api_keys": API_KEYS, **overrides})
    return create_app(settings).test_client()


@pytest.fixture
def client(own_redis, redis):
    return make_client(own_redis, tenant_max_queued=3)


def submit(client, headers, expect=202, **extra):
    response = client.post("/v1/jobs", json={"analyzer": "parked", "input": {}}, headers={**headers, **extra})
    assert response.status_code == expect, response.get_data(as_text=True)
    return response


# --- keys --------------------------------------------------------------------------------------------


def test_no_key_wrong_key_or_wrong_scheme_answer_401(client):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {KEY_A}"},
                    {"Authorization": "Bearer "}, {"Authorization": KEY_A}):
        for method, path in (("get", "/v1/jobs"), ("post", "/v1/jobs"), ("get", "/v1/analyzers"),
                             ("get", "/v1/jobs/x"), ("delete", "/v1/jobs/x"), ("get", "/no/such/route")):
            response = getattr(client, method)(path, headers=headers)
            assert response.status_code == 401, (headers, path, response.get_data(as_text=True))
            assert response.json["error"]["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_probes_metrics_and_the_openapi_document_need_no_key(client):
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    assert client.get("/readyz").status_code in (200, 503)  # no worker here: 503, but not 401


def test_a_valid_key_names_its_tenant(client, redis):
    job = submit(client, A).json
    assert redis.hget(keys.job(job["id"]), "tenant") == b"team-a"
    assert client.get("/v1/analyzers", headers=B).status_code == 200


def test_keys_are_hashed_and_compared_without_early_exit():
    keys_ = ApiKeys.parse(API_KEYS + f",team-a:{hash_key('second-key-of-a')}")
    assert keys_.tenant_for(KEY_A) == "team-a" and keys_.tenant_for("second-key-of-a") == "team-a"
    assert keys_.tenant_for(KEY_B) == "team-b"
    assert keys_.tenant_for("") is None and keys_.tenant_for(KEY_A + "x") is None
    assert hash_key(KEY_A) == hashlib.sha256(KEY_A.encode()).hexdigest()  # what `sha256sum` prints
    source = (ROOT / "api" / "auth.py").read_text()
    assert "hmac.compare_digest" in source


def test_new_key_cli_prints_a_key_and_its_entry():
    out = subprocess.run([sys.executable, "-m", "api.keygen", "team-c"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    key = out.split("): ", 1)[1].splitlines()[0].strip()
    entry = out.rsplit("entry: ", 1)[1].strip()
    assert entry == f"team-c:{hash_key(key)}" and len(key) > 40
    assert ApiKeys.parse(entry).tenant_for(key) == "team-c"
    with pytest.raises(ValueError):
        new_key("bad tenant:name")


@pytest.mark.parametrize("overrides, message", [
    ({"api_keys": ""}, "GPUQ_AUTH=off"),
    ({"api_keys": "team-a:notahash"}, "tenant:sha256hex"),
    ({"api_keys": "team a:" + "0" * 64}, "tenant:sha256hex"),
    ({"auth": "off"}, "choose one"),
    ({"auth": "maybe"}, "GPUQ_AUTH"),
])
def test_the_api_refuses_to_start_without_a_clear_auth_setting(own_redis, overrides, message):
    with pytest.raises(SettingsError, match=message):
        make_client(own_redis, **overrides)


def test_auth_off_must_be_said_and_serves_one_tenant(own_redis, redis):
    client = make_client(own_redis, api_keys="", auth="off")
    job = submit(client, {}).json
    assert redis.hget(keys.job(job["id"]), "tenant") == b"default"
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 200


# --- isolation ---------------------------------------------------------------------------------------


def test_another_tenants_job_answers_404_on_read_wait_and_cancel(client, redis):
    job_id = submit(client, A).json["id"]
    unknown = client.get("/v1/jobs/no-such-job", headers=B).json
    for method, path in (("get", f"/v1/jobs/{job_id}"), ("delete", f"/v1/jobs/{job_id}")):
        response = getattr(client, method)(path, headers=B)
        assert response.status_code == 404
        # Word for word an unknown id's answer, but for the id itself.
        assert response.json["error"]["message"].replace(job_id, "no-such-job") == unknown["error"]["message"]
    started = time.monotonic()
    assert client.get(f"/v1/jobs/{job_id}?wait=5", headers=B).status_code == 404
    assert time.monotonic() - started < 2  # refused before the wait, not after it
    assert redis.hget(keys.job(job_id), "status") == b"queued"  # B's cancel did nothing
    assert client.get(f"/v1/jobs/{job_id}", headers=A).json["status"] == "queued"
    assert client.delete(f"/v1/jobs/{job_id}", headers=A).json["status"] == "canceled"


def test_idempotency_keys_belong_to_their_tenant(client):
    first = submit(client, A, **{"Idempotency-Key": "k1"}).json["id"]
    again = submit(client, A, **{"Idempotency-Key": "k1"})
    assert again.json["id"] == first and again.headers["Idempotent-Replayed"] == "true"
    other = submit(client, B, **{"Idempotency-Key": "k1"})
    assert other.json["id"] != first and "Idempotent-Replayed" not in other.headers


def test_listing_shows_only_the_callers_jobs_newest_first_by_pages(client):
    mine = [submit(client, A).json["id"] for _ in range(3)]
    theirs = submit(client, B).json["id"]
    client.delete(f"/v1/jobs/{mine[0]}", headers=A)
    listed = client.get("/v1/jobs", headers=A).json
    assert [j["id"] for j in listed["jobs"]] == mine[::-1] and listed["next_cursor"] is None
    assert theirs not in json.dumps(listed)
    assert [j["id"] for j in client.get("/v1/jobs", headers=B).json["jobs"]] == [theirs]

    seen, cursor = [], None
    while True:
        page = client.get("/v1/jobs", headers=A, query_string={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200
        seen += [j["id"] for j in page.json["jobs"]]
        cursor = page.json["next_cursor"]
        if cursor is None:
            break
    assert seen == mine[::-1]

    queued = client.get("/v1/jobs?status=queued", headers=A).json["jobs"]
    assert [j["id"] for j in queued] == mine[:0:-1]
    canceled = client.get("/v1/jobs?status=canceled", headers=A).json["jobs"]
    assert [j["id"] for j in canceled] == [mine[0]]


def test_listing_drops_expired_records(client, redis):
    job_id = submit(client, A).json["id"]
    redis.delete(keys.job(job_id))
    assert client.get("/v1/jobs", headers=A).json["jobs"] == []
    assert redis.zcard(keys.tenant_jobs("team-a")) == 0


@pytest.mark.parametrize("query", ["status=done", "limit=0", "limit=101", "limit=x", "cursor=garbage",
                                   "cursor=nan_x"])
def test_listing_refuses_bad_parameters(client, query):
    response = client.get(f"/v1/jobs?{query}", headers=A)
    assert response.status_code == 400 and response.json["error"]["field"] in query


# --- limits ------------------------------------------------------------------------------------------


def test_a_tenant_at_its_queued_limit_gets_429_and_others_do_not(client, redis):
    ids = [submit(client, A).json["id"] for _ in range(3)]
    full = submit(client, A, expect=429)
    assert full.json["error"]["code"] == "tenant_queue_full" and int(full.headers["Retry-After"]) > 0
    assert redis.llen("gpuq.parked") == 3  # nothing written for the refused one
    submit(client, B)
    client.delete(f"/v1/jobs/{ids[0]}", headers=A)  # no longer queued: room again
    submit(client, A)
    submit(client, A, expect=429)


def test_rate_limit_per_tenant_with_retry_after(own_redis, redis):
    client = make_client(own_redis, rate_limit="3/m")
    for _ in range(3):
        assert client.get("/v1/jobs", headers=A).status_code == 200
    limited = client.get("/v1/jobs", headers=A)
    assert limited.status_code == 429 and limited.json["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert client.get("/v1/jobs", headers=B).status_code == 200  # a tenant's flood is its own
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("spec", ["20", "x/s", "0/s", "5/d"])
def test_a_malformed_rate_limit_stops_start_up(own_redis, spec):
    with pytest.raises(SettingsError, match="GPUQ_RATE_LIMIT"):
        make_client(own_redis, rate_limit=spec)
