"""The webhook dispatcher: threads in each worker's main process that deliver webhook events.

Why threads in the main process, and not a Celery task on the workers' queues:
a worker runs one job at a time (concurrency 1, one per GPU), so a ``gpuq.webhook``
task would wait behind hour-long GPU jobs and ``started`` would arrive after
``completed``. The main process never runs a model, so its threads are free to
do I/O; like the janitor they outlive pool children.

One taker thread moves work from Redis into memory: events from the outbox
(moved into this dispatcher's inflight list), then retries that are due
(moved from the retry schedule, a sorted set by due time, into the same list
by one script). Every worker runs a dispatcher and they share both, each
entry going to one.

The taker hands each delivery to a lane per destination (``scheme://host:port``,
gpu_worker/webhook_lanes.py), and a pool of ``GPUQ_WEBHOOK_SENDERS`` (16)
threads sends them, at most ``GPUQ_WEBHOOK_PER_DESTINATION`` (2) at once to
one destination. A receiver that never answers holds its share of senders
for one attempt's deadline at most (tasks/outbound_http.py) and delays only
its own events. Retries give way: destinations with a first attempt waiting
are served before those with only retries, retries have at most half the
senders and half of ``GPUQ_WEBHOOK_MAX_HELD`` (1000) between them, and new
events are taken before due retries, so that dead receivers' retries cannot
hold up anyone's new events. Memory is bounded twice: a lane keeps at most
``_LANE_BACKLOG`` deliveries waiting (more go back to the retry schedule for
``_DEFER`` seconds, without counting as an attempt), and while
``GPUQ_WEBHOOK_MAX_HELD`` deliveries are held in all the taker takes nothing.

Delivery is at least once. What a dispatcher takes stays in its inflight
list until the outcome of its attempt (its record, and its retry if one is
due) is written, in one transaction with its removal from the list; so
nothing taken is lost:

- a worker killed meanwhile gives its list back when it starts again under
  the same name (``recover``);
- an error while a delivery is built, handed on or sent (Redis failing for a
  moment, a result that does not decode) leaves its entry in the list, and
  every ``_SWEEP_EVERY`` seconds the taker gives back what the list holds and
  memory does not: an event to the back of the outbox, a retry to the
  schedule, due at once.

An event is dropped only when it has nothing to send (its job's record or
webhook is gone, a ``progress`` event is stale or throttled, an entry does
not parse), and a delivery is given up after ``GPUQ_WEBHOOK_MAX_ATTEMPTS``
(6) attempts, or at the first answer that is not retried (a ``4xx`` other
than ``429``, a redirect) or URL the check refuses. A host that does not
resolve is retried like a timeout. The price is duplicates: an attempt whose
outcome was not written goes again (a retry with the same delivery id, an
event rebuilt with a new one).

Each attempt checks the URL again and connects only to an address that check
returned (tasks/outbound_http.py), so a DNS answer changed since the job was
submitted cannot point it inward. A delivery's failure is recorded and
retried, never raised: a webhook that fails never fails its job (the job's
record was written before the event).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from gpu_worker.webhook_lanes import DestinationLanes
from tasks import keys, webhooks
from tasks.jobs import SUCCEEDED, JobStore
from tasks.outbound_http import OutboundError, PinnedHttp
from tasks.settings import Settings
from tasks.url_safety import Resolver, UnresolvableHost, UnsafeUrl, check_url, parse_web_url, resolve_host

__all__ = ["WebhookDispatcher"]

log = logging.getLogger("gpuq.webhooks")

_RETRY_AFTER_CAP = 300.0
#: Deliveries one destination may have waiting in memory; more are deferred to the retry schedule.
_LANE_BACKLOG = 50
#: Seconds a delivery deferred for a full lane waits in the retry schedule.
_DEFER = 10.0
#: Events, and due retries, taken from Redis by one turn of the taker at most.
_TAKE_PER_TURN = 100
#: Seconds between two looks for entries left in the inflight list by an error.
_SWEEP_EVERY = 5.0
#: What a delivery (in the retry schedule and in memory) is made of.
_DELIVERY_FIELDS = ("delivery", "job_id", "event", "url", "body", "attempt")

# Due retries, moved from the schedule to the dispatcher's inflight list in one step, so that a
# dispatcher killed after taking them gives them back like the events it took.
_TAKE_DUE_RETRIES = """
local due = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, entry in ipairs(due) do
  redis.call('zrem', KEYS[1], entry)
  redis.call('lpush', KEYS[2], entry)
