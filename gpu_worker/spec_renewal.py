"""Keeps a worker's analyzers published while its worker process lives, from the main process.

Only a pool child publishes specs, and only once its models are loaded; a child
replaced after a time limit, an OOM or a cancel's SIGKILL may take longer to
load them again than a spec lives. The main process outlives its children, so
it renews the lifetime of the specs its analyzers already have. It never
publishes one: it has not loaded the models, so it cannot vouch for a spec that
no child wrote or that has already expired.
"""

from __future__ import annotations

import logging
import threading

from redis import Redis

from tasks import catalog

__all__ = ["SpecRenewal"]

log = logging.getLogger("gpuq.worker")


class SpecRenewal:
    def __init__(self, redis: Redis, analyzers: list[str], *, ttl: float, interval: float):
        self.redis = redis
        self.analyzers = list(analyzers)
        self.ttl = ttl
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_ttl(cls, redis: Redis, analyzers: list[str], ttl: float) -> SpecRenewal:
        # Several renewals within one lifetime: a missed one or two never let a spec lapse.
        return cls(redis, analyzers, ttl=ttl, interval=max(1.0, ttl / 6))

    def start(self) -> SpecRenewal:
        self._thread = threading.Thread(target=self._loop, name="gpuq-spec-renewal", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def renew(self) -> int:
        return catalog.renew_analyzers(self.redis, self.analyzers, self.ttl)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except Exception as error:  # Redis away for a moment: renew once it is back
                log.warning("renewing the analyzers' specs failed: %s", error)
