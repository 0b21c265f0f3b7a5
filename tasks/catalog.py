"""What the fleet serves: analyzer specs and live workers, published by workers.

The API never imports analyzer code (it may need torch), so each worker
publishes its analyzers' specs here when its model is loaded, and keeps a
heartbeat key alive while it runs. Each spec has a lifetime, renewed with every
heartbeat of a worker serving it, and by the worker's main process while its
pool child reloads the models: it outlives a worker's restart, so jobs can
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

__all__ = ["analyzer_specs", "live_workers", "publish_analyzers", "publish_heartbeat", "forget_worker",
           "renew_analyzers"]

_KEYS = {"specs": keys.ANALYZERS, "expiries": keys.ANALYZER_EXPIRIES}


def publish_analyzers(redis: Redis, specs: list[dict[str, Any]], ttl: float = Settings.analyzer_ttl,
                      replace: bool = True) -> None:
    """Publish ``specs``, or renew them, for ``ttl`` seconds from now.

    With ``replace`` false a spec is written only where none lives, and otherwise only its
    lifetime is renewed: what a worker's later beats do, so that two workers serving
    different versions of a spec do not overwrite each other on every beat."""
    if specs:
        pairs = [[s["name"], json.dumps(s)] for s in specs]
        load("publish_analyzers").bind(redis)(
            keys=_KEYS, args={"specs": json.dumps(pairs), "ttl": ttl, "first": int(replace)})


def renew_analyzers(redis: Redis, names: list[str], ttl: float = Settings.analyzer_ttl) -> int:
    """Push the lifetime of the live specs among ``names`` to ``ttl`` seconds from now, without
    publishing any: for a process that serves analyzers but has not loaded them. Returns how many."""
    if not names:
        return 0
    return int(load("renew_analyzers").bind(redis)(keys=_KEYS, args={"names": json.dumps(names), "ttl": ttl}))


def analyzer_specs(redis: Redis, ttl: float = Settings.analyzer_ttl) -> dict[str, dict[str, Any]]:
    """The specs within their lifetime, by name; expired ones are deleted on the way, and one
    without a lifetime (from a worker older than lifetimes) is given ``ttl`` seconds from now."""
    flat = load("live_analyzers").bind(redis)(keys=_KEYS, args={"ttl": ttl})
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
