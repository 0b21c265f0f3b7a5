"""Storing a batch's results in Celery's result backend, with the batch's other writes.

Each result is written exactly as Celery's Redis backend writes a task's
result (same key, JSON, expiry and pub/sub notice), so ``AsyncResult``,
Flower and the API read it unchanged. Celery's own ``store_result`` costs two
round trips per job (it reads the key first); a batch of 64 would pay 128.
Here a result goes with its job's end (``tasks/lua/finish.lua``), in the same
script: written only when the end is, so a run whose lease was revoked never
stores one, and the batch's ends go in one round trip. The text is orjson's
where it means the same as the backend's encoder would write
(``gpu_worker.fast_json``).
"""

from __future__ import annotations

from typing import Any

from celery import states

from gpu_worker.fast_json import dumps_like

__all__ = ["encode_result", "result_key", "result_meta", "result_ttl"]


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


def result_key(backend: Any, job_id: str) -> str:
    """Where the backend keeps the result of ``job_id``'s task."""
    return backend.get_key_for_task(job_id)


def result_ttl(backend: Any) -> int:
    """Seconds a stored result lives (0: for ever), as the backend sets them."""
    return int(backend.expires or 0)
