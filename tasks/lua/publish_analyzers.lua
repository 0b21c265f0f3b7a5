--! keys: specs expiries
--! args: specs ttl
--! include: redis_now
-- Publishes analyzer specs (a JSON list of [name, spec JSON] pairs) for ttl seconds more.
-- An expiry only moves later (GT): a worker with a shorter lifetime never cuts short
-- what another worker serving the same analyzer gave it.
local expires = redis_now() + tonumber(ARG.ttl)
for _, pair in ipairs(cjson.decode(ARG.specs)) do
  redis.call('HSET', KEY.specs, pair[1], pair[2])
  redis.call('ZADD', KEY.expiries, 'GT', expires, pair[1])
end
return 1
