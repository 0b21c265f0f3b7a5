"""Celery settings for gpuq, read from environment variables.

Holds Celery keys only and imports nothing of the project, so the API, the
workers and Flower all load exactly the same settings. A missing or malformed
value raises at import, which is at start-up for every process.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

_REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")


def _url(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise RuntimeError(f"{name} is not set: give the Redis URL, e.g. redis://127.0.0.1:6379/0")
    scheme = urlsplit(value.split(";")[0]).scheme
    if scheme not in _REDIS_SCHEMES:
        raise RuntimeError(f"{name}={value!r} is not a Redis URL (scheme must be one of {_REDIS_SCHEMES})")
    return value


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise RuntimeError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise RuntimeError(f"{name}={raw!r} must be positive")
    return value


_redis_url = _url("GPUQ_REDIS_URL")
_hard_limit = _seconds("GPUQ_JOB_TIME_LIMIT", 3600)
_soft_limit = _seconds("GPUQ_JOB_SOFT_TIME_LIMIT", max(_hard_limit - 10, _hard_limit * 0.9))
if _soft_limit >= _hard_limit:
    raise RuntimeError("GPUQ_JOB_SOFT_TIME_LIMIT must be below GPUQ_JOB_TIME_LIMIT")

broker_url = _redis_url
result_backend = _redis_url
result_expires = int(_seconds("GPUQ_RESULT_TTL", 86400))

# JSON only: a Python-object format on the wire lets anyone who can write to Redis run code.
task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# At least once: acknowledge after the job ran, one message in hand at a time.
task_acks_late = True
worker_prefetch_multiplier = 1
task_track_started = True
task_time_limit = _hard_limit
task_soft_time_limit = _soft_limit
task_default_queue = "gpuq.default"
task_create_missing_queues = True

# A message unacknowledged this long is handed to another worker; it must stay
# well above the hard time limit or a long job runs twice (celery#5935).
_socket_timeout = _seconds("GPUQ_REDIS_SOCKET_TIMEOUT", 5)
broker_transport_options = {
    "visibility_timeout": int(_seconds("GPUQ_VISIBILITY_TIMEOUT", 2 * _hard_limit + 60)),
    "socket_timeout": _socket_timeout,
    "socket_connect_timeout": _socket_timeout,
}
result_backend_transport_options = {
    "socket_timeout": _socket_timeout,
    "socket_connect_timeout": _socket_timeout,
}
# Sentinel: "sentinel://h1:26379;sentinel://h2:26379" names the sentinels; both
# the broker and the result backend need the master's name beside it.
if urlsplit(_redis_url.split(";")[0]).scheme == "sentinel":
    _master = os.environ.get("GPUQ_REDIS_SENTINEL_MASTER", "").strip()
    if not _master:
        raise RuntimeError("GPUQ_REDIS_URL is a sentinel:// URL: set GPUQ_REDIS_SENTINEL_MASTER to the master's name")
    broker_transport_options["master_name"] = _master
    result_backend_transport_options["master_name"] = _master
redis_socket_timeout = _socket_timeout
redis_socket_connect_timeout = _socket_timeout
# A result write while Redis restarts waits for it rather than losing the result.
result_backend_always_retry = True
result_backend_max_retries = 60
broker_connection_retry_on_startup = True
broker_connection_max_retries = None  # keep trying: Redis coming back must not need a restart

worker_send_task_events = True
task_send_sent_event = True
# Loading a model can take far longer than the 4 s default for a pool child.
worker_proc_alive_timeout = _seconds("GPUQ_MODEL_LOAD_TIMEOUT", 600)
worker_hijack_root_logger = False
