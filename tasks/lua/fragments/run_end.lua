-- What a run's end (finish.lua, hand_back.lua) may write. run_may_end: whether the run holding
-- `token` may end its job, with the status and fence found: only while the job runs (or is
-- being canceled) and its fence is still that token. end_canceled_run: a job canceled while
-- its run ran ends canceled, whatever the run found. Needs end_job.
local function run_may_end(job, token)
  local status = redis.call('HGET', job, 'status')
  if not status then return false, '', '' end
  local fence = redis.call('HGET', job, 'fence') or '0'
  return fence == token and (status == 'running' or status == 'canceling'), status, fence
end

local function end_canceled_run(id, job, fields, ttl, k)
  end_job(id, job, 'canceled', {finished_at = fields['finished_at'], expires_at = fields['expires_at']}, ttl, k)
end
