-- Writes a table of field names to string values into a job's hash.
local function set_fields(job, fields)
  local flat = {}
  for name, value in pairs(fields) do
    flat[#flat + 1] = name
    flat[#flat + 1] = value
  end
  if #flat > 0 then redis.call('HSET', job, unpack(flat)) end
end
