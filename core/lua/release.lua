--[[
rtq2_release: a worker withdraws capacity, hands tasks back, or leaves.

Modes:
  'pause'    free slots := 0 (intake off: upstream down, or a drain begins)
  'handback' free slots := 0, and the listed attempts go back to the queue:
             a delivery the worker never started (beyond its free slots, or
             received while draining) without using an attempt; a started
             one (interrupted) uses one
  'leave'    hands back the listed attempts as above, then every other task
             it still owns (deliveries it never received, without using an
             attempt), and deregisters: inbox and ownership deleted, worker
             entry removed
Only the instance that holds the worker id may release it.

KEYS[1]  rtq:{<queue>}:meta
ARGV[1]  worker id
ARGV[2]  instance
ARGV[3]  mode                       'pause' | 'handback' | 'leave'
ARGV[4]  K                          number of attempts listed, [0, 1024]
ARGV[5 .. 4+3K]                     K triples: task id, attempt, started ('0'|'1')

Reply: {status, handed_back}
  status 'OK' | 'GONE' (not registered: nothing to release) | 'REPLACED'
  (another instance holds the id); GONE/REPLACED write nothing
]]
local function release(keys, args)
  bind(keys)
  local wid = arg_id(args[1], 'worker id')
  local inst = arg_id(args[2], 'instance')
  local mode = arg_enum(args[3], 'mode', {'pause', 'handback', 'leave'})
  local k = arg_int(args[4], 'count', 0, MAX_SLOTS)
  if #args ~= 4 + 3 * k then invalid('count says ' .. k .. ' triples') end
  local listed = {}
  for i = 0, k - 1 do
    listed[#listed + 1] = {
      arg_id(args[5 + 3 * i], 'task id'),
      istr(arg_int(args[6 + 3 * i], 'attempt', 1, 1e15)),
      arg_flag(args[7 + 3 * i], 'started'),
    }
  end

  if not redis.call('ZSCORE', P .. 'workers', wid) then return {'GONE', 0} end
  if redis.call('HGET', wkey(wid), 'inst') ~= inst then return {'REPLACED', 0} end

  -- Writes.
  local now = now_ms()
  local n = 0
  local wq = wqkey(wid)
  for _, item in ipairs(listed) do
    local id, att, started = item[1], item[2], item[3]
    local h = load_task(id)
    if h and h.st == 'running' and h.w == wid and h.att == att then
      if started then
        lose_attempt(id, h, 'interrupted: worker ' .. wid .. ' shut down', now)
      else
        to_queue(id, h, 'worker ' .. wid .. ' handed it back unstarted', h.sc, 0)
      end
      redis.call('SREM', wq, id)
      n = n + 1
    end
  end
  if mode == 'leave' then
    for _, id in ipairs(redis.call('SMEMBERS', wq)) do
      local h = load_task(id)
      if h and h.st == 'running' and h.w == wid then
        to_queue(id, h, 'worker ' .. wid .. ' left before receiving it', h.sc, 0)
        n = n + 1
      end
    end
    redis.call('DEL', wq, inkey(wid))
    redis.call('ZREM', P .. 'workers', wid)
    redis.call('ZREM', P .. 'free', wid)
    redis.call('HSET', wkey(wid), 'state', 'stopped', 'dead_at', istr(now), 'dead_why', 'left')
    redis.call('PEXPIRE', wkey(wid), WORKER_INFO_TTL_MS)
    mark_departed(wid, now)
    event('worker_left', '', wid, 'worker ' .. wid .. ' left; tasks handed back: ' .. istr(n))
  else
    set_free(wid, 0)
  end
  if n > 0 then dispatch_if_needed(now, n) end
  return {'OK', n}
end

redis.register_function{function_name = 'rtq2_release', callback = release, flags = {'allow-oom'}}
