--[[
Operator functions on a queue and its tasks.

rtq2_set_priority: change a queued task's priority (it keeps its place in
  time within the new band). ARGV[1] task id, ARGV[2] priority in
  [-1000, 1000]. Reply {'OK', state} | {'NOT_FOUND'} (running and ended
  tasks only get the stored priority changed; it no longer matters).
rtq2_pause: pause ('1') or resume ('0') hand-outs. While paused, submits are
  queued (subject to max depth). Resuming dispatches up to 1000 tasks at
  once; housekeeping continues with the rest. Reply {'OK', dispatched}.
rtq2_set_max_depth: ARGV[1] maximum pending tasks, integer in [0, 2^40]
  (0 = unlimited). Reply {'OK'}.
rtq2_purge: cancel up to ARGV[1] (in [1, 1000]) queued tasks (pending and
  delayed), highest priority first, each ending as 'cancelled' with kind
  'purged' so waiting clients are told. Callers loop until remaining is 0.
  Reply {removed, remaining}.
rtq2_delete_task: forget an ended task now instead of at the end of its
  retention: its hash, output and follower set are deleted. If a complete
  of its worker ended it and handed out a next task, its replay mark
  (`ca`, `nx`, with `st`, `nc`, `fc`) is kept apart in `ca:<id>` for
  10 minutes, so a retry of that complete after a lost reply still gets
  its next task (best effort). ARGV[1] task id. Reply {'OK', state} | {'NOT_FOUND'} | {'NOT_ENDED', state} (queued or
  running: cancel it first) | {'OWNED', worker} (ended, but its worker has
  not let go of it yet: try again after the worker's next heartbeat).
rtq2_housekeep: one bounded round of upkeep (what every worker heartbeat
  also does, for queues without live workers): reap up to 8 dead workers,
  end up to 100 overdue tasks, promote due retries, dispatch up to 1000
  tasks if pending work and free slots coexist. No arguments.
  Reply {reaped, expired, dispatched}.

Each refuses a stream queue (meta mode=stream, protocol v3) with
INVALID ... is a stream queue, before reading or writing anything
(revision 16).

KEYS[1] of each: rtq:{<queue>}:meta
]]
local function set_priority(keys, args)
  bind(keys)
  if #args ~= 2 then invalid('set_priority takes 2 arguments') end
  refuse_if_stream_queue()
  local id = arg_id(args[1], 'task id')
  local pri = arg_int(args[2], 'priority', -PRIORITY_LIMIT, PRIORITY_LIMIT)
  local h = load_task(id)
  if not h then return {'NOT_FOUND'} end
  local sc = score_of(pri, num(h.sc) % BAND)
  redis.call('HSET', tkey(id), 'pri', pri, 'sc', sc)
  if h.st == 'queued' and redis.call('ZSCORE', P .. 'pending', id) then
    redis.call('ZADD', P .. 'pending', sc, id)
  end
  return {'OK', h.st}
end

local function pause(keys, args)
  bind(keys)
  if #args ~= 1 then invalid('pause takes 1 argument') end
  refuse_if_stream_queue()
  local paused = arg_flag(args[1], 'paused')
  ensure_meta(redis.call('HGET', P .. 'meta', 'v'))
  redis.call('HSET', P .. 'meta', 'paused', paused and 1 or 0)
  event(paused and 'paused' or 'resumed', '', '', '')
  local n = 0
  if not paused then n = dispatch_if_needed(now_ms(), DISPATCH_PER_CALL) end
  return {'OK', n}
end

local function set_max_depth(keys, args)
  bind(keys)
  if #args ~= 1 then invalid('set_max_depth takes 1 argument') end
  refuse_if_stream_queue()
  local maxd = arg_int(args[1], 'max depth', 0, 1099511627776)
  ensure_meta(redis.call('HGET', P .. 'meta', 'v'))
  redis.call('HSET', P .. 'meta', 'maxd', maxd)
  event('max_depth', '', '', 'max depth ' .. istr(maxd))
  return {'OK'}
end

local function purge(keys, args)
  bind(keys)
  if #args ~= 1 then invalid('purge takes 1 argument') end
  refuse_if_stream_queue()
  local batch = arg_int(args[1], 'batch', 1, 1000)
  local now = now_ms()
  local removed = 0
  for _, zset in ipairs({'pending', 'delayed'}) do
    local ids = redis.call('ZRANGE', P .. zset, 0, batch - removed - 1)
    for _, id in ipairs(ids) do
      redis.call('ZREM', P .. zset, id)
      local h = load_task(id)
      if h and h.st == 'queued' then
        finish(id, h, 'cancelled', 'purged', 'queue purged', now)
      end
      removed = removed + 1
    end
    if removed >= batch then break end
  end
  if removed > 0 then event('purged', '', '', 'queued tasks cancelled: ' .. istr(removed)) end
  return {removed, redis.call('ZCARD', P .. 'pending') + redis.call('ZCARD', P .. 'delayed')}
end

local function delete_task(keys, args)
  bind(keys)
  if #args ~= 1 then invalid('delete_task takes 1 argument') end
  refuse_if_stream_queue()
  local id = arg_id(args[1], 'task id')
  local h = load_task(id)
  if not h then return {'NOT_FOUND'} end
  if h.st == 'queued' or h.st == 'running' then return {'NOT_ENDED', h.st} end
  if h.w ~= '' and redis.call('SISMEMBER', wqkey(h.w), id) == 1 then return {'OWNED', h.w} end
  redis.call('DEL', tkey(id), okey(id), wtkey(id))
  if h.ca ~= '' and h.nx ~= '' then
    local k = cakey(id)
    if type(redis.pcall('HSET', k, 'ca', h.ca, 'nx', h.nx, 'st', h.st, 'nc', h.nc, 'fc', h.fc)) == 'number' then
      redis.call('PEXPIRE', k, REPLAY_KEEP_S)
    end
  end
  event('deleted', id, h.w, h.st)
  return {'OK', h.st}
end

local function housekeep(keys, args)
  bind(keys)
  if #args ~= 0 then invalid('housekeep takes no arguments') end
  refuse_if_stream_queue()
  local reaped, expired, dispatched = housekeeping(now_ms())
  return {reaped, expired, dispatched}
end

redis.register_function{function_name = 'rtq2_set_priority', callback = set_priority, flags = {'allow-oom'}}
redis.register_function{function_name = 'rtq2_pause', callback = pause, flags = {'allow-oom'}}
redis.register_function{function_name = 'rtq2_set_max_depth', callback = set_max_depth, flags = {'allow-oom'}}
redis.register_function{function_name = 'rtq2_purge', callback = purge, flags = {'allow-oom'}}
redis.register_function{function_name = 'rtq2_delete_task', callback = delete_task, flags = {'allow-oom'}}
redis.register_function{function_name = 'rtq2_housekeep', callback = housekeep, flags = {'allow-oom'}}
