-- Announces a change of a job's record in the same atomic step as the change: on the
-- job's events channel (long-polls, event streams), and, when the job has a webhook, on
-- the webhook outbox as "id|event" (an empty event for progress), so no change is missed
-- by its webhook whoever makes it.
local function notify(id, job, events, outbox, status, event)
  redis.call('PUBLISH', events, status)
  local hook = redis.call('HGET', job, 'webhook')
  if hook and hook ~= '' then redis.call('LPUSH', outbox, id .. '|' .. event) end
end
