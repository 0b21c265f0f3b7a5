"""The project's own settings, read once from ``GPUQ_*`` environment variables.

Celery's keys live in ``celeryconfig.py``; this object holds what the API and
the workers need beyond them. A malformed value raises ``SettingsError``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from redis import Redis

from tasks.redis_client import connect

__all__ = ["Settings", "SettingsError"]


class SettingsError(RuntimeError):
    """Raised when an environment variable is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    redis_url: str
    #: How long a finished job's result stays readable (then 410).
    result_ttl: int = 86400
    #: How long an uploaded input waits for its job to run.
    input_ttl: int = 86400
    #: How long a finished job keeps answering 410 rather than 404.
    tombstone_ttl: int = 7 * 86400
    #: Largest request body the API reads at all, in bytes.
    max_request_bytes: int = 64 * 1024 * 1024
    #: Attempts before a job whose worker keeps dying is failed.
    max_attempts: int = 3
    #: Hard time limit of one job, in seconds (also in celeryconfig).
    job_time_limit: int = 3600
    #: Longest ``?wait=`` a client may ask for, in seconds.
    max_wait: float = 30.0
    #: Seconds a worker's heartbeat stays valid.
    heartbeat_ttl: int = 15
    #: Seconds an analyzer's published spec lives unless a worker serving it renews it (with its heartbeat).
    analyzer_ttl: int = 30
    #: Per-analyzer queue depth limits, "simulate=5,digits=100", over the analyzers' own.
    queue_limits: str = ""
    #: Seconds between the janitor's sweeps for jobs whose worker died.
    janitor_interval: float = 5.0
    #: ``off`` runs the API without API keys (local development only); anything else needs ``api_keys``.
    auth: str = ""
    #: API keys as ``tenant:sha256-of-key`` entries, comma-separated (see api/auth.py).
    api_keys: str = ""
    #: Most queued jobs one tenant may have at once (then 429).
    tenant_max_queued: int = 1000
    #: Optional request rate limit per tenant, ``20/s``, ``600/m`` or ``10000/h``; empty: none.
    rate_limit: str = ""
    #: Hosts, addresses and CIDRs that outbound URLs may reach although they are not public.
    url_allowlist: str = ""

    def queue_limit_overrides(self) -> dict[str, int]:
        limits: dict[str, int] = {}
        for entry in filter(None, (e.strip() for e in self.queue_limits.split(","))):
            name, _, value = entry.partition("=")
            if not value.strip().isdigit() or not name.strip():
                raise SettingsError(f"GPUQ_QUEUE_LIMITS entry {entry!r} is not name=number")
            limits[name.strip()] = int(value)
        return limits
    def outbound_allowlist(self):
        """``url_allowlist`` parsed, for ``tasks.url_safety.check_url``."""
        from tasks.url_safety import Allowlist

        try:
            return Allowlist.parse(self.url_allowlist)
        except ValueError as error:
            raise SettingsError(str(error)) from None

    #: Name of the Redis master when ``redis_url`` is a ``sentinel://`` URL.
    redis_sentinel_master: str = ""
    #: Key that signs webhook deliveries (HMAC-SHA256); unset: jobs with a webhook are refused (422).
    webhook_secret: str = ""
    #: Delivery attempts of one webhook event before it is given up.
    webhook_max_attempts: int = 6
    #: Seconds before the first retry of a webhook delivery; each later one waits twice as long.
    webhook_backoff: float = 1.0
    #: Least seconds between two ``progress`` webhook events of one job.
    webhook_progress_interval: float = 2.0
    #: Seconds a webhook receiver has to accept the connection.
    webhook_connect_timeout: float = 3.0
    #: Seconds a webhook receiver may stay silent while answering (per read, not in all).
    webhook_read_timeout: float = 10.0
    #: Threads in each worker that send webhook deliveries, all destinations together.
    webhook_senders: int = 16
    #: Deliveries one destination (``scheme://host:port``) is sent at once by one worker.
    webhook_per_destination: int = 2
    #: Webhook deliveries one worker holds in memory at most; past it, it takes no more from Redis.
    webhook_max_held: int = 1000
    #: Server-sent event streams one API process serves at once (each holds a gunicorn thread).
    max_streams: int = 4
    #: Of those, the most one tenant may hold.
    tenant_max_streams: int = 2
    #: Long-polls (``?wait=``) one API process serves at once (each holds a gunicorn thread too).
    max_long_polls: int = 8
    #: Of those, the most one tenant may hold.
    tenant_max_long_polls: int = 4
    #: Seconds an event stream stays open before the client is asked to reconnect.
    stream_max_seconds: float = 300.0
    #: Threads torch may use for its CPU work in each worker process (``gpu_worker.devices.limit_torch_threads``).
    torch_threads: int = 1
    #: Model processes a worker starts in a row after its GPU broke (a sticky CUDA error), with no
    #: batch run between them, before it stops for good (``gpu_worker.device_health``).
    device_fault_restarts: int = 3
    #: ``off`` makes workers run every job alone (one job per ``predict``), for comparison and debugging.
    batching: str = "on"
    #: Seconds a worker's task event (for Flower) may wait so that later ones share its publish.
    event_flush_interval: float = 0.02

    @property
    def auth_off(self) -> bool:
        """``GPUQ_AUTH=off`` (any case): no API keys, one tenant."""
        return self.auth.strip().lower() == "off"

    @property
    def batching_enabled(self) -> bool:
        return self.batching == "on"

    def connect_redis(self, **options) -> Redis:
        """A client of the configured Redis (following the master when it is a Sentinel URL)."""
        return connect(self.redis_url, sentinel_master=self.redis_sentinel_master, **options)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        env = os.environ if environ is None else environ
        values: dict = {}
        for f in fields(cls):
            raw = env.get("GPUQ_" + f.name.upper(), "").strip()
            if f.name in overrides or not raw:
                continue
            kind = float if f.type == "float" else int if f.type == "int" else str
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise SettingsError(f"GPUQ_{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
            if kind is not str and values[f.name] <= 0:
                raise SettingsError(f"GPUQ_{f.name.upper()}={raw!r} must be positive")
        values.update(overrides)
        if not values.get("redis_url"):
            raise SettingsError("GPUQ_REDIS_URL is not set: give the Redis URL, e.g. redis://127.0.0.1:6379/0")
        settings = cls(**values)
        if settings.batching not in ("on", "off"):
            raise SettingsError(f"GPUQ_BATCHING={settings.batching!r}: expected 'on' or 'off'")
        settings.queue_limit_overrides()  # malformed limits fail here, at start-up
        settings.outbound_allowlist()
        return settings
