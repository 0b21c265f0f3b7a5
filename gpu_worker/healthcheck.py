"""``python -m gpu_worker.healthcheck``: is this host's worker serving? (the container's health check)

Healthy when at least one worker named ``…@<this host>`` has a live heartbeat
in a serving state: its models are loaded and it takes jobs. It reads the
heartbeats in Redis (the same ones /readyz reads), so it imports no torch and
starts in a fraction of a second. Exit status 0 when healthy, 1 otherwise,
with the reason on stdout.
"""

from __future__ import annotations

import os
import socket
import sys

from redis import Redis

from tasks import catalog
from tasks.settings import Settings

__all__ = ["main", "serving_workers"]

_SERVING_STATES = ("ready", "busy")


def serving_workers(redis: Redis, host: str) -> list[str]:
    return sorted(w["name"] for w in catalog.live_workers(redis)
                  if str(w.get("name", "")).endswith(f"@{host}") and w.get("state") in _SERVING_STATES)


def main() -> int:
    host = os.environ.get("GPUQ_HOSTNAME") or socket.gethostname()
    try:
        redis = Settings.from_env().connect_redis(socket_timeout=3, socket_connect_timeout=3)
        names = serving_workers(redis, host)
    except Exception as error:  # any failure to read the heartbeats is a failed check
        print(f"unhealthy: cannot read worker heartbeats: {type(error).__name__}: {error}")
        return 1
    if not names:
        print(f"unhealthy: no worker on host {host} is serving (still loading models, or down)")
        return 1
    print(f"healthy: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
