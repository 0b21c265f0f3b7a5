"""``GET /openapi.json``: the HTTP contract as an OpenAPI 3.0 document, written by hand.

Written, not generated, so it says what the routes promise (every status
code each may answer, the error body) rather than what a decorator guessed;
tests/test_openapi.py checks it against the app's routes and fuzzes the live
API with schemathesis against it.
"""

from __future__ import annotations

import copy
from typing import Any

from flask import Blueprint
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.services import services
from tasks.tenants import CURSOR_PATTERN

__all__ = ["document", "openapi"]

openapi = Blueprint("openapi", __name__)

_STATUSES = ["queued", "running", "canceling", "succeeded", "failed", "canceled"]
_NULLABLE_TIME = {"type": "string", "nullable": True}
_NULLABLE_OBJECT = {"type": "object", "nullable": True}

_ANALYZER = {"type": "string", "minLength": 1, "description": "an analyzer's name: GET /v1/analyzers"}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message", "field"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                           "field": {"type": "string", "nullable": True},
                           "id": {"type": "string", "description": "with outcome_unknown: the job that may exist"}}}},
    },
    "Job": {
        "type": "object",
        "required": ["id", "analyzer", "status", "created_at", "started_at", "finished_at", "expires_at",
                     "attempts", "params", "result", "error"],
        "properties": {
            "id": {"type": "string"}, "analyzer": {"type": "string"},
            "status": {"type": "string", "enum": _STATUSES},
            "created_at": {"type": "string"}, "started_at": _NULLABLE_TIME, "finished_at": _NULLABLE_TIME,
            "expires_at": _NULLABLE_TIME,
            "queue_position": {"type": "integer", "nullable": True, "minimum": 0},
            "progress": _NULLABLE_OBJECT, "attempts": {"type": "integer", "minimum": 0},
            "worker": {"type": "string", "nullable": True}, "device": {"type": "string", "nullable": True},
            "params": {"type": "object"}, "timings": _NULLABLE_OBJECT,
            "result": {"nullable": True}, "provenance": _NULLABLE_OBJECT, "error": _NULLABLE_OBJECT,
            "eta_seconds": {"type": "number", "nullable": True, "minimum": 0}, "eta": _NULLABLE_TIME,
            "webhook": {"type": "string", "nullable": True},
        },
    },
    "JobList": {
        "type": "object", "required": ["jobs", "next_cursor"],
        "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                       "next_cursor": {"type": "string", "nullable": True}},
    },
    "JobSubmission": {
        "type": "object", "required": ["analyzer"], "additionalProperties": False,
        "properties": {"analyzer": _ANALYZER, "input": {}, "params": {"type": "object"},
                       "webhook": {"type": "string", "description": "http(s) URL told of the job's events"}},
    },
    "FormSubmission": {
        "type": "object", "required": ["analyzer"], "additionalProperties": False,
        "properties": {"analyzer": _ANALYZER, "file": {"type": "string", "format": "binary"},
                       "params": {"type": "object", "description": "a JSON object, sent as JSON text"},
                       "input": {"description": "JSON, for analyzers that take a JSON input"},
                       "webhook": {"type": "string", "description": "http(s) URL told of the job's events"}},
    },
    "Analyzers": {
        "type": "object", "required": ["analyzers"],
        "properties": {"analyzers": {"type": "array", "items": {
            "type": "object", "required": ["name", "workers"],
            "properties": {"name": {"type": "string"}, "workers": {"type": "array", "items": {"type": "object"}}}}}},
    },
    "Readiness": {
        "type": "object", "required": ["ready", "reasons"],
        "properties": {"ready": {"type": "boolean"}, "reasons": {"type": "array", "items": {"type": "string"}},
                       "analyzers": {"type": "object"}, "workers": {"type": "array", "items": {"type": "object"}}},
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(description: str, schema: str, headers: dict | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds to wait"}}
_LOCATION = {"Location": {"schema": {"type": "string"}, "description": "the job's URL"}}
# gunicorn's own answers (HTML) to a request line or headers over its limits, before the app sees them.
_TOO_LONG = {"414": {"description": "request line over 4094 bytes (gunicorn)",
                     "content": {"text/html": {"schema": {"type": "string"}}}},
             "431": {"description": "a header over 8190 bytes, or more than 100 headers (gunicorn)",
                     "content": {"text/html": {"schema": {"type": "string"}}}}}
_KEYED = {**_TOO_LONG, "401": _error("no API key, or not a valid one"),
          "429": {**_error("over the tenant's rate limit"), "headers": _RETRY_AFTER},
          "503": {**_error("Redis unreachable"), "headers": _RETRY_AFTER}}
#: One event of a job's stream, as an event-stream parser reads it.
_SSE_EVENT = {"type": "object", "required": ["event", "data", "id"],
              "properties": {"event": {"type": "string", "enum": ["status", "progress", "expired", "reconnect"]},
                             "data": {"type": "string", "description": "a JSON object: the job, or its id"},
                             "id": {"type": "string", "pattern": "^[0-9]+$"}}}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}


def document(analyzers: list[str] | None = None) -> dict[str, Any]:
    """The OpenAPI document (a new dict each call); ``analyzers``, the names served now, become the
    enum of a submission's ``analyzer`` (a name outside it answers 422 ``unknown_analyzer``)."""
    schemas = copy.deepcopy(_SCHEMAS)
    if analyzers:
        for submission in ("JobSubmission", "FormSubmission"):
            schemas[submission]["properties"]["analyzer"]["enum"] = sorted(analyzers)
    return {
        "openapi": "3.0.3",
        "info": {"title": "gpuq", "version": "1",
                 "description": "A job service for PyTorch models on GPUs. Every /v1 call needs "
                                "`Authorization: Bearer <key>` unless the server runs with GPUQ_AUTH=off."},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/v1/jobs": {
                "post": {
                    "operationId": "submitJob", "security": [{"apiKey": []}],
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                    "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/JobSubmission"}},
                        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/FormSubmission"},
                                                "encoding": {"params": {"contentType": "application/json"}}}}},
                    "responses": {
                        "202": {**_json("accepted", "Job", _LOCATION), "links": {
                            "GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/id"}},
                            "CancelJob": {"operationId": "cancelJob", "parameters": {"job_id": "$response.body#/id"}}}},
                        "400": _error("malformed request"),
                        "413": _error("the body over the most any analyzer takes (checked before it is read), "
                                      "or the input over its analyzer's limit"),
                        "415": _error("not a type the analyzer takes"),
                        "422": _error("a field is not valid"),
                        **_KEYED,
                        "429": {**_error("the analyzer's queue, the tenant's queued jobs or rate is full"),
                                "headers": _RETRY_AFTER},
                        "503": {**_error("Redis unreachable: nothing was enqueued; or, with code "
                                         "outcome_unknown, Redis stalled mid-submit and the job named by "
                                         "error.id (and Location) may or may not exist: look it up, or retry "
                                         "with the same Idempotency-Key"),
                                "headers": {**_RETRY_AFTER, **_LOCATION}},
                    },
                },
                "get": {
                    "operationId": "listJobs", "security": [{"apiKey": []}],
                    "parameters": [
                        {"name": "status", "in": "query", "required": False,
                         "schema": {"type": "string", "enum": _STATUSES}},
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                        {"name": "cursor", "in": "query", "required": False,
                         "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                         "description": "next_cursor of the page before"},
                    ],
                    "responses": {"200": _json("the caller's jobs, newest first", "JobList"),
                                  "400": _error("a parameter is not valid"), **_KEYED},
                },
            },
            "/v1/jobs/{job_id}": {
                "parameters": [_JOB_ID],
                "get": {
                    "operationId": "getJob", "security": [{"apiKey": []}],
                    "parameters": [{"name": "wait", "in": "query", "required": False,
                                    "schema": {"type": "number", "minimum": 0, "maximum": 30}}],
                    "responses": {"200": _json("the job", "Job"), "400": _error("wait is not valid"),
                                  "404": _error("no such job (or another tenant's)"),
                                  "410": _error("its result has expired"), **_KEYED,
                                  "503": {**_error("Redis unreachable; or, with code too_many_long_polls, this "
                                                   "API process (or the tenant's share of it) holds its most "
                                                   "long-polls: read without wait, or retry after Retry-After"),
                                          "headers": _RETRY_AFTER}},
                },
                "delete": {
                    "operationId": "cancelJob", "security": [{"apiKey": []}],
                    "responses": {"202": _json("canceled or canceling", "Job"),
                                  "404": _error("no such job (or another tenant's)"),
                                  "409": _error("already finished"), "410": _error("its result has expired"),
                                  **_KEYED},
                },
            },
            "/v1/jobs/{job_id}/events": {
                "parameters": [_JOB_ID],
                "get": {
                    "operationId": "jobEvents", "security": [{"apiKey": []}],
                    "responses": {"200": {"description": "server-sent events until the job ends: status and "
                                                         "progress (data: the job object), expired, reconnect",
                                          "content": {"text/event-stream": {"schema": _SSE_EVENT}}},
                                  "404": _error("no such job (or another tenant's)"),
                                  "410": _error("its result has expired"),
                                  **_KEYED,
                                  "503": {**_error("Redis unreachable; or, with code too_many_streams, this API "
                                                   "process (or the tenant's share of it) serves its most streams"),
                                          "headers": _RETRY_AFTER}},
                },
            },
            "/v1/jobs/{job_id}/deliveries": {
                "parameters": [_JOB_ID],
                "get": {
                    "operationId": "jobDeliveries", "security": [{"apiKey": []}],
                    "responses": {"200": {"description": "the job's webhook delivery attempts, oldest first",
                                          "content": {"application/json": {"schema": {"type": "object"}}}},
                                  "404": _error("no such job (or another tenant's)"),
                                  "410": _error("its result has expired"), **_KEYED},
                },
            },
            "/v1/analyzers": {"get": {
                "operationId": "listAnalyzers", "security": [{"apiKey": []}],
                "responses": {"200": _json("the analyzers and the workers serving them", "Analyzers"), **_KEYED}}},
            "/healthz": {"get": {"operationId": "healthz", "security": [], "responses": {"200": {
                "description": "the process answers",
                "content": {"application/json": {"schema": {"type": "object", "required": ["status"]}}}},
                **_TOO_LONG}}},
            "/readyz": {"get": {"operationId": "readyz", "security": [], "responses": {
                "200": _json("ready", "Readiness"), "503": _json("not ready, and why", "Readiness"), **_TOO_LONG}}},
            "/metrics": {"get": {"operationId": "metrics", "security": [], "responses": {"200": {
                "description": "Prometheus text (what it holds: README, Metrics)",
                "content": {"text/plain": {"schema": {"type": "string"}}}}, **_TOO_LONG}}},
            "/openapi.json": {"get": {"operationId": "openapi", "security": [], "responses": {"200": {
                "description": "this document", "content": {"application/json": {"schema": {"type": "object"}}}},
                **_TOO_LONG}}},
        },
    }


@openapi.get("/openapi.json")
def serve():
    try:
        names = services().analyzers.names()
    except (RedisConnectionError, RedisTimeoutError):
        names = None  # the document without the names of the day, rather than none
    return document(names)
