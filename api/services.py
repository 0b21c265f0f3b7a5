"""What the routes use, built once per app and passed in, not fetched from globals."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from flask import current_app
from redis import Redis

from tasks import catalog
from tasks.jobs import JobStore
from tasks.settings import Settings

__all__ = ["AnalyzerCatalog", "Services", "services"]


class AnalyzerCatalog:
    """Analyzer specs read from Redis, cached briefly so a submit costs no extra round trip."""

    def __init__(self, redis: Redis, max_age: float = 2.0, analyzer_ttl: float = Settings.analyzer_ttl):
        self._redis = redis
        self._analyzer_ttl = analyzer_ttl
        self._max_age = max_age
        self._specs: dict[str, dict[str, Any]] = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def all(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        with self._lock:
            if refresh or time.monotonic() - self._read_at > self._max_age:
                self._specs = catalog.analyzer_specs(self._redis, ttl=self._analyzer_ttl)
                self._read_at = time.monotonic()
            return self._specs

    def get(self, name: str) -> dict[str, Any] | None:
        spec = self.all().get(name)
        if spec is None:
            # A worker may have just published it: look once more before refusing.
            spec = self.all(refresh=True).get(name)
        return spec

    def names(self) -> list[str]:
        return sorted(self.all())


@dataclass
class Services:
    settings: Settings
    redis: Redis
    celery: Celery
    jobs: JobStore
    analyzers: AnalyzerCatalog = field(init=False)
    queue_limits: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.analyzers = AnalyzerCatalog(self.redis, analyzer_ttl=self.settings.analyzer_ttl)
        self.queue_limits = self.settings.queue_limit_overrides()


def services() -> Services:
    return current_app.extensions["gpuq"]
