"""Job metrics kept in Redis: defined once here, written by the API and the workers, rendered by the API.

Why Redis rather than prometheus_client's multiprocess mode: the timing
histograms are observed by the workers, in other processes and often on other
hosts, so they need shared storage anyway. Keeping the API's counters there
too means that every gunicorn worker (and every API replica) renders the same
fleet-wide numbers from one source: no PROMETHEUS_MULTIPROC_DIR to clean at
start, no ``child_exit`` hook, and an API restart resets nothing. The price is
one HINCRBY per submission (for an accepted job, inside the submit script of
tasks/submission.py, so it costs no round trip of its own), and the rule that
Prometheus scrapes one API address (or the load-balanced service): summing the
replicas would count each job once per replica.

Storage: one hash per metric (``tasks.keys.metric``). A counter's field is its
label values as a JSON list; a histogram's fields are ``<labels>|<i>`` (the
count of observations in bucket ``i``, not cumulative), ``<labels>|sum`` and
``<labels>|count``.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from redis import Redis
from redis.commands.core import Script

from tasks import keys
from tasks.app import queue_for
from tasks.pipelined import Pipelined

__all__ = ["BATCH_SIZE", "COUNTERS", "Counter", "HISTOGRAMS", "Histogram", "JOBS_ACCEPTED", "JOBS_REJECTED",
           "QUEUE_WAIT", "RUN_TIME", "TOTAL_TIME", "HistogramValue", "count", "counter_field", "observe_job",
           "queue_depths", "read_counter", "read_histogram"]

#: Seconds: from a fast GPU call to the hard time limit's order of magnitude.
_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                 1800.0, 3600.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Counter:
    name: str
    help: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Histogram:
    name: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...]

    def bucket_of(self, value: float) -> int:
        """Index of the first upper bound >= value; ``len(buckets)`` is +Inf."""
        return bisect.bisect_left(self.buckets, value)


JOBS_ACCEPTED = Counter("gpuq_jobs_accepted", "Jobs accepted by the API (answered 202).", ("analyzer",))
JOBS_REJECTED = Counter(
    "gpuq_jobs_rejected",
    "Job submissions refused by the API, by the error code of the answer (analyzer is empty when unknown).",
    ("analyzer", "reason"))
QUEUE_WAIT = Histogram("gpuq_job_queue_wait_seconds", "Time from acceptance to the start of the job's run.",
                       ("analyzer", "status"), _TIME_BUCKETS)
RUN_TIME = Histogram("gpuq_job_run_seconds", "Time the job ran on its worker.", ("analyzer", "status"),
                     _TIME_BUCKETS)
TOTAL_TIME = Histogram("gpuq_job_total_seconds", "Time from acceptance to the job's end.", ("analyzer", "status"),
                       _TIME_BUCKETS)
BATCH_SIZE = Histogram("gpuq_job_batch_size", "Size of the batch each job ran in.", ("analyzer",), _BATCH_BUCKETS)

COUNTERS = (JOBS_ACCEPTED, JOBS_REJECTED)
HISTOGRAMS = (QUEUE_WAIT, RUN_TIME, TOTAL_TIME, BATCH_SIZE)

# KEYS[1]: the job's hash (its record); KEYS[2..]: one histogram hash each.
# ARGV[1]: the status the record must have; ARGV[2]: the fence it must have ('' any: see
# tasks/lifecycle.py); then per histogram, a triple (labels, bucket index, value).
# A job is observed once: a redelivered message, or a second look at a job
# another process finished, finds the mark and adds nothing. The mark lives in
# the job's own hash so that it expires with it; a vanished record is skipped
# rather than re-created without a TTL, and so is a record whose status is not
# the one observed (its end was written by someone else), or whose fence is not the observing
# run's token (that run lost the job: its end was refused).
_OBSERVE = """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'fence') ~= ARGV[2] then return 0 end
if redis.call('HSETNX', KEYS[1], 'metrics_observed', '1') == 0 then return 0 end
for i = 2, #KEYS do
  local base = (i - 2) * 3 + 2
  local labels = ARGV[base + 1]
  redis.call('HINCRBY', KEYS[i], labels .. '|' .. ARGV[base + 2], 1)
  redis.call('HINCRBYFLOAT', KEYS[i], labels .. '|sum', ARGV[base + 3])
  redis.call('HINCRBY', KEYS[i], labels .. '|count', 1)
