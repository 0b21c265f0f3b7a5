--! keys: job events outbox
--! args: id token progress
--! include: notify
-- progress: a running job's progress, written only by the run holding its current token.
-- Returns {1, status, fence} when written, {0, status, fence} when refused: a fence other
-- than the run's token means its lease was revoked (another run owns the job now).
local status = redis.call('HGET', KEY.job, 'status')
if not status then return {0, '', ''} end
local fence = redis.call('HGET', KEY.job, 'fence') or '0'
if fence ~= ARG.token or status ~= 'running' then return {0, status, fence} end
redis.call('HSET', KEY.job, 'progress', ARG.progress)
notify(ARG.id, KEY.job, KEY.events, KEY.outbox, status, '')
return {1, status, fence}
