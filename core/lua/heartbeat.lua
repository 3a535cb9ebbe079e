-- heartbeat.lua: a worker proves it is alive, publishes its status, and does
-- a bounded share of housekeeping: reaping dead workers and ending tasks
-- whose deadline passed. Clients and the console may call it with an empty
-- worker id to run only the housekeeping.
--
-- KEYS[1]  queue prefix "rtq:{<queue>}:"
-- ARGV[1]  worker id ('' = housekeeping only)
-- ARGV[2]  lease in ms: the worker counts as dead if no heartbeat renews it
-- ARGV[3]  K: number of task ids the worker is running right now
-- ARGV[4..3+K] those task ids
-- ARGV[4+K..] worker info as field/value pairs (host, slots, busy, ...)
--
-- Orphan sweep: a task the worker owns in Redis but does not run (its inbox
-- message or a complete reply was lost with a cut connection) is requeued
-- once it has been owned for longer than one lease.
--
-- Reply: {status, reaped_workers, expired_tasks, now_ms, swept_orphans}
--   status 'OK', or 'GONE' when this worker had been declared dead (its
--   tasks were requeued): it must stop its running tasks and register anew
--   with claim.lua. 'GONE' still renews the lease.
local wid, lease = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local status = 'OK'
local swept = 0
if wid ~= '' then
  local exp = redis.call('ZSCORE', P .. 'workers', wid)
  if not exp then status = 'GONE' end
  redis.call('ZADD', P .. 'workers', now + lease, wid)
  local wk = P .. 'w:' .. wid
  local k = tonumber(ARGV[3] or '0')
  if #ARGV > 3 + k then
    redis.call('HSET', wk, 'hb', now, 'lease', lease, unpack(ARGV, 4 + k))
  else
    redis.call('HSET', wk, 'hb', now, 'lease', lease)
  end
  redis.call('PEXPIRE', wk, WORKER_INFO_TTL_MS)
  if status == 'OK' then
    local running = {}
    for i = 4, 3 + k do running[ARGV[i]] = true end
    for _, id in ipairs(redis.call('SMEMBERS', P .. 'wq:' .. wid)) do
      if not running[id] then
        local h = load_task(id)
        if h[1] == 'running' and h[3] == wid then
          if now - tonumber(h[9]) > lease then
            requeue(id, h, 'worker ' .. wid .. ' lost the task message', now)
            redis.call('SREM', P .. 'wq:' .. wid, id)
            swept = swept + 1
          end
        elseif h[1] ~= 'running' or h[3] ~= wid then
          redis.call('SREM', P .. 'wq:' .. wid, id)
        end
      end
    end
  end
end

local reaped = 0
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', P .. 'workers', '-inf', now, 'LIMIT', 0, 8)) do
  reap_worker(dead, now)
  reaped = reaped + 1
end
local expired = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'deadlines', '-inf', now, 'LIMIT', 0, 100)) do
  expire(id, load_task(id), now)
  expired = expired + 1
end
if reaped > 0 or swept > 0 then dispatch_pending(now, 1000) end
return {status, reaped, expired, now, swept}