end
return 1
"""

# kombu's Redis transport keeps a queue's messages of priority p > 0 in a list
# named queue + separator + p; a message sent without a priority goes to the
# plain name. Counting all steps keeps the depth right if priorities come in.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


def _labels(metric: Counter | Histogram, values: tuple[str, ...]) -> str:
    if len(values) != len(metric.labels):
        raise ValueError(f"{metric.name} takes labels {metric.labels}, got {values}")
    return json.dumps([str(v) for v in values], separators=(",", ":"))


def counter_field(counter: Counter, *labels: str) -> str:
    """The field of ``counter``'s hash that holds the count of these labels (for a script that counts)."""
    return _labels(counter, labels)


def count(redis: Redis, counter: Counter, *labels: str, amount: int = 1) -> None:
    redis.hincrby(keys.metric(counter.name), counter_field(counter, *labels), amount)


def observe_job(redis: Redis, job_id: str, *, analyzer: str, status: str, queue_wait: float | None,
                run: float | None, total: float | None, batch_size: int | None,
                batch: Pipelined | None = None, fence: int | None = None) -> bool:
    """Record one finished job (whose record says ``status``) in the histograms, once.

    Returns True when this call recorded it; with ``batch`` the write is queued
    there instead (and True returned), to go with the rest of a batch's writes.
    """
    observations: list[tuple[Histogram, tuple[str, ...], float | None]] = [
        (QUEUE_WAIT, (analyzer, status), queue_wait),
        (RUN_TIME, (analyzer, status), run),
        (TOTAL_TIME, (analyzer, status), total),
        (BATCH_SIZE, (analyzer,), batch_size),
    ]
    hist_keys: list[str] = []
    args: list[Any] = [status, "" if fence is None else fence]
    for histogram, labels, value in observations:
        if value is None:
            continue
        value = max(0.0, float(value))
        hist_keys.append(keys.metric(histogram.name))
        args += [_labels(histogram, labels), histogram.bucket_of(value), repr(value)]
    # register_script sends EVALSHA, and the script body only when Redis lacks it.
    script = _observe_script(redis)
    if batch is not None:
        batch.script(script, [keys.job(job_id), *hist_keys], args)
        return True
    return bool(script(keys=[keys.job(job_id), *hist_keys], args=args))


@lru_cache(maxsize=8)
def _observe_script(redis: Redis) -> Script:
    return redis.register_script(_OBSERVE)


def read_counter(redis: Redis, counter: Counter) -> dict[tuple[str, ...], float]:
    return {tuple(json.loads(field)): float(value)
            for field, value in redis.hgetall(keys.metric(counter.name)).items()}


@dataclass
class HistogramValue:
    #: Observations per bucket (not cumulative); the last entry is +Inf.
    buckets: list[int]
    sum: float = 0.0
    count: int = 0

    def cumulative(self, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
        """(upper bound, cumulative count) pairs as Prometheus writes them, ending with +Inf."""
        out, running = [], 0
        for bound, n in zip((*[_bound(b) for b in bounds], "+Inf"), self.buckets, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


def _bound(value: float) -> str:
    return repr(float(value))


def read_histogram(redis: Redis, histogram: Histogram) -> dict[tuple[str, ...], HistogramValue]:
    values: dict[tuple[str, ...], HistogramValue] = {}
    for raw_field, raw_value in redis.hgetall(keys.metric(histogram.name)).items():
        labels_json, _, part = raw_field.decode().rpartition("|")
        labels = tuple(json.loads(labels_json))
        value = values.setdefault(labels, HistogramValue(buckets=[0] * (len(histogram.buckets) + 1)))
        if part == "sum":
            value.sum = float(raw_value)
        elif part == "count":
            value.count = int(raw_value)
        else:
            index = int(part)
            if 0 <= index < len(value.buckets):  # bounds changed since it was written: drop, do not crash
                value.buckets[index] += int(raw_value)
    return values


def queue_depths(redis: Redis, analyzers: list[str]) -> dict[str, int]:
    """Messages waiting in each analyzer's queue (not those a worker holds unacknowledged)."""
    pipe = redis.pipeline(transaction=False)
    for name in analyzers:
        queue = queue_for(name)
        pipe.llen(queue)
        for step in _PRIORITY_STEPS:
            pipe.llen(f"{queue}{_PRIORITY_SEPARATOR}{step}")
    lengths = pipe.execute()
    per = 1 + len(_PRIORITY_STEPS)
    return {name: int(sum(lengths[i * per:(i + 1) * per])) for i, name in enumerate(analyzers)}
