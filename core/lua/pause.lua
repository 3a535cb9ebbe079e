-- pause.lua: pause or resume a queue. While paused, submits are accepted and
-- queued (subject to max depth) but nothing is handed out; resuming hands
-- pending tasks to idle workers at once.
--
-- KEYS[1]  queue prefix "rtq:{<queue>}:"
-- ARGV[1]  '1' to pause, '0' to resume
--
-- Reply: {'OK', dispatched_count}
local paused = ARGV[1]
redis.call('HSET', P .. 'meta', 'paused', paused)
local n = 0
if paused == '0' then n = dispatch_pending(now_ms(), 10000) end
return {'OK', n}
