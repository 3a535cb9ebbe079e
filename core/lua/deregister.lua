-- deregister.lua: a worker withdraws, wholly or in part. Idle tokens are
-- always withdrawn first so no new task is pushed to it; then, depending on
-- the mode, tasks it owns go back to the queue at once. Handing back does not
-- count as a failed attempt.
--
-- KEYS[1]  queue prefix "rtq:{<queue>}:"
-- ARGV[1]  worker id
-- ARGV[2]  mode: 'tokens' - only withdraw idle tokens (start of a drain, or
--                           upstream down)
--                'ids'    - also hand back the tasks ARGV[3..] (delivered
--                           while draining, never started)
--                'all'    - hand back every owned task and leave: worker
--                           entry removed, inbox deleted
--
-- Reply: {handed_back_count}
local wid, mode = ARGV[1], ARGV[2]
local now = now_ms()
redis.call('LREM', P .. 'idle', 0, wid)
if mode == 'tokens' then return {0} end

local ids
if mode == 'all' then
  ids = redis.call('SMEMBERS', P .. 'wq:' .. wid)
else
  ids = {}
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local n = 0
for _, id in ipairs(ids) do
  local h = load_task(id)
  if h[1] == 'running' and h[3] == wid then
    requeue(id, h, 'worker ' .. wid .. ' shut down', now)
    n = n + 1
  end
  redis.call('SREM', P .. 'wq:' .. wid, id)
end
if mode == 'all' then
  redis.call('DEL', P .. 'wq:' .. wid, P .. 'in:' .. wid)
  redis.call('ZREM', P .. 'workers', wid)
  redis.call('HSET', P .. 'w:' .. wid, 'state', 'stopped', 'dead_at', now)
  redis.call('PEXPIRE', P .. 'w:' .. wid, WORKER_INFO_TTL_MS)
end
if n > 0 and not is_paused() then dispatch_pending(now, n) end
return {n}
