--[[
rtq2_complete: a worker ends its attempt of a task (success, failure, or a
retryable failure), optionally appending the last chunks in the same step,
then, if it asks, takes the next task for the freed slot (returned in the
reply: one round trip per task while work is queued).

Guarantees:
  - fencing: only the current attempt of the worker holding the task can
    end it (a late write from an earlier attempt gets FENCED, and changes
    nothing, not even the worker's slots);
  - ordering: applies only if the task holds exactly seq0 chunks (ORDER);
  - idempotency: retrying after a lost reply replays the first call's
    answer (including the same next task) and writes nothing more (the
    mark is kept on the task hash as `ca`, the next task's id as `nx`; a
    task whose hash vanished frees the slot and takes no next task);
  - capacity: a slot is freed (next task taken, or one free slot added)
    only when this call ends the worker's ownership of the task, once;
  - a retryable failure goes to `delayed` for a backoff (250 ms doubling,
    at most 30 s), then to the back of its priority, and avoids this worker
    while another live worker exists (until 5 s after the backoff).

KEYS[1]  rtq:{<queue>}:meta
ARGV[1]  worker id
ARGV[2]  task id
ARGV[3]  attempt the worker received           integer >= 1
ARGV[4]  seq0: chunks the worker wrote before   integer >= 0
ARGV[5]  outcome                                'done' | 'failed' | 'retry'
ARGV[6]  result JSON (done, <= 16 MiB) or reason (failed/retry, <= 64 KiB)
ARGV[7]  want next                              '1' take the next task, '0' not
ARGV[8..] trailing chunks (at most 512, each at most 1 MiB)

Reply: {status, next_task_message_or_'', chunk_count, state, now_ms, first_chunk_ms}
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

-- The inbox message of task `id` if worker `wid` still runs it (a replay).
local function rebuild_message(id, wid)
  local n = redis.call('HMGET', tkey(id), 'st', 'w', 'att', 'start', 'dl', 'sub', 'spec')
  if n[1] ~= 'running' or n[2] ~= wid then return '' end
  return task_msg(id, num(n[3]), num(n[4]), n[5], n[6], n[7])
end

local function complete(keys, args)
  bind(keys)
  if #args < 7 then invalid('complete takes at least 7 arguments') end
  local wid = arg_id(args[1], 'worker id')
  local id = arg_id(args[2], 'task id')
  local att = istr(arg_int(args[3], 'attempt', 1, 1e15))
  local seq0 = arg_int(args[4], 'seq0', 0, MAX_OUTPUT_CHUNKS)
  local outcome = arg_enum(args[5], 'outcome', {'done', 'failed', 'retry'})
  local payload
  if outcome == 'done' then
    payload = arg_text(args[6], 'result', MAX_RESULT_BYTES)
  else
    payload = arg_text(args[6], 'reason', 16 * MAX_TEXT_BYTES)
  end
  local want_next = arg_flag(args[7], 'want next')
  local chunks, bytes = arg_chunks(args, 8)

  local h = load_task(id)
  local mark = att .. '@' .. wid
  if h then
    -- `ca` = "<status> <attempt>@<worker>" of the call that ended this
    -- attempt: a retry replays that answer.
    local done_status, done_mark = string.match(h.ca, '^(%u+) (.+)$')
    if done_mark == mark then
      local msg = ''
      if h.nx ~= '' then msg = rebuild_message(h.nx, wid) end
      return {done_status, msg, num(h.nc), h.st, now_ms(), num(h.fc)}
    end
  end
  local status = check_write(h, wid, att, seq0, #chunks, bytes)
  if status == 'FENCED' then return {'FENCED', '', 0, h.st, 0, 0} end
  if status == 'ORDER' or status == 'TOO_LARGE' then return {status, '', num(h.nc), h.st, 0, 0} end

  -- Writes. This attempt's ownership ends here (OK, ENDED or NOT_FOUND).
  local now = now_ms()
  local freed = redis.call('SREM', wqkey(wid), id) == 1
  local msg, next_id = '', ''
  if freed and want_next and status == 'NOT_FOUND' then
    -- No hash to keep a replay mark on: free the slot instead of handing
    -- out a task that a lost reply would strand.
    redis.call('ZINCRBY', P .. 'free', '1', wid)
  elseif freed and want_next then
    -- Taken before the outcome is recorded, so a retried task never comes
    -- straight back to this slot.
    local meta = redis.call('HMGET', P .. 'meta', 'paused', 'dd')
    if meta[1] ~= '1' then msg = take_next(wid, now, meta[2]) or '' end
    if msg ~= '' then
      next_id = string.match(msg, '^T\t([^\t]+)\t')
    else
      redis.call('ZINCRBY', P .. 'free', '1', wid)
    end
  end
  if status == 'NOT_FOUND' then return {'NOT_FOUND', msg, 0, '', now, 0} end
  local extra = {'ca', (status or 'OK') .. ' ' .. mark, 'nx', next_id}
  if status == 'ENDED' then
    redis.call('HSET', tkey(id), unpack(extra))
    return {'ENDED', msg, num(h.nc), h.st, now, 0}
  end

  if #chunks > 0 then append_chunks(id, h, chunks, bytes, now) end
  local state = 'done'
  if outcome == 'done' then
    finish(id, h, 'done', '', payload, now, extra, true)
  else
    local fails = num(h.fails) + 1
    for _, v in ipairs({'fails', fails, 'e:' .. att, payload}) do extra[#extra + 1] = v end
    if outcome == 'retry' and fails < num(h.max) then
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
  return {'OK', msg, num(h.nc), state, now, fc}
end

redis.register_function{function_name = 'rtq2_complete', callback = complete, flags = {'allow-oom'}}
