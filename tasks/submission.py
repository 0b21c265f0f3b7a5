"""Accepting a job: record, claim-checked input and Celery message.

The input bytes never ride in the broker message: they are stored under
their own key with a TTL and the message carries only the job id. A 202 is
given only once all three writes are in Redis.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from celery import Celery

from tasks.app import RUN_TASK, queue_for, task_label
from tasks.jobs import QUEUED, JobRecord, JobStore

__all__ = ["submit_job"]


def submit_job(store: JobStore, celery_app: Celery, *, analyzer: str, input_bytes: bytes,
               input_media_type: str, params: dict[str, Any]) -> JobRecord:
    record = JobRecord(
        id=str(uuid.uuid4()),
        analyzer=analyzer,
        status=QUEUED,
        created_at=time.time(),
        input_media_type=input_media_type,
        params=params,
    )
    pipe = store.redis.pipeline(transaction=True)
    store.create_in(pipe, record, input_bytes)
    pipe.execute()
    try:
        celery_app.send_task(RUN_TASK, args=[record.id], task_id=record.id, queue=queue_for(analyzer),
                             shadow=task_label(analyzer))
    except BaseException:
        # Not enqueued: leave no record that would read "queued" forever.
        store.delete(record.id)
        raise
    return record
