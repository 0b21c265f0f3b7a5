"""The HTTP front of gpuq: accepts jobs, answers at once, serves their state."""

from __future__ import annotations

import logging

from flask import Flask
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from api.errors import register_error_handlers
from api.health import health
from api.jobs import jobs
from api.services import Services
from tasks.app import create_celery
from tasks.jobs import JobStore
from tasks.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; nothing connects to Redis until the first request."""
    settings = settings or Settings.from_env()
    app = Flask("gpuq")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False
    # Fail fast when Redis is away (503 within seconds, never a hang), but retry
    # once on a broken pooled connection, as every one is after a Redis restart.
    redis = Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=1,
                           health_check_interval=30,
                           retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)))
    app.extensions["gpuq"] = Services(
        settings=settings,
        redis=redis,
        celery=create_celery(),
        jobs=JobStore(redis, result_ttl=settings.result_ttl, tombstone_ttl=settings.tombstone_ttl,
                      input_ttl=settings.input_ttl),
    )
    app.register_blueprint(jobs)
    app.register_blueprint(health)
    register_error_handlers(app)
    logging.getLogger("gpuq").setLevel(logging.INFO)
    return app
