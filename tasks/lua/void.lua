--! keys: job input void
--! args: ttl
-- After a submit whose reply never came, the API learns what happened to it: either its
-- accept.lua ran (the job exists), or it never will, even if it still reaches Redis later
-- (accept.lua refuses a voided id). Returns 'exists' or 'voided'.
if redis.call('EXISTS', KEY.job) == 1 then return 'exists' end
redis.call('SET', KEY.void, '1', 'EX', ARG.ttl)
redis.call('DEL', KEY.input)
return 'voided'
