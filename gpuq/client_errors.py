"""Errors of the Python client: one class per error code of the HTTP API.

Every API error body is ``{"error": {"code", "message", "field"}}``; the client
raises the class registered for ``code`` (falling back on the HTTP status), so
callers catch exactly what they can handle: ``QueueFull``, ``NotFound``, ...
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyFinished", "ApiError", "BadRequest", "ConnectionFailed", "Expired", "GpuqError",
    "IdempotencyKeyReused", "InternalError", "InvalidField", "JobFailed", "MalformedJson", "MissingField",
    "NotFound", "OutcomeUnknown", "PayloadTooLarge", "QueueFull", "TooManyLongPolls", "TooManyStreams",
    "Unauthorized", "Unavailable",
    "UnknownAnalyzer", "UnsupportedMediaType", "WaitTimeout", "WebhooksDisabled", "error_for",
]


class GpuqError(Exception):
    """Root of every error the client raises."""


class ConnectionFailed(GpuqError):
    """Raised when the API cannot be reached at all (after the retries); ``url`` is where it was looked for,
    ``reason`` why it failed, in a few words, and ``refused`` whether nothing was there to answer (the
    connection refused, or the host name unknown)."""

    def __init__(self, message: str, *, url: str | None = None, reason: str | None = None, refused: bool = False):
        super().__init__(message)
        self.url = url
        self.reason = reason or message
        self.refused = refused


class WaitTimeout(GpuqError):
    """Raised when ``wait`` gives up before the job ended; the job goes on."""

    def __init__(self, message: str, job: Any = None):
        super().__init__(message)
        self.job = job


class JobFailed(GpuqError):
    """Raised by ``Job.raise_for_status`` for a job that ended failed or canceled, or an input ``map``
    could not submit (``rejected``)."""

    def __init__(self, job: Any):
        error = job.error or {}
        what = f"job {job.id}" if job.id else "input"
        super().__init__(f"{what} {job.status}: {error.get('code', '')} {error.get('message', '')}".strip())
        self.job = job


class ApiError(GpuqError):
    """Raised when the API answers with an error; ``code``, ``field`` and ``status`` say which."""

    status = 0
    code = "error"

    def __init__(self, message: str, *, status: int = 0, code: str | None = None, field: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.status = status or type(self).status
        self.code = code or type(self).code
        self.field = field
        self.retry_after = retry_after


class BadRequest(ApiError):
    """Raised when the request could not be parsed (400)."""
    status, code = 400, "bad_request"


class MalformedJson(BadRequest):
    """Raised when a body, ``params`` or ``input`` is not valid JSON."""
    code = "malformed_json"


class Unauthorized(ApiError):
    """Raised when the API key is missing or not valid (401)."""
    status, code = 401, "unauthorized"


class NotFound(ApiError):
    """Raised for an unknown job id (404)."""
    status, code = 404, "not_found"


class AlreadyFinished(ApiError):
    """Raised when canceling a job that has already ended (409)."""
    status, code = 409, "already_finished"


class Expired(ApiError):
    """Raised when the job's result has expired (410)."""
    status, code = 410, "expired"


class PayloadTooLarge(ApiError):
    """Raised when an upload or input is over a limit (413)."""
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    """Raised when a file is not of a type the analyzer takes (415)."""
    status, code = 415, "unsupported_media_type"


class InvalidField(ApiError):
    """Raised when a field is invalid against the analyzer's schema (422); ``field`` names it."""
    status, code = 422, "invalid_field"


class MissingField(InvalidField):
    """Raised when a required field (analyzer, file) is missing."""
    code = "missing_field"


class UnknownAnalyzer(InvalidField):
    """Raised when no worker serves the analyzer named."""
    code = "unknown_analyzer"


class IdempotencyKeyReused(InvalidField):
    """Raised when an idempotency key comes back with a different request."""
    code = "idempotency_key_reused"


class WebhooksDisabled(InvalidField):
    """Raised when a job asks for a webhook from a server that has no webhook secret."""
    code = "webhooks_disabled"


class QueueFull(ApiError):
    """Raised when the analyzer's queue stays full through every retry (429)."""
    status, code = 429, "queue_full"


class InternalError(ApiError):
    """Raised on an unexpected server error (500)."""
    status, code = 500, "internal"


class Unavailable(ApiError):
    """Raised when the API's Redis stays unreachable through every retry (503)."""
    status, code = 503, "unavailable"


class OutcomeUnknown(Unavailable):
    """Raised when a submit reached Redis, or may have, and the API could not learn whether its job was
    written (503 ``outcome_unknown``). ``job_id`` names that job: look it up later (``get``), or submit
    again with the same idempotency key, which never makes a second job."""
    code = "outcome_unknown"
    job_id: str | None = None


class TooManyStreams(Unavailable):
    """Raised when the API process serves as many event streams as it may."""
    code = "too_many_streams"


class TooManyLongPolls(Unavailable):
    """Raised when the API process, or this tenant's share of it, holds as many long-polls as it may;
    ``Client.wait`` reads the job instead and waits ``retry_after`` before asking again."""
    code = "too_many_long_polls"


_BY_CODE: dict[str, type[ApiError]] = {}
_BY_STATUS: dict[int, type[ApiError]] = {}
for _cls in (BadRequest, MalformedJson, Unauthorized, NotFound, AlreadyFinished, Expired, PayloadTooLarge,
             UnsupportedMediaType, InvalidField, MissingField, UnknownAnalyzer, IdempotencyKeyReused,
             WebhooksDisabled, QueueFull, InternalError, Unavailable, OutcomeUnknown, TooManyStreams,
             TooManyLongPolls):
    _BY_CODE[_cls.code] = _cls
    _BY_STATUS.setdefault(_cls.status, _cls)
_BY_CODE["conflict"] = AlreadyFinished


def error_for(status: int, body: Any, retry_after: float | None = None) -> ApiError:
    """The exception for an error answer: by its code, else by its HTTP status."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    code = error.get("code") or ""
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or ApiError
    message = error.get("message") or f"HTTP {status}"
    raised = cls(message, status=status, code=code or None, field=error.get("field"), retry_after=retry_after)
    if isinstance(raised, OutcomeUnknown):
        raised.job_id = error.get("id")
    return raised
