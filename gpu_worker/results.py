"""Storing a batch's results in Celery's result backend, in one round trip.

Each result is written exactly as Celery's Redis backend writes a task's
result (same key, encoding, expiry and pub/sub notice), so ``AsyncResult``,
Flower and the API read it unchanged. Celery's own ``store_result`` costs two
round trips per job (it reads the key first); a batch of 64 would pay 128.
Pipelined through the worker's retrying client, a batch pays one, and a
result is never lost to a short Redis outage.
"""

from __future__ import annotations

from typing import Any

from celery import states
from redis import Redis

__all__ = ["store_results"]


def store_results(redis: Redis, backend: Any, results: dict[str, Any]) -> None:
    """Write ``{job id: result}`` as SUCCESS results of the tasks of those ids."""
    if not results:
        return
    pipe = redis.pipeline(transaction=False)
    for job_id, result in results.items():
        meta = backend._get_result_meta(result=result, state=states.SUCCESS, traceback=None, request=None)
        meta["task_id"] = job_id
        key, value = backend.get_key_for_task(job_id), backend.encode(meta)
        if backend.expires:
            pipe.setex(key, backend.expires, value)
        else:
            pipe.set(key, value)
        pipe.publish(key, value)
    pipe.execute()
