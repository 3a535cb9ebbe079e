//! The floor of a request on Redis without Functions (issue 11): what
//! Redis charges per request/response when the hot path is plain stream
//! commands, measured the way `bench` measures rtq, so the two compare in
//! one run on one Redis.
//!
//! This is **not** a queue anyone should run: it has none of what rtq's
//! functions give in one atomic step (priorities, fencing of a late
//! complete, slot accounting, deadlines and cancellation checked at
//! hand-out, replay of a lost reply, statistics, retention). It answers one
//! question: how far is rtq from the cheapest request path Redis offers,
//! and so how much a protocol that kept its guarantees on plain commands
//! could gain.
//!
//! The path: a client `XADD`s the task (id and 1 KB input) to the queue
//! stream; one worker loop reads up to `<slots>` new entries with
//! `XREADGROUP ... COUNT <slots> BLOCK`, and ends them in one
//! `MULTI`/`EXEC`: an `XADD` of each result to the client's reply stream,
//! one `XACK` and one `XDEL` for the batch. One reader per client process
//! `XREAD`s the reply stream and wakes the waiting request, as rtq's client
//! does.
//!
//! `--store-results` keeps each result under its own key for an hour, and
//! `--lua` sends submits and completes through two small functions
//! (`examples/lua/floor.lua`) that refuse duplicates and full queues and
//! keep the first result of a task: what a protocol on streams would add
//! for those guarantees (BENCHMARKS.md section 8.7). `--v3` sends them
//! through the two functions with the checks `docs/PROTOCOL-V3.md`
//! designs (a depth counter, the entry id kept for status, a complete
//! fenced by the consumer group's pending list), to price that design.
//! `--rtq3` runs the real protocol v3 library (`core/lua/v3/stream.lua`,
//! `rtq_core::functions::v3`, stage 1): submits coalesced into one
//! `rtq3_submit` call while one is in flight (as rtq's client coalesces
//! v2 submits), the worker reading with `XREADGROUP ... COUNT <slots>`
//! and ending each batch with one `rtq3_complete`.
//!
//! Run: `cargo run --release -p rtq-examples --example bench_floor -- --redis URL <clients> <slots> <tasks>`
//! (use a private server: it reads INFO deltas). Prints one line in
//! `bench`'s format (`peer=floor ...`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Value};
use rtq_examples::bench_util::{info_conn, percentile, process_cpu_s, RedisSnapshot};
use rtq_examples::RedisArgs;
use tokio::sync::oneshot;

/// The cheapest request path on plain Redis stream commands (no
/// guarantees): throughput, latency, Redis commands and CPU per request.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    /// Concurrent clients (requests in flight).
    #[arg(default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    clients: u64,
    /// Entries the worker reads per `XREADGROUP` (its slots).
    #[arg(default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1024))]
    slots: u64,
    /// Requests in total.
    #[arg(default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    tasks: u64,
    /// Input and result size in characters.
    #[arg(long, env = "RTQ_BENCH_PAYLOAD", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    payload: u64,
    /// Also print calls and usec per request per Redis command.
    #[arg(long, env = "RTQ_BENCH_BREAKDOWN")]
    breakdown: bool,
    /// The worker also stores each result under its own key for an hour
    /// (`SET ... NX PX` in the same MULTI/EXEC): what "fetch later" and a
    /// first-result-wins answer to a duplicate attempt would add to a
    /// protocol on plain stream commands (BENCHMARKS.md section 8.7).
    #[arg(long, env = "RTQ_BENCH_STORE_RESULTS")]
    store_results: bool,
    /// Submit and complete through two small functions
    /// (`examples/lua/floor.lua`): a duplicate id and a full queue refused
    /// at submit, the first result of a task kept and sent, a later one
    /// dropped. Implies `--store-results` (section 8.7).
    #[arg(long, env = "RTQ_BENCH_LUA")]
    lua: bool,
    /// Submit and complete through `floor_submit_v3` and
    /// `floor_complete_v3`: `--lua` with the checks of
    /// `docs/PROTOCOL-V3.md` (depth counter, entry id kept, completes
    /// fenced by the pending list's worker and delivery count).
    #[arg(long, env = "RTQ_BENCH_V3", conflicts_with = "lua")]
    v3: bool,
    /// Submit and complete through the real protocol v3 library (`rtq3`,
    /// `core/lua/v3/stream.lua`): coalesced `rtq3_submit`, `XREADGROUP`,
    /// `rtq3_complete` per read batch.
    #[arg(long, env = "RTQ_BENCH_RTQ3", conflicts_with_all = ["lua", "v3"])]
    rtq3: bool,
    /// With `--rtq3`: chunks of 100 characters each task streams before
    /// its result (`rtq3_write`: one call for every task of the worker's
    /// read batch, each task's chunks in one group of at most 512, as rtq's
    /// worker coalesces a fast handler's chunk writes: `bench`'s streaming
    /// path sends one RPUSH of chunks per task).
    #[arg(long, env = "RTQ_BENCH_CHUNKS", default_value_t = 0, requires = "rtq3",
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    chunks: u64,
}

