-- Ends a job: its terminal status and fields, the record's last TTL, out of the running
-- set, its input gone (an ended job has no more use for it, and only then), announced.
-- k holds the keys events, outbox, running and input.
local function end_job(id, job, status, fields, ttl, k)
  fields['status'] = status
  set_fields(job, fields)
  redis.call('EXPIRE', job, ttl)
  -- An idempotency key lives exactly as long as its job's record: a shorter life would let a
  -- replay make a second job while the first is still there to answer.
  local idempotency = redis.call('HGET', job, 'idempotency_key')
  if idempotency then redis.call('EXPIRE', idempotency, ttl) end
  redis.call('SREM', k.running, id)
  redis.call('DEL', k.input)
  notify(id, job, k.events, k.outbox, status, status)
end
