-- Claims a job for one run: the lock names the runner, an attempt is counted, and the
-- job's fencing token grows by one. From here on only writes carrying this token are
-- accepted for the job (every earlier run's are refused). Returns the token.
local function mark_running(id, job, lock, events, running, outbox, owner, lock_ttl, fields)
  redis.call('SET', lock, owner, 'EX', tonumber(lock_ttl))
  redis.call('HINCRBY', job, 'attempts', 1)
  local token = redis.call('HINCRBY', job, 'fence', 1)
  set_fields(job, fields)
  redis.call('SADD', running, id)
  notify(id, job, events, outbox, 'running', 'running')
  return token
end
