--[[
write.lua: rtq3_write, a worker's output chunks for its running attempts,
several attempts per call (part of the rtq3 library: stream.lua comes
first and holds the shared helpers).

rtq3_write: ARGV worker, count (1-1024 groups), then per group:
  band, entry, id, deliveries (the fence), a0, seq0 (chunks this attempt
  wrote before), n (1-512), then n chunks (each at most 1 MiB).
  Appends the chunks to o:<id>:<attempt> and sends them to the task's
  reply stream as one event (e=c, a attempt, s seq0, n count, c0..).
  Reply: one {status, chunks stored} per group:
    'OK' (appended), 'ORDER' (seq0 is not the count stored: resend from
    it; a retried call after a lost reply lands here and writes nothing),
    'LOST' (not this attempt's any more: stop it), 'TOO_LARGE' (past
    100,000 chunks: end the task as failed). (Stage 1 caps chunks, not
    an attempt's total bytes, as v2's 64 MiB does.)
]]

local MAX_CHUNK_BYTES = 1048576
local MAX_CHUNKS_PER_GROUP = 512
local CHUNK_FIELD = {}
for i = 1, MAX_CHUNKS_PER_GROUP do CHUNK_FIELD[i] = 'c' .. (i - 1) end

local function write(keys, args)
  bind(keys)
  local worker = id_arg(args[1], 'worker id')
  local count = int(args[2], 'count', 1, MAX_BATCH)
  local meta = stream_meta()
  -- Validate every group (and find where each starts).
  local groups, o = {}, 3
  for g = 1, count do
    if #args < o + 6 then invalid('rtq3_write: group ' .. g .. ' is incomplete') end
    local band = args[o]
    int(band, 'band', 0, meta.bands - 1)
    entry_arg(args[o + 1], 'entry')
    id_arg(args[o + 2], 'task id')
    local deliveries = int(args[o + 3], 'deliveries', 1, NO_LIMIT)
    local a0 = int(args[o + 4], 'a0', 0, NO_LIMIT)
    local seq0 = int(args[o + 5], 'seq0', 0, MAX_OUTPUT_CHUNKS)
    local n = int(args[o + 6], 'chunk count', 1, MAX_CHUNKS_PER_GROUP)
    if #args < o + 6 + n then invalid('rtq3_write: group ' .. g .. ' has fewer than ' .. n .. ' chunks') end
    for i = o + 7, o + 6 + n do
      if #args[i] > MAX_CHUNK_BYTES then invalid('a chunk is over ' .. MAX_CHUNK_BYTES .. ' bytes') end
    end
    groups[g] = {band = band, entry = args[o + 1], id = args[o + 2], deliveries = deliveries,
      attempt = a0 + deliveries, seq0 = seq0, first = o + 7, n = n}
    o = o + 7 + n
  end
  if o ~= #args + 1 then invalid('rtq3_write: arguments past the last group') end
  -- Compute: the worker's entries, each group's place and stored count.
  local held = {}
  for _, g in ipairs(groups) do
    if not held[g.band] then held[g.band] = held_by(g.band, worker) end
  end
  local out, stored = {}, {}
  for i, g in ipairs(groups) do
    local mk = read_marker(g.id, meta.bands)
    g.key = P .. 'o:' .. g.id .. ':' .. fmt(g.attempt)
    if not is_current(held, g.band, g.entry, g.deliveries, mk) then
      out[i] = {'LOST', 0}
    else
      g.reply = mk.reply
      -- Earlier groups of this call for the same attempt count too.
      local have = stored[g.key]
      if not have then
        local t = redis.call('TYPE', g.key)['ok']
        if t ~= 'list' and t ~= 'none' then
          invalid('key ' .. g.key .. ' holds a ' .. t .. ', not a list')
        end
        have = {n = redis.call('LLEN', g.key)}
        stored[g.key] = have
      end
      if g.seq0 ~= have.n then
        out[i] = {'ORDER', have.n}
      elseif have.n + g.n > MAX_OUTPUT_CHUNKS then
        out[i] = {'TOO_LARGE', have.n}
      else
        have.n = have.n + g.n
        out[i] = {'OK', have.n}
        g.write = true
      end
    end
  end
  -- Write.
  for _, g in ipairs(groups) do
    if g.write then
      redis.call('RPUSH', g.key, unpack(args, g.first, g.first + g.n - 1))
      if g.reply ~= '' then
        local ev = {'t', g.id, 'e', 'c', 'a', fmt(g.attempt), 's', fmt(g.seq0), 'n', fmt(g.n)}
        for i = 1, g.n do
          ev[#ev + 1] = CHUNK_FIELD[i]
          ev[#ev + 1] = args[g.first + i - 1]
        end
        notify(g.reply, ev)
      end
    end
  end
  return out
end

redis.register_function('rtq3_write', write)
