-- cancel.lua: end a task early, either on request ('cancel') or because its
-- deadline passed ('deadline', called by a waiting client when its timer
-- fires; Redis time decides whether the deadline really passed).
--
-- A queued task is removed from the pending zset; a running task is ended at
-- once for its followers and its worker gets a cancel message in its inbox
-- (it stops the handler and releases the slot with complete.lua).
--
-- KEYS[1]  queue prefix "rtq:{<queue>}:"
-- ARGV[1]  task id
-- ARGV[2]  mode: 'cancel' | 'deadline'
-- ARGV[3]  reason (free text, stored as the task's error message)
--
-- Reply:
--   {'OK', previous_state, worker}
--   {'NOT_FOUND'}
--   {'FINISHED', state}         already ended; nothing changed
--   {'NOT_DUE', remaining_ms}   mode 'deadline' and Redis time is earlier
local id, mode, reason = ARGV[1], ARGV[2], ARGV[3]
local h = load_task(id)
if not h[1] then return {'NOT_FOUND'} end
if is_terminal(h[1]) then return {'FINISHED', h[1]} end
local now = now_ms()
if mode == 'deadline' then
  local dl = tonumber(h[7])
  if dl == 0 or dl > now then return {'NOT_DUE', dl == 0 and -1 or dl - now} end
  expire(id, h, now)
  return {'OK', h[1], h[3] or ''}
end
if h[1] == 'queued' then
  redis.call('ZREM', P .. 'pending', id)
else
  send_cancel(h[3], id, h[2], reason)
end
finish(id, h, 'cancelled', 'cancelled', reason, now)
return {'OK', h[1], h[3] or ''}
