--! keys: job events running outbox input lock queue queued_index sequence
--! args: id token holder message fields ttl most_faults blame
--! include: set_fields notify end_job run_end push_to_queue
-- queued again: the run's GPU broke under it (a sticky CUDA error, gpu_worker.device_faults),
-- through no fault the job can be shown to have. It goes back to its queue with its attempt
-- given back and one more device fault on its record; a job with a device fault runs alone
-- from then on (gather.lua leaves it for Celery), and at most_faults it is taken for the cause
-- (an input that sets off a device-side assert) and ends failed with `fields`, so that one
-- bad input cannot stop every GPU of the fleet in turn. With blame '0' (the job never ran on
-- the broken device, or the worker stops because its GPU is taken for the cause) no fault is
-- counted. Only from the run holding the current token while the job runs; a job canceled
-- meanwhile ends canceled.
-- Returns {1, status written, fence} or {0, status found, fence found}.
local may_end, status, fence = run_may_end(KEY.job, ARG.token)
if not may_end then return {0, status, fence} end
if redis.call('GET', KEY.lock) == ARG.holder then redis.call('DEL', KEY.lock) end
local fields = cjson.decode(ARG.fields)
if status == 'canceling' then
  end_canceled_run(ARG.id, KEY.job, fields, ARG.ttl, KEY)
  return {1, 'canceled', fence}
end
if ARG.blame == '1' then
  local faults = redis.call('HINCRBY', KEY.job, 'device_faults', 1)
  if faults >= tonumber(ARG.most_faults) then
    end_job(ARG.id, KEY.job, 'failed', fields, ARG.ttl, KEY)
    return {1, 'failed', fence}
  end
end
redis.call('HINCRBY', KEY.job, 'attempts', -1)
redis.call('HINCRBY', KEY.job, 'fence', 1)
redis.call('HSET', KEY.job, 'status', 'queued', 'worker', '', 'device', '', 'progress', '')
redis.call('SREM', KEY.running, ARG.id)
push_to_queue(KEY.queue, KEY.queued_index, KEY.sequence, ARG.message, ARG.id)
redis.call('PUBLISH', KEY.events, 'queued')
return {1, 'queued', fence}
