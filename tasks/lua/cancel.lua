--! keys: job events running outbox input
--! args: id end_fields ttl
--! include: set_fields notify end_job
-- canceled (a queued job, at once) or canceling (a running one: its worker stops the run,
-- then the run's end or its worker's parent writes canceled). Returns {'canceled'},
-- {'canceling'}, {'absent'} or {'unchanged', status}.
local status = redis.call('HGET', KEY.job, 'status')
if not status then return {'absent'} end
if status == 'queued' then
  end_job(ARG.id, KEY.job, 'canceled', cjson.decode(ARG.end_fields), ARG.ttl, KEY)
  return {'canceled'}
end
if status == 'running' then
  redis.call('HSET', KEY.job, 'status', 'canceling')
  notify(ARG.id, KEY.job, KEY.events, KEY.outbox, 'canceling', 'canceling')
  return {'canceling'}
end
return {'unchanged', status}
