"""``GET /metrics``: the fleet in Prometheus text, and the counting of submissions.

Every value is read from Redis at scrape time (see tasks/metrics.py for why),
so any gunicorn worker of any API replica answers with the same numbers.
Nothing process-local (no default process or GC collectors) is exported, as
it would differ from one scrape to the next depending on which process answered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from flask import Blueprint, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from api.form import form_read_so_far
from api.services import Services, services
from tasks import catalog
from tasks import metrics as job_metrics

__all__ = ["FleetCollector", "metrics"]

log = logging.getLogger("gpuq.metrics")

metrics = Blueprint("metrics", __name__)

_SUBMIT_ENDPOINT = "jobs.create_job"
_SERVING_STATES = ("ready", "busy")


@metrics.get("/metrics")
def scrape() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(services()))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


@metrics.after_app_request
def count_submission(response: Response) -> Response:
    """Count each refused ``POST /v1/jobs`` with its error code.

    Accepted jobs are counted by the submit script itself (tasks/submission.py),
    in the same step that writes them: a replay of an earlier request (same
    Idempotency-Key) accepts, and counts, nothing.
    """
    if request.endpoint != _SUBMIT_ENDPOINT or request.method != "POST" or response.status_code == 202:
        return response
    svc = services()
    try:
        reason = ((response.get_json(silent=True) or {}).get("error") or {}).get("code") or str(response.status_code)
        if reason == "unavailable":
            return response  # Redis is down: nowhere to count it, and trying would only slow the 503
        job_metrics.count(svc.redis, job_metrics.JOBS_REJECTED, _requested_analyzer(svc), reason)
    except Exception as error:  # a lost count must never turn an answer into an error
        log.warning("could not count a submission: %s: %s", type(error).__name__, error)
    return response


def _requested_analyzer(svc: Services) -> str:
    """The analyzer the request named, if it is one the fleet serves; else "" (no label per typo)."""
    name = None
    limit = request.max_content_length
    if limit is not None and (request.content_length or 0) > limit:
        return ""  # refused unread: reading the body now would only be refused again
    if request.mimetype == "application/json":
        body = request.get_json(silent=True)
        name = body.get("analyzer") if isinstance(body, dict) else None
    else:
        # Only a form the view already parsed: reading one refused as too large would raise again.
        form = form_read_so_far(request)
        name = form.fields.get("analyzer") if form is not None else None
    return name if isinstance(name, str) and name in svc.analyzers.all() else ""


class FleetCollector(Collector):
    """Reads the counters, histograms, queues and worker heartbeats from Redis at each scrape."""

    def __init__(self, svc: Services):
        self._svc = svc

    def collect(self) -> Iterator[Metric]:
        redis = self._svc.redis
        up = GaugeMetricFamily("gpuq_redis_up", "Whether the API reached Redis for this scrape (1) or not (0).")
        try:
            redis.ping()
        except Exception as error:  # answer what we can: the scrape itself says Redis is away
            log.warning("metrics: redis unreachable: %s", error)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._counters()
        yield from self._histograms()
        analyzers = sorted(self._svc.analyzers.all(refresh=True))
        yield self._queue_depths(analyzers)
        yield from self._workers(analyzers)

    def _counters(self) -> Iterator[Metric]:
        for counter in job_metrics.COUNTERS:
            family = CounterMetricFamily(counter.name, counter.help, labels=counter.labels)
            for labels, value in sorted(job_metrics.read_counter(self._svc.redis, counter).items()):
                family.add_metric(list(labels), value)
            yield family

    def _histograms(self) -> Iterator[Metric]:
        for histogram in job_metrics.HISTOGRAMS:
            family = HistogramMetricFamily(histogram.name, histogram.help, labels=histogram.labels)
            for labels, value in sorted(job_metrics.read_histogram(self._svc.redis, histogram).items()):
                family.add_metric(list(labels), value.cumulative(histogram.buckets), value.sum)
            yield family

    def _queue_depths(self, analyzers: list[str]) -> Metric:
        family = GaugeMetricFamily("gpuq_queue_depth", "Jobs waiting in each analyzer's queue.", labels=["analyzer"])
        for name, depth in job_metrics.queue_depths(self._svc.redis, analyzers).items():
            family.add_metric([name], depth)
        return family

    def _workers(self, analyzers: list[str]) -> Iterator[Metric]:
        workers = catalog.live_workers(self._svc.redis)
        live = GaugeMetricFamily("gpuq_workers_live", "Workers with a live heartbeat serving each analyzer.",
                                 labels=["analyzer"])
        counts = dict.fromkeys(analyzers, 0)
        for worker in workers:
            if worker.get("state") in _SERVING_STATES:
                for name in worker.get("analyzers", []):
                    counts[name] = counts.get(name, 0) + 1
        for name, n in sorted(counts.items()):
            live.add_metric([name], n)
        yield live

        busy = GaugeMetricFamily("gpuq_worker_busy",
                                 "Whether each live worker was running a job (1) or idle (0) at its last heartbeat.",
                                 labels=["worker", "device"])
        used = GaugeMetricFamily("gpuq_gpu_memory_used_bytes", "GPU memory in use on each worker's GPU (NVML).",
                                 labels=["worker", "gpu"])
        total = GaugeMetricFamily("gpuq_gpu_memory_total_bytes", "GPU memory of each worker's GPU (NVML).",
                                  labels=["worker", "gpu"])
        util = GaugeMetricFamily("gpuq_gpu_utilization_ratio",
                                 "Fraction of the last sample period the worker's GPU was busy (NVML).",
                                 labels=["worker", "gpu"])
        unhealthy = GaugeMetricFamily("gpuq_worker_unhealthy",
                                      "Whether each live worker's GPU failed (a sticky device error) and its "
                                      "model process is being replaced (1) or not (0).",
                                      labels=["worker", "device"])
        faults = GaugeMetricFamily("gpuq_worker_device_faults_in_a_row",
                                   "Device faults of each worker with no batch run between them; at "
                                   "GPUQ_DEVICE_FAULT_RESTARTS the worker stops.", labels=["worker"])
        pass_size = GaugeMetricFamily("gpuq_analyzer_pass_size",
                                      "Items per forward pass of each worker's analyzers that run in passes: "
                                      "halved each time the device runs out of memory.",
                                      labels=["worker", "analyzer"])
        for worker in sorted(workers, key=lambda w: w.get("name", "")):
            name = str(worker.get("name", ""))
            device = str(worker.get("device", ""))
            busy.add_metric([name, device], 1 if worker.get("state") == "busy" else 0)
            unhealthy.add_metric([name, device], 1 if worker.get("state") == "unhealthy" else 0)
            if isinstance(worker.get("device_faults_in_a_row"), int):
                faults.add_metric([name], worker["device_faults_in_a_row"])
            sizes = worker.get("pass_sizes")
            for analyzer, size in sorted(sizes.items() if isinstance(sizes, dict) else []):
                if isinstance(size, int):
                    pass_size.add_metric([name, str(analyzer)], size)
            gpu = worker.get("gpu")
            if isinstance(gpu, dict):  # relayed from the worker's heartbeat; absent without a GPU
                index = str(gpu.get("index", ""))
                for family, key in ((used, "memory_used_bytes"), (total, "memory_total_bytes"),
                                    (util, "utilization")):
                    if isinstance(gpu.get(key), (int, float)):
                        family.add_metric([name, index], gpu[key])
        yield from (busy, unhealthy, faults, pass_size, used, total, util)
