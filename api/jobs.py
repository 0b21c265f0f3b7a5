"""Routes for jobs: submit, read (with long-poll), cancel."""

from __future__ import annotations

import time
from functools import partial

from flask import Blueprint, request

from api.auth import current_tenant
from api.body_limit import bound_submission_body
from api.errors import BadRequest, Conflict, Gone, NotFound, OutcomeUnknown, TooManyRequests, UnprocessableEntity
from api.render import job_object
from api.services import services
from api.standing import standing
from api.validation import parse_submission
from api.wait_slots import take_wait_slot
from api.waiting import wait_for_terminal
from api.webhook_url import webhook_from_request
from tasks.jobs import CANCELED, CANCELING, SUCCEEDED, JobRecord
from tasks.submission import IdempotencyConflict, QueueFull, TenantQueueFull, submit_job

__all__ = ["jobs"]

jobs = Blueprint("jobs", __name__)

#: Seconds a client is asked to wait when a queue is full.
_RETRY_AFTER_FULL = 5
_IDEMPOTENCY_KEY_MAX = 255


@jobs.post("/v1/jobs")
def create_job():
    svc = services()
    idempotency_key = _idempotency_key()
    bound_submission_body(request, svc.analyzers.all().values(), svc.settings.max_request_bytes)
    submission = parse_submission(request, svc.analyzers.get, svc.analyzers.names)
    webhook = webhook_from_request(request, svc.settings)
    limit = svc.queue_limits.get(submission.analyzer, submission.spec.get("max_queue_depth", 0))
    try:
        accepted = submit_job(
            svc.jobs, svc.celery,
            analyzer=submission.analyzer,
            input_bytes=submission.input_bytes,
            input_media_type=submission.input_media_type,
            params=submission.params,
            max_queue_depth=limit,
            idempotency_key=idempotency_key,
            webhook=webhook,
            tenant=current_tenant(),
            tenant_max_queued=svc.settings.tenant_max_queued,
        )
    except QueueFull as full:
        raise TooManyRequests(f"{full}; retry later", retry_after=_RETRY_AFTER_FULL, field="analyzer") from None
    except TenantQueueFull as full:
        raise TooManyRequests(f"{full}; retry when some have run", retry_after=_RETRY_AFTER_FULL,
                              code="tenant_queue_full") from None
    except IdempotencyConflict as conflict:
        raise UnprocessableEntity(str(conflict), field="Idempotency-Key", code="idempotency_key_reused") from None
    except submission.OutcomeUnknown as unknown:
        raise OutcomeUnknown(f"{unknown}; look the job up, or send the request again with the same "
                             "Idempotency-Key", job_id=unknown.job_id) from None
    headers = {"Location": f"/v1/jobs/{accepted.job_id}"}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
        return job_object(visible_job(svc.jobs.get(accepted.job_id), accepted.job_id)), 202, headers
    return job_object(accepted.record), 202, headers


@jobs.get("/v1/jobs/<job_id>")
def get_job(job_id: str):
    svc = services()
    wait = _wait_seconds(svc.settings.max_wait)
    backend = svc.celery.backend
    # The record, then the result, in one round trip: a worker stores a job's result before its
    # record says succeeded, so a record read as succeeded finds its result. Read through the
    # API's own fail-fast client (the store's), not the backend's retrying one.
    read = partial(svc.jobs.get_with, job_id, backend.get_key_for_task(job_id))
    if wait > 0:
        visible_job(svc.jobs.get(job_id), job_id)  # another tenant's job answers 404 at once, not after the wait
        give_back = take_wait_slot("long_polls", svc.settings, current_tenant(),
                                   "follow GET /v1/jobs/{id}/events, or poll without wait")
        try:
            record, raw_result = wait_for_terminal(svc.redis, read, job_id, wait)
        finally:
            give_back()
    else:
        record, raw_result = read()
    record = visible_job(record, job_id)
    result = None
    if record.status == SUCCEEDED:
        meta = backend.decode_result(raw_result) if raw_result is not None else {}
        if meta.get("status") != "SUCCESS":
            raise Gone(f"the result of job {job_id} has expired", field="id")
        result = meta.get("result")
    return job_object(record, result, None if record.is_terminal else standing(svc.redis, record))


@jobs.delete("/v1/jobs/<job_id>")
def cancel_job(job_id: str):
    svc = services()
    record = visible_job(svc.jobs.get(job_id), job_id)
    # A queued job is canceled outright; the worker checks the record before
    # running, so it is skipped even if its message is already reserved.
    outcome, status = svc.jobs.lifecycle.cancel(job_id)
    if outcome == CANCELED:
        svc.celery.control.revoke(job_id)
    elif outcome == CANCELING:
        # The worker's parent kills the pool child running it and marks it canceled.
        svc.celery.control.revoke(job_id, terminate=True, signal="SIGKILL")
    elif status in (CANCELING, CANCELED):
        pass  # asked twice: answer as the first time
    else:
        raise Conflict(f"job {job_id} has already {record.status if status is None else status}",
                       field="id", code="already_finished")
    return job_object(visible_job(svc.jobs.get(job_id), job_id)), 202


def visible_job(record: JobRecord | None, job_id: str) -> JobRecord:
    """The record if the caller may see it; 404 for an unknown or another tenant's job, 410 once expired."""
    # Another tenant's job is answered exactly as an unknown one: its existence is not disclosed.
    if record is None or (record.tenant or "default") != current_tenant():
        raise NotFound(f"no job with id {job_id}", field="id")
    if record.expires_at is not None and record.expires_at < time.time():
        raise Gone(f"job {job_id} finished and its result has expired", field="id")
    return record


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 0 < len(key) <= _IDEMPOTENCY_KEY_MAX or not key.isprintable():
        raise BadRequest(f"Idempotency-Key must be 1 to {_IDEMPOTENCY_KEY_MAX} printable characters",
                         field="Idempotency-Key")
    return key


def _wait_seconds(limit: float) -> float:
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        raise BadRequest("wait must be a number of seconds", field="wait") from None
    if not 0 <= wait <= limit:
        raise BadRequest(f"wait must be between 0 and {limit:g} seconds", field="wait")
    return wait
