--! keys: specs expiries
--! args: ttl
--! include: redis_now
-- The analyzer specs within their lifetime, as HGETALL gives them. Expired ones are
-- deleted, so that what no worker renews leaves Redis, AOF included. A spec without an
-- expiry was written by a worker older than lifetimes, which writes it once and never
-- renews it: it is given a lifetime from now (NX), not deleted, so that an API upgraded
-- before its workers still accepts their analyzers, and retires them if nothing renews them.
local now = redis_now()
for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEY.expiries, '-inf', string.format('%.6f', now))) do
  redis.call('HDEL', KEY.specs, name)
  redis.call('ZREM', KEY.expiries, name)
end
local expires = now + tonumber(ARG.ttl)
for _, name in ipairs(redis.call('HKEYS', KEY.specs)) do
  redis.call('ZADD', KEY.expiries, 'NX', expires, name)
end
return redis.call('HGETALL', KEY.specs)
