-- Pushes a job's message onto its queue and numbers the push in the queue's index:
-- the job's queue position, and how the janitor finds messages lost in delivery.
local function push_to_queue(queue, index, sequence, message, id)
  redis.call('LPUSH', queue, message)
  redis.call('ZADD', index, redis.call('INCR', sequence), id)
end
