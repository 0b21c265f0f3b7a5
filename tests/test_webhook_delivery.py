"""A webhook goes where it was checked to go: pinned to the checked address, never redirected, never ambiguous.

Real listeners on loopback (127.0.0.1 and 127.0.0.2 are two addresses of
this machine), a real TLS listener with a certificate made here, a real
dispatcher against a Redis of its own.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import ssl
import subprocess
import time

import pytest
import redis as redis_lib

from api import create_app
from bench.webhook_isolation import SECRET, Receiver, end_job
from gpu_worker.webhooks import WebhookDispatcher
from gpuq.redis_server import RedisServer
from tasks import catalog, keys, webhooks
from tasks.jobs import JobStore
from tasks.outbound_http import OutboundError, PinnedHttp
from tasks.settings import Settings
from tasks.url_safety import Allowlist, check_url

CHECKED = "127.0.0.2"  # the address the check saw; 127.0.0.1 is where a second lookup would lead
ONLY_CHECKED = Allowlist(networks=[ipaddress.ip_network(f"{CHECKED}/32")])
BODY = json.dumps({"event": "completed", "job": {"id": "j1"}}).encode()


def answers(*addresses: str):
    """A resolver that gives each answer in turn, then the last one for good: a name being rebound."""
    given = list(addresses)

    def resolve(host: str, port: int) -> list[str]:
        return [given.pop(0) if len(given) > 1 else given[0]]
    return resolve


def receivers_on_one_port() -> tuple[Receiver, Receiver]:
    """A receiver on the checked address and one on 127.0.0.1 at the same port (where localhost leads)."""
    for _ in range(20):
        checked = Receiver(host=CHECKED)
        try:
            return checked, Receiver(host="127.0.0.1", port=checked.port)
        except OSError:  # that port is taken on 127.0.0.1: try another
            checked.close()
    raise RuntimeError("no port free on both addresses")


# -- the sender ---------------------------------------------------------------------------------


def test_the_request_goes_to_the_checked_address_not_to_a_new_lookup_of_the_name():
    checked, inward = receivers_on_one_port()
    with checked, inward:
        # The check is told 127.0.0.2; the machine's own resolver says 127.0.0.1 for localhost, so a
        # sender that looked the name up again (as requests does) would reach the other receiver.
        target = check_url(f"http://localhost:{checked.port}/hook?x=1", ONLY_CHECKED, resolve=answers(CHECKED))
        reply = PinnedHttp(connect_timeout=3, read_timeout=5).post(target, BODY, {"Content-Type": "application/json"})
        assert reply.status == 200
        assert [(a.host, a.path) for a in checked.arrivals] == [(f"localhost:{checked.port}", "/hook?x=1")]
        assert inward.arrivals == []


def test_a_redirect_is_an_answer_not_followed():
    with Receiver() as inward, Receiver(host=CHECKED, status=307, headers={"Location": inward.url}) as redirecting:
        target = check_url(redirecting.url, ONLY_CHECKED)
        reply = PinnedHttp(connect_timeout=3, read_timeout=5).post(target, BODY, {})
        assert reply.status == 307 and reply.headers["location"] == inward.url
        assert len(redirecting.arrivals) == 1 and inward.arrivals == []


def test_a_silent_receiver_times_out_at_the_read_timeout():
    with Receiver(host=CHECKED, delay=10) as silent:
        began = time.monotonic()
        with pytest.raises(OutboundError, match="timed out"):
            PinnedHttp(connect_timeout=3, read_timeout=0.5).post(check_url(silent.url, ONLY_CHECKED), BODY, {})
        assert time.monotonic() - began < 3


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for hooks.gpuq.test (and only that name), made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=hooks.gpuq.test",
                    "-addext", "subjectAltName=DNS:hooks.gpuq.test"], check=True, capture_output=True)
    return cert, key


def test_https_to_the_checked_address_names_the_host_in_sni_host_and_certificate_check(certificate):
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names_asked: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names_asked.append(name)
    http = PinnedHttp(connect_timeout=3, read_timeout=5, ca_certs=str(cert))
    allow = Allowlist(hosts=["hooks.gpuq.test", "other.gpuq.test"])
    with Receiver(host=CHECKED, ssl_context=context) as listener:
        # The certificate names hooks.gpuq.test only: had the sender checked it against the address it
        # connects to (127.0.0.2), verification would fail.
        target = check_url(f"https://hooks.gpuq.test:{listener.port}/hook", allow, resolve=answers(CHECKED))
        assert http.post(target, BODY, {}).status == 200
        assert names_asked == ["hooks.gpuq.test"]
        assert [a.host for a in listener.arrivals] == [f"hooks.gpuq.test:{listener.port}"]
        # Another name at the same address is refused by the certificate check, before anything is sent.
        other = check_url(f"https://other.gpuq.test:{listener.port}/hook", allow, resolve=answers(CHECKED))
        with pytest.raises(OutboundError, match="(?i)certificate|hostname"):
            http.post(other, BODY, {})
        assert names_asked[-1] == "other.gpuq.test" and len(listener.arrivals) == 1


# -- the API ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory, celery_app):  # celery_app: celeryconfig needs a Redis URL at import
    """A Redis of this module's own: the API test publishes an analyzer no other test should see."""
    server = RedisServer(tmp_path_factory.mktemp("webhook-redis"), appendonly=False).start()
    client = redis_lib.Redis.from_url(server.url)
    yield client
    client.close()
    server.stop()


