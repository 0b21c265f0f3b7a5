"""Gathering a batch: the jobs that wait behind the one Celery delivered.

Celery hands the pool child one message (the lead). To batch across jobs the
child takes more of the same analyzer's waiting messages straight from the
queue's Redis list, up to the analyzer's ``max_batch_size``, waiting at most
its ``max_wait_ms`` for the batch to fill.

Taking a message and claiming its job are one Lua script: the message leaves
the list in the same step that the job becomes ``running``, counts an
attempt, and gets a lock naming this process as a batch member. So there is
no moment when a crash could lose it: the record says who ran it, and when
that process is dead the janitor delivers the job again (at once on this
host, see ``gpu_worker.janitor``), within the attempt bound. A claimed job's
"ack" is its finish: the terminal record and the released lock.

Not every message is claimed:

- one whose job is no longer queued (canceled, finished, expired) is dropped:
  it has nothing left to do;
- one that is not a JSON ``gpuq.run`` message is dropped and reported, as
  Celery refuses it;
- one whose job already had an attempt (its worker died), or that carries an
  ETA (a Celery retry), or whose lock is held, goes back to the consuming end
  of the list and gathering stops: Celery delivers it next, as a lead, and a
  job that already crashed a process runs alone, so a poison input cannot take
  innocent jobs down with it twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from redis import Redis

from tasks import keys
from tasks.app import RUN_TASK
from tasks.jobs import encode_fields

__all__ = ["BatchGatherer", "Gathered"]

log = logging.getLogger("gpuq.batching")

# KEYS: queue, running set, queued index, webhook outbox.
# ARGV: most messages to take, lock owner, lock TTL, task name, job key prefix,
#       lock key prefix, events prefix, then the running fields as name, value pairs.
# Returns {claimed ids, dropped ids, refused raw messages, 1 if it stopped at a message it put back}.
_CLAIM = """
local claimed, dropped, refused = {}, {}, {}
local stopped = 0
for _ = 1, tonumber(ARGV[1]) do
  local raw = redis.call('RPOP', KEYS[1])
  if not raw then break end
  local ok, message = pcall(cjson.decode, raw)
  local headers = ok and type(message) == 'table' and message['headers'] or nil
  local id = type(headers) == 'table' and headers['id'] or nil
  if type(id) ~= 'string' or headers['task'] ~= ARGV[4] or message['content-type'] ~= 'application/json' then
    refused[#refused + 1] = raw
  else
    local job = ARGV[5] .. id
    local status = redis.call('HGET', job, 'status')
    local eta = headers['eta']
    if status ~= 'queued' then
      dropped[#dropped + 1] = id
    elseif (eta ~= nil and eta ~= cjson.null) or tonumber(redis.call('HGET', job, 'attempts') or '0') > 0
        or redis.call('EXISTS', ARGV[6] .. id) == 1 then
      redis.call('RPUSH', KEYS[1], raw)
      stopped = 1
      break
    else
      redis.call('SET', ARGV[6] .. id, ARGV[2], 'EX', tonumber(ARGV[3]))
      redis.call('HINCRBY', job, 'attempts', 1)
      redis.call('HSET', job, unpack(ARGV, 8))
      redis.call('SADD', KEYS[2], id)
      redis.call('ZREM', KEYS[3], id)
      redis.call('PUBLISH', ARGV[7] .. id, 'running')
      local hook = redis.call('HGET', job, 'webhook')
      if hook and hook ~= '' then redis.call('LPUSH', KEYS[4], id .. '|running') end
      claimed[#claimed + 1] = id
    end
  end
end
return {claimed, dropped, refused, stopped}
"""

#: Pause between two looks at an empty queue while a batch waits to fill.
_POLL_SECONDS = 0.001


@dataclass
class Gathered:
    #: Jobs claimed for this batch: running, locked by ``owner``, one attempt counted.
    job_ids: list[str] = field(default_factory=list)
    #: Jobs whose messages were dropped because they were no longer queued.
    dropped: list[str] = field(default_factory=list)


class BatchGatherer:
    def __init__(self, redis: Redis, *, lock_ttl: int):
        self.redis = redis
        self.lock_ttl = lock_ttl
        self._claim = redis.register_script(_CLAIM)

    def gather(self, queue: str, most: int, *, owner: str, running_fields: dict, deadline: float) -> Gathered:
        """Claim up to ``most`` jobs waiting in ``queue``, polling until ``deadline`` (``time.monotonic``)."""
        gathered = Gathered()
        fields = [part for pair in encode_fields(running_fields).items() for part in pair]
        while len(gathered.job_ids) < most:
            claimed, dropped, refused, stopped = self._claim(
                keys=[queue, keys.RUNNING, keys.queued_index(queue), keys.WEBHOOK_OUTBOX],
                args=[most - len(gathered.job_ids), owner, self.lock_ttl, RUN_TASK, keys.job(""),
                      keys.job_lock(""), keys.job_events(""), *fields])
            gathered.job_ids += [i.decode() for i in claimed]
            gathered.dropped += [i.decode() for i in dropped]
            for raw in refused:
                log.error("refused a message in %s that is not a JSON %s message (dropped): %.200r",
                          queue, RUN_TASK, raw)
            if stopped or len(gathered.job_ids) >= most:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not claimed and not dropped and not refused:
                time.sleep(min(_POLL_SECONDS, remaining))
        return gathered
