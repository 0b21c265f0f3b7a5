"""Webhook events: what the outbox holds, how a delivery is signed and recorded.

The job-record transition script (tasks/jobs.py) pushes ``"<job id>|<status>"``
onto ``keys.WEBHOOK_OUTBOX`` for every change of a job that has a webhook, in
the same atomic step as the change; the workers' dispatcher
(gpu_worker/webhooks.py) turns those into signed HTTP deliveries. Both sides
and the API (``/deliveries``) share the names and formats here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from redis import Redis
from redis.client import Pipeline

from tasks import keys
from tasks.jobs import RUNNING, TERMINAL

__all__ = ["SIGNATURE_HEADER", "event_for", "read_deliveries", "record_attempt", "sign", "verify"]

#: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``, as Stripe does it.
SIGNATURE_HEADER = "Gpuq-Signature"
EVENT_HEADER = "Gpuq-Event"
DELIVERY_HEADER = "Gpuq-Delivery"

STARTED, PROGRESS, COMPLETED = "started", "progress", "completed"


def event_for(status: str) -> str | None:
    """The webhook event an outbox entry's status stands for; None: nothing to send (queued, canceling)."""
    if status == "":
        return PROGRESS
    if status == RUNNING:
        return STARTED
    if status in TERMINAL:
        return COMPLETED
    return None


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, now: float, tolerance: float = 300) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` within ``tolerance`` seconds of ``now``.

    What a receiver does; the timestamp check keeps an old delivery from being replayed.
    """
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def record_attempt(pipe: Pipeline, job_id: str, attempt: dict[str, Any], ttl: int) -> None:
    """Queue the record of one attempt on ``pipe``, which the caller executes with the rest of the attempt's
    outcome (its retry scheduled, its hold released), so that they happen together."""
    key = keys.webhook_deliveries(job_id)
    pipe.rpush(key, json.dumps(attempt, separators=(",", ":")))
    pipe.ltrim(key, -500, -1)  # a chatty job keeps its latest attempts only
    pipe.expire(key, ttl)


def read_deliveries(redis: Redis, job_id: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in redis.lrange(keys.webhook_deliveries(job_id), 0, -1)]
