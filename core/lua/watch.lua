-- watch.lua: follow a task from another process (or resume after a gap):
-- atomically returns the task's state and the chunks of its current attempt
-- from a position, and subscribes a reply stream to everything after them,
-- so nothing is missed or duplicated between the read and the subscription.
--
-- KEYS[1]  queue prefix "rtq:{<queue>}:"
-- ARGV[1]  task id
-- ARGV[2]  reply stream key to subscribe ('' = read only)
-- ARGV[3]  first chunk index to return (0-based)
--
-- Reply:
--   {'NOT_FOUND'}
--   {'OK', state, attempt, chunk_count, result, error_kind, error_message,
--    worker, first_index, chunk...}
local id, reply, from = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = tkey(id)
local h = redis.call('HMGET', t, 'st', 'att', 'nc', 'res', 'ek', 'err', 'w', 'ret')
if not h[1] then return {'NOT_FOUND'} end
if reply ~= '' and not is_terminal(h[1]) then
  redis.call('SADD', wtkey(id), reply)
  redis.call('HSET', t, 'watch', '1')
  local ttl = redis.call('PTTL', t)
  if ttl > 0 then redis.call('PEXPIRE', wtkey(id), ttl) end
end
local out = {'OK', h[1], h[2], h[3], h[4] or '', h[5] or '', h[6] or '', h[7] or '', from}
for _, c in ipairs(redis.call('LRANGE', okey(id), from, -1)) do out[#out + 1] = c end
return out
