"""The webhook dispatcher: a thread in each worker's main process that delivers webhook events.

Why a thread in the main process, and not a Celery task on the workers' queues:
a worker runs one job at a time (concurrency 1, one per GPU), so a ``gpuq.webhook``
task would wait behind hour-long GPU jobs and ``started`` would arrive after
``completed``. The main process never runs a model, so its thread is free to do
I/O; like the janitor it outlives pool children. Every worker runs one, and
they share the outbox (BLMOVE hands each event to one, into a list of the
events it holds, so a worker killed mid-delivery hands them back when it
starts again: at least once) and the retry schedule (a sorted set by due
time; ZREM decides which dispatcher takes a due retry).

A delivery's failure is recorded and retried, never raised: a webhook that
fails never fails its job (the job's record was written before the event).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import requests

from tasks import keys, webhooks
from tasks.jobs import SUCCEEDED, JobStore
from tasks.settings import Settings
from tasks.url_safety import UnsafeUrl, check_url

__all__ = ["WebhookDispatcher"]

log = logging.getLogger("gpuq.webhooks")

_TIMEOUT = 5.0
_RETRY_AFTER_CAP = 300.0


class WebhookDispatcher:
    def __init__(self, store: JobStore, settings: Settings, backend: Any = None,
                 session: requests.Session | None = None, name: str = "dispatcher"):
        self.store = store
        self.redis = store.redis
        self.settings = settings
        self.backend = backend
        self.session = session or requests.Session()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inflight = keys.webhook_inflight(name)

    def recover(self) -> int:
        """Give back to the outbox what this dispatcher's previous life took and never handled."""
        moved = 0
        while self.redis.lmove(self._inflight, keys.WEBHOOK_OUTBOX, "RIGHT", "RIGHT") is not None:
            moved += 1
        if moved:
            log.info("webhook dispatcher: %d events taken before a restart go out again", moved)
        return moved

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="gpuq-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as error:  # Redis away for a moment: keep going once it is back
                log.warning("webhook dispatcher: %s: %s", type(error).__name__, error)
                self._stop.wait(1.0)

    def step(self, block: float = 0.5) -> None:
        """Send the retries that are due, then wait up to ``block`` seconds for one new event."""
        for raw in self.redis.zrangebyscore(keys.WEBHOOK_RETRIES, "-inf", time.time(), start=0, num=20):
            if self.redis.zrem(keys.WEBHOOK_RETRIES, raw):  # this dispatcher took it
                self._attempt(json.loads(raw))
        raw = self.redis.blmove(keys.WEBHOOK_OUTBOX, self._inflight, block, "RIGHT", "LEFT")
        if raw is None:
            return
        try:
            job_id, _, status = raw.decode().partition("|")
            delivery = self._new_delivery(job_id, status)
            if delivery is not None:
                self._attempt(delivery)  # a failure is scheduled for a retry, not raised
        finally:
            self.redis.lrem(self._inflight, 1, raw)

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

    def _attempt(self, delivery: dict[str, Any]) -> None:
        body = delivery["body"].encode()
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", "User-Agent": "gpuq-webhooks/1",
                   webhooks.SIGNATURE_HEADER: webhooks.sign(self.settings.webhook_secret, timestamp, body),
                   webhooks.EVENT_HEADER: delivery["event"], webhooks.DELIVERY_HEADER: delivery["delivery"]}
        began = time.perf_counter()
        status_code, error, retry_after = None, None, 0.0
        unsafe = False
        try:
            # Checked again now, not only at submit: the name may resolve elsewhere by now.
            check_url(delivery["url"], self.settings.outbound_allowlist())
            response = self.session.post(delivery["url"], data=body, headers=headers, timeout=_TIMEOUT,
                                         allow_redirects=False)
            status_code = response.status_code
            retry_after = _seconds(response.headers.get("Retry-After"))
        except UnsafeUrl as exc:
            error, unsafe = f"refused: {exc}"[:300], True
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        ok = status_code is not None and 200 <= status_code < 300
        retryable = not ok and not unsafe and (status_code is None or status_code >= 500 or status_code == 429)
        attempt = delivery["attempt"]
        next_at = None
        if retryable and attempt < self.settings.webhook_max_attempts:
            delay = max(self.settings.webhook_backoff * 2 ** (attempt - 1), min(retry_after, _RETRY_AFTER_CAP))
            next_at = time.time() + delay
            self.redis.zadd(keys.WEBHOOK_RETRIES, {json.dumps({**delivery, "attempt": attempt + 1}): next_at})
        webhooks.record_attempt(self.redis, delivery["job_id"], {
            "delivery": delivery["delivery"], "event": delivery["event"], "url": delivery["url"],
            "attempt": attempt, "at": _iso(time.time()), "status_code": status_code, "ok": ok, "error": error,
            "duration_ms": round((time.perf_counter() - began) * 1000, 1), "next_attempt_at": _iso(next_at),
        }, ttl=self.store.result_ttl + self.store.tombstone_ttl)
        if not ok:
            log.info("webhook %s of job %s, attempt %d: %s%s", delivery["event"], delivery["job_id"], attempt,
                     error or f"HTTP {status_code}", "; will retry" if next_at else "; giving up")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0
