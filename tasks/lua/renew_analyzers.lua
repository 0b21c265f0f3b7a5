--! keys: specs expiries
--! args: names ttl
--! include: redis_now
-- Pushes the expiry of the named analyzers' specs ttl seconds from now, for those that
-- are published and live: it never publishes a spec nor revives an expired one, since a
-- spec comes only from a process that has loaded the analyzer (see publish_analyzers.lua).
local now = redis_now()
local expires = now + tonumber(ARG.ttl)
local renewed = 0
for _, name in ipairs(cjson.decode(ARG.names)) do
  local current = tonumber(redis.call('ZSCORE', KEY.expiries, name))
  if current ~= nil and current > now and redis.call('HEXISTS', KEY.specs, name) == 1 then
    renewed = renewed + redis.call('ZADD', KEY.expiries, 'XX', 'GT', 'CH', expires, name)
  end
end
return renewed
