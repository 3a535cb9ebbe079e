#!lua name=rtqfloor
--[[
rtqfloor: the floor bench's two functions (examples/bench_floor.rs --lua):
the stream floor with the checks a protocol on streams would keep exact by
a small function each, so their price can be measured. Not rtq's protocol.

floor_submit: a task added unless its id was seen or the queue is full.
KEYS[1]  the queue stream
KEYS[2]  the task's marker key (set for an hour)
ARGV[1]  task id                  non-empty
ARGV[2]  spec                     non-empty
ARGV[3]  max depth                integer >= 1
Reply: the entry id | 'DUPLICATE' | 'QUEUE_FULL'

floor_complete: a worker ends n entries; the first result of a task wins
(stored for an hour and sent to the reply stream), a later one is dropped.
KEYS[1]  the queue stream (consumer group 'g')
KEYS[2]  the reply stream
KEYS[3 .. 2+n]  each task's result key
ARGV[1]  n                        integer in [1, 1024]
ARGV[2 .. 1+3n]  n triples: task id, entry id, result
Reply: how many results won

floor_submit_v3 / floor_complete_v3: the same with the checks
docs/PROTOCOL-V3.md designs (--v3): the depth limit as a counter in the
queue's meta hash (not XLEN), the marker keeping the task's entry id (its
place, for a status read), and a complete that ends an entry only if the
consumer group's pending list still names this worker at this attempt
(XPENDING of the entry: current-attempt fencing), the counter lowered.
floor_submit_v3: KEYS[1] stream, KEYS[2] marker, KEYS[3] meta;
  ARGV as floor_submit. Reply as floor_submit.
floor_complete_v3: KEYS[1] stream, KEYS[2] reply stream, KEYS[3] meta,
  KEYS[4 .. 3+n] each task's result key; ARGV[1] n, ARGV[2] worker
  (consumer name), ARGV[3 .. 2+4n] n quadruples: task id, entry id,
  attempt (the delivery count it was read at), result.
  Reply: how many results won (a fenced one writes nothing).
]]

local function submit(keys, args)
  local id, spec, maxd = args[1], args[2], tonumber(args[3])
  if #keys ~= 2 or #args ~= 3 or #id == 0 or #spec == 0 or not maxd or maxd < 1 then
    return redis.error_reply('ERR floor_submit: 2 keys; task id, spec, max depth')
  end
  if redis.call('XLEN', keys[1]) >= maxd then return 'QUEUE_FULL' end
  if not redis.call('SET', keys[2], '1', 'NX', 'PX', '3600000') then return 'DUPLICATE' end
  return redis.call('XADD', keys[1], '*', 't', id, 's', spec)
end

local function complete(keys, args)
  local n = tonumber(args[1])
  if not n or n < 1 or n > 1024 or n % 1 ~= 0 or #args ~= 1 + 3 * n or #keys ~= 2 + n then
    return redis.error_reply('ERR floor_complete: 2 + n keys; n, then n triples')
  end
  local won, entries = 0, {}
  for i = 1, n do
    local o = 2 + 3 * (i - 1)
    if #args[o] == 0 or #args[o + 1] == 0 then
      return redis.error_reply('ERR floor_complete: empty task or entry id')
    end
    entries[i] = args[o + 1]
  end
  for i = 1, n do
    local o = 2 + 3 * (i - 1)
    if redis.call('SET', keys[2 + i], args[o + 2], 'NX', 'PX', '3600000') then
      redis.call('XADD', keys[2], 'MAXLEN', '~', '100000', '*', 't', args[o], 'r', args[o + 2])
      won = won + 1
    end
  end
  redis.call('XACK', keys[1], 'g', unpack(entries))
  redis.call('XDEL', keys[1], unpack(entries))
  return won
end

local function submit_v3(keys, args)
  local id, spec, maxd = args[1], args[2], tonumber(args[3])
  if #keys ~= 3 or #args ~= 3 or #id == 0 or #spec == 0 or not maxd or maxd < 1 then
    return redis.error_reply('ERR floor_submit_v3: 3 keys; task id, spec, max depth')
  end
  if tonumber(redis.call('HGET', keys[3], 'n') or '0') >= maxd then return 'QUEUE_FULL' end
  if redis.call('EXISTS', keys[2]) == 1 then return 'DUPLICATE' end
  local entry = redis.call('XADD', keys[1], '*', 't', id, 's', spec)
  redis.call('SET', keys[2], entry, 'PX', '3600000')
  redis.call('HINCRBY', keys[3], 'n', '1')
  return entry
end

local function complete_v3(keys, args)
  local n = tonumber(args[1])
  if not n or n < 1 or n > 1024 or n % 1 ~= 0 or #args ~= 2 + 4 * n or #keys ~= 3 + n then
    return redis.error_reply('ERR floor_complete_v3: 3 + n keys; n, worker, then n quadruples')
  end
  local worker = args[2]
  for i = 1, n do
    local o = 3 + 4 * (i - 1)
    if #args[o] == 0 or #args[o + 1] == 0 or not tonumber(args[o + 2]) then
      return redis.error_reply('ERR floor_complete_v3: empty task or entry id, or a bad attempt')
    end
  end
  local won, entries = 0, {}
  for i = 1, n do
    local o = 3 + 4 * (i - 1)
    local held = redis.call('XPENDING', keys[1], 'g', args[o + 1], args[o + 1], '1')[1]
    if held and held[2] == worker and held[4] == tonumber(args[o + 2]) then
      entries[#entries + 1] = args[o + 1]
      if redis.call('SET', keys[3 + i], args[o + 3], 'NX', 'PX', '3600000') then
        redis.call('XADD', keys[2], 'MAXLEN', '~', '100000', '*', 't', args[o], 'r', args[o + 3])
        won = won + 1
      end
    end
  end
  if #entries > 0 then
    redis.call('XACK', keys[1], 'g', unpack(entries))
    redis.call('XDEL', keys[1], unpack(entries))
    redis.call('HINCRBY', keys[3], 'n', tostring(-#entries))
  end
  return won
end

redis.register_function('floor_submit', submit)
redis.register_function('floor_complete', complete)
redis.register_function('floor_submit_v3', submit_v3)
redis.register_function('floor_complete_v3', complete_v3)
