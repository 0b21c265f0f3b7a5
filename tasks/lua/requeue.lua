--! keys: job lock queue running events queued_index sequence
--! args: id holder message
--! include: push_to_queue
-- requeued: a running job whose lock holder was found dead goes back to its queue. Only if
-- the job still runs under the holder that was seen dead (none: ''). The fence grows, so the
-- lost run's token is refused from here on whatever it writes later (a paused process that
-- wakes up, a worker cut off from Redis that comes back). Returns 1 when requeued.
if redis.call('HGET', KEY.job, 'status') ~= 'running' then return 0 end
if (redis.call('GET', KEY.lock) or '') ~= ARG.holder then return 0 end
redis.call('DEL', KEY.lock)
redis.call('HINCRBY', KEY.job, 'fence', 1)
redis.call('HSET', KEY.job, 'status', 'queued', 'worker', '', 'device', '', 'progress', '')
redis.call('SREM', KEY.running, ARG.id)
push_to_queue(KEY.queue, KEY.queued_index, KEY.sequence, ARG.message, ARG.id)
redis.call('PUBLISH', KEY.events, 'queued')
return 1
