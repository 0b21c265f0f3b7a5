-- Seconds since the epoch on Redis's clock: the one clock that workers and API hosts share.
local function redis_now()
  local time = redis.call('TIME')
  return tonumber(time[1]) + tonumber(time[2]) / 1000000
end
