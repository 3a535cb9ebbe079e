--[[
rtq2_submit: create a task and, in the same step, hand it to a live worker
with a free slot (its inbox receives the task data) or add it to pending.

Guarantees: the depth check and the enqueue are one atomic step; a task is
always pending or owned by exactly one worker; a duplicate id never
overwrites an existing task (the reply describes the existing one, so a
retried submit whose first reply was lost can attach to its own task).
Flags: refused by Redis with an OOM error when over maxmemory (no allow-oom),
so producers stop before consumers do.

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
]]
local function submit(keys, args)
  bind(keys)
  if #args ~= 8 then invalid('submit takes 8 arguments') end
  local id = arg_id(args[1], 'task id')
  local spec = args[2]
  if #spec == 0 or #spec > MAX_SPEC_BYTES then invalid('spec must be 1 byte to 16 MiB') end
  local pri = arg_int(args[3], 'priority', -PRIORITY_LIMIT, PRIORITY_LIMIT)
  local timeout = arg_int(args[4], 'timeout', 0, MAX_DURATION_MS)
  local max = arg_int(args[5], 'max attempts', 1, MAX_ATTEMPTS)
  local ret = arg_int(args[6], 'retention', 1, MAX_DURATION_MS)
  local reply = arg_reply(args[7], 'reply stream')
  local strm = arg_flag(args[8], 'stream flag') and '1' or '0'

  local t = tkey(id)
  local existing = redis.call('HMGET', t, 'st', 'w', 'dl', 'sub', 'reply')
  if existing[1] then
    return {'DUPLICATE', existing[1], existing[2] or '', num(existing[3]), num(existing[4]), existing[5] or ''}
  end

  local now = now_ms()
  local meta = redis.call('HMGET', P .. 'meta', 'v', 'paused', 'maxd')
  local wid = nil
  if meta[2] ~= '1' then wid = peek_free(now, nil) end
  if not wid then
    local maxd = num(meta[3])
    if maxd > 0 then
      local depth = redis.call('ZCARD', P .. 'pending') + redis.call('ZCARD', P .. 'delayed')
      if depth >= maxd then
        stat_count(now, 'full')
        return {'QUEUE_FULL', depth, maxd}
      end
    end
  end

  -- Writes. The ones on shared structures (which a foreign writer could
  -- have replaced with a key of another type) come first, so a failure
  -- leaves nothing behind; the task hash, statistics and meta come last.
  local dl = 0
  if timeout > 0 then dl = now + timeout end
  local sc = score_of(pri, now)
  if wid then
    redis.call('SADD', wqkey(wid), id)
    use_free(wid)
  else
    redis.call('ZADD', P .. 'pending', sc, id)
  end
  if dl > 0 then redis.call('ZADD', P .. 'deadlines', dl, id) end
  local fields = {'v', PROTOCOL, 'spec', spec, 'pri', pri, 'sc', sc, 'fails', 0, 'max', max,
    'sub', now, 'dl', dl, 'ret', ret, 'reply', reply, 'strm', strm, 'fc', 0, 'lc', 0,
    'nc', 0, 'nb', 0}
  if wid then
    -- One HSET creates the task already handed out (attempt 1).
    for _, v in ipairs({'st', 'running', 'w', wid, 'att', 1, 'start', now}) do fields[#fields + 1] = v end
  else
    for _, v in ipairs({'st', 'queued', 'w', '', 'att', 0}) do fields[#fields + 1] = v end
  end
  redis.call('HSET', t, unpack(fields))
  if dl > 0 then
    -- Safety net: even if no housekeeping ever runs, the hash cannot
    -- outlive deadline + retention.
    redis.call('PEXPIRE', t, timeout + ret)
  end
  if wid then redis.call('RPUSH', inkey(wid), task_msg(id, 1, now, dl, spec)) end
  local b = stat_count(now, 'sub')
  if wid then stat_hist(b, 'w:', 0) end
  ensure_meta(meta[1])
  if wid then return {'OK', 'running', wid, dl, now} end
  return {'OK', 'queued', '', dl, now}
end

redis.register_function{function_name = 'rtq2_submit', callback = submit}
