"""gpuq's own Redis connections, for every URL form Celery takes, Sentinel included.

``Redis.from_url`` knows ``redis://``, ``rediss://`` and ``unix://``. A
Sentinel deployment is named the way Celery and kombu name it: one
``sentinel://`` URL per sentinel, joined by ``;``, the master's password and
database in the first; the master's name comes from
``GPUQ_REDIS_SENTINEL_MASTER``. The client then follows the master through a
failover, as Celery's broker and result backend do with the same URL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from redis import Redis
from redis.sentinel import Sentinel

__all__ = ["connect", "is_sentinel", "sentinel_parts"]

_DEFAULT_SENTINEL_PORT = 26379


def is_sentinel(url: str) -> bool:
    return url.strip().startswith("sentinel://")


def sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str | None, int]:
    """(sentinel addresses, master password, database) of a ``sentinel://…;sentinel://…`` URL."""
    parts = [urlsplit(chunk.strip()) for chunk in url.split(";") if chunk.strip()]
    if not parts or any(p.scheme != "sentinel" or not p.hostname for p in parts):
        raise ValueError(f"not a Sentinel URL: {url!r} (expected sentinel://[:password@]host:port[/db];…)")
    first = parts[0]
    password = unquote(first.password) if first.password else None
    db = int(first.path.strip("/") or 0)
    return [(p.hostname, p.port or _DEFAULT_SENTINEL_PORT) for p in parts], password, db


def connect(url: str, *, sentinel_master: str = "", **options: Any) -> Redis:
    """A client for ``url``; with a Sentinel URL, one that always talks to the current master."""
    if not is_sentinel(url):
        return Redis.from_url(url, **options)
    if not sentinel_master:
        raise ValueError("a sentinel:// Redis URL needs GPUQ_REDIS_SENTINEL_MASTER, the name of the master")
    addresses, password, db = sentinel_parts(url)
    sentinel_options = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    return Sentinel(addresses, sentinel_kwargs=sentinel_options).master_for(
        sentinel_master, password=password, db=db, **options)
