#!/usr/bin/env node
// BullMQ peer of rtq's examples/bench.rs, for scripts/bench-compare.sh.
//
// The same load as rtq's bench: one worker process-part with `concurrency`
// slots and a zero-work processor returning a 1000-char result, and
// `clients` request loops, each adding a job with a 1000-char input and
// waiting for its result (job.waitUntilFinished over one QueueEvents) before
// adding the next. Measures what bench.rs measures: tasks/s, p50/p99 of the
// request/response latency, and Redis commands and CPU per job from
// INFO commandstats / INFO cpu deltas. Prints one line in bench.rs's format.
//
// With --chunks N the processor calls job.updateProgress N times (100 chars
// each) before returning: the nearest BullMQ analog of a streamed task
// (progress events reach the caller through the same events stream).
//
// Usage: node bench.js --redis redis://127.0.0.1:PORT/ [--clients 50]
//        [--slots 10] [--tasks 20000] [--chunks 0] [--warmup 100]
// The URL is required: this program uses no Redis it was not given.
'use strict';

const { Queue, Worker, QueueEvents } = require('bullmq');
const IORedis = require('ioredis');

function parseArgs(argv) {
  const out = { clients: 50, slots: 10, tasks: 20000, chunks: 0, warmup: 100, redis: process.env.RTQ_REDIS_URL };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') {
      console.log('usage: node bench.js --redis URL [--clients N] [--slots N] [--tasks N] [--chunks N] [--warmup N]');
      process.exit(0);
    }
    const m = /^--(redis|clients|slots|tasks|chunks|warmup)$/.exec(a);
    if (!m || i + 1 >= argv.length) {
      console.error(`bench.js: unknown or incomplete argument ${a} (try --help)`);
      process.exit(2);
    }
    const v = argv[++i];
    if (m[1] === 'redis') {
      out.redis = v;
    } else {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0 || (m[1] !== 'chunks' && m[1] !== 'warmup' && n < 1)) {
        console.error(`bench.js: --${m[1]} needs a whole number, got ${v}`);
        process.exit(2);
      }
      out[m[1]] = n;
    }
  }
  if (!out.redis) {
    console.error('bench.js: --redis URL (or RTQ_REDIS_URL) is required: it uses no Redis it was not given');
    process.exit(2);
  }
  return out;
}

async function redisStats(conn) {
  const stats = await conn.info('commandstats');
  let calls = 0;
  for (const m of stats.matchAll(/calls=(\d+)/g)) calls += Number(m[1]);
  const cpu = await conn.info('cpu');
  const f = (k) => Number(new RegExp(`${k}:([0-9.]+)`).exec(cpu)[1]);
  return { calls, cpu: f('used_cpu_sys') + f('used_cpu_user') };
}

function pct(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const url = new URL(args.redis);
  const connection = {
    host: url.hostname,
    port: Number(url.port || 6379),
    password: url.password ? decodeURIComponent(url.password) : undefined,
    username: url.username ? decodeURIComponent(url.username) : undefined,
    maxRetriesPerRequest: null,
  };
  // Fail fast on an unreachable Redis (BullMQ's own connections retry
  // forever).
  const probe = new IORedis({ ...connection, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 3000, lazyConnect: true });
  probe.on('error', () => {});
  try {
    await probe.connect();
    await probe.ping();
  } catch (e) {
    throw new Error(`cannot reach Redis at ${url.host}: ${e.message}`);
  } finally {
    probe.disconnect();
  }
  const name = `bench${process.pid}`;
  const result = 'y'.repeat(1000);
  const chunk = 'x'.repeat(100);
  const chunks = args.chunks;

  const worker = new Worker(
    name,
    async (job) => {
      for (let i = 0; i < chunks; i++) await job.updateProgress(chunk);
      return { text: result };
    },
    { connection, concurrency: args.slots },
  );
  const queue = new Queue(name, { connection });
  const events = new QueueEvents(name, { connection });
  // One 'closing' listener per waiting job: 50 in flight is not a leak.
  events.setMaxListeners(0);
  queue.setMaxListeners(0);
  await Promise.all([worker.waitUntilReady(), queue.waitUntilReady(), events.waitUntilReady()]);
  const input = { prompt: 'p'.repeat(1000), chunks };
  // BullMQ's defaults: finished jobs are kept (as rtq keeps a result for its
  // retention). removeOnComplete would race waitUntilFinished ("Missing key
  // for job") and add a trim to every completion.
  const opts = {};
  const one = async () => {
    const job = await queue.add('t', input, opts);
    const out = await job.waitUntilFinished(events);
    if (!out || out.text.length !== 1000) throw new Error('bad result');
  };
  for (let i = 0; i < args.warmup; i++) await one();

  const conn = new IORedis(connection);
  const before = await redisStats(conn);
  const perClient = Math.max(1, Math.floor(args.tasks / args.clients));
  const lat = [];
  const started = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: args.clients }, async () => {
      for (let i = 0; i < perClient; i++) {
        const t = process.hrtime.bigint();
        await one();
        lat.push(Number(process.hrtime.bigint() - t) / 1e6);
      }
    }),
  );
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  const after = await redisStats(conn);
  lat.sort((a, b) => a - b);
  const n = lat.length;
  console.log(
    `peer=bullmq-${require('bullmq/package.json').version} clients=${args.clients} slots=${args.slots} chunks=${chunks} tasks=${n} ` +
      `tasks/s=${(n / elapsed).toFixed(0)} p50=${pct(lat, 0.5).toFixed(2)}ms p99=${pct(lat, 0.99).toFixed(2)}ms ` +
      `redis_cmds/task=${((after.calls - before.calls) / n).toFixed(1)} redis_cpu_us/task=${(((after.cpu - before.cpu) * 1e6) / n).toFixed(1)}`,
  );
  await worker.close();
  await events.close();
  await queue.close();
  await conn.quit();
}

main().catch((e) => {
  console.error(`bench.js: ${e && e.message ? e.message : e}`);
  process.exit(1);
});
