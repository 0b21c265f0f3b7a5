--! keys: specs expiries
--! args: specs ttl first
--! include: redis_now
-- Publishes analyzer specs (a JSON list of [name, spec JSON] pairs) for ttl seconds more.
-- A worker writes its spec over another's only on its first publish (first = 1), so that
-- during a rolling deploy the worker started last wins once, instead of two versions
-- taking turns every heartbeat; later beats write a spec only where none lives.
-- An expiry only moves later (GT): a worker with a shorter lifetime never cuts short
-- what another worker serving the same analyzer gave it.
local now = redis_now()
local expires = now + tonumber(ARG.ttl)
for _, pair in ipairs(cjson.decode(ARG.specs)) do
  local name, spec = pair[1], pair[2]
  local current = tonumber(redis.call('ZSCORE', KEY.expiries, name))
  if ARG.first == '1' or current == nil or current <= now then
    redis.call('HSET', KEY.specs, name, spec)
  else
    redis.call('HSETNX', KEY.specs, name, spec)
  end
  redis.call('ZADD', KEY.expiries, 'GT', expires, name)
end
return 1
