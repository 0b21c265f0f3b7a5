"""Server-sent events of one job, and the record of its webhook deliveries.

``GET /v1/jobs/{id}/events`` streams ``status`` and ``progress`` events (each
carrying the job object) until the job ends, fed by the job's pub/sub channel
that every record change is announced on (tasks/jobs.py). A stream holds one
gunicorn thread for its whole life, so each API process serves at most
``GPUQ_MAX_STREAMS`` at once, and one tenant ``GPUQ_TENANT_MAX_STREAMS`` of them
(api/wait_slots.py: the rest of its threads stay free for submits and reads;
more streams get ``503`` + ``Retry-After``), and a stream closes
after ``GPUQ_STREAM_MAX_SECONDS`` with a ``reconnect`` event. See the README.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from flask import Blueprint, Response

from api.auth import current_tenant
from api.jobs import visible_job
from api.render import job_object
from api.services import services
from api.standing import standing
from api.wait_slots import take_wait_slot
from tasks import keys, webhooks

__all__ = ["events"]

events = Blueprint("events", __name__)

#: Seconds between comment lines on a quiet stream: they keep proxies from closing it and
#: find a client that went away (a write to a closed socket ends the stream and frees its thread).
_KEEPALIVE = 10.0


@events.get("/v1/jobs/<job_id>/events")
def job_events(job_id: str):
    svc = services()
    visible_job(svc.jobs.get(job_id), job_id)
    give_back = take_wait_slot("streams", svc.settings, current_tenant(),
                               "long-poll GET /v1/jobs/{id}?wait=30 instead")
    response = Response(_stream(svc, job_id), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    # Given back when the server closes the response, even if the stream never started.
    response.call_on_close(give_back)
    return response


@events.get("/v1/jobs/<job_id>/deliveries")
def job_deliveries(job_id: str):
    svc = services()
    record = visible_job(svc.jobs.get(job_id), job_id)
    return {"job_id": job_id, "webhook": record.webhook, "deliveries": webhooks.read_deliveries(svc.redis, job_id)}


def _stream(svc, job_id: str) -> Iterator[str]:
    pubsub = svc.redis.pubsub(ignore_subscribe_messages=True)
    try:
        # Subscribe before the first read, so no change between the two is missed.
        pubsub.subscribe(keys.job_events(job_id))
        deadline = time.monotonic() + svc.settings.stream_max_seconds
        last_write = time.monotonic()
        sent_status, sent_progress, number = None, None, 0
        while True:
            record = svc.jobs.get(job_id)
            if record is None:
                yield _event(number + 1, "expired", {"id": job_id})
                return
            if record.status != sent_status or record.progress != sent_progress:
                number += 1
                kind = "status" if record.status != sent_status else "progress"
                body = job_object(record, None, None if record.is_terminal else standing(svc.redis, record))
                yield _event(number, kind, body)
                sent_status, sent_progress, last_write = record.status, record.progress, time.monotonic()
            if record.is_terminal:
                return
            if time.monotonic() > deadline:
                yield _event(number + 1, "reconnect", {"id": job_id})
                return
            if pubsub.get_message(timeout=1.0) is None and time.monotonic() - last_write > _KEEPALIVE:
                yield ": keep-alive\n\n"
                last_write = time.monotonic()
    finally:
        pubsub.close()


def _event(number: int, kind: str, data: dict) -> str:
    return f"id: {number}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
