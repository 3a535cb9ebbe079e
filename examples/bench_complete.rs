//! Deterministic driver of the busy-worker hot path, for instruction
//! counts (`scripts/bench-instructions.sh`): the protocol functions alone,
//! without the Client's and Worker's timing, so each call carries a fixed
//! number of completions and two library revisions (or two Lua variants
//! under `RTQ_LUA_DIR`) can be compared to the instruction.
//!
//! One worker with `<batch>` slots runs `<tasks>` tasks: they are
//! submitted 256 per `rtq2_submit_many` call (all but the first `<batch>`
//! wait in `pending`), then every round ends the `<batch>` running tasks
//! in one `rtq2_complete_many` call (one `rtq2_complete` each with
//! `--single`), each taking its slot's next task. Every task has a reply
//! stream, so each ending notifies it as a client's task would.
//!
//! Run: `cargo run --release -p rtq-examples --example bench_complete -- --redis URL <batch> <unused> <tasks> <chunks>`
//! (the argument shape of `examples/bench.rs`, so the instruction script
//! can run either; `<unused>` is ignored and `<chunks>` must be 0).

use anyhow::{bail, Context};
use clap::Parser;
use redis::aio::MultiplexedConnection;
use rtq_core::functions::complete::{Complete, CompleteMany, CompleteOutcome, CompleteReply};
use rtq_core::functions::heartbeat::{Beat, Register};
use rtq_core::functions::submit::{Submit, SubmitMany};
use rtq_core::functions::{self};
use rtq_core::keys::QueueKeys;
use rtq_core::protocol::InboxMessage;
use rtq_examples::RedisArgs;

/// Deterministic busy-path driver: fixed-size batches of completes.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    /// Completions per call (and worker slots), 1..=1024.
    #[arg(value_parser = clap::value_parser!(u64).range(1..=1024))]
    batch: u64,
    /// Ignored (the slot count of `bench`'s argument shape).
    unused: u64,
    /// Tasks in total.
    #[arg(value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    tasks: u64,
    /// Must be 0 (no streaming in this driver).
    #[arg(value_parser = clap::value_parser!(u64).range(0..=0))]
    chunks: u64,
    /// One `rtq2_complete` per completion instead of one
    /// `rtq2_complete_many` per round.
    #[arg(long)]
    single: bool,
    /// Input and result size in characters.
    #[arg(long, default_value_t = 1000)]
    payload: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = args.redis.url::<Args>();
    // No response timeout: under valgrind a call takes seconds.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("connecting")?;
    functions::ensure_loaded(&mut conn).await?;
    let keys = QueueKeys::new(&format!("bc{}", std::process::id()))?;
    let slots = args.batch as usize;
    let worker = "w1";
    let running: Vec<(String, u64)> = Vec::new();
    functions::call(
        &mut conn,
        &keys,
        &Register(Beat {
            worker,
            instance: "i1",
            lease_ms: 600_000,
            slots,
            accepting: true,
            running: &running,
            info: &[],
        }),
    )
    .await?;
    let before = commands(&mut conn).await?;
    let reply = keys.reply("c1");
    let _: () = redis::cmd("XADD")
        .arg(&reply)
        .arg("MAXLEN")
        .arg(0)
        .arg("*")
        .arg("created")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    let spec = format!(
        r#"{{"v":2,"input":{{"text":"{}"}}}}"#,
        "x".repeat(args.payload)
    );
    let result = format!(r#"{{"text":"{}"}}"#, "y".repeat(args.payload));
    let ids: Vec<String> = (0..args.tasks).map(|i| format!("t{i}")).collect();
    for group in ids.chunks(256) {
        let submits: Vec<Submit<'_>> = group
            .iter()
            .map(|id| Submit {
                id,
                spec: &spec,
                priority: 0,
                timeout_ms: 0,
                max_attempts: 1,
                retention_ms: 60_000,
                reply: &reply,
                stream: false,
            })
            .collect();
        functions::call(&mut conn, &keys, &SubmitMany { tasks: &submits }).await?;
    }
    let mut running = inbox(&mut conn, &keys, worker).await?;
    let mut ended = 0u64;
    while !running.is_empty() {
        let completes: Vec<Complete<'_>> = running
            .iter()
            .map(|(id, attempt)| Complete {
                worker,
                id,
                attempt: *attempt,
                seq0: 0,
                outcome: CompleteOutcome::Done,
                payload: &result,
                want_next: true,
                next_apart: true,
                chunks: &[],
            })
            .collect();
        let replies: Vec<CompleteReply> = if args.single {
            let mut out = Vec::new();
            for c in &completes {
                out.push(functions::call(&mut conn, &keys, c).await?);
            }
            out
        } else {
            functions::call(
                &mut conn,
                &keys,
                &CompleteMany {
                    completes: &completes,
                },
            )
            .await?
        };
        ended += replies.len() as u64;
        running = replies
            .into_iter()
            .filter_map(|r| match r.next {
                Some(InboxMessage::Task(d)) => Some((d.id, d.attempt)),
                _ => None,
            })
            .collect();
    }
    if ended != args.tasks {
        bail!("{ended} of {} tasks ended", args.tasks);
    }
    let cmds = commands(&mut conn).await?.saturating_sub(before);
    println!(
        "peer=rtq-complete batch={} single={} tasks={ended} redis_cmds/task={:.1}",
        args.batch,
        args.single,
        cmds as f64 / ended as f64
    );
    Ok(())
}

/// The tasks waiting in the worker's inbox (taken out of it).
async fn inbox(
    conn: &mut MultiplexedConnection,
    keys: &QueueKeys,
    worker: &str,
) -> anyhow::Result<Vec<(String, u64)>> {
    let raw: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(keys.inbox(worker))
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    let _: () = redis::cmd("DEL")
        .arg(keys.inbox(worker))
        .query_async(conn)
        .await?;
    Ok(raw
        .iter()
        .filter_map(|m| match InboxMessage::parse(m) {
            InboxMessage::Task(d) => Some((d.id, d.attempt)),
            _ => None,
        })
        .collect())
}

/// Commands Redis ran so far (the calls of `INFO commandstats`, counting
/// those run inside functions).
async fn commands(conn: &mut MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    Ok(info
        .lines()
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum())
}
