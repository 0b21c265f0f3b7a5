"""A webhook goes where it was checked to go: pinned to the checked address, never redirected, never ambiguous.

Real listeners on loopback (127.0.0.1 and 127.0.0.2 are two addresses of
this machine), a real TLS listener with a certificate made here, a real
dispatcher against a Redis of its own.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import threading
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


class Dripping:
    """A receiver that starts its answer, sends one more header byte every ``every`` s for ``lasts`` s,
    then ends it."""

    def __init__(self, host: str = CHECKED, every: float = 0.1, lasts: float = 6.0):
        self.listener = socket.create_server((host, 0))
        self.url = f"http://{host}:{self.listener.getsockname()[1]}/hook"
        self.every, self.lasts = every, lasts
        self.stopped = threading.Event()
        threading.Thread(target=self._drip, daemon=True).start()

    def _drip(self) -> None:
        try:
            connection, _ = self.listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                ends = time.monotonic() + self.lasts
                while time.monotonic() < ends and not self.stopped.wait(self.every):
                    connection.sendall(b"a")
                connection.sendall(b"\r\nContent-Length: 0\r\n\r\n")
        except OSError:  # the sender shut the connection down, or the test closed the listener
            pass

    def __enter__(self) -> Dripping:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.listener.close()


class NotAccepting:
    """A listener whose accept queue is full, so that a connection to it is neither refused nor accepted."""

    def __init__(self, host: str, port: int):
        self.listener = socket.create_server((host, port), backlog=0)
        self.filler = socket.create_connection((host, port))  # takes the one place in the queue

    def __enter__(self) -> NotAccepting:
        return self

    def __exit__(self, *exc: object) -> None:
        self.filler.close()
        self.listener.close()


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


def test_a_receiver_that_drips_its_answer_is_cut_at_the_attempts_deadline():
    # Each read gets a byte well within the read timeout: only a deadline on the whole answer ends it.
    with Dripping() as dripping:
        began = time.monotonic()
        with pytest.raises(OutboundError, match="timed out: no answer within 1.5 s in all"):
            PinnedHttp(connect_timeout=0.5, read_timeout=1).post(check_url(dripping.url, ONLY_CHECKED), BODY, {})
        assert 1.5 <= time.monotonic() - began < 2.0


def test_an_address_that_does_not_accept_in_time_gives_way_to_the_next_one():
    with Receiver(host=CHECKED) as receiver, NotAccepting("127.0.0.3", receiver.port):
        target = check_url(f"http://hooks.gpuq.test:{receiver.port}/hook",
                           Allowlist(networks=[ipaddress.ip_network("127.0.0.0/8")]),
                           resolve=lambda host, port: ["127.0.0.3", CHECKED])
        began = time.monotonic()
        assert PinnedHttp(connect_timeout=0.3, read_timeout=5).post(target, BODY, {}).status == 200
        assert 0.3 <= time.monotonic() - began < 1.5 and len(receiver.arrivals) == 1
        # Within the attempt's deadline: the first address takes all of it, the next one is not tried.
        with pytest.raises(OutboundError, match=r"timed out: no answer within 0.2 s in all \(127.0.0.3: timed out\)"):
            PinnedHttp(connect_timeout=0.3, read_timeout=5, deadline=0.2).post(target, BODY, {})
        assert len(receiver.arrivals) == 1


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
    answer = submit_with_webhook(redis, url)
    assert answer.status_code == 422, answer.get_data(as_text=True)
    assert answer.json["error"]["field"] == "webhook" and answer.json["error"]["code"] == "unsafe_url"
    assert redis.llen(keys.WEBHOOK_OUTBOX) == 0


def submit_with_webhook(redis, url: str):
    """``POST /v1/jobs`` with ``url`` as its webhook, through an app of its own on ``redis``."""
    catalog.publish_analyzers(redis, [{"name": "parked", "media_types": [], "input_schema": {"type": "object"},
                                       "params_schema": {"type": "object"}, "max_input_bytes": 1024}])
    redis_url = "redis://127.0.0.1:{port}/0".format(**redis.connection_pool.connection_kwargs)
    app = create_app(Settings(redis_url=redis_url, auth="off", webhook_secret=SECRET, url_allowlist="127.0.0.1"))
    try:
        return app.test_client().post("/v1/jobs", json={"analyzer": "parked", "input": {}, "webhook": url})
    finally:
        app.extensions["gpuq"].redis.close()


def test_the_api_refuses_a_webhook_whose_host_does_not_resolve_with_a_code_saying_so(redis):
    host = "no-such-host.invalid"
    try:
        socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)
        pytest.skip(f"{host} resolves here")
    except socket.gaierror as error:
        temporary = error.errno == socket.EAI_AGAIN  # a resolver with no DNS server to ask says "try again"
    answer = submit_with_webhook(redis, f"http://{host}/hook")
    expected = (503, "unavailable") if temporary else (422, "unresolvable_host")
    assert (answer.status_code, answer.json["error"]["code"]) == expected, answer.get_data(as_text=True)
    assert answer.json["error"]["field"] == "webhook" and host in answer.json["error"]["message"]
    assert redis.llen(keys.WEBHOOK_OUTBOX) == 0


# -- the dispatcher -----------------------------------------------------------------------------


def dispatcher(redis, resolve=None, backend=None, http=None, **settings) -> WebhookDispatcher:
    store = JobStore(redis, result_ttl=600, tombstone_ttl=600, input_ttl=600)
    options = {"resolve": resolve} if resolve else {}
    return WebhookDispatcher(store, Settings(redis_url="unused", webhook_secret=SECRET, **settings),
                             backend=backend, http=http, name="test", **options)


def first_attempt(redis, url: str, resolve=None, **settings) -> tuple[dict, str, WebhookDispatcher]:
    """A job ended with ``url`` as its webhook, its event taken and sent once: that attempt's record,
    the job's id and the dispatcher."""
    job_id, _ = end_job(redis, url)
    sender = dispatcher(redis, resolve, **settings)
    sender.take_next(block=1)
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
        first.take_next(block=0.1)  # takes the due retry into memory, then "dies" before sending it
        assert redis.zcard(keys.WEBHOOK_RETRIES) == 0 and redis.llen(keys.webhook_inflight("test")) == 1
        again = dispatcher(redis, url_allowlist=CHECKED, webhook_backoff=0.05)
        assert again.recover() == 1 and redis.zcard(keys.WEBHOOK_RETRIES) == 1
        again.take_next(block=0.1)
        assert again.send_next(wait=1)
        tried = webhooks.read_deliveries(redis, job_id)
        assert [(a["attempt"], a["status_code"]) for a in tried] == [(1, 503), (2, 503)]
        assert len({a["delivery"] for a in tried}) == 1 and len(receiver.arrivals) == 2


