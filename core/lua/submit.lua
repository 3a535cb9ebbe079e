-- submit.lua: create a task and, in the same step, hand it to an idle live
-- worker (its inbox receives the task data) or add it to the pending zset.
--
-- Guarantees: the depth check and the enqueue are one atomic step (no
-- check-then-act race); a task is always either pending or owned by exactly
-- one worker; a duplicate id never overwrites an existing task.
--
-- KEYS[1]  queue prefix "rtq:{<queue>}:"
-- ARGV[1]  task id
-- ARGV[2]  spec: the task's immutable JSON envelope (sent to the worker as is)
-- ARGV[3]  priority, integer in [-1000, 1000]
-- ARGV[4]  timeout in ms from now (0 = no deadline)
-- ARGV[5]  max attempts (>= 1)
-- ARGV[6]  retention in ms after the task ends
-- ARGV[7]  reply stream key of the submitting client ('' = none)
-- ARGV[8]  '1' if the submitter wants chunk events, '0' for the final one only
--
-- Reply:
--   {'OK', state, worker, deadline_ms, now_ms}  state 'running' or 'queued'
--   {'QUEUE_FULL', depth, max_depth}
--   {'DUPLICATE', state}
local id, spec = ARGV[1], ARGV[2]
local pri, timeout = tonumber(ARGV[3]), tonumber(ARGV[4])
local max_attempts, ret = ARGV[5], ARGV[6]
local reply, strm = ARGV[7], ARGV[8]

local t = tkey(id)
local existing = redis.call('HGET', t, 'st')
if existing then return {'DUPLICATE', existing} end

local now = now_ms()
local meta = redis.call('HMGET', P .. 'meta', 'paused', 'maxd')
local wid = nil
if meta[1] ~= '1' then wid = pop_live_idle(now) end
if not wid then
  local maxd = tonumber(meta[2] or '0')
  if maxd > 0 then
    local depth = redis.call('ZCARD', P .. 'pending')
    if depth >= maxd then
      stat_count(now, 'full')
      return {'QUEUE_FULL', depth, maxd}
    end
  end
end

local dl = 0
if timeout > 0 then dl = now + timeout end
local seq = redis.call('HINCRBY', P .. 'meta', 'seq', 1)
local sc = score_of(pri, seq)
redis.call('HSET', t, 'v', PROTOCOL_VERSION, 'spec', spec, 'st', 'queued', 'pri', pri,
  'sc', sc, 'att', 0, 'fails', 0, 'max', max_attempts, 'sub', now, 'dl', dl,
  'ret', ret, 'reply', reply, 'strm', strm, 'nc', 0, 'nb', 0)
stat_count(now, 'sub')
if dl > 0 then
  redis.call('ZADD', P .. 'deadlines', dl, id)
  -- Safety net: even if no reaper ever runs, the hash cannot outlive
  -- deadline + retention.
  redis.call('PEXPIRE', t, timeout + tonumber(ret))
end

if wid then
  redis.call('RPUSH', P .. 'in:' .. wid, assign(id, wid, now, dl, spec, now, 0))
  return {'OK', 'running', wid, dl, now}
end
redis.call('ZADD', P .. 'pending', sc, id)
return {'OK', 'queued', '', dl, now}
