"""The broker message of a job, built here so it can be written in the same
Redis transaction as the job record and its input.

Celery's own publish goes through kombu on a separate connection; a process
dying between the record write and that publish would leave a job "queued"
with no message, forever. Writing the message ourselves, in kombu's Redis
format with Celery's own task headers, makes acceptance one atomic step.

Building it with Celery costs more than the rest of a submit's own work, yet
only the job id and kombu's delivery tag differ from one job to the next. So
Celery builds it once per analyzer (and process: the ``origin`` header names
the process), around placeholders, and each job's message is that template
with its id and tag written in.
"""

from __future__ import annotations

import base64
import json
import os
import re
from functools import lru_cache
from typing import Any

from celery import Celery

from tasks.app import RUN_TASK, task_label
from tasks.ids import random_uuid

__all__ = ["job_message"]

# Braces never occur in a message's other values (analyzer names are [a-z0-9_-]).
_JOB_ID = "{gpuq:job-id}"
_DELIVERY_TAG = "{gpuq:delivery-tag}"
_BODY = "{gpuq:body}"
#: Ids that JSON and Celery's ``argsrepr`` write out unchanged, so the template can take them as they are.
_PLAIN_ID = re.compile(r"[0-9A-Za-z_.:-]{1,128}")


def job_message(celery_app: Celery, job_id: str, analyzer: str, queue: str) -> str:
    """The JSON that kombu's Redis transport LPUSHes for ``gpuq.run(job_id)`` on ``queue``."""
    delivery_tag = random_uuid()
    if not _PLAIN_ID.fullmatch(job_id):
        return _build(celery_app, job_id, analyzer, queue, delivery_tag)
    body, envelope = _template(celery_app, analyzer, queue, os.getpid())
    encoded_body = base64.b64encode(body.replace(_JOB_ID, job_id).encode()).decode()
    return envelope.replace(_JOB_ID, job_id).replace(_DELIVERY_TAG, delivery_tag).replace(_BODY, encoded_body)


@lru_cache(maxsize=256)
def _template(celery_app: Celery, analyzer: str, queue: str, pid: int) -> tuple[str, str]:
    """(body JSON, envelope JSON) with placeholders for the job id, the delivery tag and the encoded body."""
    body, envelope = _parts(celery_app, _JOB_ID, analyzer, queue, _DELIVERY_TAG)
    envelope["body"] = _BODY
    return body, json.dumps(envelope)


def _build(celery_app: Celery, job_id: str, analyzer: str, queue: str, delivery_tag: str) -> str:
    body, envelope = _parts(celery_app, job_id, analyzer, queue, delivery_tag)
    envelope["body"] = base64.b64encode(body.encode()).decode()
    return json.dumps(envelope)


def _parts(celery_app: Celery, job_id: str, analyzer: str, queue: str,
           delivery_tag: str) -> tuple[str, dict[str, Any]]:
    """Celery's task body (JSON) and kombu's envelope around it (its ``body`` still to be set)."""
    # ignore_result: the worker stores each job's result itself, with the batch's other
    # writes. Celery would otherwise store the task's return value too (a round trip
    # to find the job's result already there): the message's flag overrides the task's.
    task = celery_app.amqp.as_task_v2(job_id, RUN_TASK, args=[job_id], kwargs={}, shadow=task_label(analyzer),
                                      ignore_result=True)
    return json.dumps(task.body), {
        "body": None,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": task.headers,
        "properties": {
            **task.properties,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag,
        },
    }
