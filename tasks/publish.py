"""The broker message of a job, built here so it can be written in the same
Redis transaction as the job record and its input.

Celery's own publish goes through kombu on a separate connection; a process
dying between the record write and that publish would leave a job "queued"
with no message, forever. Writing the message ourselves, in kombu's Redis
format with Celery's own task headers, makes acceptance one atomic step.
"""

from __future__ import annotations

import base64
import json
import uuid

from celery import Celery

from tasks.app import RUN_TASK, task_label

__all__ = ["job_message"]


def job_message(celery_app: Celery, job_id: str, analyzer: str, queue: str) -> str:
    """The JSON that kombu's Redis transport LPUSHes for ``gpuq.run(job_id)`` on ``queue``."""
    task = celery_app.amqp.as_task_v2(job_id, RUN_TASK, args=[job_id], kwargs={}, shadow=task_label(analyzer))
    body = json.dumps(task.body).encode()
    return json.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": task.headers,
        "properties": {
            **task.properties,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    })
