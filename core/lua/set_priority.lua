-- set_priority.lua: change the priority of a task. A queued task moves to its
-- new place (keeping its arrival order within the new priority); for a task
-- in any other state only the stored priority changes (used if requeued).
--
-- KEYS[1]  queue prefix "rtq:{<queue>}:"
-- ARGV[1]  task id
-- ARGV[2]  new priority, integer in [-1000, 1000]
--
-- Reply: {'OK', state} | {'NOT_FOUND'}
local id, pri = ARGV[1], tonumber(ARGV[2])
local h = load_task(id)
if not h[1] then return {'NOT_FOUND'} end
local seq = tonumber(h[12]) % SCORE_SEQ_SPAN
local sc = score_of(pri, seq)
redis.call('HSET', tkey(id), 'pri', pri, 'sc', sc)
if h[1] == 'queued' then redis.call('ZADD', P .. 'pending', 'XX', sc, id) end
return {'OK', h[1]}