@pytest.fixture
def redis(module_redis):
    module_redis.flushall()
    return module_redis


@pytest.mark.parametrize("url", [
    "http://127.0.0.1\\.x.attacker.example/", "http://127.0.0.1:9\\@hooks.example.com/", "http://h\x01.example/",
    "http://127.0.0.1/\x00", "http://127.0.0.1/a b", "http://user:pw@127.0.0.1/", "http://x@127.0.0.1/",
])
def test_the_api_refuses_an_ambiguous_webhook_with_a_422_naming_it(redis, url):
    catalog.publish_analyzers(redis, [{"name": "parked", "media_types": [], "input_schema": {"type": "object"},
                                       "params_schema": {"type": "object"}, "max_input_bytes": 1024}])
    redis_url = "redis://127.0.0.1:{port}/0".format(**redis.connection_pool.connection_kwargs)
    app = create_app(Settings(redis_url=redis_url, auth="off", webhook_secret=SECRET, url_allowlist="127.0.0.1"))
    try:
        answer = app.test_client().post("/v1/jobs", json={"analyzer": "parked", "input": {}, "webhook": url})
    finally:
        app.extensions["gpuq"].redis.close()
    assert answer.status_code == 422, answer.get_data(as_text=True)
    assert answer.json["error"]["field"] == "webhook" and answer.json["error"]["code"] == "unsafe_url"
    assert redis.llen(keys.WEBHOOK_OUTBOX) == 0


# -- the dispatcher -----------------------------------------------------------------------------


def dispatcher(redis, resolve=None, **settings) -> WebhookDispatcher:
    store = JobStore(redis, result_ttl=600, tombstone_ttl=600, input_ttl=600)
    options = {"resolve": resolve} if resolve else {}
    return WebhookDispatcher(store, Settings(redis_url="unused", webhook_secret=SECRET, **settings),
                             name="test", **options)


def first_attempt(redis, url: str, resolve=None, **settings) -> tuple[dict, str, WebhookDispatcher]:
    """A job ended with ``url`` as its webhook, its event taken and sent once: that attempt's record,
    the job's id and the dispatcher."""
    job_id, _ = end_job(redis, url)
    sender = dispatcher(redis, resolve, **settings)
    sender.step(block=1)
    assert sender.send_next(wait=1)
    [attempt] = webhooks.read_deliveries(redis, job_id)
    return attempt, job_id, sender


def test_the_dispatcher_checks_again_and_refuses_a_name_rebound_inward(redis):
    with Receiver(host="127.0.0.1") as inward:
        url = f"http://rebind.gpuq.test:{inward.port}/hook"
        resolve = answers("93.184.216.34", "127.0.0.1")  # public when submitted, loopback by the time it is sent
        check_url(url, resolve=resolve)  # the submit-time check passes
        attempt, _, _ = first_attempt(redis, url, resolve)
        assert attempt["error"].startswith("refused:") and "127.0.0.1" in attempt["error"]
        assert attempt["next_attempt_at"] is None and redis.zcard(keys.WEBHOOK_RETRIES) == 0
        assert inward.arrivals == []


def test_the_dispatcher_refuses_a_backslash_url_stored_before_the_api_refused_them(redis):
    with Receiver(host="127.0.0.1") as inward:
        # urllib3 alone would read host 127.0.0.1 and port inward.port: refused before any parser reads it.
        attempt, _, _ = first_attempt(redis, f"http://127.0.0.1:{inward.port}\\.x.attacker.example/hook",
                                   answers("93.184.216.34"), url_allowlist="127.0.0.1")
        assert "backslash" in attempt["error"] and attempt["next_attempt_at"] is None
        assert inward.arrivals == [] and redis.llen(keys.webhook_inflight("test")) == 0


def test_timeouts_come_from_settings_and_a_timed_out_attempt_is_retried(redis):
    with Receiver(host=CHECKED, delay=10) as silent:
        attempt, _, _ = first_attempt(redis, silent.url, url_allowlist=CHECKED, webhook_read_timeout=0.5)
        assert "timed out" in attempt["error"] and attempt["duration_ms"] < 3000
        assert attempt["next_attempt_at"] and redis.zcard(keys.WEBHOOK_RETRIES) == 1


def test_a_retry_taken_by_a_dispatcher_that_died_is_given_back(redis):
    with Receiver(host=CHECKED, status=503) as receiver:
        attempt, job_id, first = first_attempt(redis, receiver.url, url_allowlist=CHECKED, webhook_backoff=0.05)
        assert attempt["status_code"] == 503 and attempt["next_attempt_at"]
        time.sleep(0.1)
        first.step(block=0.1)  # takes the due retry into memory, then "dies" before sending it
        assert redis.zcard(keys.WEBHOOK_RETRIES) == 0 and redis.llen(keys.webhook_inflight("test")) == 1
        again = dispatcher(redis, url_allowlist=CHECKED, webhook_backoff=0.05)
        assert again.recover() == 1 and redis.zcard(keys.WEBHOOK_RETRIES) == 1
        again.step(block=0.1)
        assert again.send_next(wait=1)
        tried = webhooks.read_deliveries(redis, job_id)
        assert [(a["attempt"], a["status_code"]) for a in tried] == [(1, 503), (2, 503)]
        assert len({a["delivery"] for a in tried}) == 1 and len(receiver.arrivals) == 2