def test_a_host_that_does_not_resolve_when_sent_is_retried_not_given_up(redis):
    # The real resolver: the name does not resolve now, which it might later (a DNS outage, a record being
    # added), so the attempt is recorded and retried like a connection error.
    attempt, job_id, _ = first_attempt(redis, "http://no-such-host.invalid/hook")
    assert "does not resolve" in attempt["error"] and not attempt["error"].startswith("refused")
    assert attempt["next_attempt_at"] and redis.zcard(keys.WEBHOOK_RETRIES) == 1


# -- nothing taken is lost ----------------------------------------------------------------------


class UndecodableResults:
    """A result backend whose stored results do not decode."""

    def get_key_for_task(self, job_id: str) -> str:
        return f"test-results:{job_id}"

    def decode_result(self, raw: bytes) -> dict:
        raise ValueError("corrupt result")


class FailingOnce:
    """Sends like ``PinnedHttp``, except that the first call raises what no sender expects."""

    def __init__(self):
        self.http = PinnedHttp(connect_timeout=3, read_timeout=5)
        self.calls = 0

    def post(self, target, body, headers):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in the sender")
        return self.http.post(target, body, headers)


def held_anywhere(redis) -> int:
    """Webhook work in Redis: the outbox, the retry schedule and the test dispatcher's inflight list."""
    return (redis.llen(keys.WEBHOOK_OUTBOX) + redis.zcard(keys.WEBHOOK_RETRIES)
            + redis.llen(keys.webhook_inflight("test")))


