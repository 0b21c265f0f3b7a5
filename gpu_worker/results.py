"""Storing a batch's results in Celery's result backend, with the batch's other writes.

Each result is written exactly as Celery's Redis backend writes a task's
result (same key, encoding, expiry and pub/sub notice), so ``AsyncResult``,
Flower and the API read it unchanged. Celery's own ``store_result`` costs two
round trips per job (it reads the key first); a batch of 64 would pay 128.
Queued on the batch's pipeline, ahead of the records' ends, they cost none of
their own, and Redis applies them first.
"""

from __future__ import annotations

from typing import Any

from celery import states

from tasks.pipelined import Pipelined

__all__ = ["queue_results"]


def queue_results(batch: Pipelined, backend: Any, results: dict[str, Any]) -> None:
    """Queue ``{job id: result}`` as SUCCESS results of the tasks of those ids."""
    for job_id, result in results.items():
        meta = backend._get_result_meta(result=result, state=states.SUCCESS, traceback=None, request=None)
        meta["task_id"] = job_id
        key, value = backend.get_key_for_task(job_id), backend.encode(meta)
        if backend.expires:
            batch.pipe.setex(key, backend.expires, value)
        else:
            batch.pipe.set(key, value)
        batch.pipe.publish(key, value)
