--[[
rtq2_cancel: end a task early, on request ('cancel') or because its deadline
passed ('deadline': called by a waiting client or a worker when its timer
fires; Redis time decides whether the deadline really passed).

A queued task leaves pending (or delayed); a running task ends at once for
its followers and its worker gets a cancel message naming the attempt (it
stops the handler and releases the slot with rtq2_complete). An ended task
is never changed.

KEYS[1]  rtq:{<queue>}:meta
ARGV[1]  task id
ARGV[2]  mode          'cancel' | 'deadline'
ARGV[3]  reason        at most 4 KiB, stored as the task's error message

Reply:
  {'OK', previous_state, worker}
  {'NOT_FOUND'}
  {'FINISHED', state}         already ended; nothing changed
  {'NOT_DUE', remaining_ms}   mode 'deadline' and the deadline is later
                              (-1: the task has no deadline)
]]
local function cancel(keys, args)
  bind(keys)
  if #args ~= 3 then invalid('cancel takes 3 arguments') end
  local id = arg_id(args[1], 'task id')
  local mode = arg_enum(args[2], 'mode', {'cancel', 'deadline'})
  local reason = arg_text(args[3], 'reason', MAX_TEXT_BYTES)

  local h = load_task(id)
  if not h then return {'NOT_FOUND'} end
  if is_terminal(h.st) then return {'FINISHED', h.st} end
  local now = now_ms()
  if mode == 'deadline' then
    local dl = num(h.dl)
    if dl == 0 then return {'NOT_DUE', -1} end
    if dl > now then return {'NOT_DUE', dl - now} end
    expire(id, h, now)
    return {'OK', h.st, h.w}
  end
  if h.st == 'queued' then
    redis.call('ZREM', P .. 'pending', id)
    redis.call('ZREM', P .. 'delayed', id)
  else
    send_cancel(h.w, id, h.att, 'cancelled', reason)
  end
  finish(id, h, 'cancelled', 'cancelled', reason, now)
  return {'OK', h.st, h.w}
end

redis.register_function{function_name = 'rtq2_cancel', callback = cancel, flags = {'allow-oom'}}
