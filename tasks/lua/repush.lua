--! keys: job queue queued_index sequence
--! args: message id
--! include: push_to_queue
-- requeued (a message lost in delivery to a dead consumer): pushed again if the job is
-- still queued. Returns 1 when pushed.
if redis.call('HGET', KEY.job, 'status') ~= 'queued' then return 0 end
push_to_queue(KEY.queue, KEY.queued_index, KEY.sequence, ARG.message, ARG.id)
return 1
