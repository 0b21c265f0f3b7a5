"""The HTTP front of gpuq: accepts jobs, answers at once, serves their state."""

from __future__ import annotations

import logging

from flask import Flask, g, request
from flask.json.provider import DefaultJSONProvider
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from api.auth import install_auth
from api.errors import register_error_handlers
from api.events import events
from api.health import health
from api.jobs import jobs
from api.listing import listing
from api.metrics import metrics
from api.openapi import openapi
from api.ratelimit import install_rate_limit
from api.services import Services
from tasks import logs, strict_json
from tasks.app import create_celery
from tasks.jobs import JobStore
from tasks.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; nothing connects to Redis until the first request."""
    settings = settings or Settings.from_env()
    app = Flask("gpuq")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json = _StrictJSONProvider(app)
    app.json.sort_keys = False
    # Fail fast when Redis is away (503 within seconds, never a hang), but retry
    # once on a broken pooled connection, as every one is after a Redis restart.
    redis = settings.connect_redis(socket_timeout=2, socket_connect_timeout=1,
                                   health_check_interval=30,
                                   retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)))
    app.extensions["gpuq"] = Services(
        settings=settings,
        redis=redis,
        celery=create_celery(),
        jobs=JobStore(redis, result_ttl=settings.result_ttl, tombstone_ttl=settings.tombstone_ttl,
                      input_ttl=settings.input_ttl),
    )
    # Auth first: the rate limit counts per tenant, and nothing else runs for a caller without a key.
    install_auth(app, settings)
    install_rate_limit(app, settings)
    app.register_blueprint(jobs)
    app.register_blueprint(events)
    app.register_blueprint(listing)
    app.register_blueprint(openapi)
    app.register_blueprint(health)
    app.register_blueprint(metrics)
    register_error_handlers(app)
    _tag_job_log_lines(app)
    logging.getLogger("gpuq").setLevel(logging.INFO)
    return app


class _StrictJSONProvider(DefaultJSONProvider):
    """Request bodies are read as the workers read inputs (``tasks.strict_json``): bounded depth,
    finite numbers; what it refuses is a ``ValueError``, so ``get_json(silent=True)`` gives None."""

    def loads(self, s: str | bytes, **kwargs):
        return strict_json.loads(s)


def _tag_job_log_lines(app: Flask) -> None:
    """Lines logged while serving ``/v1/jobs/<job_id>`` carry that job's id."""

    @app.before_request
    def _bind():
        job_id = (request.view_args or {}).get("job_id")
        if job_id:
            g.gpuq_log_token = logs.bind_job(job_id)

    @app.teardown_request
    def _unbind(_error=None):
        token = g.pop("gpuq_log_token", None)
        if token is not None:
            logs.unbind_job(token)
