--! keys: specs expiries
--! include: redis_now
-- The analyzer specs within their lifetime, as HGETALL gives them. Expired ones are
-- deleted, and so are specs without an expiry (published before specs had one), so
-- that what no worker renews leaves Redis, AOF included.
for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEY.expiries, '-inf', string.format('%.6f', redis_now()))) do
  redis.call('HDEL', KEY.specs, name)
  redis.call('ZREM', KEY.expiries, name)
end
for _, name in ipairs(redis.call('HKEYS', KEY.specs)) do
  if not redis.call('ZSCORE', KEY.expiries, name) then redis.call('HDEL', KEY.specs, name) end
end
return redis.call('HGETALL', KEY.specs)
