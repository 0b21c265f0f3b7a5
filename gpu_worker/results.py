"""Storing a batch's results in Celery's result backend, with the batch's other writes.

Each result is written exactly as Celery's Redis backend writes a task's
result (same key, JSON, expiry and pub/sub notice), so ``AsyncResult``,
Flower and the API read it unchanged. Celery's own ``store_result`` costs two
round trips per job (it reads the key first); a batch of 64 would pay 128.
Queued on the batch's pipeline, ahead of the records' ends, they cost none of
their own, and Redis applies them first. The text is orjson's where it means
the same as the backend's encoder would write (``gpu_worker.fast_json``).
"""

from __future__ import annotations

from typing import Any

from celery import states

from gpu_worker.fast_json import dumps_like
from tasks.pipelined import Pipelined

__all__ = ["encode_result", "queue_results", "result_meta"]


def result_meta(backend: Any, job_id: str, result: Any) -> dict[str, Any]:
    """What Celery's backend stores for a task of ``job_id`` that returned ``result``, before encoding."""
    meta = backend._get_result_meta(result=result, state=states.SUCCESS, traceback=None, request=None)
    meta["task_id"] = job_id
    return meta


def encode_result(backend: Any, job_id: str, result: Any) -> bytes | str:
    """The result as Celery's backend stores it; raises TypeError or ValueError if it is not JSON.

    Encoding once, here, is also the check that a result can be stored: a large
    result is not turned into JSON twice.
    """
    return dumps_like(result_meta(backend, job_id, result), backend.encode)


def queue_results(batch: Pipelined, backend: Any, encoded: dict[str, bytes | str]) -> None:
    """Queue ``{job id: encoded result}`` (``encode_result``) as SUCCESS results of the tasks of those ids."""
    for job_id, value in encoded.items():
        key = backend.get_key_for_task(job_id)
        if backend.expires:
            batch.pipe.setex(key, backend.expires, value)
        else:
            batch.pipe.set(key, value)
        batch.pipe.publish(key, value)