/// The functions `--lua` loads.
const FLOOR_LIBRARY: &str = include_str!("lua/floor.lua");

/// How the bench's requests travel.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// Plain stream commands.
    Plain,
    /// Plain, and each result kept under its own key.
    StoreResults,
    /// Through `floor_submit` and `floor_complete`.
    Lua,
    /// Through `floor_submit_v3` and `floor_complete_v3`.
    V3,
    /// Through the real `rtq3` library.
    Rtq3,
}

impl Path {
    fn of(args: &Args) -> Self {
        match (args.lua, args.store_results) {
            _ if args.rtq3 => Self::Rtq3,
            _ if args.v3 => Self::V3,
            (true, _) => Self::Lua,
            (false, true) => Self::StoreResults,
            (false, false) => Self::Plain,
        }
    }

    /// The `peer=` name it prints.
    fn peer(self) -> &'static str {
        match self {
            Self::Plain => "floor",
            Self::StoreResults => "floor+results",
            Self::Lua => "floor+lua",
            Self::V3 => "floor+v3",
            Self::Rtq3 => "rtq3",
        }
    }

    /// Whether it goes through the functions of `examples/lua/floor.lua`.
    fn functions(self) -> bool {
        matches!(self, Self::Lua | Self::V3)
    }
}

/// The keys of one run (a hash tag, so they would share a Cluster slot).
struct Keys {
    queue: String,
    reply: String,
    /// The queue's meta hash (`--v3`: its depth counter).
    meta: String,
}

impl Keys {
    /// Where a task's result is kept (`--store-results`, `--lua`).
    fn result(&self, task: &str) -> String {
        format!("{}:res:{task}", self.queue)
    }

    /// A task's duplicate marker (`--lua`).
    fn marker(&self, task: &str) -> String {
        format!("{}:mark:{task}", self.queue)
    }
}

/// Requests waiting for their result, by id.
type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;

/// A connection without a response timeout (a blocked read waits a
/// second).
async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("connecting to Redis")
}

