"""API errors: one root type, a few kinds, mapped to HTTP in one place.

Every error body is ``{"error": {"code", "message", "field"}}``; no response
ever carries a traceback. Every 5xx means that nothing was enqueued, except
``503 outcome_unknown``, whose body names the job (``error.id``) that Redis
may or may not have accepted.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

__all__ = ["ApiError", "BadRequest", "Conflict", "Gone", "NotFound", "PayloadTooLarge",
           "OutcomeUnknown", "ServiceUnavailable", "TooManyRequests", "Unauthorized", "UnprocessableEntity",
           "UnsupportedMediaType",
           "register_error_handlers"]

log = logging.getLogger(__name__)


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class BadRequest(ApiError):
    """Raised when the request cannot be parsed (malformed JSON, wrong shape)."""


class UnprocessableEntity(ApiError):
    """Raised when a well-formed request names something invalid."""
    status, code = 422, "invalid_field"


class UnsupportedMediaType(ApiError):
    """Raised when a body or an upload is of a type the analyzer does not take."""
    status, code = 415, "unsupported_media_type"


class PayloadTooLarge(ApiError):
    """Raised when an upload is over the analyzer's or the server's limit."""
    status, code = 413, "payload_too_large"


class Unauthorized(ApiError):
    """Raised when a request has no API key, or one that is not valid."""
    status, code = 401, "unauthorized"


class NotFound(ApiError):
    """Raised for an unknown job id or route."""
    status, code = 404, "not_found"


class Gone(ApiError):
    """Raised when a job existed but its result has expired."""
    status, code = 410, "expired"


class Conflict(ApiError):
    """Raised when the job's state forbids the request (cancel after finish)."""
    status, code = 409, "conflict"


class TooManyRequests(ApiError):
    """Raised when a queue or a tenant's share is full, or its rate spent; the client should retry later."""
    status, code = 429, "queue_full"

    def __init__(self, message: str, retry_after: int, field: str | None = None, code: str | None = None):
        super().__init__(message, field=field, code=code)
        self.retry_after = retry_after


class ServiceUnavailable(ApiError):
    """Raised when Redis cannot be reached."""
    status, code = 503, "unavailable"


class OutcomeUnknown(ServiceUnavailable):
    """Raised when a submit reached Redis, or may have, and Redis could not be asked what became of it."""
    code = "outcome_unknown"
    retry_after = 5

    def __init__(self, message: str, job_id: str):
        super().__init__(message, field=None)
        self.job_id = job_id

    def body(self) -> dict:
        body = super().body()
        body["error"]["id"] = self.job_id
        return body


def _respond(error: ApiError, headers: dict | None = None):
    response = jsonify(error.body())
    response.status_code = error.status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError):
        retry_after = getattr(error, "retry_after", None)
        headers = {"Retry-After": str(retry_after)} if retry_after else {}
        if isinstance(error, Unauthorized):
            headers["WWW-Authenticate"] = 'Bearer realm="gpuq"'
        if isinstance(error, OutcomeUnknown):
            headers["Location"] = f"/v1/jobs/{error.job_id}"
        return _respond(error, headers)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(error):
        # The limit of this request (api.body_limit sets one per submission), else the server's.
        limit = request.max_content_length
        length = request.content_length
        if limit is not None and length is not None and length <= limit:
            # werkzeug's form limits, not the body's: name those.
            return _respond(PayloadTooLarge(f"a form field is over {request.max_form_memory_size} bytes (send "
                                            f"large inputs as the file), or the form has over "
                                            f"{request.max_form_parts} parts", field="body"))
        return _respond(PayloadTooLarge(f"request body is over the limit of {limit} bytes", field="body"))

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        code = (error.name or "error").lower().replace(" ", "_")
        err = ApiError(error.description or error.name, code=code)
        err.status = error.code or 500
        # A 405 names the methods the route takes (RFC 9110), as werkzeug's own answer does.
        allow = {"Allow": ", ".join(error.valid_methods)} if getattr(error, "valid_methods", None) else None
        return _respond(err, allow)

    @app.errorhandler(RedisConnectionError)
    @app.errorhandler(RedisTimeoutError)
    @app.errorhandler(KombuOperationalError)
    def _redis_down(error):
        log.warning("redis unreachable: %s", error)
        return _respond(ServiceUnavailable("the job store (Redis) is unreachable; try again shortly"),
                        {"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error")
        err = ApiError("internal server error", code="internal")
        err.status = 500
        return _respond(err)
