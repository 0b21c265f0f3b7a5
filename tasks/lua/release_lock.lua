--! keys: lock
--! args: expected holder ttl
-- A job's lock changes hands (or goes: '' holder) only from the holder expected.
if redis.call('GET', KEY.lock) ~= ARG.expected then return 0 end
if ARG.holder == '' then redis.call('DEL', KEY.lock) else redis.call('SET', KEY.lock, ARG.holder, 'EX', ARG.ttl) end
return 1
