--[[
rtq2_register / rtq2_heartbeat: a worker process (re)registers or proves it
is alive, and Redis reconciles its capacity and ownership with what the
worker reports it is running. Both are idempotent: retrying after a lost
reply changes nothing further.

The worker reports every attempt it runs locally as (task id, attempt).
Redis then:
  - names the reported attempts that are no longer current (cancelled,
    expired, requeued, reassigned, gone): the worker stops them;
  - sweeps orphans: a task this worker owns at its current attempt but does
    not report, owned for longer than one lease (its inbox message or a
    reply carrying it was lost), uses up an attempt and is requeued;
  - sets the worker's free slots idempotently:
        free = accepting ? max(0, slots - |owned| - stale running) : 0
    where stale running = reported attempts it no longer owns (still
    winding down, so still occupying a slot); an attempt whose own
    complete already ran (its reply was in flight when the worker took
    its snapshot) is not stale;
  - dispatches pending work to free slots (pushed into inboxes).

Identity: `instance` is random per worker process. rtq2_register with a new
instance under a known worker id means the old process is gone (a restart
under the same id): its tasks use up an attempt and are requeued first.
rtq2_heartbeat answers GONE when the worker is not registered (its lease
lapsed and it was reaped, or it left) and REPLACED when another instance
holds the id; both write nothing, and the worker must re-register (GONE)
or stop (REPLACED).

KEYS[1]  rtq:{<queue>}:meta
ARGV[1]  worker id            1-128 bytes of [A-Za-z0-9._:-]
ARGV[2]  instance             1-128 bytes of [A-Za-z0-9._:-]
ARGV[3]  lease ms             integer in [100, 600000]
ARGV[4]  slots                integer in [1, 1024]
ARGV[5]  accepting            '1' takes new tasks, '0' does not (free = 0)
ARGV[6]  K                    number of running attempts reported, [0, 1024]
ARGV[7 .. 6+2K]               K pairs: task id, attempt
ARGV[7+2K ..]                 worker info as field/value pairs; fields from
                              host pid version handler labels busy done
                              failed stopped state upstream last_error
                              last_error_ms (revision 14: when, Redis ms;
                              0 = no error) started,
                              and `stats`: the worker's statistics since its
                              last beat, added to the queue's buckets (not
                              stored with the worker): space-separated
                              <bucket>/<field>/<count> items (at most 1024,
                              64 KiB), bucket = Redis ms / 10000, field one of
                              done failed w:<i> f:<i> t:<i> (i <= 200), count
                              in [1, 1e9]; buckets older than an hour (or in
                              the future) are dropped. Workers compute the
                              latencies from the Redis times they receive, so
                              the hot path writes no statistics.

Reply: {status, now_ms, reaped, expired, swept, free, S, S triples of
        (task id, attempt, why)}
  status  'OK' | 'GONE' | 'REPLACED' (GONE/REPLACED: only status and now)
  why     'cancelled' | 'expired' | 'requeued' | 'reassigned' | 'ended' | 'gone'
]]

local INFO_FIELDS = {host = true, pid = true, version = true, handler = true, labels = true,
  busy = true, done = true, failed = true, stopped = true, state = true, upstream = true,
  last_error = true, last_error_ms = true, started = true}

local MAX_STAT_ITEMS = 1024
local MAX_STAT_BYTES = 65536
local MAX_HIST_INDEX = 200

