--[[
rtq2_submit / rtq2_submit_many: create tasks and, in the same step, hand
each to a live worker with a free slot (its inbox receives the task data)
or add it to pending. rtq2_submit_many is one call for several tasks (a
client coalesces the submits issued while one is in flight): the
per-call work (clock, queue state, free slots, counters) is paid once,
and each task's answer is what rtq2_submit would have answered for it
had the tasks been submitted one after another in this order.

Guarantees: the depth check and the enqueue are one atomic step; a task is
always pending or owned by exactly one worker; a duplicate id never
overwrites an existing task (the reply describes the existing one, so a
retried submit whose first reply was lost can attach to its own task; an
id repeated within one call is a duplicate of its first occurrence).
Every task of a call is validated before anything is written: one invalid
task refuses the whole call.
Flags: refused by Redis with an OOM error when over maxmemory (no allow-oom),
so producers stop before consumers do.

rtq2_submit:
KEYS[1]  rtq:{<queue>}:meta
ARGV[1]  task id                 1-128 bytes of [A-Za-z0-9._:-]
ARGV[2]  spec JSON               1 byte - 16 MiB, sent to the worker as is
ARGV[3]  priority                integer in [-1000, 1000]
ARGV[4]  timeout ms from now     integer in [0, 30 days], 0 = no deadline
ARGV[5]  max attempts            integer in [1, 1000]
ARGV[6]  retention ms            integer in [1, 30 days], after the task ends
ARGV[7]  reply stream            '' or rtq:{<queue>}:r:<client id>
ARGV[8]  stream chunks           '1' to receive chunk events, '0' final only

Reply:
  {'OK', state, worker, deadline_ms, now_ms}        state 'running' | 'queued'
  {'QUEUE_FULL', depth, max_depth}
  {'DUPLICATE', state, worker, deadline_ms, submitted_ms, reply_stream}

rtq2_submit_many:
KEYS[1]  rtq:{<queue>}:meta
ARGV[1]  n                       integer in [1, 256]
ARGV[2 .. 1+8n]                  n groups of rtq2_submit's 8 arguments
Reply: n replies, each as rtq2_submit's, in order.
]]

local MAX_BATCH = 256

