--[[
rtq2_requeue: an operator puts a task back in the queue, with a fresh
budget of attempts. A running task's worker is told to stop that attempt
and loses ownership at once (its later writes are fenced); an ended task
starts over with its result, errors, output, expiry and deadline cleared
(its original deadline has usually passed). The task goes to the front of
its priority.

KEYS[1]  rtq:{<queue>}:meta
ARGV[1]  task id
ARGV[2]  reason (at most 4 KiB)

A stream queue (protocol v3) is refused: INVALID ... is a stream queue
(revision 16).

Reply: {'OK', previous_state} | {'NOT_FOUND'} | {'QUEUED'} (already queued)
]]
local function requeue_task(keys, args)
  bind(keys)
  if #args ~= 2 then invalid('requeue takes 2 arguments') end
  refuse_if_stream_queue()
  local id = arg_id(args[1], 'task id')
  local reason = arg_text(args[2], 'reason', MAX_TEXT_BYTES)
  local h = load_task(id)
  if not h then return {'NOT_FOUND'} end
  if h.st == 'queued' then return {'QUEUED'} end

  local now = now_ms()
  local t = tkey(id)
  local extra = {'fails', 0}
  -- Ownership ends now, also for an ended task whose worker has not
  -- released it yet (its late writes are fenced).
  if h.w ~= '' then redis.call('SREM', wqkey(h.w), id) end
  if h.st == 'running' then
    send_cancel(h.w, id, h.att, 'requeued', reason)
  else
    redis.call('PERSIST', t)
    redis.call('DEL', okey(id))
    if h.watch == '1' then redis.call('PERSIST', wtkey(id)) end
    for _, v in ipairs({'res', '', 'err', '', 'ek', '', 'fin', 0, 'dl', 0}) do extra[#extra + 1] = v end
    if num(h.dl) > 0 then redis.call('ZREM', P .. 'deadlines', id) end
  end
  to_queue(id, h, reason, h.sc, 0, extra)
  dispatch_if_needed(now, 1)
  return {'OK', h.st}
end

redis.register_function{function_name = 'rtq2_requeue', callback = requeue_task, flags = {'allow-oom'}}
