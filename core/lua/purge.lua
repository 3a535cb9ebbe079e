-- purge.lua: remove up to ARGV[1] pending tasks (highest priority first);
-- each ends as 'cancelled' (kind 'purged') so waiting clients are told.
-- Callers loop until the reply's remaining count is 0.
--
-- KEYS[1]  queue prefix "rtq:{<queue>}:"
-- ARGV[1]  batch size
--
-- Reply: {removed, remaining}
local batch = tonumber(ARGV[1])
local now = now_ms()
local removed = 0
for _, id in ipairs(redis.call('ZRANGE', P .. 'pending', 0, batch - 1)) do
  redis.call('ZREM', P .. 'pending', id)
  local h = load_task(id)
  if h[1] == 'queued' then
    finish(id, h, 'cancelled', 'purged', 'queue purged', now)
  end
  removed = removed + 1
end
return {removed, redis.call('ZCARD', P .. 'pending')}
