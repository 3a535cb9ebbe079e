-- prelude.lua: helpers shared by every rtq script (prepended at build time).
--
-- Every script receives exactly one key, KEYS[1] = the queue prefix
-- "rtq:{<queue>}:". All keys a script touches are built from it, so they share
-- the hash tag {<queue>} and live in one cluster slot. Keys that can only be
-- known inside the script (an idle worker's inbox, a watcher's reply stream)
-- are the reason the prefix is passed instead of a fixed key list.
--
-- Task hash fields (see PROTOCOL.md): v spec st pri sc att fails max w sub dl
-- start fc fin ret reply strm watch res err ek nc nb.

local P = KEYS[1]
local PROTOCOL_VERSION = '1'
local REPLY_MAXLEN = 100000
local RECENT_CAP = 1000
local STATS_BUCKET_MS = 10000
local STATS_TTL_MS = 3600000
local WORKER_INFO_TTL_MS = 600000
local SCORE_SEQ_SPAN = 2199023255552 -- 2^41: sequence numbers per priority band
local PRIORITY_MAX = 1000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function tkey(id) return P .. 't:' .. id end
local function okey(id) return P .. 'o:' .. id end
local function wtkey(id) return P .. 'wt:' .. id end

-- Pending score: lower pops first. Higher priority -> smaller band; FIFO by seq.
local function score_of(pri, seq)
  return string.format('%.0f', (PRIORITY_MAX - pri) * SCORE_SEQ_SPAN + seq)
end

-- Histogram bucket index: quarter-octaves of (1 + ms).
local function hist_index(ms)
  if ms < 0 then ms = 0 end
  return math.floor(math.log(1 + ms) / math.log(2) * 4)
end

local function stats_key(now)
  return P .. 's:' .. math.floor(now / STATS_BUCKET_MS)
end

-- Increments a counter in the current stats bucket; the first write of a
-- counter in a bucket (re)arms the bucket's TTL.
local function stat_count(now, field)
  local b = stats_key(now)
  if redis.call('HINCRBY', b, field, 1) == 1 then
    redis.call('PEXPIRE', b, STATS_TTL_MS)
  end
  return b
end

local function stat_hist(bucket_key, prefix, ms)
  if redis.call('HINCRBY', bucket_key, prefix .. hist_index(ms), 1) == 1 then
    redis.call('PEXPIRE', bucket_key, STATS_TTL_MS)
  end
end

-- Pops idle tokens until one belongs to a live worker (lease not expired).
local function pop_live_idle(now)
  for _ = 1, 64 do
    local wid = redis.call('LPOP', P .. 'idle')
    if not wid then return nil end
    local exp = redis.call('ZSCORE', P .. 'workers', wid)
    if exp and tonumber(exp) > now then return wid end
  end
  return nil
end

-- Inbox message for a task hand-out (tab separated, spec last).
local function task_msg(id, att, now, dl, spec)
  return 'T\t' .. id .. '\t' .. att .. '\t' .. now .. '\t' .. dl .. '\t' .. spec
end

