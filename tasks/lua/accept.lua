--! keys: job input queue idempotency queued_index sequence tenant_jobs tenant_queued accepted_counter void
--! args: fields record_ttl input input_ttl message queue_limit idempotency idempotency_ttl id tenant_limit created_at job_prefix oldest_kept counter_field staged
--! include: push_to_queue
-- queued: a job is accepted. Checks the idempotency key, the queue's depth and the
-- tenant's limit, then writes the record, the input (claim check) and the Celery message
-- together. Returns {'created', ''} or {reason, detail} having written nothing.
--
-- A large input is staged: SET by a plain command sent just before this script on the
-- same connection (a Lua argument of 100 KB costs Redis 2.5 times what a SET of it does).
-- The script then writes nothing unless it is there, and deletes it when it refuses the
-- job, so a refused upload leaves nothing behind.
local staged = ARG.staged == '1'
local function refuse(reason, detail)
  if staged then redis.call('DEL', KEY.input) end
  return {reason, detail}
end
-- This very call ran already (its reply was lost on a broken connection and the call was
-- sent again): the job stands as written the first time.
if redis.call('EXISTS', KEY.job) == 1 then return {'created', ''} end
-- The API stopped waiting for this call and told its client that nothing was enqueued
-- (void.lua): it must stay so.
if redis.call('EXISTS', KEY.void) == 1 then return refuse('voided', '') end
if ARG.idempotency ~= '' then
  -- A key lives and dies with its job's record ("<fingerprint>|<job id>"): once that record has
  -- expired the key names nothing, and the request makes a new job.
  local existing = redis.call('GET', KEY.idempotency)
  local earlier = existing and string.match(existing, '|(.+)$')
  if earlier and redis.call('EXISTS', ARG.job_prefix .. earlier) == 1 then return refuse('existing', existing) end
end
local limit = tonumber(ARG.queue_limit)
if limit > 0 then
  local depth = redis.call('LLEN', KEY.queue)
  if depth >= limit then return refuse('full', tostring(depth)) end
end
local tenant_limit = tonumber(ARG.tenant_limit)
if tenant_limit > 0 and redis.call('SCARD', KEY.tenant_queued) >= tenant_limit then
  -- Jobs leave the queued state (start, cancel, expiry) without telling this set, so it
  -- is swept only here, when it looks full: a cost paid by a tenant at its limit, never by
  -- the others. (Job keys are built from the job prefix: gpuq runs on one Redis, not a cluster.)
  for _, id in ipairs(redis.call('SMEMBERS', KEY.tenant_queued)) do
    if redis.call('HGET', ARG.job_prefix .. id, 'status') ~= 'queued' then
      redis.call('SREM', KEY.tenant_queued, id)
    end
  end
  local queued = redis.call('SCARD', KEY.tenant_queued)
  if queued >= tenant_limit then return refuse('tenant_full', tostring(queued)) end
end
if staged then
  if redis.call('EXISTS', KEY.input) == 0 then return {'input_lost', ''} end
else
  redis.call('SET', KEY.input, ARG.input, 'EX', ARG.input_ttl)
end
local fields = cjson.decode(ARG.fields)
local flat = {}
for k, v in pairs(fields) do
  flat[#flat + 1] = k
  flat[#flat + 1] = v
end
redis.call('HSET', KEY.job, unpack(flat))
redis.call('EXPIRE', KEY.job, ARG.record_ttl)
push_to_queue(KEY.queue, KEY.queued_index, KEY.sequence, ARG.message, ARG.id)
if ARG.idempotency ~= '' then redis.call('SET', KEY.idempotency, ARG.idempotency, 'EX', ARG.idempotency_ttl) end
-- The tenant's index outlives no record it names for long: entries older than any record
-- can be are trimmed, and an idle tenant's keys expire.
redis.call('ZADD', KEY.tenant_jobs, ARG.created_at, ARG.id)
redis.call('ZREMRANGEBYSCORE', KEY.tenant_jobs, '-inf', '(' .. ARG.oldest_kept)
redis.call('EXPIRE', KEY.tenant_jobs, ARG.record_ttl)
redis.call('SADD', KEY.tenant_queued, ARG.id)
redis.call('EXPIRE', KEY.tenant_queued, ARG.record_ttl)
-- Counted here rather than by a request hook after the answer: no round trip of its own,
-- and a job is counted exactly when it is written.
redis.call('HINCRBY', KEY.accepted_counter, ARG.counter_field, 1)
return {'created', ''}
