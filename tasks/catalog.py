"""What the fleet serves: analyzer specs and live workers, published by workers.

The API never imports analyzer code (it may need torch), so each worker
publishes its analyzers' specs here when its model is loaded, and keeps a
heartbeat key alive while it runs. Specs stay after workers stop, so jobs can
still queue while a worker restarts; liveness comes from the heartbeats.
"""

from __future__ import annotations

import json
from typing import Any

from redis import Redis

from tasks import keys

__all__ = ["analyzer_specs", "live_workers", "publish_analyzers", "publish_heartbeat", "forget_worker"]


def publish_analyzers(redis: Redis, specs: list[dict[str, Any]]) -> None:
    if specs:
        redis.hset(keys.ANALYZERS, mapping={s["name"]: json.dumps(s) for s in specs})


def analyzer_specs(redis: Redis) -> dict[str, dict[str, Any]]:
    return {k.decode(): json.loads(v) for k, v in redis.hgetall(keys.ANALYZERS).items()}


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
