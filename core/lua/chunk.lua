-- chunk.lua: a worker appends one or more output chunks of a running task
-- and pushes them to every reply stream that follows the task.
--
-- Guarantees: fencing by attempt (a stale worker's chunks are rejected, never
-- mixed into a newer attempt's output); ordering by seq0 (pipelined writes
-- that arrive out of order are rejected, not misplaced); the reply tells a
-- running handler that its task was cancelled or expired, so it can stop.
--
-- KEYS[1]  queue prefix "rtq:{<queue>}:"
-- ARGV[1]  worker id
-- ARGV[2]  task id
-- ARGV[3]  attempt number the worker received
-- ARGV[4]  seq0: chunks the worker has written before this call
-- ARGV[5..] chunks (binary-safe strings), in order
--
-- Reply: {status, chunk_count}
--   'OK' (chunks appended), 'CANCELLED' (task cancelled/expired/ended),
--   'FENCED' (attempt superseded), 'NOT_FOUND', 'ORDER' (count != seq0)
local wid, id, att, seq0 = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local h = load_task(id)
if not h[1] then return {'NOT_FOUND', 0} end
if h[2] ~= att or h[3] ~= wid then return {'FENCED', 0} end
if h[1] ~= 'running' then return {'CANCELLED', 0} end
local nc = tonumber(h[16])
if nc ~= seq0 then return {'ORDER', nc} end

local t = tkey(id)
local chunks = {}
local bytes = 0
for i = 5, #ARGV do
  chunks[#chunks + 1] = ARGV[i]
  bytes = bytes + #ARGV[i]
end
if #chunks == 0 then return {'OK', nc} end
redis.call('RPUSH', okey(id), unpack(chunks))
redis.call('HINCRBY', t, 'nb', bytes)
local now = now_ms()
if nc == 0 then
  redis.call('HSET', t, 'fc', now)
  stat_hist(stats_key(now), 'f:', now - tonumber(h[8]))
end
redis.call('HSET', t, 'nc', nc + #chunks, 'lc', now)
if h[5] == '1' or h[6] == '1' then
  local ev = {'e', 'c', 'a', att, 's', nc}
  for _, c in ipairs(chunks) do ev[#ev + 1] = 'c'; ev[#ev + 1] = c end
  notify(id, h[5] == '1' and h[4] or '', h[6], tonumber(h[11]), ev)
end
return {'OK', nc + #chunks}
