--[[
rtq2_watch / rtq2_read / rtq2_unwatch: follow a task from any process.

rtq2_watch atomically returns the task's state and the chunks of its
current attempt from a position, and subscribes a reply stream to every
later event, so nothing is missed or repeated between the read and the
subscription. rtq2_read is the same read without subscribing (no writes;
callable with FCALL_RO, for read-only users and gap filling).
rtq2_unwatch ends a subscription (a follower that went away).
At most 1000 chunks are returned per call; read further pages from
first_index + returned count.

Resuming (revision 13): with the optional `held` argument, the position
is a chunk index *of that attempt*, and the same atomic step decides
where the caller goes on: from `first` if the task still runs (or ended
in) that attempt, or, if that attempt was abandoned since (the task ran
again, or waits to), from chunk 0 of the attempt after it (RESTARTED).
The attempt a queued task runs next may be named with position 0 (what
a RESTARTED's `next` resumes from). An attempt the task never reached is
refused with NO_ATTEMPT, and nothing is written (no subscription). Without it (the calls of revision 12 and
older clients) the position is of whatever attempt the task is at.

KEYS[1]  rtq:{<queue>}:meta
rtq2_watch:   ARGV[1] task id, ARGV[2] reply stream rtq:{<queue>}:r:<client>,
              ARGV[3] first chunk index (integer >= 0),
              ARGV[4] optional: held, the attempt ARGV[3] counts chunks of,
                      in [0, MAX_ATTEMPT_NUMBER]; 0 = the attempt the task
                      is at now (a caller that does not know the number)
rtq2_read:    ARGV[1] task id, ARGV[2] first chunk index,
              ARGV[3] optional: held, as rtq2_watch's ARGV[4]
rtq2_unwatch: ARGV[1] task id, ARGV[2] reply stream

Reply (watch, read):
  {'NOT_FOUND'}
  {'OK', state, attempt, chunk_count, result, error_kind, error_message,
   worker, first_index, chunk...}
  with held only:
  {'RESTARTED', abandoned, next, reason, state, attempt, chunk_count,
   result, error_kind, error_message, worker, 0, chunk...}
     attempt `abandoned` (held, or the current one for held 0) was given
     up; `next` is the attempt whose chunks follow from index 0 (attempt,
     or attempt + 1 while the task waits to run again); reason: why it was
     abandoned as stored with the task ('' if not stored)
  {'NO_ATTEMPT', attempt}   the task never ran attempt held (it is at
                            `attempt`; a position above 0 in the attempt
                            it runs next counts too); nothing written
Reply (unwatch): {'OK'}
]]
local function snapshot(id, from)
  local h = redis.call('HMGET', tkey(id), 'st', 'att', 'nc', 'res', 'ek', 'err', 'w')
  if not h[1] then return nil end
  local out = {'OK', h[1], num(h[2]), num(h[3]), h[4] or '', h[5] or '', h[6] or '', h[7] or '', from}
  if from < num(h[3]) then
    for _, c in ipairs(redis.call('LRANGE', okey(id), from, from + READ_PAGE - 1)) do
      out[#out + 1] = c
    end
  end
  return out
end

-- The snapshot for a caller holding chunks of attempt `held` (0: the
-- current one) up to `from` (see the header); reads only.
local function resume_snapshot(id, from, held)
  local h = redis.call('HMGET', tkey(id), 'st', 'att')
  if not h[1] then return nil end
  local att = num(h[2])
  if held == 0 then held = att end
  local queued = h[1] == 'queued'
  -- The attempt the task waits to run next (a RESTARTED's `next`): no
  -- chunk of it can be held yet.
  if held == att + 1 and queued and from == 0 then return snapshot(id, from) end
  if held > att then return {'NO_ATTEMPT', att} end
  -- Attempt 0 is "never handed out": the position counts chunks of the
  -- attempt that runs first, which nothing abandoned.
  if held == att and (att == 0 or not queued) then return snapshot(id, from) end
  local out = snapshot(id, 0)
  local nxt = att
  if queued then nxt = att + 1 end
  local reason = redis.call('HGET', tkey(id), 'e:' .. istr(held)) or ''
  -- {'RESTARTED', held, next, reason} followed by the snapshot after its status.
  local reply = {'RESTARTED', held, nxt, reason}
  for i = 2, #out do reply[#reply + 1] = out[i] end
  return reply
end

local function watch(keys, args)
  bind(keys)
  if #args ~= 3 and #args ~= 4 then invalid('watch takes 3 or 4 arguments') end
  local id = arg_id(args[1], 'task id')
  local reply = arg_reply(args[2], 'reply stream')
  if reply == '' then invalid('watch needs a reply stream (use rtq2_read to only read)') end
  local from = arg_int(args[3], 'first index', 0, MAX_OUTPUT_CHUNKS)
  local out
  if #args == 4 then
    out = resume_snapshot(id, from, arg_int(args[4], 'held attempt', 0, MAX_ATTEMPT_NUMBER))
  else
    out = snapshot(id, from)
  end
  if not out then return {'NOT_FOUND'} end
  if out[1] == 'NO_ATTEMPT' then return out end
  -- The state follows the status (and RESTARTED's three items).
  local st = out[2]
  if out[1] == 'RESTARTED' then st = out[5] end
  if not is_terminal(st) then
    local t = tkey(id)
    redis.call('SADD', wtkey(id), reply)
    redis.call('HSET', t, 'watch', '1')
    local ttl = redis.call('PTTL', t)
    if ttl > 0 then redis.call('PEXPIRE', wtkey(id), ttl) end
  end
  return out
end

local function read(keys, args)
  bind(keys)
  if #args ~= 2 and #args ~= 3 then invalid('read takes 2 or 3 arguments') end
  local id = arg_id(args[1], 'task id')
  local from = arg_int(args[2], 'first index', 0, MAX_OUTPUT_CHUNKS)
  if #args == 3 then
    return resume_snapshot(id, from, arg_int(args[3], 'held attempt', 0, MAX_ATTEMPT_NUMBER))
      or {'NOT_FOUND'}
  end
  return snapshot(id, from) or {'NOT_FOUND'}
end

local function unwatch(keys, args)
  bind(keys)
  if #args ~= 2 then invalid('unwatch takes 2 arguments') end
  local id = arg_id(args[1], 'task id')
  local reply = arg_reply(args[2], 'reply stream')
  redis.call('SREM', wtkey(id), reply)
  return {'OK'}
end

redis.register_function{function_name = 'rtq2_watch', callback = watch, flags = {'allow-oom'}}
redis.register_function{function_name = 'rtq2_read', callback = read, flags = {'no-writes'}}
redis.register_function{function_name = 'rtq2_unwatch', callback = unwatch, flags = {'allow-oom'}}
