"""The production app plus bench-only routes: the ceiling that bench/submit.py compares submits against,
and two halves of a submit, to show where its cost goes.

``POST /bench/noop`` runs through the same app (its request hooks, error
handlers and JSON answer) and the same gunicorn configuration as
``POST /v1/jobs``, but does no work of its own: what it answers per second is
what the framework and server can do on this machine.

With ``--breakdown``, bench/submit.py also loads two routes that each do one
half of a submit and nothing else:

- ``POST /bench/parse-only``: everything ``POST /v1/jobs`` does in Python
  except Redis: the body parsed and validated against the analyzer's schemas,
  the job record and broker message built, the 202 body rendered.
- ``POST /bench/redis-round-trip``: one call of a Lua script that does nothing
  (``return 1``), through the same batched path as a submit
  (tasks/batched_script.py): the cost of waiting on Redis, without the writes.

They live here, never in ``api/``, so the production app has no such route.

    gunicorn -c gunicorn.conf.py 'bench.ceiling_app:create_app()'
"""

from __future__ import annotations

import time
from functools import lru_cache

from flask import Flask, request
from redis import Redis

import api
from api.auth import current_tenant
from api.render import job_object
from api.services import services
from api.validation import parse_submission
from tasks.app import queue_for
from tasks.batched_script import BatchedScript
from tasks.ids import random_uuid
from tasks.jobs import QUEUED, JobRecord
from tasks.publish import job_message

__all__ = ["NOOP_PATH", "PARSE_ONLY_PATH", "REDIS_ROUND_TRIP_PATH", "create_app"]

NOOP_PATH = "/bench/noop"
PARSE_ONLY_PATH = "/bench/parse-only"
REDIS_ROUND_TRIP_PATH = "/bench/redis-round-trip"


@lru_cache(maxsize=8)
def _empty_script(redis: Redis) -> BatchedScript:
    return BatchedScript(redis, "return 1")


def create_app() -> Flask:
    app = api.create_app()

    @app.post(NOOP_PATH)
    def noop():
        return {"status": "ok"}, 202

    @app.post(PARSE_ONLY_PATH)
    def parse_only():
        svc = services()
        submission = parse_submission(request, svc.analyzers.get, svc.analyzers.names)
        record = JobRecord(id=random_uuid(), analyzer=submission.analyzer, status=QUEUED, created_at=time.time(),
                           input_media_type=submission.input_media_type, params=submission.params,
                           webhook=None, tenant=current_tenant())
        job_message(svc.celery, record.id, record.analyzer, queue_for(record.analyzer))
        return job_object(record), 202, {"Location": f"/v1/jobs/{record.id}"}

    @app.post(REDIS_ROUND_TRIP_PATH)
    def redis_round_trip():
        _empty_script(services().redis)(keys=["bench:nothing"], args=["x"])
        return {"status": "ok"}, 202

    return app
