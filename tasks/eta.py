"""Where a job stands: its place in its queue, and when it should be done.

The place comes from the queue's index (``keys.queued_index``: every push,
numbered): the jobs numbered from the oldest message still in the list up to
this job's own number are the ones ahead of it. One small script, one round
trip, whatever the queue's length. The ETA comes from a moving average of the
analyzer's measured run times, which workers update as jobs end, and from
what is left of the jobs the serving workers run now.
"""

from __future__ import annotations

import heapq
import json
import time
from functools import lru_cache
from typing import Any

from redis import Redis
from redis.commands.core import Script

from tasks import catalog, keys
from tasks.pipelined import Pipelined

__all__ = ["average_run_seconds", "fraction_of", "free_in", "queue_position", "queued_seconds", "record_run_seconds",
           "running_seconds"]

#: Weight of the newest run in the moving average.
_ALPHA = 0.2
#: The deepest position worked out job by job (a few milliseconds); deeper ones are estimated.
_SIMULATED_POSITIONS = 10_000

# KEYS: queue list, queue index. ARGV: job id. Returns the jobs ahead, or -1 when the job is not indexed.
_POSITION = """
local mine = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not mine then return -1 end
local oldest = redis.call('LINDEX', KEYS[1], -1)
if not oldest then return 0 end
local ok, message = pcall(cjson.decode, oldest)
local first = nil
if ok and type(message) == 'table' and type(message['headers']) == 'table' then
  first = redis.call('ZSCORE', KEYS[2], message['headers']['id'])
end
if not first then
  return math.min(redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. mine), redis.call('LLEN', KEYS[1]))
end
return redis.call('ZCOUNT', KEYS[2], first, '(' .. mine)
"""

# KEYS: averages hash. ARGV: analyzer, seconds, alpha.
_RECORD = """
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
local new = tonumber(ARGV[2])
if old then new = old + tonumber(ARGV[3]) * (new - old) end
redis.call('HSET', KEYS[1], ARGV[1], tostring(new))
return tostring(new)
"""


@lru_cache(maxsize=8)
def _script(redis: Redis, source: str) -> Script:
    return redis.register_script(source)


def queue_position(redis: Redis, queue: str, job_id: str) -> int | None:
    """Jobs ahead of ``job_id`` in ``queue`` (0: next), or None when it is not in the queue's index."""
    ahead = int(_script(redis, _POSITION)(keys=[queue, keys.queued_index(queue)], args=[job_id]))
    return None if ahead < 0 else ahead


def record_run_seconds(redis: Redis, analyzer: str, seconds: float, batch: Pipelined | None = None) -> None:
    """Fold ``seconds`` of worker time per job into the analyzer's average (queued on ``batch`` if given)."""
    call = (_script(redis, _RECORD), [keys.RUN_SECONDS], [analyzer, repr(float(seconds)), _ALPHA])
    if batch is not None:
        batch.script(*call)
    else:
        call[0](keys=call[1], args=call[2])


def average_run_seconds(redis: Redis, analyzer: str) -> float | None:
    raw = redis.hget(keys.RUN_SECONDS, analyzer)
    return float(raw) if raw is not None else None


def free_in(redis: Redis, analyzer: str) -> list[float]:
    """Seconds until each live worker serving ``analyzer`` is free, soonest first: 0 for an idle one,
    else what is left of the jobs it runs (whatever analyzer they are of). Empty when no live worker
    serves it. Read from the running jobs' records, which say at once who runs them (a heartbeat
    says it only at its next beat)."""
    serving = [w["name"] for w in catalog.live_workers(redis) if analyzer in w.get("analyzers", ())]
    if not serving:
        return []
    pipe = redis.pipeline(transaction=False)
    running = [job_id.decode() for job_id in redis.smembers(keys.RUNNING)]
    for job_id in running:
        pipe.hmget(keys.job(job_id), "worker", "analyzer", "started_at", "progress")
    rows = [row for row in pipe.execute() if row[0] and row[0].decode() in serving and row[2]]
    averages = _averages(redis, {row[1] for row in rows if row[1]})
    left: dict[str, float] = {}
    for worker, job_analyzer, started_at, progress in rows:
        average = averages.get(job_analyzer)
        estimate = running_seconds(average, elapsed=max(0.0, time.time() - float(started_at)),
                                   fraction=fraction_of(json.loads(progress) if progress else None))
        # A batch's jobs end together: the worker is free when the longest is done.
        name = worker.decode()
        left[name] = max(left.get(name, 0.0), estimate if estimate is not None else average or 0.0)
    return sorted(left.get(name, 0.0) for name in serving)


def _averages(redis: Redis, analyzers: set[bytes]) -> dict[bytes, float | None]:
    """Each analyzer's average run seconds, in one round trip."""
    names = sorted(analyzers)
    values = redis.hmget(keys.RUN_SECONDS, names) if names else []
    return {name: float(v) if v is not None else None for name, v in zip(names, values, strict=True)}


def queued_seconds(average: float, position: int, free: list[float]) -> float:
    """Seconds until a queued job at ``position`` should end. The jobs ahead, then this one, go each
    to the worker that comes free soonest (``free``: each worker's seconds until then) and take it
    ``average`` seconds; a worker busy with a long job takes none meanwhile. Past
    ``_SIMULATED_POSITIONS`` jobs ahead the queue is taken to drain at one job per worker per
    average from the soonest free worker on."""
    if position > _SIMULATED_POSITIONS:
        return min(free) + average * (position // len(free) + 1)
    workers = list(free)
    heapq.heapify(workers)
    for _ in range(position):
        heapq.heapreplace(workers, workers[0] + average)
    return workers[0] + average


def fraction_of(progress: Any) -> float | None:
    """The fraction done that a job's progress reports, if it reports one."""
    fraction = progress.get("fraction") if isinstance(progress, dict) else None
    return fraction if isinstance(fraction, (int, float)) and not isinstance(fraction, bool) else None


def running_seconds(average: float | None, *, elapsed: float, fraction: float | None = None) -> float | None:
    """Seconds until a running job should end: what its progress ``fraction`` says is left, else the
    analyzer's average less what it has run."""
    if fraction and fraction > 0:
        return max(0.0, elapsed * (1 - fraction) / fraction)
    return None if average is None else max(0.0, average - elapsed)
