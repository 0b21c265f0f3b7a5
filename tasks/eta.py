"""Where a job stands: its place in its queue, and when it should be done.

The place comes from the queue's index (``keys.queued_index``: every push,
numbered): the jobs numbered from the oldest message still in the list up to
this job's own number are the ones ahead of it. One small script, one round
trip, whatever the queue's length. The ETA comes from a moving average of the
analyzer's measured run times, which workers update as jobs end.
"""

from __future__ import annotations

import math
from functools import lru_cache

from redis import Redis
from redis.commands.core import Script

from tasks import catalog, keys
from tasks.pipelined import Pipelined

__all__ = ["average_run_seconds", "estimate_seconds", "queue_position", "record_run_seconds", "serving_workers"]

#: Weight of the newest run in the moving average.
_ALPHA = 0.2

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


def serving_workers(redis: Redis, analyzer: str) -> int:
    return sum(1 for w in catalog.live_workers(redis) if analyzer in w.get("analyzers", ()))


def estimate_seconds(average: float | None, *, position: int | None = None, workers: int = 1,
                     elapsed: float | None = None, fraction: float | None = None) -> float | None:
    """Seconds until the job should end: queued (``position``) or running (``elapsed``, ``fraction``)."""
    if elapsed is not None:  # running
        if fraction and fraction > 0:
            return max(0.0, elapsed * (1 - fraction) / fraction)
        return None if average is None else max(0.0, average - elapsed)
    if average is None or position is None:
        return None
    # Jobs ahead are shared among the workers; then this job's own run.
    return average * (math.floor(position / max(1, workers)) + 1)