-- Checks one task's 8 arguments starting at args[o].
-- One task's checked arguments args[o .. o+7]. `reply_ok` is the reply
-- stream the call already checked (a call's tasks mostly share one).
-- The table is made by one constructor, with room for what submit_batch
-- adds (filling an empty table grows it several times).
local function submit_args(args, o, reply_ok)
  local id = arg_id(args[o], 'task id')
  local spec = args[o + 1]
  if type(spec) ~= 'string' or #spec == 0 or #spec > MAX_SPEC_BYTES then
    invalid('spec must be 1 byte to 16 MiB')
  end
  -- Checked in argument order, as before revision 11: a call with more
  -- than one invalid argument is refused naming the first.
  local pri = arg_int(args[o + 2], 'priority', -PRIORITY_LIMIT, PRIORITY_LIMIT)
  local timeout = arg_int(args[o + 3], 'timeout', 0, MAX_DURATION_MS)
  local max = arg_int(args[o + 4], 'max attempts', 1, MAX_ATTEMPTS)
  local ret = arg_int(args[o + 5], 'retention', 1, MAX_DURATION_MS)
  local reply = args[o + 6]
  if reply ~= reply_ok then reply = arg_reply(reply, 'reply stream') end
  return {
    id = id,
    spec = spec,
    pri = pri,
    timeout = timeout,
    max = max,
    ret = ret,
    reply = reply,
    strm = arg_flag(args[o + 7], 'stream flag') and '1' or '0',
    -- set by submit_batch
    wid = false, dl = 0, dl_s = false, sc = false, st = false, key = false,
  }
end

-- Free slots of live workers, handed out most free first (as peek_free):
-- entries are checked for liveness only when they are about to be used.
-- `want` tasks may need as many workers beyond the FREE_PEEK that
-- peek_free looks at (dead entries, one-slot workers), so the read is
-- that much wider.
local function free_slots(now, want)
  local raw = redis.call('ZRANGE', P .. 'free', 0, FREE_PEEK + want - 2, 'REV', 'WITHSCORES')
  local pool = {}
  for i = 1, #raw, 2 do pool[#pool + 1] = {wid = raw[i], n = tonumber(raw[i + 1]), live = false} end
  return {
    take = function()
      while true do
        local best = nil
        for k = 1, #pool do
          local e = pool[k]
          if e.n > 0 and (not best or e.n > best.n) then best = e end
        end
        if not best then return nil end
        if not best.live then
          local exp = redis.call('ZSCORE', P .. 'workers', best.wid)
          if exp and tonumber(exp) > now then
            best.live = true
          else
            -- A dead entry: removed now (peek_free does the same).
            redis.call('ZREM', P .. 'free', best.wid)
            best.n = 0
          end
        end
        if best.live then
          best.n = best.n - 1
          best.used = (best.used or 0) + 1
          return best.wid
        end
      end
    end,
    used = function()
      local out = {}
      for _, e in ipairs(pool) do
        if e.used then out[#out + 1] = e end
      end
      return out
    end,
  }
end

-- Submits the validated `tasks` in order; returns one reply per task.
-- A key of the wrong type that a write would fail on is refused before
-- any write (expect_type).
local function submit_batch(tasks)
  -- Compute: duplicates, hand-outs, depth, from one read of the queue.
  local now = now_ms()
  local meta = redis.call('HMGET', P .. 'meta', 'v', 'paused', 'maxd', 'mode')
  refuse_stream_queue(meta[4])
  local paused = meta[2] == '1'
  local maxd = num(meta[3])
  local depth = nil
  local free = nil
  local seen = {}
  local replies = {}
  local created = {}
  -- (Numeric loops: ipairs calls a C iterator per item.)
  for i = 1, #tasks do
    local task = tasks[i]
    local first = seen[task.id]
    if first then
      -- Its first occurrence was created by this call.
      local f = tasks[first]
      replies[i] = {'DUPLICATE', f.st, f.wid or '', f.dl, now, f.reply}
    else
      task.key = tkey(task.id)
      -- One field tells whether the task exists (a new id answers nil);
      -- the rest is read for a duplicate only. (HMGET, as before: ACL
      -- rules made for earlier revisions may grant no EXISTS or HGET.)
      local existing = NONE
      if redis.call('HMGET', task.key, 'st')[1] then
        existing = redis.call('HMGET', task.key, 'st', 'w', 'dl', 'sub', 'reply')
      end
      if existing[1] then
        replies[i] = {'DUPLICATE', existing[1], existing[2] or '', num(existing[3]), num(existing[4]),
          existing[5] or ''}
      else
        seen[task.id] = i
        local wid = nil
        if not paused then
          free = free or free_slots(now, #tasks)
          wid = free.take()
        end
        if not wid and maxd > 0 then
          depth = depth or (redis.call('ZCARD', P .. 'pending') + redis.call('ZCARD', P .. 'delayed'))
          if depth >= maxd then
            replies[i] = {'QUEUE_FULL', depth, maxd}
            seen[task.id] = nil
          else
            depth = depth + 1
          end
        end
        if not replies[i] then
          task.wid = wid
          task.dl = 0
          if task.timeout > 0 then task.dl = now + task.timeout end
          task.sc = score_of(task.pri, now)
          if wid then task.st = 'running' else task.st = 'queued' end
          created[#created + 1] = task
          replies[i] = {'OK', task.st, wid or '', task.dl, now}
        end
      end
    end
  end
  local full = 0
  for i = 1, #replies do
    if replies[i][1] == 'QUEUE_FULL' then full = full + 1 end
  end
  local queued, timed = false, false
  for i = 1, #created do
    local task = created[i]
    if not task.wid then queued = true end
    if task.dl > 0 then timed = true end
  end
  -- With no hand-out, the ZADD to pending is the call's first write: its
  -- own failure leaves nothing behind, so it needs no check beforehand.
  local pending_first = not (free and #free.used() > 0)
  if queued and not pending_first then expect_type(P .. 'pending', 'zset') end
  if timed then expect_type(P .. 'deadlines', 'zset') end
  if free then
    for _, e in ipairs(free.used()) do
      expect_type(wqkey(e.wid), 'set')
      expect_type(inkey(e.wid), 'list')
    end
  end

  -- Writes. The ones on shared structures (which a foreign writer could
  -- have replaced with a key of another type) come first, so a failure
  -- leaves nothing behind; task hashes, statistics and meta come last.
  local pending, deadlines, owned = {}, {}, {}
  local now_s = time_str(now)
  for i = 1, #created do
    local task = created[i]
    task.dl_s = istr(task.dl)
    if task.wid then
      owned[task.wid] = owned[task.wid] or {}
      local o = owned[task.wid]
      o[#o + 1] = task
    else
      pending[#pending + 1] = task.sc
      pending[#pending + 1] = task.id
    end
    if task.dl > 0 then
      deadlines[#deadlines + 1] = task.dl_s
      deadlines[#deadlines + 1] = task.id
    end
  end
  if free then
    for _, e in ipairs(free.used()) do
      local ids = {}
      for _, task in ipairs(owned[e.wid]) do ids[#ids + 1] = task.id end
      redis.call('SADD', wqkey(e.wid), unpack(ids))
      if e.n > 0 then
        redis.call('ZADD', P .. 'free', istr(e.n), e.wid)
      else
        redis.call('ZREM', P .. 'free', e.wid)
      end
    end
  end
  if #pending > 0 then
    local added = redis.pcall('ZADD', P .. 'pending', unpack(pending))
    if type(added) == 'table' and added.err then
      expect_type(P .. 'pending', 'zset')
      error(added)
    end
  end
  if #deadlines > 0 then redis.call('ZADD', P .. 'deadlines', unpack(deadlines)) end
  for i = 1, #created do
    local task = created[i]
    -- Counters that start at zero (fails, chunk counts and times) and an
    -- unassigned task's worker and attempt are not written: absent reads
    -- as zero (or '').
    if task.wid then
      -- One HSET creates the task already handed out (attempt 1).
      redis.call('HSET', task.key, 'v', PROTOCOL_S, 'spec', task.spec, 'pri', istr(task.pri), 'sc', task.sc,
        'max', istr(task.max), 'sub', now_s, 'dl', task.dl_s, 'ret', ret_str(task.ret), 'reply', task.reply,
        'strm', task.strm, 'st', 'running', 'w', task.wid, 'att', '1', 'start', now_s)
    else
      redis.call('HSET', task.key, 'v', PROTOCOL_S, 'spec', task.spec, 'pri', istr(task.pri), 'sc', task.sc,
        'max', istr(task.max), 'sub', now_s, 'dl', task.dl_s, 'ret', ret_str(task.ret), 'reply', task.reply,
        'strm', task.strm, 'st', 'queued')
    end
    if task.dl > 0 then
      -- Safety net: even if no housekeeping ever runs, the hash cannot
      -- outlive deadline + retention.
      redis.call('PEXPIRE', task.key, istr(task.timeout + task.ret))
    end
  end
  if free then
    for _, e in ipairs(free.used()) do
      local msgs = {}
      for _, task in ipairs(owned[e.wid]) do msgs[#msgs + 1] = task_msg(task.id, 1, now, task.dl_s, now_s, task.spec) end
      redis.call('RPUSH', inkey(e.wid), unpack(msgs))
    end
  end
  local b = stats_key(now)
  if #created > 0 then stat_add(b, 'sub', #created) end
  if full > 0 then stat_add(b, 'full', full) end
  if #created > 0 then ensure_meta(meta[1]) end
  return replies
end

local function submit(keys, args)
  bind(keys)
  if #args ~= 8 then invalid('submit takes 8 arguments') end
  return submit_batch({submit_args(args, 1, nil)})[1]
end

local function submit_many(keys, args)
  bind(keys)
  local n = arg_int(args[1], 'task count', 1, MAX_BATCH)
  if #args ~= 1 + 8 * n then invalid('submit_many takes 1 + 8 x ' .. n .. ' arguments, got ' .. #args) end
  local tasks = {}
  local reply_ok = nil
  for i = 1, n do
    tasks[i] = submit_args(args, 2 + 8 * (i - 1), reply_ok)
    reply_ok = tasks[i].reply
  end
  return submit_batch(tasks)
end

redis.register_function{function_name = 'rtq2_submit', callback = submit}
redis.register_function{function_name = 'rtq2_submit_many', callback = submit_many}
