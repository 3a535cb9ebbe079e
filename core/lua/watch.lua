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

KEYS[1]  rtq:{<queue>}:meta
rtq2_watch:   ARGV[1] task id, ARGV[2] reply stream rtq:{<queue>}:r:<client>,
              ARGV[3] first chunk index (integer >= 0)
rtq2_read:    ARGV[1] task id, ARGV[2] first chunk index
rtq2_unwatch: ARGV[1] task id, ARGV[2] reply stream

Reply (watch, read):
  {'NOT_FOUND'}
  {'OK', state, attempt, chunk_count, result, error_kind, error_message,
   worker, first_index, chunk...}
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

local function watch(keys, args)
  bind(keys)
  if #args ~= 3 then invalid('watch takes 3 arguments') end
  local id = arg_id(args[1], 'task id')
  local reply = arg_reply(args[2], 'reply stream')
  if reply == '' then invalid('watch needs a reply stream (use rtq2_read to only read)') end
  local from = arg_int(args[3], 'first index', 0, MAX_OUTPUT_CHUNKS)
  local out = snapshot(id, from)
  if not out then return {'NOT_FOUND'} end
  if not is_terminal(out[2]) then
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
  if #args ~= 2 then invalid('read takes 2 arguments') end
  local id = arg_id(args[1], 'task id')
  local from = arg_int(args[2], 'first index', 0, MAX_OUTPUT_CHUNKS)
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
