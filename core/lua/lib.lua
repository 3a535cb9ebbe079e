#!lua name=rtq2
--[[
lib.lua: the shared part of the rtq protocol v2 Functions library. The
library is this file followed by one file per operation (see
core/src/functions/mod.rs for the order); it is loaded with FUNCTION LOAD
and every operation is an FCALL of a function named rtq2_<operation>.

Rules every function follows (Redis does not roll back a function that
fails halfway):
  1. Validate every argument first (types, ranges, key names); an invalid
     call raises an error starting with INVALID and writes nothing.
  2. Compute, reading only.
  3. Write. Writes that can fail for reasons outside rtq's control (an XADD
     to a client's reply stream that an ACL refuses or that was replaced by
     a foreign key) run last and through redis.pcall: the task hash is the
     truth, reply events are notifications that readers verify.
Numbers are written as integers (never in exponent form) with istr(), and
every number a redis.call gets is a string already: Lua's own conversion
formats doubles with "%.14g", which costs about 40 times an integer's
"%d" (on the per-task path it was a tenth of Redis's CPU).

KEYS[1] of every function is the queue's meta hash rtq:{<queue>}:meta,
which exists while the queue exists; every other key is derived from its
prefix rtq:{<queue>}: and shares the {<queue>} hash tag (one cluster slot).

Task hash fields (rtq:{q}:t:<id>), see PROTOCOL.md:
  v spec st pri sc att fails max w sub dl start fc lc fin ret reply strm
  watch res ek err nc nb ca nx avoid avu due e:<attempt>
]]

local PROTOCOL = 2
local PROTOCOL_S = '2'
-- Bumped whenever this library changes; a client loads its copy when the
-- server holds an older revision (or none).
local REVISION = 16

-- Approximate trims (MAXLEN ~): a shift by one cannot be observed.
local REPLY_MAXLEN_S = '100000' -- mutation: skip
local ENDED_CAP_S = '1000' -- mutation: skip
local EVENTS_CAP_S = '1000' -- mutation: skip
local MAX_EVENT_TEXT = 256 -- bytes of a message kept in an event
local EVENTS_TTL_S = '604800000' -- a week after the last event, a forgotten queue's events go
local STATS_BUCKET_MS = 10000
local STATS_TTL_MS = 3600000
local STATS_TTL_S = '3600000'
local WORKER_INFO_TTL_MS = 600000
local REPLAY_KEEP_S = '600000' -- a deleted task's replay mark outlives it this long (a worker retries a complete for 5 minutes)
local BAND = 4398046511104 -- 2^42 ms (139 years, to 2109) of submit times per priority band;
-- 2001 bands x 2^42 < 2^53, so scores stay exact doubles
local PRIORITY_LIMIT = 1000
local MAX_DURATION_MS = 2592000000 -- 30 days: timeouts and retentions
local MAX_ATTEMPTS = 1000
-- Highest attempt number a resume may name (operator requeues renew the
-- budget, so `att` may pass MAX_ATTEMPTS; never this).
local MAX_ATTEMPT_NUMBER = 4294967295
local MAX_ID_BYTES = 128
local MAX_SPEC_BYTES = 16777216
local MAX_RESULT_BYTES = 16777216
local MAX_TEXT_BYTES = 4096 -- reasons, error messages, worker info values
local MAX_CHUNK_BYTES = 1048576
local MAX_CHUNKS_PER_CALL = 512
local SMALL_INT_MAX = 4095 -- integers istr formats from a table (>= MAX_CHUNKS_PER_CALL) -- mutation: skip
local MAX_OUTPUT_CHUNKS = 100000
local MAX_OUTPUT_BYTES = 67108864
local MAX_SLOTS = 1024
local MIN_LEASE_MS = 100
local MAX_LEASE_MS = 600000
local READ_PAGE = 1000 -- chunks returned per watch/read call
-- Pacing: how much one call does at most. Loops that hit a cap leave the
-- rest for the next call (housekeeping runs every heartbeat), so any value
-- >= 1 is correct; a mutation run's shift by one cannot be observed.
local REAP_PER_CALL = 8 -- mutation: skip
local EXPIRE_PER_CALL = 100 -- mutation: skip
local PROMOTE_PER_CALL = 100 -- mutation: skip
local DISPATCH_PER_CALL = 1000 -- mutation: skip
local SCAN_PER_TAKE = 100 -- mutation: skip
local FREE_PEEK = 16 -- mutation: skip
local RETRY_BACKOFF_MS = 250 -- first retry delay; doubles per failure
local RETRY_BACKOFF_MAX_MS = 30000
local AVOID_AFTER_DUE_MS = 5000 -- how long a retry avoids the worker that failed it

-- The queue prefix "rtq:{<queue>}:" of the current call (set by bind()).
local P = ''

-- Endings of the running call not yet written to `ended` (t, id, st,
-- state, ...), or nil when every ending writes its own entry. See
-- begin_endings.
local ended_batch = nil
local ENDED_BATCH_VALUES = 64 -- 16 endings per entry at most: an entry stays small, the cap of 1000 entries near 16,000 endings -- mutation: skip

local function invalid(msg)
  error({err = 'INVALID ' .. msg})
end

-- Small integers as strings, made once when the library loads: counts,
-- attempts and chunk numbers are formatted on every call, and
-- string.format goes through sprintf (about 1,400 instructions a number).
-- (`'' .. i` is '%.14g', exact for these; the load step may not use
-- `string`, which Redis offers to functions only when they run.)
local SMALL_INTS = {}
-- And back: the integer a canonical small integer string stands for
-- (argument checks take it from here, without a pattern or tonumber).
local SMALL_INT_OF = {}
for i = 0, SMALL_INT_MAX do
  SMALL_INTS[i] = '' .. i
  SMALL_INT_OF[SMALL_INTS[i]] = i
