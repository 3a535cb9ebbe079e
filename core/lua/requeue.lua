-- requeue.lua: an operator puts a task back in the queue. A running task's
-- worker is told to stop (its later writes are fenced: the next hand-out
-- gets a new attempt number); an ended task starts over with its failure
-- count reset and its retention TTL removed.
--
-- KEYS[1]  queue prefix "rtq:{<queue>}:"
-- ARGV[1]  task id
-- ARGV[2]  reason
--
-- Reply: {'OK', previous_state} | {'NOT_FOUND'} | {'QUEUED'} (already queued)
local id, reason = ARGV[1], ARGV[2]
local h = load_task(id)
if not h[1] then return {'NOT_FOUND'} end
if h[1] == 'queued' then return {'QUEUED'} end
local now = now_ms()
if h[1] == 'running' then
  send_cancel(h[3], id, h[2], 'requeued')
else
  local t = tkey(id)
  redis.call('PERSIST', t)
  redis.call('HSET', t, 'fails', 0, 'res', '', 'err', '', 'ek', '', 'fin', 0)
  redis.call('ZREM', P .. 'recent', id)
  if tonumber(h[7]) > 0 then
    -- A requeued task gets no deadline: its original one has usually passed.
    redis.call('HSET', t, 'dl', 0)
    h[7] = '0'
  end
end
requeue(id, h, reason, now)
if not is_paused() then dispatch_pending(now, 1) end
return {'OK', h[1]}