/// The worker loop: reads up to `slots` new entries, ends them all in one
/// MULTI/EXEC, until `stop`.
async fn work(
    mut conn: MultiplexedConnection,
    keys: Arc<Keys>,
    slots: usize,
    result: Arc<String>,
    path: Path,
    chunks: u64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    if path == Path::Rtq3 {
        return work_rtq3(conn, slots, result, chunks, stop).await;
    }
    let opts = StreamReadOptions::default()
        .group("g", "w1")
        .count(slots)
        .block(1000);
    while !stop.load(Ordering::Relaxed) {
        let reply: StreamReadReply = conn
            .xread_options(&[&keys.queue], &[">"], &opts)
            .await
            .context("XREADGROUP")?;
        let entries: Vec<_> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
        if entries.is_empty() {
            continue;
        }
        if path == Path::V3 {
            let mut call = redis::cmd("FCALL");
            call.arg("floor_complete_v3")
                .arg(3 + entries.len())
                .arg(&keys.queue)
                .arg(&keys.reply)
                .arg(&keys.meta);
            let mut rest = vec![entries.len().to_string(), "w1".to_string()];
            for e in &entries {
                let task: String = e.get("t").context("an entry without its task id")?;
                call.arg(keys.result(&task));
                // A fresh XREADGROUP read is the entry's first delivery.
                rest.extend([task, e.id.clone(), "1".to_string(), result.to_string()]);
            }
            let won: u64 = call
                .arg(rest)
                .query_async(&mut conn)
                .await
                .context("FCALL floor_complete_v3")?;
            anyhow::ensure!(
                won == entries.len() as u64,
                "floor_complete_v3 fenced {} of its own entries",
                entries.len() as u64 - won
            );
            continue;
        }
        if path == Path::Lua {
            let mut call = redis::cmd("FCALL");
            call.arg("floor_complete")
                .arg(2 + entries.len())
                .arg(&keys.queue)
                .arg(&keys.reply);
            let mut rest = vec![entries.len().to_string()];
            for e in &entries {
                let task: String = e.get("t").context("an entry without its task id")?;
                call.arg(keys.result(&task));
                rest.extend([task, e.id.clone(), result.to_string()]);
            }
            let _won: u64 = call
                .arg(rest)
                .query_async(&mut conn)
                .await
                .context("FCALL floor_complete")?;
            continue;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut ids = Vec::with_capacity(entries.len());
        for e in &entries {
            let task: String = e.get("t").context("an entry without its task id")?;
            pipe.cmd("XADD")
                .arg(&keys.reply)
                .arg("MAXLEN")
                .arg("~")
                .arg(100_000)
                .arg("*")
                .arg("t")
                .arg(&task)
                .arg("r")
                .arg(result.as_str())
                .ignore();
            if path == Path::StoreResults {
                pipe.cmd("SET")
                    .arg(keys.result(&task))
                    .arg(result.as_str())
                    .arg("NX")
                    .arg("PX")
                    .arg(3_600_000)
                    .ignore();
            }
            ids.push(e.id.clone());
        }
        pipe.cmd("XACK")
            .arg(&keys.queue)
            .arg("g")
            .arg(&ids)
            .ignore();
        pipe.cmd("XDEL").arg(&keys.queue).arg(&ids).ignore();
        let () = pipe.query_async(&mut conn).await.context("MULTI/EXEC")?;
    }
    Ok(())
}

/// The `--rtq3` queue (its keys are rtq's: `rtq:{floor<pid>}:...`).
fn rtq3_keys() -> rtq_core::keys::QueueKeys {
    rtq_core::keys::QueueKeys::new(&format!("floor{}", std::process::id()))
        .expect("a valid queue name")
}

/// The `--rtq3` worker loop: reads up to `slots` new entries, ends them
/// all in one `rtq3_complete`, until `stop`.
async fn work_rtq3(
    mut conn: MultiplexedConnection,
    slots: usize,
    result: Arc<String>,
    chunks: u64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    use rtq_core::functions::v3::{self, ChunkWrite, Completed, EndState, Ending, Written};
    let keys = rtq3_keys();
    let chunk = vec![b'z'; 100];
    while !stop.load(Ordering::Relaxed) {
        let got = v3::read_new(&mut conn, &keys, "w1", 0, slots, Some(1000)).await?;
        if got.is_empty() {
            continue;
        }
        for seq0 in (0..chunks).step_by(512) {
            let n = (chunks - seq0).min(512) as usize;
            let writes: Vec<ChunkWrite> = got
                .iter()
                .map(|d| ChunkWrite {
                    held: d.held.clone(),
                    id: d.id.clone(),
                    seq0,
                    chunks: vec![chunk.clone(); n],
                })
                .collect();
            let out = v3::write(&mut conn, &keys, "w1", &writes).await?;
            anyhow::ensure!(
                out.iter().all(|w| matches!(w, Written::Ok(_))),
                "rtq3_write refused its own chunks: {out:?}"
            );
        }
        let endings: Vec<Ending> = got
            .into_iter()
            .map(|d| Ending {
                held: d.held,
                id: d.id,
                state: EndState::Done(result.to_string()),
                output: None,
            })
            .collect();
        let out = v3::complete(&mut conn, &keys, "w1", &endings).await?;
        anyhow::ensure!(
            out.iter().all(|c| *c == Completed::Ok),
            "rtq3_complete fenced its own entries: {out:?}"
        );
    }
    Ok(())
}

/// A submit waiting for the `--rtq3` submitter, and where its answer goes.
type PendingSubmit = (
    rtq_core::functions::v3::NewTask,
    oneshot::Sender<anyhow::Result<()>>,
);

/// The `--rtq3` submitter: every submit that arrived while the last call
/// was in flight goes in the next call (at most 1024).
async fn submit_rtq3(
    mut conn: MultiplexedConnection,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<PendingSubmit>,
) {
    use rtq_core::functions::v3::{self, Admission};
    let keys = rtq3_keys();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (tasks, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        match v3::submit(&mut conn, &keys, &tasks).await {
            Ok(out) => {
                for (a, tx) in out.into_iter().zip(answers) {
                    let _ = tx.send(match a {
                        Admission::Added { .. } => Ok(()),
                        other => Err(anyhow::anyhow!("rtq3_submit refused: {other:?}")),
                    });
                }
            }
            Err(e) => {
                for tx in answers {
                    let _ = tx.send(Err(anyhow::anyhow!("rtq3_submit: {e}")));
                }
            }
        }
    }
}

/// The reply reader: wakes each request whose result arrived, until `stop`.
async fn read_replies(
    mut conn: MultiplexedConnection,
    keys: Arc<Keys>,
    waiting: Waiting,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    // The stream is this run's own: read it from its start, so no reply
    // added between two reads is missed.
    let mut last = "0-0".to_string();
    let opts = StreamReadOptions::default().count(1000).block(1000);
    while !stop.load(Ordering::Relaxed) {
        let reply: StreamReadReply = conn
            .xread_options(&[&keys.reply], &[&last], &opts)
            .await
            .context("XREAD")?;
        for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
            // rtq3's chunk and requeue events carry `e`; its result is `e=f`.
            let ended = entry.get::<String>("e").is_none_or(|e| e == "f");
            if let Some(task) = entry.get::<u64>("t").filter(|_| ended) {
                if let Some(tx) = waiting.lock().unwrap().remove(&task) {
                    let _ = tx.send(());
                }
            }
            last = entry.id;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = args.redis.url::<Args>();
    let tag = format!("floor{}", std::process::id());
    let keys = Arc::new(Keys {
        queue: format!("{{{tag}}}:q"),
        reply: format!("{{{tag}}}:r"),
        meta: format!("{{{tag}}}:meta"),
    });
    let path = Path::of(&args);
    let mut admin = connect(&url).await?;
    let keys = if path == Path::Rtq3 {
        let q = rtq3_keys();
        rtq_core::functions::v3::load(&mut admin).await?;
        rtq_core::functions::v3::create(&mut admin, &q, 1, 0).await?;
        // The reply stream exists before the first result (NOMKSTREAM).
        let reply = q.reply("c1");
        let _: String = redis::cmd("XADD")
            .arg(&reply)
            .arg("*")
            .arg("hello")
            .arg("1")
            .query_async(&mut admin)
            .await?;
        Arc::new(Keys {
            queue: rtq_core::functions::v3::band_key(&q, 0),
            reply,
            meta: q.meta(),
        })
    } else {
        keys
    };
    if path.functions() {
        let _: String = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(FLOOR_LIBRARY)
            .query_async(&mut admin)
            .await
            .context("FUNCTION LOAD of examples/lua/floor.lua")?;
    }
    let _: Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&keys.queue)
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut admin)
        .await
        .or_else(|e| {
            if path == Path::Rtq3 {
                Ok(Value::Nil)
            } else {
                Err(e)
            }
        })
        .context("XGROUP CREATE")?;
    let spec = Arc::new(format!(
        r#"{{"v":2,"input":{{"text":"{}"}}}}"#,
        "x".repeat(args.payload as usize)
    ));
    let result = Arc::new(format!(
        r#"{{"text":"{}"}}"#,
        "y".repeat(args.payload as usize)
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let waiting: Waiting = Arc::default();
    let worker = tokio::spawn(work(
        connect(&url).await?,
        keys.clone(),
        args.slots as usize,
        result,
        path,
        args.chunks,
        stop.clone(),
    ));
    let reader = tokio::spawn(read_replies(
        connect(&url).await?,
        keys.clone(),
        waiting.clone(),
        stop.clone(),
    ));

    let submit = connect(&url).await?;
    let (rtq3_tx, rtq3_rx) = tokio::sync::mpsc::unbounded_channel::<PendingSubmit>();
    let submitter =
        (path == Path::Rtq3).then(|| tokio::spawn(submit_rtq3(submit.clone(), rtq3_rx)));
    let next_id = Arc::new(AtomicU64::new(0));
    let mut info = info_conn(&url).await?;
    let before = RedisSnapshot::take(&mut info).await?;
    let per_client = (args.tasks / args.clients).max(1) as usize;
    let cpu_before = process_cpu_s();
    let started = Instant::now();
    let mut loops = Vec::new();
    for _ in 0..args.clients {
        let (mut conn, keys, spec) = (submit.clone(), keys.clone(), spec.clone());
        let (waiting, next_id) = (waiting.clone(), next_id.clone());
        let (rtq3_tx, reply) = (rtq3_tx.clone(), keys.reply.clone());
        loops.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = oneshot::channel();
                waiting.lock().unwrap().insert(id, tx);
                if path == Path::Rtq3 {
                    let (tx, rx) = oneshot::channel();
                    let task = rtq_core::functions::v3::NewTask {
                        id: id.to_string(),
                        band: 0,
                        spec: spec.as_bytes().to_vec(),
                        reply: reply.clone(),
                        deadline_ms: 0,
                        max_attempts: 3,
                        retention_ms: 3_600_000,
                    };
                    rtq3_tx
                        .send((task, tx))
                        .map_err(|_| anyhow::anyhow!("the submitter stopped"))?;
                    rx.await.context("the submitter stopped")??;
                } else if path == Path::V3 {
                    let added: String = redis::cmd("FCALL")
                        .arg("floor_submit_v3")
                        .arg(3)
                        .arg(&keys.queue)
                        .arg(keys.marker(&id.to_string()))
                        .arg(&keys.meta)
                        .arg(id)
                        .arg(spec.as_str())
                        .arg(1_000_000)
                        .query_async(&mut conn)
                        .await
                        .context("FCALL floor_submit_v3")?;
                    anyhow::ensure!(added.contains('-'), "floor_submit_v3 refused: {added}");
                } else if path == Path::Lua {
                    let added: String = redis::cmd("FCALL")
                        .arg("floor_submit")
                        .arg(2)
                        .arg(&keys.queue)
                        .arg(keys.marker(&id.to_string()))
                        .arg(id)
                        .arg(spec.as_str())
                        .arg(1_000_000)
                        .query_async(&mut conn)
                        .await
                        .context("FCALL floor_submit")?;
                    anyhow::ensure!(added.contains('-'), "floor_submit refused: {added}");
                } else {
                    let _: Value = redis::cmd("XADD")
                        .arg(&keys.queue)
                        .arg("*")
                        .arg("t")
                        .arg(id)
                        .arg("s")
                        .arg(spec.as_str())
                        .query_async(&mut conn)
                        .await
                        .context("XADD of a task")?;
                }
                tokio::time::timeout(Duration::from_secs(30), rx)
                    .await
                    .context("no result within 30 s")?
                    .context("the reader stopped")?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat_ms = Vec::new();
    for l in loops {
        lat_ms.extend(l.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    let load_cpu_s = process_cpu_s() - cpu_before;
    let after = RedisSnapshot::take(&mut info).await?;
    stop.store(true, Ordering::Relaxed);
    worker.await??;
    reader.await??;
    drop(rtq3_tx);
    if let Some(submitter) = submitter {
        submitter.await?;
    }
    if path == Path::Rtq3 {
        let q = rtq3_keys();
        let ids: Vec<u64> = (0..next_id.load(Ordering::Relaxed)).collect();
        for batch in ids.chunks(1000) {
            let keys: Vec<String> = batch
                .iter()
                .flat_map(|id| {
                    let id = id.to_string();
                    [
                        rtq_core::functions::v3::marker_key(&q, &id),
                        rtq_core::functions::v3::output_key(&q, &id, 1),
                    ]
                })
                .collect();
            let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut admin).await?;
        }
    }
    let _: () = redis::cmd("DEL")
        .arg(&keys.queue)
        .arg(&keys.reply)
        .arg(&keys.meta)
        .query_async(&mut admin)
        .await?;
    if path != Path::Plain {
        let ids: Vec<u64> = (0..next_id.load(Ordering::Relaxed)).collect();
        for batch in ids.chunks(1000) {
            let keys: Vec<String> = batch
                .iter()
                .flat_map(|id| [keys.result(&id.to_string()), keys.marker(&id.to_string())])
                .collect();
            let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut admin).await?;
        }
    }

    lat_ms.sort_by(f64::total_cmp);
    let delta = after.since(&before);
    let n = lat_ms.len() as f64;
    println!(
        "peer={} clients={} slots={} chunks={} tasks={} tasks/s={:.0} p50={:.2}ms p99={:.2}ms redis_cmds/task={:.1} redis_cpu_us/task={:.1} load_cpu_us/task={:.1}",
        path.peer(),
        args.clients,
        args.slots,
        args.chunks,
        lat_ms.len(),
        n / secs.max(1e-9),
        percentile(&lat_ms, 0.50),
        percentile(&lat_ms, 0.99),
        delta.calls() as f64 / n.max(1.0),
        delta.cpu_s * 1e6 / n.max(1.0),
        load_cpu_s * 1e6 / n.max(1.0),
    );
    if args.breakdown {
        println!();
        print!("{}", delta.breakdown(n, "task"));
    }
    Ok(())
}