end

local function istr(n)
  return SMALL_INTS[n] or string.format('%d', n)
end

-- A time in ms as a string: one call formats the same time many times
-- (hand-out start, endings, chunk times), so the last one is kept.
local last_time, last_time_s = nil, nil
local function time_str(ms)
  if ms ~= last_time then last_time, last_time_s = ms, istr(ms) end
  return last_time_s
end

-- A retention as a string (submit): the last one is kept.
local last_ret, last_ret_s = nil, nil
local function ret_str(ms)
  if ms ~= last_ret then last_ret, last_ret_s = ms, istr(ms) end
  return last_ret_s
end

-- The last stored retention finish found canonical (an integer string).
local last_canonical_ret = nil

-- An integer field for a message: a number formatted, a string as the
-- task hash holds it (written by istr), absent (nil, or false: how a
-- missing HMGET field reaches Lua) or empty as '0'.
local function int_field(v)
  if type(v) == 'number' then return istr(v) end
  if not v or v == '' then return '0' end
  return v
end

-- An empty list, shared (`x or {}` makes a table per call).
local NONE = {}

-- A field or argument as a number (absent or not a number: 0). Small
-- canonical integers, most counters, come from a table lookup (tonumber
-- is a C call).
local function num(v)
  return SMALL_INT_OF[v] or tonumber(v) or 0
end

-- A field value for a write: numbers as integer strings (see istr).
local function tostr(v)
  if type(v) == 'number' then return istr(v) end
  return v
end

-- The meta key the last call bound (checked then): a queue's calls
-- follow one another, so its check is not repeated.
local bound_meta = nil

-- Checks KEYS[1] and binds the queue prefix for the helpers below.
local function bind(keys)
  local meta = keys[1]
  if #keys ~= 1 then invalid('KEYS must be exactly the queue meta key rtq:{<queue>}:meta') end
  if meta ~= bound_meta then
    -- rtq:{<queue>}:meta with a queue name of at most 64 bytes: 75 bytes.
    -- (Explicit ranges: %w costs a C call per character.)
    if type(meta) ~= 'string' or #meta > 75
        or not string.match(meta, '^rtq:{[0-9A-Za-z._-]+}:meta$') then
      invalid('KEYS must be exactly the queue meta key rtq:{<queue>}:meta')
    end
    P = string.sub(meta, 1, -5)
    bound_meta = meta
  end
  -- A call that failed halfway left no batch for the next one to flush.
  ended_batch = nil
end

local function arg_int(v, name, lo, hi)
  local n = SMALL_INT_OF[v]
  if not n then
    if type(v) ~= 'string' or #v > 20 or not string.match(v, '^%-?%d+$') then
      invalid(name .. ' must be an integer, got ' .. string.sub(tostring(v), 1, 40))
    end
    n = tonumber(v)
  end
  if n < lo or n > hi then
    invalid(name .. ' must be in [' .. istr(lo) .. ', ' .. istr(hi) .. '], got ' .. v)
  end
  return n
end

-- (string.find, not string.match: a match returns the matched string,
-- which Lua interns again; find returns two numbers.)
local function arg_id(v, name)
  if type(v) ~= 'string' or #v == 0 or #v > MAX_ID_BYTES
      or not string.find(v, '^[0-9A-Za-z._:-]+$') then
    invalid(name .. ' must be 1-128 bytes of [A-Za-z0-9._:-]')
  end
  return v
end

local function arg_text(v, name, max)
  if type(v) ~= 'string' or #v > max then
    invalid(name .. ' must be a string of at most ' .. istr(max) .. ' bytes')
  end
  return v
end

local function arg_flag(v, name)
  if v ~= '0' and v ~= '1' then invalid(name .. " must be '0' or '1'") end
  return v == '1'
end

local function arg_enum(v, name, allowed)
  for _, a in ipairs(allowed) do
    if v == a then return v end
  end
  invalid(name .. ' must be one of ' .. table.concat(allowed, ', '))
end

