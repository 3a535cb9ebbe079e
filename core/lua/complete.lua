--[[
rtq2_complete / rtq2_complete_many: a worker ends its attempt of a task (success, failure, or a
retryable failure), optionally appending the last chunks in the same step,
then, if it asks, takes the next task for the freed slot (returned in the
reply: one round trip per task while work is queued).
rtq2_complete_many ends several attempts of one worker in one call (the
worker coalesces the completes of its slots issued while one is in
flight): the clock and the queue's state are read once per call, and
each completion's answer is what rtq2_complete would have answered for
it had the completions been sent one after another in this order (only
the time is the call's). Every argument of every completion is checked
before anything is written: one invalid completion refuses the whole
call, and so does a key of the wrong type (a foreign key in rtq's
namespace) that one of its writes would fail on (WRONGTYPE, nothing
written). A FENCED, ORDER or TOO_LARGE completion writes nothing and does
not affect the others.

Guarantees:
  - fencing: only the current attempt of the worker holding the task can
    end it (a late write from an earlier attempt gets FENCED, and changes
    nothing, not even the worker's slots);
  - ordering: applies only if the task holds exactly seq0 chunks (ORDER);
  - idempotency: retrying after a lost reply replays the first call's
    answer (including the same next task) and writes nothing more (the
    mark is kept on the task hash as `ca`, the next task as `nx`, "<id>@<attempt>"; a
    task whose hash vanished frees the slot and takes no next task);
  - capacity: a slot is freed (next task taken, or one free slot added)
    only when this call ends the worker's ownership of the task, once;
  - a retryable failure goes to `delayed` for a backoff (250 ms doubling,
    at most 30 s), then to the back of its priority, and avoids this worker
    while another live worker exists (until 5 s after the backoff).

rtq2_complete:
KEYS[1]  rtq:{<queue>}:meta
ARGV[1]  worker id
ARGV[2]  task id
ARGV[3]  attempt the worker received           integer >= 1
ARGV[4]  seq0: chunks the worker wrote before   integer >= 0
ARGV[5]  outcome                                'done' | 'failed' | 'retry'
ARGV[6]  result JSON (done, <= 16 MiB) or reason (failed/retry, <= 64 KiB)
ARGV[7]  want next                              '0' no, '1' take the next task,
                                                '2' take it and answer its spec
                                                apart (the 7th reply item)
ARGV[8..] trailing chunks (at most 512, each at most 1 MiB)

rtq2_complete_many:
KEYS[1]  rtq:{<queue>}:meta
ARGV[1]  worker id
ARGV[2]  n: completions in the call             integer in [1, 1024]
ARGV[3..] n groups: task id, attempt, seq0, outcome, result or reason,
          want next (as ARGV[2..7] of rtq2_complete), k: trailing chunk
          count (integer in [0, 512]), then the k chunks
Reply: n replies, each as rtq2_complete's, in order.

rtq2_write_many (revision 10): as rtq2_complete_many, and a group may also
be a chunk write of a running attempt: outcome 'chunks', result '' and
want next '0', its k chunks appended as rtq2_chunk would (fencing,
seq0 ordering, output caps, followers notified); it ends nothing. The
worker coalesces the chunk writes and completes its slots issue while one
call is in flight, in the order they were issued (a task's chunk writes
before its complete). A chunk write's reply has rtq2_complete's shape:
{status, '', chunk_count, state, 0, 0} with rtq2_chunk's statuses.

Reply: {status, next_task_message_or_'', chunk_count, state, now_ms, first_chunk_ms}
  With want next '2': {status, next_task_message_without_spec_or_'', chunk_count,
  state, now_ms, first_chunk_ms, next_task_spec_or_''}: the message is
  cut before its spec (it ends with the tab that precedes it), so Lua
  copies no spec into a message (revision 9; the worker joins the two).
  now_ms and first_chunk_ms (0 = no chunk) let the worker record the
  task's latencies in its own statistics (0 and 0 for FENCED, ORDER,
  TOO_LARGE); a replay answers the replay's time.
  'OK'         outcome recorded (or replayed)
  'ENDED'      the task was cancelled or expired meanwhile; slot released;
               state says which
  'NOT_FOUND'  the task no longer exists; slot released
  'FENCED'     this attempt is not current; nothing written
  'ORDER'      chunk count != seq0; nothing written (retry after earlier writes)
  'TOO_LARGE'  the chunks would pass the output caps (100,000 chunks,
               64 MiB); nothing written: end the task as failed instead
]]

-- The inbox message of the next task a completion took, named by its
-- replay mark `nx` ("<task id>@<attempt>"; a bare id, written by revision
-- 8, checks no attempt), as (head, spec) if worker `wid` still runs that
-- attempt (a replay), else ('', ''): a next task requeued and handed out
-- again meanwhile reaches the worker once, through its inbox.
local function rebuild_message(nx, wid)
  local id, att = string.match(nx, '^([^@]+)@(%d+)$')
  if not id then id = nx end
  local n = redis.call('HMGET', tkey(id), 'st', 'w', 'att', 'start', 'dl', 'sub', 'spec')
  if n[1] ~= 'running' or n[2] ~= wid or (att and n[3] ~= att) then return '', '' end
  return task_head(id, num(n[3]), num(n[4]), n[5], n[6]), n[7] or ''
end

-- A completion's reply; the next task's message (head, spec) joined, or
-- apart as the 7th item when the worker asked (want next '2').
local function answer(c, status, head, spec, nc, state, now, fc)
  if c.split then return {status, head, nc, state, now, fc, spec} end
  if spec ~= '' then head = head .. spec end
  return {status, head, nc, state, now, fc}
end

-- The allowed words, made once (a table literal in a function is a new
-- table on every call).
local OUTCOMES = {'done', 'failed', 'retry'}
local WRITE_OUTCOMES = {'done', 'failed', 'retry', 'chunks'}
local NEXT_MODES = {'0', '1', '2'}
-- The same as sets: a valid word is one lookup (arg_enum, which loops
-- over its list, words the error).
local IS_OUTCOME = {done = true, failed = true, retry = true}
local IS_NEXT_MODE = {['0'] = true, ['1'] = true, ['2'] = true}

-- Checks one completion's arguments args[o .. o+5] (task id .. want next)
-- with its chunks args[first .. last]. With `allow_chunks` (rtq2_write_many)
-- the outcome may also be 'chunks': a chunk write that ends nothing, with
-- an empty payload and want next '0'.
-- The table is made by one constructor (filling an empty table grows it
-- several times).
local function complete_args(args, o, first, last, allow_chunks)
  local id = arg_id(args[o], 'task id')
  local att = istr(arg_int(args[o + 1], 'attempt', 1, 1e15))
  local seq0 = arg_int(args[o + 2], 'seq0', 0, MAX_OUTPUT_CHUNKS)
  local outcome = args[o + 3]
  if not IS_OUTCOME[outcome] then
    outcome = arg_enum(outcome, 'outcome', allow_chunks and WRITE_OUTCOMES or OUTCOMES)
  end
  local payload, next_mode
  if outcome == 'chunks' then
    if args[o + 4] ~= '' then invalid('a chunk write carries no result or reason') end
    if args[o + 5] ~= '0' then invalid('a chunk write takes no next task (want next must be 0)') end
    payload, next_mode = '', '0'
  else
    if outcome == 'done' then
      payload = arg_text(args[o + 4], 'result', MAX_RESULT_BYTES)
    else
      payload = arg_text(args[o + 4], 'reason', 16 * MAX_TEXT_BYTES)
    end
    next_mode = args[o + 5]
    if not IS_NEXT_MODE[next_mode] then next_mode = arg_enum(next_mode, 'want next', NEXT_MODES) end
  end
  local chunks, bytes = arg_chunks(args, first, last)
  return {id = id, att = att, seq0 = seq0, outcome = outcome, payload = payload,
    want_next = next_mode ~= '0', split = next_mode == '2', chunks = chunks, bytes = bytes,
    -- set by prepare_call: the first group of the call naming this task
    -- (`first`), its view read before any write (`h`, false: no task) and
    -- whether the worker owned it then (`owned`)
    first = false, h = false, owned = false}
end

-- What one call reads once for all its completions: the clock, the
-- queue's paused flag and earliest-due mark, and its batched writes
-- (prepare_call; nil for a call of chunk writes only).
local function new_call()
  return {now = nil, meta = nil, clock = nil, batch = nil, free = 0}
end

local function call_now(call)
  if not call.now then call.now = now_ms() end
  return call.now
end

-- The next task for a freed slot of `wid` as (head, spec, replay mark
-- "<task id>@<attempt>"), or ('', '', '') (paused, none queued).
local function call_take_next(call, wid, now)
  if call.meta[1] == '1' then return '', '', '' end
  -- prepare_call read meta, and promoted the retries due if a completion
  -- was sure to free its slot; else the first slot freed promotes them,
  -- as a sequential call would (a call that frees none writes nothing).
  if call.meta[2] ~= '0' then
    if promote_due(now, call.meta[2]) > 0 then call.batch.stale = true end
    call.meta[2] = '0'
  end
  local head, spec, id, att = take_next(wid, now, '0', call.batch)
  if not head then return '', '', '' end
  return head, spec, id .. '@' .. istr(att)
end

-- A chunk write (outcome 'chunks', rtq2_write_many), as rtq2_chunk; the
-- reply has rtq2_complete's shape: {status, '', chunk_count, state, 0, 0}.
local function write_chunks(call, wid, c)
  -- The call's clock as a function, made once per call, not per write.
  if not call.clock then call.clock = function() return call_now(call) end end
  local status, nc, st = write_chunk_group(wid, c.id, c.att, c.seq0, c.chunks, c.bytes, call.clock)
  return {status, '', nc, st, 0, 0}
end

-- Ends one attempt of worker `wid` (checked arguments `c`); returns the
-- reply rtq2_complete gives. A chunk write (rtq2_write_many) only appends.
local function complete_one(call, wid, c)
  if c.outcome == 'chunks' then return write_chunks(call, wid, c) end
  local id, att = c.id, c.att
  local chunks, bytes = c.chunks, c.bytes
  local batch = call.batch
  -- Read before any write (prepare_call), unless an earlier group of the
  -- call named the task or the call popped it from pending.
  local trusted = c.first and not batch.stale
  local h = c.h or nil
  if not trusted then h = load_task(id, (c.outcome == 'done' and #chunks == 0) and DONE or COMPLETE) end
  -- `ca` = "<status> <attempt>@<worker>" of the call that ended this
  -- attempt: a retry replays that answer. A task deleted since keeps it
  -- in `ca:<id>` (rtq2_delete_task) when that call handed out a task.
  local replay = h
  if not replay then
    local kept = redis.pcall('HMGET', cakey(id), 'ca', 'nx', 'st', 'nc', 'fc')
    if type(kept) == 'table' and kept[1] then
      replay = {ca = kept[1], nx = kept[2] or '', st = kept[3] or '', nc = kept[4], fc = kept[5]}
    end
  end
  -- (A task no call ended yet has no mark: no pattern to run.)
  if replay and replay.ca ~= '' then
    local done_status, done_mark = string.match(replay.ca, '^(%u+) (.+)$')
    if done_mark == att .. '@' .. wid then
      local head, spec = '', ''
      -- The view DONE does not read `nx`: a replay reads it here.
      if replay.nx == nil then replay.nx = redis.call('HMGET', replay.key, 'nx')[1] or '' end
      if replay.nx ~= '' then head, spec = rebuild_message(replay.nx, wid) end
      return answer(c, done_status, head, spec, num(replay.nc), replay.st, call_now(call), num(replay.fc))
    end
  end
  local status = check_write(h, wid, att, c.seq0, #chunks, bytes)
  if status == 'FENCED' then return answer(c, 'FENCED', '', '', 0, h.st, 0, 0) end
  if status == 'ORDER' or status == 'TOO_LARGE' then return answer(c, status, '', '', num(h.nc), h.st, 0, 0) end

  -- Writes. This attempt's ownership ends here (OK, ENDED or NOT_FOUND).
  local now = call_now(call)
  -- The owned set and free slots are written when the call ends
  -- (flush_batch): one SREM, one SADD, one ZINCRBY per call.
  local freed
  if trusted then
    freed = c.owned
    if freed then batch.rems[#batch.rems + 1] = id end
  else
    flush_owned(batch, wid)
    freed = redis.call('SREM', wqkey(wid), id) == 1
  end
  local head, spec, next_mark = '', '', ''
  if freed and c.want_next and status == 'NOT_FOUND' then
    -- No hash to keep a replay mark on: free the slot instead of handing
    -- out a task that a lost reply would strand.
    call.free = call.free + 1
  elseif freed and c.want_next then
    -- Taken before the outcome is recorded, so a retried task never comes
    -- straight back to this slot.
    head, spec, next_mark = call_take_next(call, wid, now)
    if head == '' then call.free = call.free + 1 end
  end
  if status == 'NOT_FOUND' then return answer(c, 'NOT_FOUND', head, spec, 0, '', now, 0) end
  local extra = {'ca', (status or 'OK') .. ' ' .. att .. '@' .. wid, 'nx', next_mark}
  if status == 'ENDED' then
    redis.call('HSET', tkey(id), unpack(extra))
    return answer(c, 'ENDED', head, spec, num(h.nc), h.st, now, 0)
  end

  if #chunks > 0 then append_chunks(id, h, chunks, bytes, now) end
  local state = 'done'
  local payload = c.payload
  if c.outcome == 'done' then
    finish(id, h, 'done', '', payload, now, extra, true)
  else
    local fails = num(h.fails) + 1
    for _, v in ipairs({'fails', fails, 'e:' .. att, payload}) do extra[#extra + 1] = v end
    if c.outcome == 'retry' and fails < num(h.max) then
      local backoff = math.min(RETRY_BACKOFF_MS * 2 ^ (fails - 1), RETRY_BACKOFF_MAX_MS)
      local due = now + backoff
      for _, v in ipairs({'avoid', wid, 'avu', due + AVOID_AFTER_DUE_MS}) do extra[#extra + 1] = v end
      to_queue(id, h, payload, score_of(num(h.pri), now), due, extra)
      state = 'queued'
    else
      finish(id, h, 'failed', 'handler', payload, now, extra, true)
      state = 'failed'
    end
  end
  local fc = num(h.fc)
  if fc == 0 and #chunks > 0 then fc = now end
  return answer(c, 'OK', head, spec, num(h.nc), state, now, fc)
end

-- Whether completion `c`, the first group of its call naming its task
-- (view read by prepare_call), ends its attempt (OK or ENDED): FENCED,
-- ORDER, TOO_LARGE, NOT_FOUND and a replay write nothing, and so take no
-- next task (and promote no retry) for the call.
local function ends_attempt(c, wid)
  local h = c.h
  if not h then return false end
  if h.ca ~= '' and string.match(h.ca, '^%u+ (.+)$') == c.att .. '@' .. wid then return false end
  local status = check_write(h, wid, c.att, c.seq0, #c.chunks, c.bytes)
  return status == nil or status == 'ENDED'
end

-- Reads, before the call's first write, everything a key of the wrong
-- type (a foreign key in rtq's namespace) could fail a write on, so that
-- such a key refuses the call with nothing written (revision 12: the
-- reads are the ones the call needs anyway, not TYPE checks): each task's
-- view (the first group naming it; a later one reads it again, after a
-- TYPE check), the output lists of endings with chunks, the worker's
-- owned set (which of the tasks it owns), the queue's meta and delayed
-- set (next tasks, retries), the free set, and pending, popped ahead for
-- the slots the call expects to fill. Due retries are promoted here.
-- (Statistics, events, notifications, the deadline index and the delayed
-- entry of a queued task a hand-out expires are best effort: they need no
-- check.)
local function prepare_call(call, wid, list)
  local seen = {}
  local ids, firsts = {}, {}
  local ending, want_next, retry = false, false, false
  -- (Numeric loops: ipairs calls a C iterator per item.)
  for k = 1, #list do
    local c = list[k]
    local first = not seen[c.id]
    seen[c.id] = true
    -- Chunk writes (rtq2_write_many) check their own keys without
    -- failing the call (write_chunks).
    if c.outcome ~= 'chunks' then
      local t = tkey(c.id)
      if first then
        local view = (c.outcome == 'done' and #c.chunks == 0) and DONE or COMPLETE
        local v = redis.pcall('HMGET', t, unpack(view.fields))
        if v.err then expect_type(t, 'hash') error(v) end
        if v[1] then
          c.h = view.build(v)
          c.h.key = t
        end
        c.first = true
        ids[#ids + 1] = c.id
        firsts[#firsts + 1] = c
      else
        expect_type(t, 'hash')
      end
      if #c.chunks > 0 then expect_type(okey(c.id), 'list') end
      ending = true
      want_next = want_next or c.want_next
      retry = retry or c.outcome == 'retry'
    end
  end
  if not ending then return end
  local wq = wqkey(wid)
  local owned = NONE
  if #ids == 0 then
    -- Every ending follows a chunk write of its task: each reads the
    -- owned set itself, after those writes.
    expect_type(wq, 'set')
  else
    owned = redis.pcall('SMISMEMBER', wq, unpack(ids))
  end
  if owned.err then
    -- A key of the wrong type is refused; any other error is an ACL's: a
    -- user made by an `rtq acl` line before revision 12 has no
    -- SMISMEMBER, and reads one task at a time.
    expect_type(wq, 'set')
    for i, id in ipairs(ids) do owned[i] = redis.call('SISMEMBER', wq, id) end
  end
  local want = 0
  for i = 1, #firsts do
    local c = firsts[i]
    c.owned = owned[i] == 1
    if c.owned and c.want_next and ends_attempt(c, wid) then want = want + 1 end
  end
  call.batch = new_batch(seen, want)
  if not (want_next or retry) then return end
  local meta = P .. 'meta'
  call.meta = redis.pcall('HMGET', meta, 'paused', 'dd')
  if call.meta.err then expect_type(meta, 'hash') error(call.meta) end
  if retry then expect_type(P .. 'delayed', 'zset') end
  if not want_next then return end
  expect_type(P .. 'free', 'zset')
  if call.meta[1] == '1' then return end
  local now = call_now(call)
  local dd = call.meta[2]
  local pending = P .. 'pending'
  local due = not (dd and (dd == '0' or num(dd) > now))
  if want == 0 or due then
    -- No pop ahead (a later group may still free a slot), or due retries
    -- to move to pending first (rare): their types are checked before.
    expect_type(pending, 'zset')
    expect_type(P .. 'delayed', 'zset')
  end
  -- No slot sure to be freed: the first one freed promotes (call_take_next).
  if want == 0 then return end
  -- A promoted task may be one the call names: its view is stale.
  if due and promote_due(now, dd) > 0 then call.batch.stale = true end
  call.meta[2] = '0'
  local popped = redis.pcall('ZPOPMIN', pending, istr(want))
  if popped.err then expect_type(pending, 'zset') error(popped) end
  batch_fill(call.batch, popped, want)
end

-- The call's batched writes: the owned set's changes, the free slots,
-- and the pending entries popped ahead and not used (or skipped) back at
-- their scores. Their keys' types were read by prepare_call.
local function flush_batch(call, wid)
  local batch = call.batch
  if not batch then return end
  flush_owned(batch, wid)
  if call.free > 0 then redis.call('ZINCRBY', P .. 'free', istr(call.free), wid) end
  local back = batch.skipped
  local items = batch.items
  -- ZPOPMIN answered (id, score) pairs; ZADD takes (score, id).
  for i = batch.pos, #items - 1, 2 do
    back[#back + 1] = items[i + 1]
    back[#back + 1] = items[i]
  end
  if #back > 0 then redis.call('ZADD', P .. 'pending', unpack(back)) end
end

-- Ends the checked completions `list` of worker `wid` in order; returns
-- their replies. The endings go to `ended` as one entry and the batched
-- writes are flushed, even when a write fails halfway (Redis keeps what
-- a call wrote before its error, so the tasks ended before it must be
-- listed and their slots counted), then the error goes on.
-- The completions `list` in order, into `replies`.
local function complete_each(call, wid, list, replies)
  for i = 1, #list do replies[i] = complete_one(call, wid, list[i]) end
end

local function complete_all(call, wid, list)
  local replies = {}
  prepare_call(call, wid, list)
  begin_endings()
  -- (A named function: a closure here would be made on every call.)
  local ok, err = pcall(complete_each, call, wid, list, replies)
  flush_batch(call, wid)
  flush_endings()
  if not ok then error(err) end
  return replies
end

local function complete(keys, args)
  bind(keys)
  if #args < 7 then invalid('complete takes at least 7 arguments') end
  local wid = arg_id(args[1], 'worker id')
  local c = complete_args(args, 2, 8, #args, false)
  return complete_all(new_call(), wid, {c})[1]
end

-- Parses and runs the groups of rtq2_complete_many (`name`), or of
-- rtq2_write_many when `allow_chunks` (chunk writes among them).
local function run_many(keys, args, name, allow_chunks)
  bind(keys)
  if #args < 2 then invalid(name .. ' takes at least 2 arguments') end
  local wid = arg_id(args[1], 'worker id')
  local n = arg_int(args[2], 'completion count', 1, MAX_SLOTS)
  local list = {}
  local o = 3
  for i = 1, n do
    if #args < o + 6 then
      invalid(name .. ': completion ' .. i .. ' of ' .. n .. ' is cut short')
    end
    local k = arg_int(args[o + 6], 'chunk count', 0, MAX_CHUNKS_PER_CALL)
    local first = o + 7
    local last = first + k - 1
    if last > #args then
      invalid(name .. ': completion ' .. i .. ' names ' .. k .. ' chunks past the last argument')
    end
    list[i] = complete_args(args, o, first, last, allow_chunks)
    o = last + 1
  end
  if o ~= #args + 1 then
    invalid(name .. ': ' .. (#args + 1 - o) .. ' arguments after the last completion')
  end
  return complete_all(new_call(), wid, list)
end

local function complete_many(keys, args)
  return run_many(keys, args, 'complete_many', false)
end

local function write_many(keys, args)
  return run_many(keys, args, 'write_many', true)
end

redis.register_function{function_name = 'rtq2_complete', callback = complete, flags = {'allow-oom'}}
redis.register_function{function_name = 'rtq2_complete_many', callback = complete_many, flags = {'allow-oom'}}
redis.register_function{function_name = 'rtq2_write_many', callback = write_many, flags = {'allow-oom'}}
