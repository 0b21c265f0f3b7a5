--! keys: job events running outbox input lock
--! args: id status fields ttl allowed holder
--! include: set_fields notify end_job
-- failed or canceled by a process that is not running the job: a worker's parent whose
-- pool child died or ran out of time, a cancel whose process was killed, the janitor
-- ending a canceled job whose worker is gone. Only from an allowed status and, when a
-- holder is named, only while that holder still holds the job's lock: a run that was
-- given to another since is not the one this process saw end. The fence grows, so a
-- token still held by any run of the job is stale from here on.
-- Returns {1, status before} or {0, status found}.
local status = redis.call('HGET', KEY.job, 'status')
if not status then return {0, ''} end
local permitted = false
for _, s in ipairs(cjson.decode(ARG.allowed)) do
  if s == status then permitted = true break end
end
if not permitted then return {0, status} end
if ARG.holder ~= '' then
  if redis.call('GET', KEY.lock) ~= ARG.holder then return {0, status} end
  redis.call('DEL', KEY.lock)
end
redis.call('HINCRBY', KEY.job, 'fence', 1)
end_job(ARG.id, KEY.job, ARG.status, cjson.decode(ARG.fields), ARG.ttl, KEY)
return {1, status}
