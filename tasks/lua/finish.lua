--! keys: job events running outbox input result
--! args: id token status fields ttl result result_ttl
--! include: set_fields notify end_job run_end
-- succeeded or failed: a run's end, with its result, accepted only from the run holding
-- the job's current token and only while the job runs, so a paused or cut-off runner
-- whose job was given to another can never write, and an ended job never changes. The
-- result goes to Celery's result backend key in the same step, only when the end is
-- accepted. A job canceled while it ran ends canceled instead, its result discarded.
-- Returns {1, status written, fence} or {0, status found, fence found}.
local may_end, status, fence = run_may_end(KEY.job, ARG.token)
if not may_end then return {0, status, fence} end
local fields = cjson.decode(ARG.fields)
if status == 'canceling' then
  end_canceled_run(ARG.id, KEY.job, fields, ARG.ttl, KEY)
  return {1, 'canceled', fence}
end
if ARG.result ~= '' then
  if tonumber(ARG.result_ttl) > 0 then
    redis.call('SET', KEY.result, ARG.result, 'EX', ARG.result_ttl)
  else
    redis.call('SET', KEY.result, ARG.result)
  end
  redis.call('PUBLISH', KEY.result, ARG.result)
end
end_job(ARG.id, KEY.job, ARG.status, fields, ARG.ttl, KEY)
return {1, ARG.status, fence}
