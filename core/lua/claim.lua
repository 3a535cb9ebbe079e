-- claim.lua: a worker (re)registers and offers free slots: each slot takes
-- the next pending task or parks an idle token in the idle list, so the next
-- submit pushes straight into this worker's inbox.
--
-- KEYS[1]  queue prefix "rtq:{<queue>}:"
-- ARGV[1]  worker id
-- ARGV[2]  lease in ms
-- ARGV[3]  number of free slots to offer
--
-- Reply: list of inbox task messages taken for this worker (may be empty);
-- one idle token was parked for each slot that got no task.
local wid, lease, slots = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
redis.call('ZADD', P .. 'workers', now + lease, wid)
redis.call('HSET', P .. 'w:' .. wid, 'hb', now, 'lease', lease)
redis.call('PEXPIRE', P .. 'w:' .. wid, WORKER_INFO_TTL_MS)
local taken = {}
local paused = is_paused()
for _ = 1, slots do
  local msg = nil
  if not paused then msg = take_next(wid, now) end
  if msg then
    taken[#taken + 1] = msg
  else
    redis.call('RPUSH', P .. 'idle', wid)
  end
end
return taken