-- Appends an event to every reply stream that follows the task: the
-- submitter's (field reply) and any watchers (set wt:<id>).
-- `fields` is a flat list of field/value pairs.
local function notify(id, reply, watch, ret, fields)
  local targets = {}
  if reply and reply ~= '' then targets[1] = reply end
  if watch == '1' then
    for _, r in ipairs(redis.call('SMEMBERS', wtkey(id))) do
      if r ~= reply then targets[#targets + 1] = r end
    end
  end
  for _, r in ipairs(targets) do
    redis.call('XADD', r, 'MAXLEN', '~', REPLY_MAXLEN, '*', 't', id, unpack(fields))
    redis.call('PEXPIRE', r, ret)
  end
end

-- Records the hand-out of task `id` to worker `wid` and returns its inbox
-- message. `att` is the task's hand-out count so far. The caller either
-- pushes the message to the worker's inbox or returns it.
local function assign(id, wid, now, dl, spec, sub, att)
  local t = tkey(id)
  att = tonumber(att) + 1
  redis.call('HSET', t, 'st', 'running', 'w', wid, 'att', att, 'start', now, 'fc', 0, 'lc', 0, 'nc', 0, 'nb', 0)
  redis.call('SADD', P .. 'wq:' .. wid, id)
  stat_hist(stats_key(now), 'w:', now - tonumber(sub))
  return task_msg(id, att, now, dl, spec)
end

-- Moves a task to a terminal state, stores the outcome, notifies followers
-- and arms the retention TTL of every key of the task.
-- h: {st, att, w, reply, strm, watch, dl, sub, start, fc, ret}
local function finish(id, h, state, kind, payload, now)
  local t = tkey(id)
  local ret = tonumber(h[11])
  if state == 'done' then
    redis.call('HSET', t, 'st', state, 'res', payload, 'fin', now)
  else
    redis.call('HSET', t, 'st', state, 'err', payload, 'ek', kind, 'fin', now)
  end
  redis.call('PEXPIRE', t, ret)
  if h[16] ~= '0' then redis.call('PEXPIRE', okey(id), ret) end
  if h[6] == '1' then redis.call('PEXPIRE', wtkey(id), ret) end
  if tonumber(h[7]) > 0 then redis.call('ZREM', P .. 'deadlines', id) end
  redis.call('ZADD', P .. 'recent', now, id)
  redis.call('ZREMRANGEBYRANK', P .. 'recent', 0, -(RECENT_CAP + 1))
  redis.call('PEXPIRE', P .. 'recent', ret)
  local b = stat_count(now, state)
  stat_hist(b, 't:', now - tonumber(h[8]))
  if state == 'done' then
    notify(id, h[4], h[6], ret, {'e', 'f', 'st', state, 'a', h[2], 'r', payload})
  else
    notify(id, h[4], h[6], ret, {'e', 'f', 'st', state, 'a', h[2], 'k', kind, 'm', payload, 'w', h[3] or ''})
  end
end

local FINISH_FIELDS = {'st', 'att', 'w', 'reply', 'strm', 'watch', 'dl', 'sub', 'start', 'fc', 'ret', 'sc', 'fails', 'max', 'spec', 'nc'}
local function load_task(id)
  return redis.call('HMGET', tkey(id), unpack(FINISH_FIELDS))
end

local function is_terminal(st)
  return st == 'done' or st == 'failed' or st == 'cancelled' or st == 'expired'
end

-- Puts a running task back into the pending zset at its original score and
-- tells followers that the attempt they were reading is void.
local function requeue(id, h, reason, now)
  local t = tkey(id)
  redis.call('HSET', t, 'st', 'queued', 'w', '', 'nc', 0, 'nb', 0, 'fc', 0, 'lc', 0)
  redis.call('DEL', okey(id))
  redis.call('ZADD', P .. 'pending', h[12], id)
  notify(id, h[4], h[6], tonumber(h[11]), {'e', 'q', 'a', h[2], 'm', reason})
end

-- Tells a worker to stop a task (it may already have finished it).
local function send_cancel(wid, id, att, reason)
  if wid and wid ~= '' then
    redis.call('RPUSH', P .. 'in:' .. wid, 'C\t' .. id .. '\t' .. att .. '\t' .. reason)
  end
end

-- Ends a task because its deadline passed, naming the state it was in.
local function expire(id, h, now)
  if h[1] == 'queued' then
    redis.call('ZREM', P .. 'pending', id)
    finish(id, h, 'expired', 'timeout_queued', 'deadline passed while queued', now)
  elseif h[1] == 'running' then
    finish(id, h, 'expired', 'timeout_running', 'deadline passed while running on ' .. h[3], now)
    send_cancel(h[3], id, h[2], 'deadline')
  else
    redis.call('ZREM', P .. 'deadlines', id)
  end
end

-- Pops pending tasks for worker `wid` until one can run; expired ones are
-- ended on the way (a task past its deadline is never handed out).
-- Returns the inbox message or nil.
local HANDOUT_FIELDS = {'st', 'dl', 'spec', 'sub', 'att'}
local function take_next(wid, now)
  for _ = 1, 100 do
    local popped = redis.call('ZPOPMIN', P .. 'pending')
    if #popped == 0 then return nil end
    local id = popped[1]
    local h = redis.call('HMGET', tkey(id), unpack(HANDOUT_FIELDS))
    if h[1] == 'queued' then
      local dl = tonumber(h[2])
      if dl > 0 and dl <= now then
        expire(id, load_task(id), now)
      else
        return assign(id, wid, now, h[2], h[3], h[4], h[5])
      end
    end
  end
  return nil
end

-- Declares worker `wid` dead: its tasks are requeued (or fail as worker_lost
-- once their attempts are used up), its inbox and idle tokens are dropped.
local function reap_worker(wid, now)
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', P .. 'wq:' .. wid)) do
    local h = load_task(id)
    if h[1] == 'running' and h[3] == wid then
      local fails = tonumber(h[13]) + 1
      redis.call('HSET', tkey(id), 'fails', fails, 'e:' .. h[2], 'worker ' .. wid .. ' lost')
      if fails >= tonumber(h[14]) then
        finish(id, h, 'failed', 'worker_lost', 'worker ' .. wid .. ' stopped heartbeating; attempts used up', now)
      else
        requeue(id, h, 'worker ' .. wid .. ' lost', now)
      end
      n = n + 1
    end
  end
  redis.call('DEL', P .. 'wq:' .. wid, P .. 'in:' .. wid)
  redis.call('LREM', P .. 'idle', 0, wid)
  redis.call('ZREM', P .. 'workers', wid)
  redis.call('HSET', P .. 'w:' .. wid, 'state', 'dead', 'dead_at', now)
  redis.call('PEXPIRE', P .. 'w:' .. wid, WORKER_INFO_TTL_MS)
  if n > 0 then
    local b = stats_key(now)
    redis.call('HINCRBY', b, 'lost', n)
    redis.call('PEXPIRE', b, STATS_TTL_MS)
  end
  return n
end

-- Hands pending tasks to idle workers (after resume, requeue, or a worker
-- freeing a slot while the queue was paused). Bounded per call.
local function dispatch_pending(now, max)
  local n = 0
  while n < max do
    if redis.call('ZCARD', P .. 'pending') == 0 then break end
    local wid = pop_live_idle(now)
    if not wid then break end
    local msg = take_next(wid, now)
    if not msg then
      redis.call('LPUSH', P .. 'idle', wid)
      break
    end
    redis.call('RPUSH', P .. 'in:' .. wid, msg)
    n = n + 1
  end
  return n
end

local function is_paused()
  return redis.call('HGET', P .. 'meta', 'paused') == '1'
end
