"""What the fleet serves: analyzer specs and live workers, published by workers.

The API never imports analyzer code (it may need torch), so each worker
publishes its analyzers' specs here when its model is loaded, and keeps a
heartbeat key alive while it runs. Each spec has a lifetime, renewed with every
heartbeat of a worker serving it: it outlives a worker's restart, so jobs can
still queue meanwhile, but an analyzer that no worker serves any more (dropped
from ``GPUQ_ANALYZERS``) expires by itself. Liveness comes from the heartbeats.
"""

from __future__ import annotations

import json
from typing import Any

from redis import Redis

from tasks import keys
from tasks.lua_scripts import load
from tasks.settings import Settings

__all__ = ["analyzer_specs", "live_workers", "publish_analyzers", "publish_heartbeat", "forget_worker"]

#: When each published spec expires, by analyzer name (epoch seconds on Redis's clock).
#: Only this module reads or writes it, beside the specs' own hash.
_EXPIRIES = f"{keys.ANALYZERS}:expires"
_KEYS = {"specs": keys.ANALYZERS, "expiries": _EXPIRIES}


def publish_analyzers(redis: Redis, specs: list[dict[str, Any]], ttl: float = Settings.analyzer_ttl) -> None:
    """Publish ``specs``, or renew them, for ``ttl`` seconds from now."""
    if specs:
        pairs = [[s["name"], json.dumps(s)] for s in specs]
        load("publish_analyzers").bind(redis)(keys=_KEYS, args={"specs": json.dumps(pairs), "ttl": ttl})


def analyzer_specs(redis: Redis) -> dict[str, dict[str, Any]]:
    """The specs within their lifetime, by name; expired ones are deleted on the way."""
    flat = load("live_analyzers").bind(redis)(keys=_KEYS, args={})
    return {flat[i].decode(): json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}


def publish_heartbeat(redis: Redis, name: str, info: dict[str, Any], ttl: int) -> None:
    pipe = redis.pipeline(transaction=False)
    pipe.set(keys.worker(name), json.dumps(info), ex=ttl)
    pipe.sadd(keys.WORKERS, name)
    pipe.execute()


def forget_worker(redis: Redis, name: str) -> None:
    pipe = redis.pipeline(transaction=False)
    pipe.delete(keys.worker(name))
    pipe.srem(keys.WORKERS, name)
    pipe.execute()


def live_workers(redis: Redis) -> list[dict[str, Any]]:
    """Workers whose heartbeat has not expired; names left by dead ones are pruned."""
    names = sorted(n.decode() for n in redis.smembers(keys.WORKERS))
    if not names:
        return []
    infos = redis.mget([keys.worker(n) for n in names])
    dead = [n for n, info in zip(names, infos, strict=False) if info is None]
    if dead:
        redis.srem(keys.WORKERS, *dead)
    return [json.loads(info) for info in infos if info is not None]