def test_an_event_whose_delivery_cannot_be_built_is_given_back_not_dropped(redis):
    with Receiver(host=CHECKED) as receiver:
        job_id, _ = end_job(redis, receiver.url)
        redis.set(UndecodableResults().get_key_for_task(job_id), b"garbage")
        broken = dispatcher(redis, backend=UndecodableResults(), url_allowlist=CHECKED)
        with pytest.raises(ValueError, match="corrupt result"):
            broken.take_next(block=0.1)
        assert held_anywhere(redis) == 1 and broken.lanes.held == 0
        assert broken.give_back_stranded() == 1
        assert redis.lrange(keys.WEBHOOK_OUTBOX, 0, -1) == [f"{job_id}|succeeded".encode()]
        fixed = dispatcher(redis, url_allowlist=CHECKED)  # the backend mended: it goes out
        fixed.take_next(block=0.1)
        assert fixed.send_next(wait=1) and [a.event()["job"]["id"] for a in receiver.arrivals] == [job_id]


def test_a_retry_that_does_not_parse_is_dropped_and_the_others_due_with_it_are_taken(redis):
    due = time.time() - 1
    redis.zadd(keys.WEBHOOK_RETRIES, {b"{not json": due - 2, b'{"attempt": 2}': due - 1, json.dumps({
        "delivery": "d1", "job_id": "j1", "event": "completed", "url": "http://127.0.0.1:9/hook", "body": "{}",
        "attempt": 2}): due})
    taker = dispatcher(redis)
    taker.take_next(block=0.1)
    assert taker.lanes.held == 1 and redis.zcard(keys.WEBHOOK_RETRIES) == 0
    assert [json.loads(e)["delivery"] for e in redis.lrange(keys.webhook_inflight("test"), 0, -1)] == ["d1"]
    assert taker.give_back_stranded() == 0  # the one held is not given back


def test_an_attempt_that_raises_is_given_back_and_goes_out_again_without_a_restart(redis):
    with Receiver(host=CHECKED) as receiver:
        http = FailingOnce()
        sender = dispatcher(redis, http=http, url_allowlist=CHECKED)
        sender.start()
        try:
            job_id, _ = end_job(redis, receiver.url)
            deadline = time.monotonic() + 10
            while not receiver.arrivals and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            sender.stop()
        assert http.calls == 2 and [a.event()["job"]["id"] for a in receiver.arrivals] == [job_id]
        assert [d["ok"] for d in webhooks.read_deliveries(redis, job_id)] == [True]
        assert redis.llen(keys.webhook_inflight("test")) == 0


def test_the_sweep_gives_back_what_is_in_the_inflight_list_and_not_in_memory(redis):
    for port in (9, 10, 11):
        end_job(redis, f"http://127.0.0.1:{port}/hook")
    taker = dispatcher(redis)
    taker.take_next(block=0.1)
    assert taker.lanes.held == 3
    redis.lpush(keys.webhook_inflight("test"), b"jstranded|succeeded")  # as an error between take and hand-on
    assert taker.give_back_stranded() == 1 and redis.lrange(keys.WEBHOOK_OUTBOX, 0, -1) == [b"jstranded|succeeded"]
    assert redis.llen(keys.webhook_inflight("test")) == 3 and taker.give_back_stranded() == 0
