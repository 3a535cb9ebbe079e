#!lua name=rtq3
--[[
stream.lua: the rtq protocol v3 Functions library, the server half of a
`stream` queue (docs/PROTOCOL-V3.md). A separate library from v2's `rtq2`:
a queue is either `exact` (v2) or `stream` (v3), recorded in its meta hash
(`mode`). Every function follows v2's rules: validate every argument (an
invalid call raises an error starting with INVALID and writes nothing),
then compute reading only, then write; writes to a client's reply stream
run last and through redis.pcall.

KEYS[1] of every function is the queue's meta hash rtq:{<queue>}:meta; the
other keys share its prefix rtq:{<queue>}: (one Cluster slot):
  b:<band>   stream, consumer group `w`: one entry per queued or running
             task (t id, s spec, r reply stream, d deadline ms or 0,
             x max attempts, a0 attempts used before this entry, ret
             retention ms, u submit ms). The group's pending list is the
             lease table: the consumer is the worker id, the delivery
             count is the fence.
  m:<id>     string, the task's marker (it exists: the id is taken).
             While the task lives, its place:
               "<band> <entry id> <retention ms> <reply key or ->[ <replaced entry> <worker> <deliveries>]"
             (the last three after a worker's retry or hand-back: the
             delivery it ended, so a retried complete of that delivery
             replays and no other does); no expiry.
             Once it ended, its ending, kept for the retention:
               "<state>\t<attempt>\t<ms>\t<worker>\t<own entry>\t<kind>\n<result or message>"
             (own entry: the entry its own attempt's complete ended, so a
             retried call replays it; '' for endings by others).
  o:<id>:<attempt>  list: the output chunks of one attempt (rtq3_write),
             kept for the retention with the ending, deleted when the
             attempt is void.
  in:<wid>   list: stop orders for a worker ("C\t<id>\t<attempt>\t<kind>\t<reason>",
             v2's inbox message format).
  lv         zset worker id -> lease expiry (ms): live workers.
  dl         zset task id -> deadline (ms) of tasks submitted with one, so
             housekeeping finds queued tasks past their deadline without
             reading entries (specs); members of ended tasks go lazily.
Meta fields: mode=stream, bands (1-5), n (tasks queued or running), maxd
(depth limit, 0 = none).
A band stream whose group `w` is missing (destroyed by hand) holds no
leases: complete, write and beat answer LOST for its entries, join and
takeover skip it; rtq3_create makes the group again. A key of a foreign
type where a call would write, a corrupt meta field or a foreign entry in
a band is refused before the first write (WRONGTYPE ... nothing was
written, or INVALID); a marker that does not name a readable place of its
own task counts as no task.

A task's attempt number is a0 + the entry's delivery count. The hot path
is one submit call per batch of submits (per task: EXISTS, XADD, SET) and
one complete call per batch of endings (per ending: GET, SET, APPEND, LLEN
of its output, the reply XADD; per call: XPENDING of the worker's entries, XACK, XDEL,
HINCRBY): the entry's fields are not read back (a spec is not hashed
into Lua twice), the ending replaces the marker (one key per task).
Workers read new entries themselves: XREADGROUP GROUP w <wid> COUNT <free slots>
STREAMS b:<band> > (band 0 first: strict priority between bands).

Functions (numbers are canonical decimal integers; stream entry ids are
canonical <ms>-<seq>, each part at most 2^64-1; ids and worker ids 1-128
bytes without spaces or control characters):

rtq3_version (no-writes): KEYS none. Reply {3, REVISION}.

rtq3_create: ARGV bands (1-5), max depth (>= 0).
  Makes the queue a stream queue (or updates its depth limit); refuses a
  queue that exists as another mode or with another band count.
  Reply 'OK'.

rtq3_submit: ARGV count (1-1024), then count x 7:
  id, band, spec, reply stream key ('' = none, else rtq:{<queue>}:r:<client>,
  at most 200 bytes, client without spaces or control characters),
  deadline ms (0 = none), max attempts (1-1000), retention ms (1 - 30 days).
  Reply: one item per task: 'OK <entry>' | 'DUP' (the id exists: attach to
  it) | 'FULL' (the depth limit).

rtq3_complete: ARGV worker, count (1-1024), then count x 8:
  band, entry, id, deliveries (the fence), a0, state (done | failed |
  retry | handback | expired), payload (result JSON or reason), output
  (the chunks the attempt wrote, 0-100000, or '-': not checked).
  retry: another attempt if attempts remain, else failed; handback: back to
  the queue without using an attempt. Only the current attempt (the pending
  list names this worker at this delivery count) ends its task, and only
  when its stored output holds `output` chunks (a worker sends its last
  chunks' rtq3_write and the complete in one pipeline: if that write did
  not apply, the complete writes nothing either).
  Reply: one item per ending: 'OK' | 'REPLAY' (this attempt's ending was
  written by an earlier call) | 'LOST' (not this attempt's any more) |
  'ORDER <n>' (the attempt's output holds n chunks, not `output`).

rtq3_beat: ARGV worker, lease ms, count (0-1024), then count x 3:
  band, entry, deliveries. Renews the worker's liveness and the lease of
  each entry it still holds at that delivery count (XCLAIM JUSTID: no
  delivery counted). Reply: one item per entry: 'OK' | 'LOST'.

rtq3_join: ARGV worker. A worker (re)starting under an id: every
  entry the id still holds is a void attempt (its process is gone) and is
  queued again (attempt used) or failed when none remain.
  Reply: how many entries it held.

rtq3_takeover: ARGV worker, lease ms, free slots (0-1024).
  Housekeeping: entries idle past the lease (their worker died or froze)
  come to this worker, at most `free` (its own idle entries are left to
  it: a worker that lost a read's reply finds them in its pending list); those past their attempts or their
  deadline end instead; queued tasks past their deadline (up to 100 per
  call, from the deadline set dl) end expired. Reply: {ended count, then per taken entry:
  band, entry, deliveries, id, spec, reply, deadline, max, a0, retention}.

rtq3_cancel: ARGV id, reason. Reply 'OK' | 'OK <worker>' (running:
  a stop order was sent) | 'NOT_FOUND' | 'ENDED <state>'.

rtq3_expire: ARGV id. Ends the task `expired` if its deadline passed on
  Redis's clock (a waiting client's timer asks; workers' housekeeping
  finds the others). Reply 'OK' | 'OK <worker>' (running: a stop order
  of kind deadline was sent) | 'NOT_DUE <ms left>' | 'NO_DEADLINE' |
  'NOT_FOUND' | 'ENDED <state>'.

rtq3_status (no-writes): ARGV id. Reply one of
  {'ended', state, attempt, ms, kind, message, worker} (kind and message '' when done)
  {'running', worker, attempt, idle ms, worker lease left ms (-1: gone)}
  {'queued', band, entries ahead (capped at 100), live workers, attempts used}
  {'unknown'}
]]

local REVISION = 6
local GROUP = 'w'
local MAX_BANDS = 5
local MAX_BATCH = 1024
local MAX_ID_BYTES = 128
local MAX_SPEC_BYTES = 16777216
local MAX_RESULT_BYTES = 16777216
local MAX_TEXT_BYTES = 4096
local MAX_ATTEMPTS = 1000
-- Chunks an attempt may write (rtq3_write; rtq3_complete's `output`).
local MAX_OUTPUT_CHUNKS = 100000
local MAX_DURATION_MS = 2592000000
local MIN_LEASE_MS = 100
local MAX_LEASE_MS = 600000
local REPLY_MAXLEN = '100000' -- mutation: skip
local EXPIRE_SCAN = 100 -- mutation: skip
local AHEAD_CAP = 100 -- counted by reading the entries (their specs): kept small -- mutation: skip
local NO_LIMIT = 9007199254740991
local U64_MAX = '18446744073709551615'

local P = ''
-- P .. 'r:': the prefix of the queue's reply streams.
local RP = ''
-- The last reply key checked against P (reset when P changes).
local last_reply = nil
-- Entries to acknowledge and delete at the end of a call (per band), and
-- the tasks that ended in it; nil: each removal is written at once.
local removals = nil

local function invalid(msg)
  error({err = 'INVALID ' .. msg})
end

-- The meta key of the last call, already checked (a pattern match costs
-- more than the rest of a small call's checks).
local bound_meta = nil

local function bind(keys)
  if #keys ~= 1 then invalid('KEYS must be exactly the queue meta key rtq:{<queue>}:meta') end
  if keys[1] ~= bound_meta then
    if type(keys[1]) ~= 'string' or #keys[1] > 75
        or not string.match(keys[1], '^rtq:{[0-9A-Za-z._-]+}:meta$') then
      invalid('KEYS must be exactly the queue meta key rtq:{<queue>}:meta')
    end
    P = string.sub(keys[1], 1, -5)
    RP = P .. 'r:'
    bound_meta = keys[1]
    last_reply = nil
  end
  -- A call that failed halfway left no batch for the next one.
  removals = nil
end

-- Canonical integer strings already seen (0-4095 made at load, others
-- remembered up to INT_MEMO_MAX): most numbers repeat call after call.
local INT_OF, int_memo_size = {}, 0
local INT_MEMO_MAX = 4096 -- mutation: skip
for i = 0, 4095 do INT_OF['' .. i] = i end

local function int(v, name, lo, hi)
  local n = INT_OF[v]
  if not n then
    if type(v) ~= 'string' or #v > 16 or not string.match(v, '^%-?%d+$') then
      invalid(name .. ' must be an integer, got ' .. string.sub(tostring(v), 1, 40))
    end
    n = tonumber(v)
    if string.format('%d', n) ~= v then invalid(name .. ' must be written canonically, got ' .. v) end
    if int_memo_size < INT_MEMO_MAX then
      INT_OF[v], int_memo_size = n, int_memo_size + 1
    end
  end
  if n < lo or n > hi then
    invalid(name .. ' must be in [' .. lo .. ', ' .. hi .. '], got ' .. v)
  end
  return n
end

local function text(v, name, lo, hi)
  if type(v) ~= 'string' or #v < lo or #v > hi then
    invalid(name .. ' must be ' .. lo .. '-' .. hi .. ' bytes')
  end
  return v
end

local function id_arg(v, name)
  text(v, name, 1, MAX_ID_BYTES)
  if string.find(v, '[%c%s]') then invalid(name .. ' must not contain spaces or control characters') end
  return v
end

-- A part of a stream entry id: canonical (no leading zero) and at most
-- 2^64-1, as Redis writes them (Redis refuses a larger one with an error
-- that would stop the call halfway).
local function u64_part(s)
  if #s > 1 and string.sub(s, 1, 1) == '0' then return false end
  return #s < 20 or (#s == 20 and s <= U64_MAX)
end

local function is_entry(v)
  local ms, seq
  if type(v) == 'string' and #v <= 41 then ms, seq = string.match(v, '^(%d+)%-(%d+)$') end
  return ms ~= nil and u64_part(ms) and u64_part(seq)
end

local function entry_arg(v, name)
  if not is_entry(v) then
    invalid(name .. ' must be a stream entry id, got ' .. string.sub(tostring(v), 1, 40))
  end
  return v
end

-- A reply stream key: empty (none) or a key of this queue (r:<client>).
local function reply_arg(v)
  if v == '' or v == last_reply then return v end
  text(v, 'reply key', 1, 200)
  if string.sub(v, 1, #P + 2) ~= P .. 'r:' or #v == #P + 2 or string.find(v, '[%c%s]') then
    invalid('reply key must be ' .. P .. 'r:<client>, without spaces')
  end
  last_reply = v
  return v
end

local function fmt(n)
  return string.format('%d', n)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Refuses, before any write, a key of the wrong type that a later command
-- of the call would fail on (a foreign writer's key in rtq's namespace):
-- Redis would not undo the writes made before it.
local function expect_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    error({err = 'WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. want
      .. ' (a foreign key in rtq\'s namespace); nothing was written'})
  end
end

-- HMGET of the meta hash; a meta of another type is refused.
local function read_meta(...)
  local m = redis.pcall('HMGET', P .. 'meta', ...)
  if m.err then
    expect_type(P .. 'meta', 'hash')
    error(m)
  end
  return m
end

-- A meta field that must be an integer written canonically (HINCRBY
-- fails on anything else, "012" and "-0" included).
local function meta_int(v, name, lo, hi)
  if v == false or v == nil then return nil end
  local n = tonumber(v)
  if not string.match(v, '^%-?%d+$') or not n or n < lo or n > hi
      or string.format('%d', n) ~= v then
    invalid('queue ' .. P .. ' has a corrupt meta field ' .. name .. ' (' .. string.sub(v, 1, 40)
      .. '); nothing was written')
  end
  return n
end

-- The queue's meta, checked to be a stream queue.
local function stream_meta()
  local m = read_meta('mode', 'bands', 'n', 'maxd')
  if m[1] ~= 'stream' then
    invalid('queue ' .. P .. ' is not a stream queue (create it with rtq3_create)')
  end
  return {
    bands = meta_int(m[2], 'bands', 1, MAX_BANDS) or 1,
    n = meta_int(m[3], 'n', -NO_LIMIT, NO_LIMIT) or 0,
    maxd = meta_int(m[4], 'maxd', 0, NO_LIMIT) or 0,
  }
end

local function band_key(b)
  return P .. 'b:' .. b
end

-- The fields of a band's entry as a table, checked to be a task's: a
-- foreign entry in a band (XADD by hand) is refused before anything is
-- written, as the arithmetic and the XADD of a requeue would fail on it.
local function count_field(v)
  return type(v) == 'string' and #v <= 16 and string.match(v, '^%d+$') ~= nil
    and (v == '0' or string.sub(v, 1, 1) ~= '0')
end

local function task_of(band, entry, raw)
  local f = {}
  for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
  if not (f.t and f.s and f.r and f.u and count_field(f.d) and count_field(f.x)
      and count_field(f.a0) and count_field(f.ret) and f.ret ~= '0') then
    invalid('entry ' .. entry .. ' of ' .. band_key(band)
      .. ' is not a task (a foreign entry in rtq\'s namespace); nothing was written')
  end
  return f
end

-- Fields of a stream entry as a table (see task_of), or nil when it is gone.
local function entry_fields(band, entry)
  local rows = redis.call('XRANGE', band_key(band), entry, entry)
  if #rows == 0 then return nil end
  return task_of(band, entry, rows[1][2])
end

-- Fields of an entry a pending row or the deadline set names, for
-- housekeeping: nil when it is gone or is not a task. A foreign entry
-- read into a pending list (XADD by hand) must not stop every takeover
-- and restart of the queue: its row is dropped like a gone entry's.
local function pending_fields(band, entry)
  local rows = redis.call('XRANGE', band_key(band), entry, entry)
  if #rows == 0 then return nil end
  local ok, f = pcall(task_of, band, entry, rows[1][2])
  if ok then return f end
  return nil
end

-- Who holds an entry: consumer, idle ms, delivery count; nil when queued
-- (or when the band's stream or its group is gone: nobody holds it).
local function holder(band, entry)
  local rows = redis.pcall('XPENDING', band_key(band), GROUP, entry, entry, 1)
  local row = not rows.err and rows[1]
  if not row then return nil end
  return row[2], row[3], row[4]
end

-- The entries `worker` holds in a band: entry id -> delivery count (a
-- worker holds at most its slots, <= MAX_BATCH; a band without its
-- stream or group holds none; a band of a foreign type is refused).
local function held_by(band, worker)
  local map = {}
  local rows = redis.pcall('XPENDING', band_key(band), GROUP, '-', '+', MAX_BATCH, worker)
  if rows.err then
    expect_type(band_key(band), 'stream')
    return map
  end
  for _, row in ipairs(rows) do map[row[1]] = row[4] end
  return map
end

-- True when an attempt (band, entry, deliveries) is its task's current
-- one: the worker's pending entries (`held`, from held_by) hold the entry
-- at that delivery count and the task's marker `mk` names that place.
local function is_current(held, band, entry, deliveries, mk)
  return held[band][entry] == deliveries and mk ~= nil and mk.entry == entry and mk.band == band
end

-- The band's group `w` as a table of its XINFO fields, or nil when the
-- stream or the group is missing (the band's type is checked already).
local function group_info(b)
  if redis.call('EXISTS', band_key(b)) == 0 then return nil end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', band_key(b))) do
    local h = {}
    for i = 1, #g, 2 do h[g[i]] = g[i + 1] end
    if h.name == GROUP then return h end
  end
  return nil
end

-- The stream exists with the group (a deleted stream is made again).
-- `always`: also when the stream exists (its group may have been
-- destroyed); a BUSYGROUP answer is fine.
local function ensure_group(band, always)
  if always or redis.call('TYPE', band_key(band))['ok'] == 'none' then
    redis.pcall('XGROUP', 'CREATE', band_key(band), GROUP, '0', 'MKSTREAM')
  end
end

local function check_band_types(bands)
  for b = 0, bands - 1 do expect_type(band_key(b), 'stream') end
end

-- A task's marker: nil (no such task), a place {band, entry, ret, reply,
-- prev, by, pd} or an ending {st, a, ms, w, c, k, payload}.
-- (A marker of a foreign type is refused; an unreadable one, or a place
-- past `bands` or with a bad entry id, reads as no task: nil.)
local function read_marker(id, bands)
  local v = redis.pcall('GET', P .. 'm:' .. id)
  if type(v) == 'table' and v.err then
    expect_type(P .. 'm:' .. id, 'string')
    error(v)
  end
  if not v then return nil end
  local band, entry, ret, reply, rest = string.match(v, '^(%d) (%S+) (%d+) (%S+)(.*)$')
  if band then
    if tonumber(band) >= bands or not is_entry(entry) or not count_field(ret) or ret == '0' then
      return nil
    end
    -- The replaced delivery (a marker written before deliveries were
    -- kept has none: nothing replays against it).
    local prev, by, pd = '', '', ''
    if rest ~= '' then
      prev, by, pd = string.match(rest, '^ (%S+) (%S+) ?(%d*)$')
      if not prev then return nil end
    end
    if reply == '-' then reply = '' end
    return {band = band, entry = entry, ret = ret, reply = reply, prev = prev, by = by, pd = pd}
  end
  local nl = string.find(v, '\n', 1, true)
  if not nl then return nil end
  local st, a, ms, w, c, k = string.match(string.sub(v, 1, nl - 1),
    '^(%a+)\t(%d+)\t(%d+)\t([^\t]*)\t([^\t]*)\t(.*)$')
  if not st then return nil end
  return {st = st, a = a, ms = ms, w = w, c = c, k = k, payload = string.sub(v, nl + 1)}
end

-- The chunks an attempt's output list holds (a foreign key there counts
-- as no output, as end_task counts it).
local function output_count(id, attempt)
  local n = redis.pcall('LLEN', P .. 'o:' .. id .. ':' .. fmt(attempt))
  if type(n) ~= 'number' then return 0 end
  return n
end

local function place_of(band, entry, ret, reply)
  return band .. ' ' .. entry .. ' ' .. ret .. ' ' .. (reply ~= '' and reply or '-')
end


local function remove_entry(band, entry, ended)
  if removals then
    local list = removals[band]
    if not list then list = {}; removals[band] = list end
    list[#list + 1] = entry
    if ended then removals.ended = removals.ended + 1 end
    return
  end
  redis.call('XACK', band_key(band), GROUP, entry)
  redis.call('XDEL', band_key(band), entry)
  if ended then redis.call('HINCRBY', P .. 'meta', 'n', -1) end
end

local function flush_removals()
  local r = removals
  removals = nil
  for band, list in pairs(r) do
    if band ~= 'ended' then
      redis.call('XACK', band_key(band), GROUP, unpack(list))
      redis.call('XDEL', band_key(band), unpack(list))
    end
  end
  if r.ended > 0 then redis.call('HINCRBY', P .. 'meta', 'n', -r.ended) end
end

-- Sends an event to a task's reply stream: only to a reply stream of
-- this queue (a corrupt marker or entry naming another key, a band say,
-- would get a foreign entry there).
local function notify(reply, fields)
  if reply ~= nil and reply ~= '' and string.sub(reply, 1, #RP) == RP then
    redis.pcall('XADD', reply, 'NOMKSTREAM', 'MAXLEN', '~', REPLY_MAXLEN, '*', unpack(fields))
  end
end

-- Writes a task's ending over its marker and removes its entry. `f`
-- holds t (id), r (reply key), ret (retention); `state` done (payload =
-- result) or an error state. `own`: written by the ending attempt's own
-- complete (the ending keeps the entry, so a retried call replays it and
-- no other attempt does: a hand-back gives the next delivery the same
-- attempt number).
local function end_task(band, entry, f, state, attempt, kind, payload, worker, now, own)
  local id = f.t
  local m = P .. 'm:' .. id
  local a = fmt(attempt)
  redis.call('SET', m, state .. '\t' .. a .. '\t' .. now .. '\t' .. worker .. '\t'
    .. (own and entry or '') .. '\t' .. kind .. '\n', 'PX', f.ret)
  -- The payload apart: a result is not copied into a second Lua string.
  if payload ~= '' then redis.call('APPEND', m, payload) end
  -- The ending attempt's output is kept as long (a foreign key there
  -- counts as no output).
  local o = P .. 'o:' .. id .. ':' .. a
  local n = redis.pcall('LLEN', o)
  if type(n) ~= 'number' then n = 0 end
  if n > 0 then redis.call('PEXPIRE', o, f.ret) end
  remove_entry(band, entry, true)
  -- Out of the deadline set when the entry was read (a complete's endings,
  -- which do not read it, leave theirs to housekeeping; a foreign key
  -- there is left alone).
  if f.d and f.d ~= '0' then redis.pcall('ZREM', P .. 'dl', id) end
  if state == 'done' then
    notify(f.r, {'t', id, 'e', 'f', 'st', state, 'a', a, 'n', fmt(n), 'r', payload})
  else
    notify(f.r, {'t', id, 'e', 'f', 'st', state, 'a', a, 'n', fmt(n), 'k', kind, 'm', payload, 'w', worker})
  end
end

-- Queues a task again as a new entry at its band's tail (a0 = attempts
-- used), removing the old one; followers learn the attempt is void.
-- `by`: the worker whose complete asked for it (kept on the marker with
-- the replaced entry and its delivery count `deliveries`, so a retried
-- call of that delivery replays), or nil.
local function requeue(band, entry, f, a0, attempt, reason, by, deliveries)
  remove_entry(band, entry, false)
  -- The void attempt's output goes (a hand-back's next attempt has its number).
  redis.call('DEL', P .. 'o:' .. f.t .. ':' .. fmt(attempt))
  local new = redis.call('XADD', band_key(band), '*', 't', f.t, 's', f.s, 'r', f.r, 'd', f.d,
    'x', f.x, 'a0', fmt(a0), 'ret', f.ret, 'u', f.u)
  local place = place_of(band, new, f.ret, f.r)
  if by then place = place .. ' ' .. entry .. ' ' .. by .. ' ' .. deliveries end
  redis.call('SET', P .. 'm:' .. f.t, place)
  -- Followers learn an attempt is void only when it was used: a hand-back
  -- (a0 = attempt - 1) runs the same attempt number again, and an event
  -- would make them expect the next one and drop its chunks.
  if a0 >= attempt then notify(f.r, {'t', f.t, 'e', 'q', 'a', fmt(attempt), 'm', reason}) end
  return new
end

-- A void attempt (its worker died, froze or restarted): queued again with
-- the attempt used, or failed when it was the last one.
local function void_attempt(band, entry, f, deliveries, worker, why, now)
  local attempt = tonumber(f.a0) + deliveries
  if attempt >= tonumber(f.x) then
    end_task(band, entry, f, 'failed', attempt, 'worker_lost',
      why .. '; attempts used up (' .. attempt .. ' of ' .. f.x .. ')', worker, now)
  else
    requeue(band, entry, f, attempt, attempt, why)
  end
end

local function version()
  return {3, REVISION}
end

local function create(keys, args)
  bind(keys)
  if #args ~= 2 then invalid('rtq3_create takes bands, max depth') end
  local bands = int(args[1], 'bands', 1, MAX_BANDS)
  local maxd = int(args[2], 'max depth', 0, NO_LIMIT)
  local m = read_meta('mode', 'bands', 'v')
  if m[1] and m[1] ~= 'stream' or (not m[1] and m[3]) then
    invalid('queue ' .. P .. ' exists as an exact (v2) queue')
  end
  if m[1] == 'stream' then
    -- As stream_meta reads it (a missing field: one band).
    local has = meta_int(m[2], 'bands', 1, MAX_BANDS) or 1
    if has ~= bands then invalid('queue ' .. P .. ' has ' .. has .. ' bands, not ' .. bands) end
  end
  check_band_types(bands)
  redis.call('HSET', P .. 'meta', 'mode', 'stream', 'bands', bands, 'maxd', maxd)
  redis.call('HSETNX', P .. 'meta', 'n', 0)
  for b = 0, bands - 1 do ensure_group(b, true) end
  return 'OK'
end

local function submit(keys, args)
  bind(keys)
  local count = int(args[1], 'count', 1, MAX_BATCH)
  if #args ~= 1 + 7 * count then invalid('rtq3_submit takes count, then count x 7 values') end
  local meta = stream_meta()
  local used = {}
  for i = 0, count - 1 do
    local o = 2 + 7 * i
    id_arg(args[o], 'task id')
    local band = int(args[o + 1], 'band', 0, meta.bands - 1)
    text(args[o + 2], 'spec', 1, MAX_SPEC_BYTES)
    reply_arg(args[o + 3])
    int(args[o + 4], 'deadline', 0, NO_LIMIT)
    int(args[o + 5], 'max attempts', 1, MAX_ATTEMPTS)
    int(args[o + 6], 'retention', 1, MAX_DURATION_MS)
    used[band] = true
    if args[o + 4] ~= '0' then used.deadlines = true end
  end
  if used.deadlines then
    used.deadlines = nil
    expect_type(P .. 'dl', 'zset')
  end
  local missing = {}
  for b in pairs(used) do
    if redis.call('EXISTS', band_key(b)) == 0 then
      missing[b] = true
    else
      expect_type(band_key(b), 'stream')
    end
  end
  -- Compute: which tasks are added.
  local out, seen, added = {}, {}, 0
  for i = 0, count - 1 do
    local id = args[2 + 7 * i]
    if seen[id] or redis.call('EXISTS', P .. 'm:' .. id) == 1 then
      out[i + 1] = 'DUP'
    elseif meta.maxd > 0 and meta.n + added >= meta.maxd then
      out[i + 1] = 'FULL'
    else
      out[i + 1] = true
      added = added + 1
      -- (Only an added id: a repeat of a refused one is refused again.)
      seen[id] = true
    end
  end
  -- Write.
  for b in pairs(missing) do ensure_group(b, true) end
  local now_s = fmt(now_ms())
  for i = 0, count - 1 do
    if out[i + 1] == true then
      local o = 2 + 7 * i
      local entry = redis.call('XADD', band_key(args[o + 1]), '*', 't', args[o], 's', args[o + 2],
        'r', args[o + 3], 'd', args[o + 4], 'x', args[o + 5], 'a0', '0', 'ret', args[o + 6], 'u', now_s)
      redis.call('SET', P .. 'm:' .. args[o], place_of(args[o + 1], entry, args[o + 6], args[o + 3]))
      if args[o + 4] ~= '0' then redis.call('ZADD', P .. 'dl', args[o + 4], args[o]) end
      out[i + 1] = 'OK ' .. entry
    end
  end
  if added > 0 then redis.call('HINCRBY', P .. 'meta', 'n', added) end
  return out
end

local STATES = {done = true, failed = true, retry = true, handback = true, expired = true}

local function complete(keys, args)
  bind(keys)
  local worker = id_arg(args[1], 'worker id')
  local count = int(args[2], 'count', 1, MAX_BATCH)
  if #args ~= 2 + 8 * count then invalid('rtq3_complete takes worker, count, then count x 8 values') end
  local meta = stream_meta()
  for i = 0, count - 1 do
    local o = 3 + 8 * i
    int(args[o], 'band', 0, meta.bands - 1)
    entry_arg(args[o + 1], 'entry')
    id_arg(args[o + 2], 'task id')
    int(args[o + 3], 'deliveries', 1, NO_LIMIT)
    int(args[o + 4], 'a0', 0, NO_LIMIT)
    if not STATES[args[o + 5]] then invalid('state must be done, failed, retry, handback or expired') end
    if args[o + 5] == 'done' then
      text(args[o + 6], 'result', 1, MAX_RESULT_BYTES)
    else
      text(args[o + 6], 'reason', 0, MAX_TEXT_BYTES)
    end
    if args[o + 7] ~= '-' then int(args[o + 7], 'output', 0, MAX_OUTPUT_CHUNKS) end
  end
  -- Compute (reads only): the worker's entries as the pending list holds
  -- them (one read per band), each ending's marker, and what it does.
  local held = {}
  for i = 0, count - 1 do
    local band = args[3 + 8 * i]
    if not held[band] then held[band] = held_by(band, worker) end
  end
  local plan, out, ended_here = {}, {}, {}
  for i = 0, count - 1 do
    local o = 3 + 8 * i
    local band, entry, id = args[o], args[o + 1], args[o + 2]
    local deliveries, a0 = tonumber(args[o + 3]), tonumber(args[o + 4])
    local state = args[o + 5]
    local attempt = a0 + deliveries
    local mk = read_marker(id, meta.bands)
    if not is_current(held, band, entry, deliveries, mk) then
      -- A retried call after a lost reply finds its own ending, or its
      -- requeue (retry, hand-back: the marker keeps the entry it replaced
      -- and the worker that asked).
      local replay = mk and ((mk.st and tonumber(mk.a) == attempt and mk.w == worker and mk.c == entry)
        or (mk.prev == entry and mk.by == worker and mk.pd == args[o + 3]))
      out[i + 1] = replay and 'REPLAY' or 'LOST'
    else
      local f = {t = id, r = mk.reply, ret = mk.ret}
      if state == 'retry' or state == 'handback' then f = entry_fields(band, entry) end
      local stored = args[o + 7] ~= '-' and output_count(id, attempt)
      if not f then
        out[i + 1] = 'LOST' -- deleted behind the protocol's back
      elseif stored and stored ~= tonumber(args[o + 7]) then
        out[i + 1] = 'ORDER ' .. fmt(stored)
      else
        -- Ended by this call: a repeat of it later in the call replays.
        held[band][entry] = nil
        ended_here[band .. ' ' .. entry] = deliveries
        out[i + 1] = 'OK'
        plan[#plan + 1] = {band, entry, f, state, attempt, args[o + 6], args[o + 3]}
      end
    end
    if out[i + 1] == 'LOST' and ended_here[band .. ' ' .. entry] == deliveries then out[i + 1] = 'REPLAY' end
  end
  -- Write.
  local now_s = fmt(now_ms())
  removals = {ended = 0}
  for _, p in ipairs(plan) do
    local band, entry, f, state, attempt, payload = p[1], p[2], p[3], p[4], p[5], p[6]
    if state == 'done' or state == 'failed' or state == 'expired'
        or (state == 'retry' and attempt >= tonumber(f.x)) then
      local final = state == 'retry' and 'failed' or state
      local kind = state == 'expired' and 'timeout_running' or 'handler'
      end_task(band, entry, f, final, attempt, kind, payload, worker, now_s, true)
    elseif state == 'retry' then
      requeue(band, entry, f, attempt, attempt, 'retry: ' .. payload, worker, p[7])
    else
      requeue(band, entry, f, attempt - 1, attempt, 'handed back: ' .. payload, worker, p[7])
    end
  end
  flush_removals()
  return out
end

local function beat(keys, args)
  bind(keys)
  local worker = id_arg(args[1], 'worker id')
  local lease = int(args[2], 'lease', MIN_LEASE_MS, MAX_LEASE_MS)
  local count = int(args[3], 'count', 0, MAX_BATCH)
  if #args ~= 3 + 3 * count then invalid('rtq3_beat takes worker, lease, count, then count x 3 values') end
  local meta = stream_meta()
  for i = 0, count - 1 do
    local o = 4 + 3 * i
    int(args[o], 'band', 0, meta.bands - 1)
    entry_arg(args[o + 1], 'entry')
    int(args[o + 2], 'deliveries', 1, NO_LIMIT)
  end
  expect_type(P .. 'lv', 'zset')
  for i = 0, count - 1 do expect_type(band_key(args[4 + 3 * i]), 'stream') end
  redis.call('ZADD', P .. 'lv', fmt(now_ms() + lease), worker)
  local out = {}
  for i = 0, count - 1 do
    local o = 4 + 3 * i
    local who, _, deliveries = holder(args[o], args[o + 1])
    if who == worker and deliveries == tonumber(args[o + 2]) then
      redis.call('XCLAIM', band_key(args[o]), GROUP, worker, 0, args[o + 1], 'JUSTID')
      out[i + 1] = 'OK'
    else
      out[i + 1] = 'LOST'
    end
  end
  return out
end

local function join(keys, args)
  bind(keys)
  if #args ~= 1 then invalid('rtq3_join takes worker') end
  local worker = id_arg(args[1], 'worker id')
  local meta = stream_meta()
  check_band_types(meta.bands)
  -- Compute: the entries the id holds (a band without its group holds none).
  local plan = {}
  for b = 0, meta.bands - 1 do
    if group_info(b) then
      for _, row in ipairs(redis.call('XPENDING', band_key(b), GROUP, '-', '+', MAX_BATCH, worker)) do
        local f = pending_fields(b, row[1])
        if f then read_marker(f.t, meta.bands) end -- its marker's type
        plan[#plan + 1] = {b, row[1], f, row[4]}
      end
    end
  end
  -- Write.
  local now_s = fmt(now_ms())
  for _, p in ipairs(plan) do
    local b, entry, f, deliveries = p[1], p[2], p[3], p[4]
    if f then
      void_attempt(b, entry, f, deliveries, worker, 'worker ' .. worker .. ' restarted', now_s)
    else
      redis.call('XACK', band_key(b), GROUP, entry)
    end
  end
  return #plan
end

local function takeover(keys, args)
  bind(keys)
  if #args ~= 3 then invalid('rtq3_takeover takes worker, lease, free') end
  local worker = id_arg(args[1], 'worker id')
  local lease = int(args[2], 'lease', MIN_LEASE_MS, MAX_LEASE_MS)
  local free = int(args[3], 'free', 0, MAX_BATCH)
  local meta = stream_meta()
  expect_type(P .. 'lv', 'zset')
  expect_type(P .. 'dl', 'zset')
  check_band_types(meta.bands)
  local now = now_ms()
  local now_s = fmt(now)
  -- Compute (reads only; XAUTOCLAIM would write before the decisions):
  -- each step takes an idle entry, ends one, or drops a pending row whose
  -- entry is gone.
  local plan, budget = {}, free
  for b = 0, meta.bands - 1 do
    local g = group_info(b)
    if g then
      -- Idle entries of dead or frozen workers.
      local start = '-'
      while budget > 0 do
        local want = budget
        local rows = redis.call('XPENDING', band_key(b), GROUP, 'IDLE', lease, start, '+', want)
        for _, row in ipairs(rows) do
          local f = pending_fields(b, row[1])
          local step = {b = b, entry = row[1], f = f, deliveries = row[4] + 1, act = 'drop',
            lost = row[2]}
          if row[2] == worker then
            -- The caller's own entry (it is alive: it calls): one whose
            -- read reply it lost. It finds it in its pending list itself;
            -- a take-over here would count a delivery it never had.
            step.act = 'own'
          elseif f then
            read_marker(f.t, meta.bands) -- its marker's type
            step.attempt = tonumber(f.a0) + step.deliveries
            local dl = tonumber(f.d)
            if step.attempt > tonumber(f.x) then
              step.act = 'failed'
            elseif dl > 0 and dl <= now then
              step.act = 'expired'
            else
              step.act = 'take'
              budget = budget - 1
            end
          end
          plan[#plan + 1] = step
        end
        if #rows < want then break end
        start = '(' .. rows[#rows][1]
      end
    end
  end
  -- Queued tasks past their deadline, from the deadline set (a running
  -- one is its worker's to stop, or ends when taken over).
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'dl', '-inf', now_s, 'LIMIT', 0, EXPIRE_SCAN)) do
    local mk = read_marker(id, meta.bands)
    local f = mk and not mk.st and pending_fields(mk.band, mk.entry)
    if not f or f.t ~= id then
      plan[#plan + 1] = {id = id, act = 'undeadline'} -- ended, or gone
    elseif holder(mk.band, mk.entry) == nil then
      plan[#plan + 1] = {b = mk.band, entry = mk.entry, f = f, act = 'queued'}
    end
  end
  -- Write.
  redis.call('ZREMRANGEBYSCORE', P .. 'lv', '-inf', now_s)
  local out, ended = {0}, 0
  for _, step in ipairs(plan) do
    local b, e, f = step.b, step.entry, step.f
    if step.act == 'own' then
      -- Left to the worker (see above).
    elseif step.act == 'drop' then
      redis.call('XACK', band_key(b), GROUP, e)
    elseif step.act == 'failed' then
      end_task(b, e, f, 'failed', step.attempt - 1, 'worker_lost',
        'worker lost; attempts used up (' .. f.x .. ' of ' .. f.x .. ')', step.lost, now_s)
      ended = ended + 1
    elseif step.act == 'expired' then
      end_task(b, e, f, 'expired', step.attempt - 1, 'timeout_running', 'deadline passed', '', now_s)
      ended = ended + 1
    elseif step.act == 'queued' then
      end_task(b, e, f, 'expired', tonumber(f.a0), 'timeout_queued', 'deadline passed while queued', '', now_s)
      ended = ended + 1
    elseif step.act == 'undeadline' then
      redis.call('ZREM', P .. 'dl', step.id)
    else
      redis.call('XCLAIM', band_key(b), GROUP, worker, lease, e)
      -- The lost attempt's output goes with it.
      redis.call('DEL', P .. 'o:' .. f.t .. ':' .. fmt(step.attempt - 1))
      notify(f.r, {'t', f.t, 'e', 'q', 'a', fmt(step.attempt - 1), 'm', 'worker lost: lease lapsed'})
      for _, v in ipairs({b, e, step.deliveries, f.t, f.s, f.r, f.d, f.x, f.a0, f.ret}) do
        out[#out + 1] = v
      end
    end
  end
  out[1] = ended
  return out
end

local function cancel(keys, args)
  bind(keys)
  if #args ~= 2 then invalid('rtq3_cancel takes id, reason') end
  local id = id_arg(args[1], 'task id')
  local reason = text(args[2], 'reason', 0, MAX_TEXT_BYTES)
  local meta = stream_meta()
  local mk = read_marker(id, meta.bands)
  if not mk then return 'NOT_FOUND' end
  if mk.st then return 'ENDED ' .. mk.st end
  local band, entry = mk.band, mk.entry
  expect_type(band_key(band), 'stream')
  local f = entry_fields(band, entry)
  if not f or f.t ~= id then return 'NOT_FOUND' end
  local who, _, deliveries = holder(band, entry)
  if who then expect_type(P .. 'in:' .. who, 'list') end
  local attempt = tonumber(f.a0) + (deliveries or 0)
  end_task(band, entry, f, 'cancelled', attempt, 'cancelled', reason, who or '', fmt(now_ms()))
  if who then
    redis.call('RPUSH', P .. 'in:' .. who, 'C\t' .. id .. '\t' .. attempt .. '\tcancelled\t' .. reason)
    return 'OK ' .. who
  end
  return 'OK'
end

local function expire(keys, args)
  bind(keys)
  if #args ~= 1 then invalid('rtq3_expire takes id') end
  local id = id_arg(args[1], 'task id')
  local meta = stream_meta()
  local mk = read_marker(id, meta.bands)
  if not mk then return 'NOT_FOUND' end
  if mk.st then return 'ENDED ' .. mk.st end
  local band, entry = mk.band, mk.entry
  expect_type(band_key(band), 'stream')
  local f = entry_fields(band, entry)
  if not f or f.t ~= id then return 'NOT_FOUND' end
  local now = now_ms()
  local d = tonumber(f.d)
  if not d or d == 0 then return 'NO_DEADLINE' end
  if now < d then return 'NOT_DUE ' .. fmt(d - now) end
  local who, _, deliveries = holder(band, entry)
  if who then expect_type(P .. 'in:' .. who, 'list') end
  local attempt = tonumber(f.a0) + (deliveries or 0)
  if who then
    end_task(band, entry, f, 'expired', attempt, 'timeout_running', 'deadline passed', who, fmt(now))
    redis.call('RPUSH', P .. 'in:' .. who, 'C\t' .. id .. '\t' .. attempt .. '\tdeadline\tdeadline passed')
    return 'OK ' .. who
  end
  end_task(band, entry, f, 'expired', attempt, 'timeout_queued', 'deadline passed while queued', '', fmt(now))
  return 'OK'
end

local function status(keys, args)
  bind(keys)
  if #args ~= 1 then invalid('rtq3_status takes id') end
  local id = id_arg(args[1], 'task id')
  local meta = stream_meta()
  expect_type(P .. 'lv', 'zset')
  local now = now_ms()
  local mk = read_marker(id, meta.bands)
  if mk and mk.st then
    -- A done task has no error kind or message (its payload is the result).
    if mk.st == 'done' then return {'ended', mk.st, mk.a, mk.ms, '', '', mk.w} end
    return {'ended', mk.st, mk.a, mk.ms, mk.k, mk.payload, mk.w}
  end
  local band, entry = mk and mk.band, mk and mk.entry
  if band then check_band_types(tonumber(band) + 1) end
  local f = band and entry_fields(band, entry)
  if not f or f.t ~= id then return {'unknown'} end
  local who, idle, deliveries = holder(band, entry)
  if who then
    local expiry = redis.call('ZSCORE', P .. 'lv', who)
    local left = expiry and tonumber(expiry) - now or -1
    if left < 0 then left = -1 end
    return {'running', who, tonumber(f.a0) + deliveries, idle, left}
  end
  local ahead = 0
  for b = 0, tonumber(band) do
    if redis.call('EXISTS', band_key(b)) == 1 then
      local g = group_info(b)
      local last = g and g['last-delivered-id'] or '0-0'
      local stop = b == tonumber(band) and '(' .. entry or '+'
      if AHEAD_CAP - ahead > 0 then
        ahead = ahead + #redis.call('XRANGE', band_key(b), '(' .. last, stop, 'COUNT', AHEAD_CAP - ahead)
      end
    end
  end
  return {'queued', tonumber(band), ahead, redis.call('ZCOUNT', P .. 'lv', '(' .. now, '+inf'),
    tonumber(f.a0)}
end

redis.register_function{function_name = 'rtq3_version', callback = version, flags = {'no-writes'}}
redis.register_function('rtq3_create', create)
redis.register_function('rtq3_submit', submit)
redis.register_function('rtq3_complete', complete)
redis.register_function('rtq3_beat', beat)
redis.register_function('rtq3_join', join)
redis.register_function('rtq3_takeover', takeover)
redis.register_function('rtq3_cancel', cancel)
redis.register_function('rtq3_expire', expire)
redis.register_function{function_name = 'rtq3_status', callback = status, flags = {'no-writes'}}
