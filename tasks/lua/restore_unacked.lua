--! keys: unacked unacked_index queue queued_index sequence
--! args: tag message id
--! include: push_to_queue
-- requeued (a message a dead worker took but never started) or dropped (a finished job's
-- message whose ack was lost): one unacknowledged message moves back to its queue, or
-- goes ('' message), unless its consumer acked it meanwhile. Returns 1 when moved.
local raw = redis.call('HGET', KEY.unacked, ARG.tag)
if not raw then return 0 end
redis.call('HDEL', KEY.unacked, ARG.tag)
redis.call('ZREM', KEY.unacked_index, ARG.tag)
if ARG.message ~= '' then push_to_queue(KEY.queue, KEY.queued_index, KEY.sequence, ARG.message, ARG.id) end
return 1
