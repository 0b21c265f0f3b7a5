--! keys: queue running queued_index outbox
--! args: most owner lock_ttl task job_prefix lock_prefix events_prefix input_prefix running_fields
--! include: set_fields notify mark_running
-- running: jobs waiting in a queue are taken straight from it and claimed for a batch,
-- each as the lead is (mark_running), in the step that takes its message. Returns
-- {claimed ids, dropped ids, refused raw messages, 1 if it stopped at a message it put
-- back, the claimed jobs' records as name, value pairs, their inputs (false where expired)}.
-- A message whose job is no longer queued is dropped; one that is not a JSON gpuq.run
-- message is refused; one whose job already had an attempt, carries an ETA or is locked
-- goes back to the consuming end and gathering stops (Celery delivers it next, alone).
local fields = cjson.decode(ARG.running_fields)
local claimed, dropped, refused, records, inputs = {}, {}, {}, {}, {}
local stopped = 0
for _ = 1, tonumber(ARG.most) do
  local raw = redis.call('RPOP', KEY.queue)
  if not raw then break end
  local ok, message = pcall(cjson.decode, raw)
  local headers = ok and type(message) == 'table' and message['headers'] or nil
  local id = type(headers) == 'table' and headers['id'] or nil
  if type(id) ~= 'string' or headers['task'] ~= ARG.task or message['content-type'] ~= 'application/json' then
    refused[#refused + 1] = raw
  else
    local job = ARG.job_prefix .. id
    local status = redis.call('HGET', job, 'status')
    local eta = headers['eta']
    if status ~= 'queued' then
      dropped[#dropped + 1] = id
    elseif (eta ~= nil and eta ~= cjson.null) or tonumber(redis.call('HGET', job, 'attempts') or '0') > 0
        or tonumber(redis.call('HGET', job, 'device_faults') or '0') > 0
        or redis.call('EXISTS', ARG.lock_prefix .. id) == 1 then
      redis.call('RPUSH', KEY.queue, raw)
      stopped = 1
      break
    else
      mark_running(id, job, ARG.lock_prefix .. id, ARG.events_prefix .. id, KEY.running, KEY.outbox, ARG.owner,
                   ARG.lock_ttl, fields)
      redis.call('ZREM', KEY.queued_index, id)
      claimed[#claimed + 1] = id
      records[#records + 1] = redis.call('HGETALL', job)
      inputs[#inputs + 1] = redis.call('GET', ARG.input_prefix .. id)
    end
  end
end
return {claimed, dropped, refused, stopped, records, inputs}