end
return due
"""

# The entries given (ARGV[2]...) leave the inflight list and go back where they came from: outbox events
# ("<job>|<status>") to the back of the outbox, retries (JSON deliveries) to the schedule, due now. An entry
# no longer in the list (its attempt was recorded meanwhile) is not given back.
_GIVE_BACK = """
local moved = 0
for i = 2, #ARGV do
  local entry = ARGV[i]
  if redis.call('lrem', KEYS[1], 1, entry) == 1 then
    if string.sub(entry, 1, 1) == '{' then
      redis.call('zadd', KEYS[3], ARGV[1], entry)
    else
      redis.call('lpush', KEYS[2], entry)
    end
    moved = moved + 1
  end
end
return moved
"""


@dataclass(frozen=True)
class _Taken:
    """A delivery and the entry that holds it in the inflight list (removed once its attempt is recorded)."""

    delivery: dict[str, Any]
    entry: bytes


class WebhookDispatcher:
    def __init__(self, store: JobStore, settings: Settings, backend: Any = None,
                 http: PinnedHttp | None = None, resolve: Resolver = resolve_host, name: str = "dispatcher"):
        self.store = store
        self.redis = store.redis
        self.settings = settings
        self.backend = backend
        self.resolve = resolve
        self.http = http or PinnedHttp(settings.webhook_connect_timeout, settings.webhook_read_timeout)
        self.lanes: DestinationLanes[_Taken] = DestinationLanes(
            settings.webhook_per_destination, _LANE_BACKLOG, retry_senders=max(1, settings.webhook_senders // 2))
        #: Retries held at once at most: the other half of ``webhook_max_held`` stays for new events.
        self.most_retries_held = max(1, settings.webhook_max_held // 2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._inflight = keys.webhook_inflight(name)
        self._next_sweep = time.monotonic() + _SWEEP_EVERY
        self._move_due_retries = self.redis.register_script(_TAKE_DUE_RETRIES)
        self._give_back = self.redis.register_script(_GIVE_BACK)

    def recover(self) -> int:
        """Give back what this dispatcher's previous life took and never handled."""
        moved = self.give_back_stranded()
        if moved:
            log.info("webhook dispatcher: %d deliveries taken before a restart go out again", moved)
        return moved

    def give_back_stranded(self) -> int:
        """Give back what the inflight list holds and memory does not (left by an error); how many.

        The taker's thread calls it, so that no entry is between the list and memory meanwhile.
        """
        # Memory first, then the list: senders only ever remove, from the list first, so an entry seen in
        # the list and not in memory cannot be one a sender is still working on.
        held = Counter(taken.entry for taken in self.lanes.items())
        stranded = []
        for entry in self.redis.lrange(self._inflight, 0, -1):
            if held[entry]:
                held[entry] -= 1
            else:
                stranded.append(entry)
        if not stranded:
            return 0
        return self._give_back(keys=[self._inflight, keys.WEBHOOK_OUTBOX, keys.WEBHOOK_RETRIES],
                               args=[time.time(), *stranded])

    def start(self) -> None:
        self.recover()
        self._threads = [threading.Thread(target=self._keep_going, args=(self.take_next,),
                                          name="gpuq-webhooks-take", daemon=True)]
        self._threads += [threading.Thread(target=self._keep_going, args=(self.send_next,),
                                           name=f"gpuq-webhooks-send-{i}", daemon=True)
                          for i in range(self.settings.webhook_senders)]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking and sending; what is held in memory stays in the inflight list for ``recover``."""
        self._stop.set()
        self.lanes.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _keep_going(self, turn: Callable[[], object]) -> None:
        while not self._stop.is_set():
            try:
                turn()
            except Exception as error:  # Redis away for a moment: keep going once it is back
                log.warning("webhook dispatcher: %s: %s", type(error).__name__, error)
                self._next_sweep = 0.0  # what the error left in the inflight list goes back at the next turn
                self._stop.wait(1.0)

    # -- taking: Redis to the lanes ----------------------------------------------------------

    def take_next(self, block: float = 0.5) -> None:
        """One turn of the taker: new events, then due retries; waits up to ``block`` s when there are none."""
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + _SWEEP_EVERY
            self.give_back_stranded()
        if not self.lanes.wait_for_room(self.settings.webhook_max_held, timeout=block):
            return
        taken = self._take_events()
        taken += self._take_due_retries()
        if not taken:  # nothing waiting: wait for a new event rather than turn again at once
            entry = self.redis.blmove(keys.WEBHOOK_OUTBOX, self._inflight, block, "RIGHT", "LEFT")
            if entry is not None:
                self._accept_event(entry)

    def _take_events(self) -> int:
        taken = 0
        while taken < _TAKE_PER_TURN and self.lanes.held < self.settings.webhook_max_held:
            entry = self.redis.lmove(keys.WEBHOOK_OUTBOX, self._inflight, "RIGHT", "LEFT")
            if entry is None:
                break
            self._accept_event(entry)
            taken += 1
        return taken

    def _take_due_retries(self) -> int:
        room = min(_TAKE_PER_TURN, self.most_retries_held - self.lanes.held_retries,
                   self.settings.webhook_max_held - self.lanes.held)
        if room <= 0:
            return 0
        due = self._move_due_retries(keys=[keys.WEBHOOK_RETRIES, self._inflight], args=[time.time(), room])
        for entry in due:
            delivery = _parse_retry(entry)
            if delivery is None:
                self._drop(entry, "a retry that is not a delivery")
                continue
            self._hand_to_lane(_Taken(delivery, entry))
        return len(due)

    def _accept_event(self, entry: bytes) -> None:
        """Hand an outbox event on; on an error it stays in the inflight list, for the sweep to give back."""
        try:
            job_id, _, status = entry.decode().partition("|")
        except UnicodeDecodeError:
            self._drop(entry, "an outbox event that is not text")
            return
        delivery = self._new_delivery(job_id, status)
        if delivery is None:  # nothing to send
            self.redis.lrem(self._inflight, 1, entry)
            return
        self._hand_to_lane(_Taken(delivery, entry))

    def _drop(self, entry: bytes, what: str) -> None:
        log.error("webhook dispatcher: dropping %s: %r", what, entry[:200])
        self.redis.lrem(self._inflight, 1, entry)

    def _hand_to_lane(self, taken: _Taken) -> None:
        delivery = taken.delivery
        if self.lanes.offer(_destination(delivery["url"]), taken, retry=delivery["attempt"] > 1):
            return
        # Its destination has a backlog already: wait in Redis rather than in memory, not as an attempt.
        pipe = self.redis.pipeline()
        pipe.zadd(keys.WEBHOOK_RETRIES, {json.dumps(delivery): time.time() + _DEFER})
        pipe.lrem(self._inflight, 1, taken.entry)
        pipe.execute()

    def _new_delivery(self, job_id: str, status: str) -> dict[str, Any] | None:
        event = webhooks.event_for(status)
        record = self.store.get(job_id)
        if event is None or record is None or not record.webhook:
            return None
        if event == webhooks.PROGRESS:
            if record.is_terminal:
                return None  # stale: ``completed`` says more
            # Throttled fleet-wide: one progress event per job per interval, whichever dispatcher sends it.
            interval_ms = max(1, int(self.settings.webhook_progress_interval * 1000))
            if not self.redis.set(f"{keys.PREFIX}webhooks:progress:{job_id}", 1, px=interval_ms, nx=True):
                return None
        job = {"id": record.id, "analyzer": record.analyzer, "status": status or record.status,
               "created_at": _iso(record.created_at), "started_at": _iso(record.started_at),
               "finished_at": _iso(record.finished_at), "progress": record.progress,
               "timings": record.timings, "error": record.error, "result": None}
        if event == webhooks.COMPLETED and status == SUCCEEDED:
            job["result"] = self._result(job_id)
        delivery_id = str(uuid.uuid4())
        body = {"id": delivery_id, "event": event, "created_at": _iso(time.time()), "job": job}
        return {"delivery": delivery_id, "job_id": job_id, "event": event, "url": record.webhook,
                "body": json.dumps(body, separators=(",", ":")), "attempt": 1}

    def _result(self, job_id: str) -> Any:
        if self.backend is None:
            return None
        raw = self.redis.get(self.backend.get_key_for_task(job_id))
        meta = self.backend.decode_result(raw) if raw is not None else {}
        return meta.get("result")

    # -- sending: the lanes to the receivers -------------------------------------------------

    def send_next(self, wait: float = 0.5) -> bool:
        """Send one delivery from the lanes, waiting up to ``wait`` s for one; False when there was none.

        Should the attempt raise, its entry stays in the inflight list and the taker's sweep gives it back.
        """
        handout = self.lanes.take(timeout=wait)
        if handout is None:
            return False
        try:
            self._attempt(handout.item)
        finally:
            self.lanes.done(handout)
        return True

    def _attempt(self, taken: _Taken) -> None:
        delivery = taken.delivery
        body = delivery["body"].encode()
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", "User-Agent": "gpuq-webhooks/1",
                   webhooks.SIGNATURE_HEADER: webhooks.sign(self.settings.webhook_secret, timestamp, body),
                   webhooks.EVENT_HEADER: delivery["event"], webhooks.DELIVERY_HEADER: delivery["delivery"]}
        began = time.perf_counter()
        status_code, error, retry_after = None, None, 0.0
        unsafe = False
        try:
            # Checked again now, not only at submit: the name may resolve elsewhere by now. The request
            # goes to an address this check returned, not to the name.
            target = check_url(delivery["url"], self.settings.outbound_allowlist(), self.resolve)
            reply = self.http.post(target, body, headers)
            status_code = reply.status
            retry_after = _seconds(reply.headers.get("Retry-After"))
        except UnresolvableHost as exc:  # DNS may answer later: retried like a timeout
            error = str(exc)[:300]
        except UnsafeUrl as exc:
            error, unsafe = f"refused: {exc}"[:300], True
        except OutboundError as exc:
            error = str(exc)[:300]
        ok = status_code is not None and 200 <= status_code < 300
        retryable = not ok and not unsafe and (status_code is None or status_code >= 500 or status_code == 429)
        attempt = delivery["attempt"]
        next_at = None
        pipe = self.redis.pipeline()
        if retryable and attempt < self.settings.webhook_max_attempts:
            delay = max(self.settings.webhook_backoff * 2 ** (attempt - 1), min(retry_after, _RETRY_AFTER_CAP))
            next_at = time.time() + delay
            pipe.zadd(keys.WEBHOOK_RETRIES, {json.dumps({**delivery, "attempt": attempt + 1}): next_at})
        webhooks.record_attempt(pipe, delivery["job_id"], {
            "delivery": delivery["delivery"], "event": delivery["event"], "url": delivery["url"],
            "attempt": attempt, "at": _iso(time.time()), "status_code": status_code, "ok": ok, "error": error,
            "duration_ms": round((time.perf_counter() - began) * 1000, 1), "next_attempt_at": _iso(next_at),
        }, ttl=self.store.result_ttl + self.store.tombstone_ttl)
        pipe.lrem(self._inflight, 1, taken.entry)
        pipe.execute()
        if not ok:
            log.info("webhook %s of job %s, attempt %d: %s%s", delivery["event"], delivery["job_id"], attempt,
                     error or f"HTTP {status_code}", "; will retry" if next_at else "; giving up")


def _parse_retry(entry: bytes) -> dict[str, Any] | None:
    """A delivery from the retry schedule; None when the entry is not one (it could never be sent)."""
    try:
        delivery = json.loads(entry)
    except ValueError:
        return None
    if not isinstance(delivery, dict) or not all(name in delivery for name in _DELIVERY_FIELDS):
        return None
    return delivery


def _destination(url: str) -> str:
    """The lane of a URL; one that does not parse gets a lane of its own, where its attempt is refused."""
    try:
        return parse_web_url(url).origin
    except UnsafeUrl:
        return "unparseable"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0
