--! keys: job running input outbox lock events
--! args: id owner lock_ttl max_attempts queue_prefix running_fields exhausted_fields end_ttl
--! include: set_fields notify end_job mark_running
-- running: the job Celery delivered is claimed for a run (mark_running: lock, attempt,
-- fencing token). Returns {'claimed', record as name, value pairs, input or false, messages
-- waiting in the job's analyzer's queue}; {'locked', holder} when another process holds its
-- lock; {'exhausted', attempts} when this run would pass the attempt bound (the job is then
-- failed, in this same step); {'absent'}; or {status} when it is not runnable. The count
-- spares the runner a round trip to gather from an empty queue (the queue's name is built
-- from the queue prefix: gpuq runs on one Redis).
local status = redis.call('HGET', KEY.job, 'status')
if not status then return {'absent'} end
if status ~= 'queued' and status ~= 'running' then return {status} end
local holder = redis.call('GET', KEY.lock)
if holder and holder ~= ARG.owner then return {'locked', holder} end
local attempts = tonumber(redis.call('HGET', KEY.job, 'attempts') or '0') + 1
if attempts > tonumber(ARG.max_attempts) then
  redis.call('HSET', KEY.job, 'attempts', attempts)
  redis.call('HINCRBY', KEY.job, 'fence', 1)
  redis.call('DEL', KEY.lock)
  end_job(ARG.id, KEY.job, 'failed', cjson.decode(ARG.exhausted_fields), ARG.end_ttl, KEY)
  return {'exhausted', tostring(attempts)}
end
mark_running(ARG.id, KEY.job, KEY.lock, KEY.events, KEY.running, KEY.outbox, ARG.owner, ARG.lock_ttl,
             cjson.decode(ARG.running_fields))
local waiting = redis.call('LLEN', ARG.queue_prefix .. (redis.call('HGET', KEY.job, 'analyzer') or ''))
return {'claimed', redis.call('HGETALL', KEY.job), redis.call('GET', KEY.input), waiting}
