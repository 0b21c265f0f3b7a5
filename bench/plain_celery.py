"""The baseline for per-job overhead: a plain Celery app with one trivial task.

Celery's defaults, JSON on the wire, the benchmark's Redis as broker and
result backend (``GPUQ_REDIS_URL``) and a queue of its own; its pool child on
the cores of gpuq's model processes (``GPUQ_WORKER_CPUS``), when those have any. What a round trip
costs here, ``echo.apply_async(...).get()``, is what any Celery service pays;
gpuq's no-op job is compared with it.

    celery -A bench.plain_celery worker -P prefork -c 1 -Q bench.plain
"""

from __future__ import annotations

import os

from celery import Celery, signals

from gpu_worker.cpu_affinity import VARIABLE as CORES_VARIABLE
from gpu_worker.cpu_affinity import pin_to_cores

__all__ = ["QUEUE", "app", "echo"]

QUEUE = "bench.plain"

app = Celery("plain", broker=os.environ["GPUQ_REDIS_URL"], backend=os.environ["GPUQ_REDIS_URL"])
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                task_default_queue=QUEUE)


@signals.worker_process_init.connect
def _pin_to_the_models_cores(**_) -> None:
    # As gpuq's worker does with its model process: the same cores for both in a comparison.
    pin_to_cores(os.environ.get(CORES_VARIABLE))


@app.task(name="bench.echo")
def echo(value):
    return value