-- A client's reply stream key: this queue's r:<client id> namespace.
local function arg_reply(v, name)
  if v == '' then return v end
  if type(v) ~= 'string' or string.sub(v, 1, #P + 2) ~= P .. 'r:' then
    invalid(name .. " must be '' or this queue's reply stream " .. P .. 'r:<client id>')
  end
  arg_id(string.sub(v, #P + 3), name .. ' client id')
  return v
end

-- Chunks ARGV[first..last] (last: the final argument if nil): at most
-- MAX_CHUNKS_PER_CALL, each at most MAX_CHUNK_BYTES. Returns the list and
-- their total size.
local function arg_chunks(args, first, last)
  last = last or #args
  local n = last - first + 1
  if n <= 0 then return NONE, 0 end
  if n > MAX_CHUNKS_PER_CALL then
    invalid('at most ' .. MAX_CHUNKS_PER_CALL .. ' chunks per call, got ' .. n)
  end
  local chunks, bytes = {}, 0
  for i = first, last do
    local c = args[i]
    if #c > MAX_CHUNK_BYTES then
      invalid('chunk ' .. (i - first) .. ' is ' .. #c .. ' bytes, over ' .. MAX_CHUNK_BYTES)
    end
    chunks[#chunks + 1] = c
    bytes = bytes + #c
  end
  return chunks, bytes
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function tkey(id) return P .. 't:' .. id end
local function okey(id) return P .. 'o:' .. id end
local function wtkey(id) return P .. 'wt:' .. id end
local function cakey(id) return P .. 'ca:' .. id end
-- A worker's owned set; the last one is kept (a call names one worker).
local last_wq_prefix, last_wq_wid, last_wq = nil, nil, nil
local function wqkey(wid)
  if wid ~= last_wq_wid or P ~= last_wq_prefix then
    last_wq_prefix, last_wq_wid, last_wq = P, wid, P .. 'wq:' .. wid
  end
  return last_wq
end
local function inkey(wid) return P .. 'in:' .. wid end
local function wkey(wid) return P .. 'w:' .. wid end

-- The last score made (score_of): a call's tasks mostly share the
-- priority and the time.
local last_score_pri, last_score_ms, last_score = nil, nil, nil

-- Pending score: lower pops first. Higher priority -> lower band; within a
-- band, earlier time first (ties by id).
local function score_of(pri, ms)
  if pri ~= last_score_pri or ms ~= last_score_ms then
    last_score_pri, last_score_ms, last_score = pri, ms, istr((PRIORITY_LIMIT - pri) * BAND + ms)
  end
  return last_score
end

local function is_terminal(st)
  return st == 'done' or st == 'failed' or st == 'cancelled' or st == 'expired'
end

-- Creates the meta hash if the queue is new (it is KEYS[1] from now on).
local function ensure_meta(v)
  if not v then redis.call('HSET', P .. 'meta', 'v', PROTOCOL_S) end
end

-- A queue created as a protocol v3 stream queue (meta `mode`) is not
-- served or fed through v2 (its tasks live in other keys).
local function refuse_stream_queue(mode)
  if mode == 'stream' then
    invalid('queue ' .. string.sub(P, 6, -3) .. ' is a stream queue (protocol v3, rtq3 functions), not a v2 queue')
  end
end

-- The operator functions (queue_admin.lua, requeue.lua) on a stream
-- queue: refused before anything is read or written (revision 16).
local function refuse_if_stream_queue()
  refuse_stream_queue(redis.call('HGET', P .. 'meta', 'mode'))
end

-- Refuses, before any write, a key of the wrong type that a later write
-- of the call would fail on (a foreign writer's key in rtq's namespace):
-- Redis would not undo the writes made before it.
local function expect_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    error({err = 'WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. want
      .. ' (a foreign key in rtq\'s namespace); nothing was written'})
  end
end

-- Statistics ---------------------------------------------------------------

local function hist_index(ms)
  if ms < 0 then ms = 0 end
  return math.floor(math.log(1 + ms) / math.log(2) * 4)
end

local function stats_key(now)
  return P .. 's:' .. istr(math.floor(now / STATS_BUCKET_MS))
end

-- Best effort (pcall), like event(): a foreign key under a bucket's name
-- loses the count, never the write that caused it (statistics are written
-- on paths that already wrote, e.g. a task a hand-out ends on its way).
local function stat_add(bucket, field, n)
  if redis.pcall('HINCRBY', bucket, field, istr(n)) == n then
    redis.call('PEXPIRE', bucket, STATS_TTL_S)
  end
end

local function stat_count(now, field)
  local b = stats_key(now)
  stat_add(b, field, 1)
  return b
end

local function stat_hist(bucket, prefix, ms)
  stat_add(bucket, prefix .. hist_index(ms), 1)
end

-- Tasks ----------------------------------------------------------------------

-- A view of the task hash: the fields a path reads, and a table
-- constructor naming them. A constructor sizes the table once (filling an
-- empty table field by field grows it five times for 16 fields, and each
-- growth rehashes it: a few percent of a task's cost). Counters absent
-- from the hash read as '0': submit and hand-out write no zero counters
-- (revision 11), the queue paths (to_queue) write them as '0'.
local TASK = {
  fields = {'st', 'att', 'w', 'reply', 'strm', 'watch', 'dl', 'sub', 'start',
    'fc', 'ret', 'sc', 'fails', 'max', 'nc', 'nb', 'pri', 'ca', 'nx', 'due'},
  build = function(v)
    return {st = v[1], att = v[2] or '0', w = v[3] or '', reply = v[4] or '', strm = v[5] or '',
      watch = v[6] or '', dl = v[7] or '', sub = v[8] or '', start = v[9] or '', fc = v[10] or '0',
      ret = v[11] or '', sc = v[12] or '', fails = v[13] or '0', max = v[14] or '', nc = v[15] or '0',
      nb = v[16] or '0', pri = v[17] or '', ca = v[18] or '', nx = v[19] or '', due = v[20] or '', key = false}
  end,
}

-- What rtq2_complete reads: fencing, replay, outcome, retry, retention,
-- followers.
local COMPLETE = {
  fields = {'st', 'att', 'w', 'reply', 'strm', 'watch', 'dl', 'fc', 'ret', 'fails',
    'max', 'nc', 'nb', 'pri', 'ca', 'nx'},
  build = function(v)
    return {st = v[1], att = v[2] or '0', w = v[3] or '', reply = v[4] or '', strm = v[5] or '',
      watch = v[6] or '', dl = v[7] or '', fc = v[8] or '0', ret = v[9] or '', fails = v[10] or '0',
      max = v[11] or '', nc = v[12] or '0', nb = v[13] or '0', pri = v[14] or '', ca = v[15] or '',
      nx = v[16] or '', key = false}
  end,
}

-- What rtq2_complete reads for a plain success (outcome done, no trailing
-- chunks): COMPLETE without what only failures, retries, chunks and
-- replays use (`fails`, `max`, `pri`, `nb`, `nx`; a replay reads `nx`
-- itself).
local DONE = {
  fields = {'st', 'att', 'w', 'reply', 'strm', 'watch', 'dl', 'fc', 'ret', 'nc', 'ca'},
  build = function(v)
    return {st = v[1], att = v[2] or '0', w = v[3] or '', reply = v[4] or '', strm = v[5] or '',
      watch = v[6] or '', dl = v[7] or '', fc = v[8] or '0', ret = v[9] or '', nc = v[10] or '0',
      ca = v[11] or '', key = false}
  end,
}

-- What a chunk write reads: fencing, counts, followers.
local CHUNK = {
  fields = {'st', 'att', 'w', 'reply', 'strm', 'watch', 'nc', 'nb'},
  build = function(v)
    return {st = v[1], att = v[2] or '0', w = v[3] or '', reply = v[4] or '', strm = v[5] or '',
      watch = v[6] or '', nc = v[7] or '0', nb = v[8] or '0', key = false}
  end,
}

-- Each view's constructor reads each of its fields from its position,
-- checked when the library loads: a mismatch refuses the library. (The
-- load step has no ipairs, pairs or error: reading an undefined global
-- fails the load with its name as the message.)
local TASK_VIEWS = {TASK, COMPLETE, DONE, CHUNK}
for k = 1, #TASK_VIEWS do
  local view = TASK_VIEWS[k]
  local probe = {}
  for i = 1, #view.fields do probe[i] = i end
  local built = view.build(probe)
  for i = 1, #view.fields do
    if built[view.fields[i]] ~= i then
      return TASK_VIEW_CONSTRUCTOR_DOES_NOT_READ_A_FIELD_FROM_ITS_POSITION_IN_THE_LIST
    end
  end
end

-- The task's fields by name (the view TASK, or `view`), and its key as
-- `key`, or nil if it does not exist.
local function load_task(id, view)
  view = view or TASK
  local t = tkey(id)
  local v = redis.call('HMGET', t, unpack(view.fields))
  if not v[1] then return nil end
  local h = view.build(v)
  h.key = t
  return h
end

-- Inbox message for a hand-out (tab separated, spec last) without its
-- spec: what precedes the spec, ending in a tab. The submit time lets the
-- worker measure the queue wait itself (statistics are the workers' job:
-- they flush them with their heartbeats).
-- `dl` and `sub` may be numbers or the strings the task hash holds
-- (written by istr: used as they are).
local function task_head(id, att, start, dl, sub)
  return 'T\t' .. id .. '\t' .. istr(att) .. '\t' .. time_str(start) .. '\t' .. int_field(dl) .. '\t'
    .. int_field(sub) .. '\t'
end

-- The whole inbox message (task_head, then the spec).
local function task_msg(id, att, start, dl, sub, spec)
  return task_head(id, att, start, dl, sub) .. (spec or '')
end

-- Appends an event to every reply stream following the task: the
-- submitter's (if it wants this kind of event) and any watchers'. Best
-- effort (pcall): a refused or missing stream loses only the notification.
local function notify(id, h, chunk_event, fields)
  local own = h.reply ~= '' and (not chunk_event or h.strm == '1')
  if h.watch ~= '1' then
    -- The common case, the submitter alone: no list to build.
    if own then
      redis.pcall('XADD', h.reply, 'NOMKSTREAM', 'MAXLEN', '~', REPLY_MAXLEN_S, '*', 't', id, unpack(fields))
    end
    return
  end
  local targets = {}
  if own then targets[1] = h.reply end
  -- A foreign key there loses the watchers' notifications only.
  local watchers = redis.pcall('SMEMBERS', wtkey(id))
  if watchers.err then watchers = {} end
  for _, r in ipairs(watchers) do
    if r ~= targets[1] then targets[#targets + 1] = r end
  end
  for _, r in ipairs(targets) do
    redis.pcall('XADD', r, 'NOMKSTREAM', 'MAXLEN', '~', REPLY_MAXLEN_S, '*', 't', id, unpack(fields))
  end
end

-- Appends an entry to the queue's event stream `ev` (the console's event
-- tail): k kind, t task id, w worker id, m message (cut to 256 bytes); the
-- entry id is the Redis time. Only rare paths write it (failures,
-- requeues, retries, cancels, lost and departed workers, operator
-- actions), never a plain done. At most about 1000 entries of about 400
-- bytes per queue, gone a week after the last one. Best effort (pcall): a
-- foreign key there loses the event, never the write that caused it.
local function event(kind, id, wid, msg)
  local ev = P .. 'ev'
  redis.pcall('XADD', ev, 'MAXLEN', '~', EVENTS_CAP_S, '*', 'k', kind, 't', id or '', 'w', wid or '',
    'm', string.sub(msg or '', 1, MAX_EVENT_TEXT))
  redis.pcall('PEXPIRE', ev, EVENTS_TTL_S)
end

-- Lists a worker that died or left in the queue's `gone` zset (worker id
-- -> when) for as long as its info hash is kept (10 minutes), so consoles
-- can show departed nodes. Best effort, like event().
local function mark_departed(wid, now)
  local g = P .. 'gone'
  redis.pcall('ZADD', g, istr(now), wid)
  redis.pcall('ZREMRANGEBYSCORE', g, '-inf', '(' .. istr(now - WORKER_INFO_TTL_MS))
  redis.pcall('PEXPIRE', g, istr(WORKER_INFO_TTL_MS))
end

-- Tells a live worker to stop attempt `att` of a task.
-- kind: 'cancelled' | 'deadline' | 'requeued'.
local function send_cancel(wid, id, att, kind, reason)
  if wid ~= '' and redis.call('ZSCORE', P .. 'workers', wid) then
    redis.call('RPUSH', inkey(wid), 'C\t' .. id .. '\t' .. att .. '\t' .. kind .. '\t' .. reason)
  end
end

-- From here until flush_endings, endings go to `ended` as one entry (its
-- `t`/`st` pairs in the order the tasks ended) instead of one entry each:
-- an XADD costs about as much as the rest of a plain ending's writes, and
-- a coalesced complete ends many tasks. Best effort, as every `ended`
-- write: a foreign key there loses the entry, never the endings.
local function begin_endings()
  ended_batch = {}
end

local function flush_endings()
  local batch = ended_batch
  ended_batch = nil
  if batch and #batch > 0 then
    redis.pcall('XADD', P .. 'ended', 'MAXLEN', '~', ENDED_CAP_S, '*', unpack(batch))
  end
end

-- Moves a task to a terminal state, stores the outcome, arms the retention
-- TTL of every key of the task and notifies followers (last, best effort).
-- `extra` holds more field/value pairs for the same HSET. `by_worker`: the
-- worker that ended it counts it in its own statistics (rtq2_complete);
-- every other ending (cancel, deadline, lost attempts) is counted here.
local function finish(id, h, state, kind, payload, now, extra, by_worker)
  local t = h.key or tkey(id)
  -- The retention as submit wrote it (an integer string) needs no
  -- formatting; anything else is read as before revision 11: a number
  -- (at least 1 ms) formatted with %d, never capped. The last one found
  -- canonical is kept (a call's tasks mostly share one).
  local ret = h.ret
  if ret ~= last_canonical_ret then
    if #ret > 10 or not string.match(ret, '^[1-9]%d*$') then
      local ms = num(ret)
      if ms < 1 then ms = 1 end
      ret = istr(ms)
    else
      last_canonical_ret = ret
    end
  end
  local now_s = time_str(now)
  if state == 'done' then
    -- A done's extra pairs are strings (rtq2_complete's replay marks).
    redis.call('HSET', t, 'st', state, 'res', payload, 'fin', now_s, unpack(extra or NONE))
  else
    local fields = {'st', state, 'err', payload, 'ek', kind, 'fin', now_s}
    for _, v in ipairs(extra or NONE) do fields[#fields + 1] = tostr(v) end
    redis.call('HSET', t, unpack(fields))
  end
  redis.call('PEXPIRE', t, ret)
  if num(h.nc) > 0 then redis.call('PEXPIRE', okey(id), ret) end
  if h.watch == '1' then redis.call('PEXPIRE', wtkey(id), ret) end
  -- Best effort (revision 12): a foreign key where the deadline index
  -- belongs holds no entry of this task (a complete call does not check
  -- its type beforehand).
  if num(h.dl) > 0 then redis.pcall('ZREM', P .. 'deadlines', id) end
  if not by_worker then
    local b = stat_count(now, state)
    stat_hist(b, 't:', now - num(h.sub))
  end
  if ended_batch then
    local n = #ended_batch
    ended_batch[n + 1] = 't'
    ended_batch[n + 2] = id
    ended_batch[n + 3] = 'st'
    ended_batch[n + 4] = state
    if n + 4 >= ENDED_BATCH_VALUES then flush_endings(); begin_endings() end
  else
    redis.pcall('XADD', P .. 'ended', 'MAXLEN', '~', ENDED_CAP_S, '*', 't', id, 'st', state)
  end
  -- A purge ends thousands at once: it writes one event of its own.
  if state ~= 'done' and kind ~= 'purged' then event(state, id, h.w, kind .. ': ' .. payload) end
  if state == 'done' then
    notify(id, h, false, {'e', 'f', 'st', state, 'a', h.att, 'n', h.nc, 'r', payload})
  else
    notify(id, h, false, {'e', 'f', 'st', state, 'a', h.att, 'n', h.nc, 'k', kind, 'm', payload, 'w', h.w})
  end
end

-- Puts a task back in the queue: into pending at `score`, or into delayed
-- until `due` (a retry's backoff). Followers learn that the attempt they
-- were reading is void. `extra`: more field/value pairs for the HSET.
-- `kind` names the event (default: 'retry' with a backoff, else 'requeued').
local function to_queue(id, h, reason, score, due, extra, kind)
  local fields = {'st', 'queued', 'w', '', 'nc', '0', 'nb', '0', 'fc', '0', 'lc', '0', 'sc', score, 'due', istr(due)}
  for _, v in ipairs(extra or {}) do fields[#fields + 1] = tostr(v) end
  redis.call('HSET', tkey(id), unpack(fields))
  if num(h.nc) > 0 then redis.call('DEL', okey(id)) end
  if due > 0 then
    redis.call('ZADD', P .. 'delayed', istr(due), id)
    -- meta `dd` is never later than the earliest due retry, so the hot
    -- path can skip promotion without reading `delayed`.
    local dd = num(redis.call('HGET', P .. 'meta', 'dd'))
    if dd == 0 or due < dd then redis.call('HSET', P .. 'meta', 'dd', istr(due)) end
  else
    redis.call('ZADD', P .. 'pending', score, id)
  end
  event(kind or (due > 0 and 'retry' or 'requeued'), id, h.w, reason)
  notify(id, h, false, {'e', 'q', 'a', h.att, 'm', reason})
end

-- Uses up one attempt of a running task that did not finish (its worker
-- was lost, its message was lost, or it was interrupted): requeued at the
-- front of its priority, or failed when no attempts are left.
local function lose_attempt(id, h, reason, now)
  local fails = num(h.fails) + 1
  local e = {'fails', fails, 'e:' .. h.att, reason}
  if fails >= num(h.max) then
    finish(id, h, 'failed', 'worker_lost', reason .. '; attempts used up', now, e)
    return false
  end
  to_queue(id, h, reason, h.sc, 0, e, 'lost')
  return true
end

-- Ends a task whose deadline passed, naming the state it was in.
local function expire(id, h, now)
  if not h then
    redis.call('ZREM', P .. 'deadlines', id)
  elseif h.st == 'queued' then
    redis.call('ZREM', P .. 'pending', id)
    -- Best effort (revision 12): a foreign key where `delayed` belongs
    -- holds no entry of this task, and a complete call, whose hand-out
    -- ends a queued task past its deadline, does not check its type.
    redis.pcall('ZREM', P .. 'delayed', id)
    finish(id, h, 'expired', 'timeout_queued', 'deadline passed while queued', now)
  elseif h.st == 'running' then
    finish(id, h, 'expired', 'timeout_running', 'deadline passed while running on ' .. h.w, now)
    send_cancel(h.w, id, h.att, 'deadline', 'deadline passed')
  else
    redis.call('ZREM', P .. 'deadlines', id)
  end
end

-- Worker writes ----------------------------------------------------------------

-- Checks a worker's write against the task: fencing by (worker, attempt),
-- state, ordering by seq0, output caps. Returns a status word, or nil when
-- the write may apply.
local function check_write(h, wid, att, seq0, nchunks, bytes)
  if not h then return 'NOT_FOUND' end
  if h.att ~= att or h.w ~= wid then return 'FENCED' end
  if h.st ~= 'running' then return 'ENDED' end
  local nc = num(h.nc)
  if nc ~= seq0 then return 'ORDER' end
  if nc + nchunks > MAX_OUTPUT_CHUNKS or num(h.nb) + bytes > MAX_OUTPUT_BYTES then
    return 'TOO_LARGE'
  end
  return nil
end

-- Event field names of the chunks of one call ('c0', 'c1', ...), made once:
-- `'c' .. n` formats the number with sprintf('%.14g') on every chunk.
local CHUNK_FIELDS_BY_INDEX = {}
for i = 1, MAX_CHUNKS_PER_CALL do CHUNK_FIELDS_BY_INDEX[i] = 'c' .. SMALL_INTS[i - 1] end

-- Records chunks already pushed to the output list (append_chunks) in the
-- task hash and notifies followers. The output list takes the task's TTL
-- with its first chunk.
local function record_chunks(id, h, chunks, bytes, now)
  local t = h.key or tkey(id)
  local nc = num(h.nc)
  local total = nc + #chunks
  if nc == 0 then
    local ttl = redis.call('PTTL', t)
    if ttl > 0 then redis.call('PEXPIRE', okey(id), ttl) end
    local now_s = time_str(now)
    redis.call('HSET', t, 'nc', istr(total), 'nb', istr(num(h.nb) + bytes), 'lc', now_s, 'fc', now_s)
  else
    redis.call('HSET', t, 'nc', istr(total), 'nb', istr(num(h.nb) + bytes), 'lc', time_str(now))
  end
  if h.strm == '1' or h.watch == '1' then
    local ev = {'e', 'c', 'a', h.att, 's', istr(nc), 'n', istr(#chunks)}
    -- (Numeric loops on the hot paths: ipairs calls a C iterator per item.)
    local n = #ev
    for i = 1, #chunks do
      ev[n + 2 * i - 1] = CHUNK_FIELDS_BY_INDEX[i]
      ev[n + 2 * i] = chunks[i]
    end
    notify(id, h, true, ev)
  end
  h.nc = istr(total)
  h.nb = istr(num(h.nb) + bytes)
end

-- Appends chunks to the current attempt's output and notifies followers.
local function append_chunks(id, h, chunks, bytes, now)
  redis.call('RPUSH', okey(id), unpack(chunks))
  record_chunks(id, h, chunks, bytes, now)
end

-- A chunk write of worker `wid`'s attempt `att` of task `id` (rtq2_chunk,
-- and a chunk write in rtq2_write_many): checks it (check_write), then
-- appends the chunks; `now` gives the call's time. Returns status,
-- chunk_count, state. Its keys are not type-checked beforehand (in
-- rtq2_write_many that would cost two commands a chunk write): a foreign
-- key where the task's hash or output list belongs means no task of ours
-- there, answered NOT_FOUND with nothing written, and the call goes on.
local function write_chunk_group(wid, id, att, seq0, chunks, bytes, now)
  local ok, h = pcall(load_task, id, CHUNK)
  if not ok then return 'NOT_FOUND', 0, '' end
  local status = check_write(h, wid, att, seq0, #chunks, bytes)
  if status then return status, h and num(h.nc) or 0, h and h.st or '' end
  if #chunks > 0 then
    local pushed = redis.pcall('RPUSH', okey(id), unpack(chunks))
    if type(pushed) == 'table' and pushed.err then return 'NOT_FOUND', 0, '' end
    record_chunks(id, h, chunks, bytes, now())
  end
  return 'OK', num(h.nc), 'running'
end

-- Free slots -----------------------------------------------------------------

-- A live worker with free slots, most free first, not in `skip`. Dead
-- entries met on the way are removed. Nil if none (among the first few).
local function peek_free(now, skip)
  local entries = redis.call('ZRANGE', P .. 'free', 0, FREE_PEEK - 1, 'REV')
  for _, wid in ipairs(entries) do
    if not (skip and skip[wid]) then
      local exp = redis.call('ZSCORE', P .. 'workers', wid)
      if exp and tonumber(exp) > now then return wid end
      redis.call('ZREM', P .. 'free', wid)
    end
  end
  return nil
end

local function use_free(wid)
  if tonumber(redis.call('ZINCRBY', P .. 'free', '-1', wid)) <= 0 then
    redis.call('ZREM', P .. 'free', wid)
  end
end

local function set_free(wid, n)
  if n > 0 then
    redis.call('ZADD', P .. 'free', istr(n), wid)
  else
    redis.call('ZREM', P .. 'free', wid)
  end
end

-- Hand-out ---------------------------------------------------------------------

-- Records the hand-out of a queued task to worker `wid` (attempt att + 1)
-- and returns its inbox message as two parts, task_head and the spec (a
-- caller that returns them apart spares Lua a copy of the spec), then the
-- task id and the attempt. The caller pushes or returns the message.
-- A queued task's chunk counts, chunk times and due time are zero or
-- absent already (submit writes none, to_queue zeros them, promote_due
-- zeros `due`), so the hand-out writes only what changes.
-- With a complete call's `batch` (take_next), the owned set gains the
-- task when the call flushes its batch.
local function assign(id, wid, now, dl, spec, sub, att, t, batch)
  att = num(att) + 1
  redis.call('HSET', t or tkey(id), 'st', 'running', 'w', wid, 'att', istr(att), 'start', time_str(now))
  if batch then
    batch.adds[#batch.adds + 1] = id
    batch.want = batch.want - 1
  else
    redis.call('SADD', wqkey(wid), id)
  end
  return task_head(id, att, now, dl, sub), spec or '', id, att
end

-- Moves retries whose backoff has passed from delayed to pending. `dd` is
-- the meta hash's earliest-due mark as the caller read it: '0' nothing is
-- delayed, a time: nothing is due before it, nil (absent, e.g. a queue
-- written by an older revision): unknown, so `delayed` is checked. The
-- mark is then set to the earliest retry still delayed ('0' when none).
-- Returns how many ids it took from delayed.
local function promote_due(now, dd)
  if dd and (dd == '0' or num(dd) > now) then return 0 end
  local due = redis.call('ZRANGE', P .. 'delayed', '-inf', time_str(now), 'BYSCORE', 'LIMIT', 0, PROMOTE_PER_CALL)
  for _, id in ipairs(due) do
    redis.call('ZREM', P .. 'delayed', id)
    -- A foreign key at the task's name is a stale entry (dropped), never
    -- an error after the writes made before it.
    local h = redis.pcall('HMGET', tkey(id), 'st', 'sc')
    if h.err then h = {} end
    if h[1] == 'queued' then
      redis.call('ZADD', P .. 'pending', h[2], id)
      redis.call('HSET', tkey(id), 'due', '0')
    end
  end
  local first = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')
  redis.call('HSET', P .. 'meta', 'dd', first[2] or '0')
  return #due
end

-- A complete call's batched writes (revision 12): pending entries popped
-- ahead for its next tasks, `want` at a time (the slots it still expects
-- to fill), so a call of n completions pops pending once, not n times;
-- the owned set's removals (`rems`) and additions (`adds`); entries to
-- give back to pending (`skipped`: score, id pairs). `seen` holds the
-- ids of the call's groups: popping one of them makes the call `stale`
-- (its views and owned-set reads are no longer to be trusted).
-- rtq2_complete writes them all when the call ends (flush_batch).
local function new_batch(seen, want)
  return {items = NONE, pos = 1, want = want, empty = false, skipped = {}, adds = {}, rems = {},
    seen = seen, stale = false}
end

-- `items`: what a ZPOPMIN of `n` entries answered (id, score, ...).
local function batch_fill(batch, items, n)
  batch.items, batch.pos = items, 1
  if #items < 2 * n then batch.empty = true end
end

-- The next pending entry (id, score) of the batch, popping more when
-- the ones popped ahead are used up; nil when pending is empty.
local function batch_next(batch)
  if batch.pos > #batch.items then
    if batch.empty then return nil end
    local n = batch.want
    if n < 1 then n = 1 end
    batch_fill(batch, redis.call('ZPOPMIN', P .. 'pending', istr(n)), n)
    if #batch.items == 0 then return nil end
  end
  local pos = batch.pos
  local id = batch.items[pos]
  batch.pos = pos + 2
  if batch.seen[id] then batch.stale = true end
  return id, batch.items[pos + 1]
end

-- Writes the owned-set changes `batch` holds (worker `wid`'s).
local function flush_owned(batch, wid)
  if #batch.rems > 0 then
    redis.call('SREM', wqkey(wid), unpack(batch.rems))
    batch.rems = {}
  end
  if #batch.adds > 0 then
    redis.call('SADD', wqkey(wid), unpack(batch.adds))
    batch.adds = {}
  end
end

local function other_live_worker(now)
  -- Read on a path that wrote already (take_next): a foreign key counts
  -- as no other worker rather than failing the call halfway.
  local n = redis.pcall('ZCOUNT', P .. 'workers', '(' .. istr(now), '+inf')
  return type(n) == 'number' and n > 1
end

-- Pops pending tasks for worker `wid` until one can run and hands it out.
-- Tasks past their deadline are ended on the way (never handed out); a
-- retry this worker failed is skipped while another live worker exists
-- and its avoidance window lasts. The scan is capped (pacing: housekeeping
-- continues where it stopped). Returns what assign returns (head, spec,
-- task id, attempt), or nil.
-- With a complete call's `batch` (revision 12, see batch_next) pending
-- entries come from the batch, skipped ones go back with the batch's
-- unused ones, the owned set gains the task with the batch's other
-- additions, and due retries were promoted by the caller.
local function take_next(wid, now, dd, batch)
  if not batch then promote_due(now, dd) end
  local skipped = nil
  local head, spec, taken, att = nil, nil, nil, nil
  -- Sequential calls would pop the entries an earlier take of the call
  -- skipped again first (they are pending's smallest, and skipped again:
  -- the worker, the time and the live workers are the call's): they use
  -- up as much of this scan. (This also keeps `batch.skipped` under
  -- SCAN_PER_TAKE entries, well within what one ZADD can unpack.)
  local scan = SCAN_PER_TAKE
  if batch then scan = SCAN_PER_TAKE - #batch.skipped / 2 end
  for _ = 1, scan do
    local id, score
    if batch then
      id, score = batch_next(batch)
    else
      local popped = redis.call('ZPOPMIN', P .. 'pending')
      id, score = popped[1], popped[2]
    end
    if not id then break end
    local t = tkey(id)
    local h = redis.pcall('HMGET', t, 'st', 'dl', 'spec', 'sub', 'att', 'avoid', 'avu', 'v')
    if h.err then h = {} end -- a foreign key: dropped like a stale entry
    if h[1] == 'queued' then
      local dl = num(h[2])
      if h[8] ~= PROTOCOL_S then
        finish(id, load_task(id), 'failed', 'protocol',
          'task written by protocol version ' .. tostring(h[8]) .. '; this queue speaks ' .. PROTOCOL
          .. ' (drain queues before upgrading)', now)
      elseif dl > 0 and dl <= now then
        expire(id, load_task(id), now)
      elseif h[6] == wid and num(h[7]) > now and other_live_worker(now) then
        skipped = skipped or (batch and batch.skipped) or {}
        skipped[#skipped + 1] = score
        skipped[#skipped + 1] = id
      else
        head, spec, taken, att = assign(id, wid, now, h[2], h[3], h[4], h[5], t, batch)
        break
      end
    end
    -- anything else is a stale entry (the task ended or vanished): dropped
  end
  if skipped and not batch then redis.call('ZADD', P .. 'pending', unpack(skipped)) end
  return head, spec, taken, att
end

local function is_paused()
  return redis.call('HGET', P .. 'meta', 'paused') == '1'
end

-- Hands pending tasks to live workers with free slots, pushing each into
-- the worker's inbox, at most `max`. Returns the number handed out.
local function dispatch_pending(now, max)
  if is_paused() then return 0 end
  local n = 0
  local tried = {}
  while n < max do
    if redis.call('ZCARD', P .. 'pending') == 0 then break end
    local wid = peek_free(now, tried)
    if not wid then break end
    local head, spec = take_next(wid, now, '0')
    if head then
      use_free(wid)
      redis.call('RPUSH', inkey(wid), head .. spec)
      n = n + 1
    else
      tried[wid] = true
    end
  end
  return n
end

-- Dispatches only when pending work and free slots coexist. (A shortcut:
-- dispatching with no free slot or no work does nothing, so its mutants are
-- equivalent.)
local function dispatch_if_needed(now, max)
  -- Due retries are promoted whether or not a slot is free: a busy
  -- worker's next complete then takes them in priority order.
  promote_due(now, nil)
  if redis.call('ZCARD', P .. 'free') > 0 -- mutation: skip
      and (redis.call('ZCARD', P .. 'pending') > 0 or redis.call('ZCARD', P .. 'delayed') > 0) then -- mutation: skip
    return dispatch_pending(now, max)
  end
  return 0
end

-- Workers ----------------------------------------------------------------------

-- Declares worker `wid` dead: each task it owns uses up an attempt (requeued
-- or failed as worker_lost), its inbox and free slots are dropped.
local function reap_worker(wid, now, why)
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', wqkey(wid))) do
    local h = load_task(id)
    if h and h.st == 'running' and h.w == wid then
      lose_attempt(id, h, 'worker ' .. wid .. ' ' .. why, now)
      n = n + 1
    end
  end
  redis.call('DEL', wqkey(wid), inkey(wid))
  redis.call('ZREM', P .. 'workers', wid)
  redis.call('ZREM', P .. 'free', wid)
  redis.call('HSET', wkey(wid), 'state', 'dead', 'dead_at', istr(now), 'dead_why', why)
  redis.call('PEXPIRE', wkey(wid), WORKER_INFO_TTL_MS)
  mark_departed(wid, now)
  event('worker_lost', '', wid, 'worker ' .. wid .. ' ' .. why .. '; attempts lost: ' .. istr(n))
  -- Adding 0 to the counter would change no reading: mutants equivalent.
  if n > 0 then stat_add(stats_key(now), 'lost', n) end -- mutation: skip
  return n
end

-- A bounded share of the queue's upkeep: reap dead workers, end overdue
-- tasks, promote due retries, dispatch when work and free slots coexist.
-- Returns reaped, expired, dispatched.
local function housekeeping(now)
  local reaped = 0
  for _, dead in ipairs(redis.call('ZRANGE', P .. 'workers', '-inf', time_str(now), 'BYSCORE', 'LIMIT', 0, REAP_PER_CALL)) do
    reap_worker(dead, now, 'stopped heartbeating')
    reaped = reaped + 1
  end
  local expired = 0
  for _, id in ipairs(redis.call('ZRANGE', P .. 'deadlines', '-inf', time_str(now), 'BYSCORE', 'LIMIT', 0, EXPIRE_PER_CALL)) do
    expire(id, load_task(id), now)
    expired = expired + 1
  end
  local dispatched = dispatch_if_needed(now, DISPATCH_PER_CALL)
  return reaped, expired, dispatched
end

redis.register_function{
  function_name = 'rtq2_version',
  callback = function() return {PROTOCOL, REVISION} end,
  flags = {'no-writes', 'allow-stale'},
}