-- The `stats` info value as a list of {bucket, field, count}.
local function arg_stats(v)
  arg_text(v, 'stats', MAX_STAT_BYTES)
  local items = {}
  for item in string.gmatch(v, '%S+') do
    if #items >= MAX_STAT_ITEMS then invalid('stats: at most ' .. MAX_STAT_ITEMS .. ' items') end
    local b, f, n = string.match(item, '^(%d+)/([%a]+:?%d*)/(%d+)$')
    if not b or #b > 15 or #n > 10 then
      invalid('stats items must be <bucket>/<field>/<count>, got ' .. string.sub(item, 1, 40))
    end
    local hist = string.match(f, '^[wft]:(%d+)$')
    if not (f == 'done' or f == 'failed' or (hist and #hist <= 3 and tonumber(hist) <= MAX_HIST_INDEX)) then
      invalid('stats field must be done, failed, w:<i>, f:<i> or t:<i> (i <= 200), got ' .. string.sub(f, 1, 40))
    end
    n = tonumber(n)
    if n < 1 or n > 1e9 then invalid('stats count must be in [1, 1e9], got ' .. istr(n)) end
    items[#items + 1] = {tonumber(b), f, n}
  end
  return items
end

local function why_stop(h, wid, att)
  if not h then return 'gone' end
  if h.att ~= att or h.w ~= wid then
    if h.st == 'queued' then return 'requeued' end
    return 'reassigned'
  end
  if h.st == 'cancelled' then return 'cancelled' end
  if h.st == 'expired' then return 'expired' end
  if h.st == 'queued' then return 'requeued' end
  if h.st ~= 'running' then return 'ended' end
  return nil
end

local function beat(keys, args, register)
  bind(keys)
  local wid = arg_id(args[1], 'worker id')
  local inst = arg_id(args[2], 'instance')
  local lease = arg_int(args[3], 'lease', MIN_LEASE_MS, MAX_LEASE_MS)
  local slots = arg_int(args[4], 'slots', 1, MAX_SLOTS)
  local accepting = arg_flag(args[5], 'accepting')
  local k = arg_int(args[6], 'running count', 0, MAX_SLOTS)
  if #args < 6 + 2 * k then invalid('running count says ' .. k .. ' pairs') end
  local running = {}
  for i = 0, k - 1 do
    local id = arg_id(args[7 + 2 * i], 'running task id')
    local att = arg_int(args[8 + 2 * i], 'running attempt', 1, 1e15)
    running[#running + 1] = {id, istr(att)}
  end
  local info = {}
  local stats = {}
  if (#args - 6 - 2 * k) % 2 ~= 0 then invalid('worker info must be field/value pairs') end
  for i = 7 + 2 * k, #args, 2 do
    if args[i] == 'stats' then
      stats = arg_stats(args[i + 1])
    else
      if not INFO_FIELDS[args[i]] then invalid('unknown worker info field ' .. string.sub(args[i], 1, 40)) end
      info[#info + 1] = args[i]
      info[#info + 1] = arg_text(args[i + 1], 'worker info ' .. args[i], MAX_TEXT_BYTES)
    end
  end

  local now = now_ms()
  local registered = redis.call('ZSCORE', P .. 'workers', wid)
  local known_inst = redis.call('HGET', wkey(wid), 'inst')
  if not register then
    if not registered then return {'GONE', now} end
    if known_inst ~= inst then return {'REPLACED', now} end
  end

  local meta = redis.call('HMGET', P .. 'meta', 'v', 'mode')
  refuse_stream_queue(meta[2])

  -- Writes.
  ensure_meta(meta[1])
  local swept = 0
  if register and registered and known_inst ~= inst then
    -- A new process under this id: the old one is gone with its tasks.
    swept = swept + reap_worker(wid, now, 'was restarted')
  end
  -- A process back under a departed id is no longer departed.
  if register then redis.pcall('ZREM', P .. 'gone', wid) end
  redis.call('ZADD', P .. 'workers', now + lease, wid)
  local wk = wkey(wid)
  redis.call('HSET', wk, 'hb', now, 'lease', lease, 'inst', inst, 'slots', slots,
    'acc', accepting and 1 or 0, 'state', accepting and 'idle' or 'paused', unpack(info))
  redis.call('PERSIST', wk)

  -- Reconcile what the worker runs with what it owns.
  local wq = wqkey(wid)
  local stops = {}
  local stale = 0
  local reported = {}
  for _, pair in ipairs(running) do
    local id, att = pair[1], pair[2]
    reported[id .. '\t' .. att] = true
    local h = load_task(id)
    if h and string.match(h.ca, ' (.+)$') == att .. '@' .. wid then
      -- This attempt's complete already ran; the worker read its state
      -- before the reply arrived. Its slot is free (or holds the next
      -- task, which is owned and counted): neither stale nor to stop.
    else
      local why = why_stop(h, wid, att)
      if why then
        stops[#stops + 1] = id
        stops[#stops + 1] = att
        stops[#stops + 1] = why
      end
      if not (h and h.w == wid and h.att == att and redis.call('SISMEMBER', wq, id) == 1) then
        stale = stale + 1
      end
    end
  end
  for _, id in ipairs(redis.call('SMEMBERS', wq)) do
    local h = load_task(id)
    if not h or h.w ~= wid then
      redis.call('SREM', wq, id)
    elseif not reported[id .. '\t' .. h.att] then
      if h.st ~= 'running' then
        -- Ended (cancelled, expired) and the worker runs nothing of it.
        redis.call('SREM', wq, id)
      elseif now - num(h.start) > lease then
        redis.call('SREM', wq, id)
        lose_attempt(id, h, 'worker ' .. wid .. ' never received the task (lost message)', now)
        swept = swept + 1
      end
    end
  end
  local free = 0
  if accepting then
    free = slots - redis.call('SCARD', wq) - stale
    if free < 0 then free = 0 end
  end
  set_free(wid, free)

  local newest = math.floor(now / STATS_BUCKET_MS)
  for _, s in ipairs(stats) do
    if s[1] <= newest + 1 and s[1] >= newest - STATS_TTL_MS / STATS_BUCKET_MS then
      stat_add(P .. 's:' .. istr(s[1]), s[2], s[3])
    end
  end

  local reaped, expired = 0, 0
  if register then
    dispatch_if_needed(now, DISPATCH_PER_CALL)
  else
    reaped, expired = housekeeping(now)
  end
  local out = {'OK', now, reaped, expired, swept, free, #stops / 3}
  for _, v in ipairs(stops) do out[#out + 1] = v end
  return out
end

redis.register_function{
  function_name = 'rtq2_register',
  callback = function(keys, args) return beat(keys, args, true) end,
  flags = {'allow-oom'},
}
redis.register_function{
  function_name = 'rtq2_heartbeat',
  callback = function(keys, args) return beat(keys, args, false) end,
  flags = {'allow-oom'},
}
