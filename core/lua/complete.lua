-- complete.lua: a worker ends its attempt of a task (success, failure, or a
-- retryable failure), optionally appending the last chunks in the same step,
-- then takes the next pending task for the freed slot or parks an idle token.
--
-- Guarantees: fencing - only the worker holding the current attempt can end
-- it (a late write from an earlier attempt gets FENCED); ordering - the
-- write applies only if the task holds exactly ARGV[4] chunks, so a complete
-- pipelined behind chunk writes can never overtake them (ORDER instead).
--
-- KEYS[1]  queue prefix "rtq:{<queue>}:"
-- ARGV[1]  worker id
-- ARGV[2]  task id ('' = only take the next task, nothing to end)
-- ARGV[3]  attempt number the worker received
-- ARGV[4]  seq0: chunks the worker has written before this call
-- ARGV[5]  outcome: 'done' | 'failed' | 'retry'
-- ARGV[6]  result JSON (done) or failure reason (failed, retry)
-- ARGV[7]  '1' to take the next task for this slot, '0' to release the slot
-- ARGV[8..] trailing chunks to append before ending
--
-- Reply: {status, next_task_message_or_'', chunk_count}
--   status 'OK'        the outcome was recorded
--          'CANCELLED' the task had been cancelled or expired; slot released
--          'FENCED'    the attempt is no longer this worker's; nothing written
--          'NOT_FOUND' the task no longer exists; slot released
--          'ORDER'     chunk count != seq0; nothing written, retry after the
--                      earlier writes land (the slot is not released)
local wid, id, att, seq0 = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local outcome, payload, want_next = ARGV[5], ARGV[6], ARGV[7]

local now = now_ms()
local status = 'OK'
local nc = 0
if id ~= '' then
  local h = load_task(id)
  if not h[1] then
    status = 'NOT_FOUND'
  elseif h[2] ~= att or h[3] ~= wid then
    status = 'FENCED'
  elseif h[1] ~= 'running' then
    status = 'CANCELLED'
  else
    nc = tonumber(h[16])
    if nc ~= seq0 then return {'ORDER', '', nc} end
    if #ARGV > 7 then
      local t = tkey(id)
      local chunks = {}
      local bytes = 0
      for i = 8, #ARGV do
        chunks[#chunks + 1] = ARGV[i]
        bytes = bytes + #ARGV[i]
      end
      redis.call('RPUSH', okey(id), unpack(chunks))
      redis.call('HINCRBY', t, 'nb', bytes)
      if nc == 0 then
        redis.call('HSET', t, 'fc', now)
        stat_hist(stats_key(now), 'f:', now - tonumber(h[8]))
      end
      redis.call('HSET', t, 'nc', nc + #chunks, 'lc', now)
      if h[5] == '1' or h[6] == '1' then
        local ev = {'e', 'c', 'a', att, 's', nc}
        for _, c in ipairs(chunks) do ev[#ev + 1] = 'c'; ev[#ev + 1] = c end
        notify(id, h[5] == '1' and h[4] or '', h[6], tonumber(h[11]), ev)
      end
      nc = nc + #chunks
      h[16] = tostring(nc) -- finish() arms the output list's TTL when nc > 0
    end
    if outcome == 'done' then
      finish(id, h, 'done', '', payload, now)
    elseif outcome == 'retry' and tonumber(h[13]) + 1 < tonumber(h[14]) then
      redis.call('HSET', tkey(id), 'fails', tonumber(h[13]) + 1, 'e:' .. att, payload)
      requeue(id, h, payload, now)
    else
      redis.call('HSET', tkey(id), 'fails', tonumber(h[13]) + 1, 'e:' .. att, payload)
      finish(id, h, 'failed', 'handler', payload, now)
    end
  end
  if status ~= 'FENCED' then redis.call('SREM', P .. 'wq:' .. wid, id) end
end

local msg = ''
if want_next == '1' then
  local live = redis.call('ZSCORE', P .. 'workers', wid)
  if live and tonumber(live) > now then
    if not is_paused() then msg = take_next(wid, now) or '' end
    if msg == '' then redis.call('RPUSH', P .. 'idle', wid) end
  end
end
return {status, msg, nc}
