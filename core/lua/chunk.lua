--[[
rtq2_chunk: a worker appends output chunks of a running attempt and pushes
them to every reply stream that follows the task.

Guarantees: fencing by (worker, attempt): a stale attempt's chunks are
refused, never mixed into a newer attempt's output; ordering by seq0:
pipelined writes that arrive out of order are refused (ORDER), not
misplaced, so a retried write never duplicates or skips a chunk; the reply
tells a running handler that its task ended, so it can stop.

KEYS[1]  rtq:{<queue>}:meta
ARGV[1]  worker id
ARGV[2]  task id
ARGV[3]  attempt the worker received           integer >= 1
ARGV[4]  seq0: chunks the worker wrote before   integer >= 0
ARGV[5..] chunks (binary-safe), in order: at most 512, each at most 1 MiB

Reply: {status, chunk_count, state}
  'OK' (appended), 'ENDED' (cancelled or expired: stop), 'FENCED' (attempt
  superseded: stop), 'NOT_FOUND' (stop; also a foreign key of the wrong
  type where the task's hash or output list belongs, nothing written),
  'ORDER' (count != seq0: resend from chunk_count), 'TOO_LARGE' (past the
  output caps: end the task as failed)
]]
local function chunk(keys, args)
  bind(keys)
  if #args < 4 then invalid('chunk takes at least 4 arguments') end
  local wid = arg_id(args[1], 'worker id')
  local id = arg_id(args[2], 'task id')
  local att = istr(arg_int(args[3], 'attempt', 1, 1e15))
  local seq0 = arg_int(args[4], 'seq0', 0, MAX_OUTPUT_CHUNKS)
  local chunks, bytes = arg_chunks(args, 5)

  local status, nc, st = write_chunk_group(wid, id, att, seq0, chunks, bytes, now_ms)
  return {status, nc, st}
end

redis.register_function{function_name = 'rtq2_chunk', callback = chunk, flags = {'allow-oom'}}
