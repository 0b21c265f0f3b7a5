"""Claiming jobs for a run: the one Celery delivered (the lead) and those gathered behind it.

A claim is one Lua script: the job becomes ``running``, counts an attempt and
gets a lock naming this process, and its record and input come back, in one
round trip. The lead's lock may be held: a live holder means this message is
a duplicate, a dead one is taken over (``JobLock``), then the claim is tried
again.

To batch across jobs the pool child takes more of the same analyzer's waiting
messages straight from the queue's Redis list, up to the analyzer's
``max_batch_size``, waiting at most its ``max_wait_ms`` for the batch to fill.
Taking a message and claiming its job are the same step, so there is no moment
when a crash could lose it: the record says who ran it, and when that process
is dead the janitor delivers the job again (at once on this host, see
``gpu_worker.janitor``), within the attempt bound. A member's "ack" is its
finish: the terminal record and the released lock.

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
from tasks.app import RUN_TASK, queue_for
from tasks.jobs import JobRecord, encode_fields

__all__ = ["Claimer", "Gathered", "LeadClaim"]

log = logging.getLogger("gpuq.batching")

# Marks a job running for ``owner`` (ARGV[2]) with the fields in ARGV[first..]: lock, attempt,
# record, running set, status channel and webhook outbox, as the job store's transition does.
# Returns the attempt count. KEYS[2] is the running set, KEYS[4] the webhook outbox.
_MARK_RUNNING = """
local function mark_running(id, job, lock, events, first)
  redis.call('SET', lock, ARGV[2], 'EX', tonumber(ARGV[3]))
  local attempts = redis.call('HINCRBY', job, 'attempts', 1)
  redis.call('HSET', job, unpack(ARGV, first))
  redis.call('SADD', KEYS[2], id)
  redis.call('PUBLISH', events, 'running')
  local hook = redis.call('HGET', job, 'webhook')
  if hook and hook ~= '' then redis.call('LPUSH', KEYS[4], id .. '|running') end
  return attempts
end
"""

# KEYS: job, running set, input, webhook outbox, lock, events channel.
# ARGV: job id, lock owner, lock TTL, most attempts, queue name prefix, then the running fields as
#       name, value pairs.
# Returns {'claimed', record as name, value pairs, input or false, messages waiting in the job's
# analyzer's queue}, {'locked', holder}, {'exhausted', attempts} (attempt counted, nothing else
# written), or {status} when not runnable. The count spares the runner a round trip to gather
# from an empty queue (the queue's name is built from ARGV[5]: gpuq runs on one Redis).
_CLAIM_LEAD = _MARK_RUNNING + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'absent'} end
if status ~= 'queued' and status ~= 'running' then return {status} end
local holder = redis.call('GET', KEYS[5])
if holder and holder ~= ARGV[2] then return {'locked', holder} end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') + 1
if attempts > tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'attempts', attempts)
  return {'exhausted', tostring(attempts)}
end
mark_running(ARGV[1], KEYS[1], KEYS[5], KEYS[6], 6)
local waiting = redis.call('LLEN', ARGV[5] .. (redis.call('HGET', KEYS[1], 'analyzer') or ''))
return {'claimed', redis.call('HGETALL', KEYS[1]), redis.call('GET', KEYS[3]), waiting}
"""

# KEYS: queue, running set, queued index, webhook outbox.
# ARGV: most messages to take, lock owner, lock TTL, task name, job key prefix,
#       lock key prefix, events prefix, input key prefix, then the running fields as name, value pairs.
# Returns {claimed ids, dropped ids, refused raw messages, 1 if it stopped at a message it put back,
# the claimed jobs' records as name, value pairs, their inputs (false where expired)}: a claimed job
# comes back ready to run, as the lead's claim does, without a round trip to read it.
_GATHER = _MARK_RUNNING + """
local claimed, dropped, refused, records, inputs = {}, {}, {}, {}, {}
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
      mark_running(id, job, ARGV[6] .. id, ARGV[7] .. id, 9)
      redis.call('ZREM', KEYS[3], id)
      claimed[#claimed + 1] = id
      records[#records + 1] = redis.call('HGETALL', job)
      inputs[#inputs + 1] = redis.call('GET', ARGV[8] .. id)
    end
  end
end
return {claimed, dropped, refused, stopped, records, inputs}
"""

#: Pause between two looks at an empty queue while a batch waits to fill.
_POLL_SECONDS = 0.001


@dataclass
class Gathered:
    #: Jobs claimed for this batch: running, locked by ``owner``, one attempt counted.
    job_ids: list[str] = field(default_factory=list)
    #: Their records (as claimed: running) and inputs (``None`` where it expired), in the same order.
    records: list[JobRecord] = field(default_factory=list)
    inputs: list[bytes | None] = field(default_factory=list)
    #: Jobs whose messages were dropped because they were no longer queued.
    dropped: list[str] = field(default_factory=list)


@dataclass
class LeadClaim:
    """What claiming the delivered job found: ``outcome`` is ``claimed``, ``locked``,
    ``exhausted``, ``absent`` or the job's status when it is not runnable."""

    outcome: str
    record: JobRecord | None = None
    input: bytes | None = None
    holder: str | None = None
    attempts: int = 0
    #: Messages waiting in the claimed job's analyzer's queue just after the claim.
    waiting: int = 0


class Claimer:
    def __init__(self, redis: Redis, *, lock_ttl: int):
        self.redis = redis
        self.lock_ttl = lock_ttl
        self._claim_lead = redis.register_script(_CLAIM_LEAD)
        self._gather = redis.register_script(_GATHER)

    def claim_lead(self, job_id: str, *, owner: str, max_attempts: int, running_fields: dict) -> LeadClaim:
        reply = self._claim_lead(
            keys=[keys.job(job_id), keys.RUNNING, keys.job_input(job_id), keys.WEBHOOK_OUTBOX,
                  keys.job_lock(job_id), keys.job_events(job_id)],
            args=[job_id, owner, self.lock_ttl, max_attempts, queue_for(""), *_pairs(running_fields)])
        outcome = reply[0].decode()
        if outcome == "claimed":
            return LeadClaim(outcome, record=_record(reply[1]), input=reply[2] or None, waiting=int(reply[3]))
        if outcome == "locked":
            return LeadClaim(outcome, holder=reply[1].decode())
        if outcome == "exhausted":
            return LeadClaim(outcome, attempts=int(reply[1]))
        return LeadClaim(outcome)

    def gather(self, queue: str, most: int, *, owner: str, running_fields: dict, deadline: float) -> Gathered:
        """Claim up to ``most`` jobs waiting in ``queue``, polling until ``deadline`` (``time.monotonic``)."""
        gathered = Gathered()
        fields = _pairs(running_fields)
        while len(gathered.job_ids) < most:
            claimed, dropped, refused, stopped, records, inputs = self._gather(
                keys=[queue, keys.RUNNING, keys.queued_index(queue), keys.WEBHOOK_OUTBOX],
                args=[most - len(gathered.job_ids), owner, self.lock_ttl, RUN_TASK, keys.job(""),
                      keys.job_lock(""), keys.job_events(""), keys.job_input(""), *fields])
            gathered.job_ids += [i.decode() for i in claimed]
            gathered.records += [_record(flat) for flat in records]
            gathered.inputs += [data or None for data in inputs]
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


def _record(flat: list[bytes]) -> JobRecord:
    """A record from HGETALL's reply inside a script: names and values in turn."""
    return JobRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))


def _pairs(fields: dict) -> list[str]:
    return [part for pair in encode_fields(fields).items() for part in pair]
