"""An optional request rate limit per tenant, kept in Redis so it holds across gunicorn processes and replicas.

``GPUQ_RATE_LIMIT=20/s`` (or ``/m``, ``/h``): a fixed window per tenant,
counted with one INCR. A fixed window lets a burst of up to twice the rate
straddle a window's edge; that is enough to stop one tenant flooding the API,
which is all it is for. Over the limit: 429 with ``Retry-After``.
"""

from __future__ import annotations

import math
import re
import time

from flask import Flask, request

from api.auth import OPEN_PATHS, current_tenant
from api.errors import TooManyRequests
from api.services import services
from tasks import keys
from tasks.settings import Settings, SettingsError

__all__ = ["RateLimit", "install_rate_limit", "parse_rate"]

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_WINDOWS = {"s": 1, "m": 60, "h": 3600}


def parse_rate(spec: str) -> tuple[int, int] | None:
    """(requests, window in seconds) of ``"20/s"``; None for an empty spec."""
    if not spec.strip():
        return None
    match = _RATE.match(spec)
    if not match or int(match.group(1)) < 1:
        raise SettingsError(f"GPUQ_RATE_LIMIT={spec!r} is not like 20/s, 600/m or 10000/h")
    return int(match.group(1)), _WINDOWS[match.group(2)[0]]


class RateLimit:
    def __init__(self, requests: int, window: int):
        self.requests, self.window = requests, window

    def check(self, redis, tenant: str, now: float | None = None) -> int:
        """0 when the request may go on, else the seconds until the tenant's window ends."""
        now = time.time() if now is None else now
        slot = int(now // self.window)
        key = keys.rate_window(tenant, slot)
        with redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self.window * 2)
            count, _ = pipe.execute()
        if count <= self.requests:
            return 0
        return max(1, math.ceil((slot + 1) * self.window - now))


def install_rate_limit(app: Flask, settings: Settings) -> None:
    rate = parse_rate(settings.rate_limit)
    if rate is None:
        return
    limiter = RateLimit(*rate)

    @app.before_request
    def _limit():
        if request.path in OPEN_PATHS:
            return None
        wait = limiter.check(services().redis, current_tenant())
        if wait:
            raise TooManyRequests(f"over the rate limit of {rate[0]} requests per {rate[1]} s; retry later",
                                  retry_after=wait, code="rate_limited")
        return None
