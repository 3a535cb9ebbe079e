//! Our implementation of the reference design (`shared/seed/REFERENCE-DESIGN.md`,
//! the SaladCloud guide "Real-Time AI Inference with a Redis-Based Queue"),
//! with plain Redis commands exactly as the design describes, one command
//! per step and no pipelining, so `bench_table --reference` can run it next
//! to rtq over the same simulated network.
//!
//! Keys: `requests:pending` (zset, id -> priority), `request_%&_<id>`
//! (hash: id, input, priority, status, result), `temporary:<id>` (list the
//! server pushes "processed" into), `streaming:<id>` (list of JSON chunks
//! `{"last":bool,"chunk":str}`), `clients` and `servers` (registration
//! lists of `{"id","time"}` records).
//!
//! Non-streaming: the client HSETs the hash, ZADDs the id, BRPOPs
//! `temporary:<id>`; the server BZPOPMAXes the id, HGETALLs the hash, runs
//! inference (none here), HSETs result and status, LPUSHes
//! `temporary:<id>`; the client wakes, HGETALLs the hash and DELs it.
//! Streaming: the server LPUSHes each chunk to `streaming:<id>` and the
//! client BRPOPs one chunk per call until `last`, then DELs the hash.
//! A server's zero-work "inference" returns `"r" * 1000`, or `chunks`
//! chunks of `size` characters when the input asks for them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use serde_json::{json, Value};

/// The pending zset.
pub const PENDING: &str = "requests:pending";

fn hash_key(id: &str) -> String {
    format!("request_%&_{id}")
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A connection of its own for one client or server loop (its blocking
/// commands would hold up anyone sharing it), without a response timeout
/// (they block up to their own timeout) and with TCP_NODELAY (as redis-py
/// sets it).
///
/// # Errors
/// Bad URL, Redis unreachable.
pub async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)
        .with_context(|| format!("bad Redis URL {}", rtq_core::redact_url(url)))?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(info)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("cannot reach Redis at {}", rtq_core::redact_url(url)))
}

/// Registers a client or server: RPUSH of `{"id","time"}` to `list`
/// (`clients` or `servers`).
///
/// # Errors
/// Redis errors.
pub async fn register(
    conn: &mut MultiplexedConnection,
    list: &str,
    id: &str,
) -> anyhow::Result<()> {
    let record = json!({ "id": id, "time": now_s() }).to_string();
    let _: i64 = conn.rpush(list, record).await?;
    Ok(())
}

/// One server loop: takes the highest-priority request, serves it, and
/// repeats until `stop` resolves (checked at least every second). Returns
/// the number of requests served.
///
/// # Errors
/// Redis errors, a request hash without a JSON input.
pub async fn serve(
    url: &str,
    server_id: &str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let mut conn = connect(url).await?;
    register(&mut conn, "servers", server_id).await?;
    let mut served = 0;
    while !*stop.borrow() {
        // 4. BZPOPMAX pops the id (1 s timeout, to notice the stop).
        let popped: Option<(String, String, f64)> = redis::cmd("BZPOPMAX")
            .arg(PENDING)
            .arg(1)
            .query_async(&mut conn)
            .await?;
        let Some((_, id, _)) = popped else {
            continue;
        };
        // 5. Load the hash.
        let hash: std::collections::HashMap<String, String> = conn.hgetall(hash_key(&id)).await?;
        let input: Value = serde_json::from_str(hash.get("input").map_or("", String::as_str))
            .with_context(|| format!("request {id} has no JSON input"))?;
        // 6. Inference: none.
        let chunks = input["chunks"].as_u64().unwrap_or(0);
        let size = input["size"].as_u64().unwrap_or(0) as usize;
        if chunks == 0 {
            // 7. Save the result; 8. wake the client.
            let _: () = conn
                .hset_multiple(
                    hash_key(&id),
                    &[("result", "r".repeat(1000)), ("status", "completed".into())],
                )
                .await?;
            let _: i64 = conn.lpush(format!("temporary:{id}"), "processed").await?;
        } else {
            // Streaming: one LPUSH per chunk.
            for i in 0..chunks {
                let chunk = json!({ "last": i + 1 == chunks, "chunk": "c".repeat(size) });
                let _: i64 = conn
                    .lpush(format!("streaming:{id}"), chunk.to_string())
                    .await?;
            }
        }
        served += 1;
    }
    Ok(served)
}

/// The client side: one connection, requests one after another.
pub struct RefClient {
    conn: MultiplexedConnection,
    id: String,
    seq: u64,
    timeout: Duration,
}

impl RefClient {
    /// Connects and registers client `id`.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn connect(url: &str, id: &str) -> anyhow::Result<Self> {
        let mut conn = connect(url).await?;
        register(&mut conn, "clients", id).await?;
        Ok(Self {
            conn,
            id: id.to_string(),
            seq: 0,
            timeout: Duration::from_secs(10),
        })
    }

    /// Steps 1-2: saves the request hash and ZADDs the id; returns the id.
    async fn submit(&mut self, input: &Value) -> anyhow::Result<String> {
        self.seq += 1;
        let id = format!("{}-{}", self.id, self.seq);
        let _: () = self
            .conn
            .hset_multiple(
                hash_key(&id),
                &[
                    ("id", id.clone()),
                    ("input", input.to_string()),
                    ("priority", "1".into()),
                    ("status", "pending".into()),
                ],
            )
            .await?;
        let _: i64 = self.conn.zadd(PENDING, &id, 1).await?;
        Ok(id)
    }

    /// A non-streaming request: steps 1-3 and 9. Returns the result.
    ///
    /// # Errors
    /// Redis errors, or no answer within the client timeout (the design
    /// cannot tell queued, running and lost apart).
    pub async fn request(&mut self, input: &Value) -> anyhow::Result<String> {
        let id = self.submit(input).await?;
        let woke: Option<(String, String)> = self
            .conn
            .brpop(format!("temporary:{id}"), self.timeout.as_secs_f64())
            .await?;
        if woke.is_none() {
            bail!("request {id}: no answer within {:?}", self.timeout);
        }
        let hash: std::collections::HashMap<String, String> =
            self.conn.hgetall(hash_key(&id)).await?;
        let _: i64 = self.conn.del(hash_key(&id)).await?;
        hash.get("result")
            .cloned()
            .with_context(|| format!("request {id} woke without a result"))
    }

    /// A streaming request: steps 1-2, then one BRPOP per chunk until
    /// `last`. Calls `on_chunk` per chunk; returns the number of chunks.
    ///
    /// # Errors
    /// Redis errors, a malformed chunk, or a chunk not arriving in time.
    pub async fn stream(
        &mut self,
        input: &Value,
        mut on_chunk: impl FnMut(&str),
    ) -> anyhow::Result<u64> {
        let id = self.submit(input).await?;
        let key = format!("streaming:{id}");
        let mut n = 0;
        loop {
            let item: Option<(String, String)> =
                self.conn.brpop(&key, self.timeout.as_secs_f64()).await?;
            let Some((_, raw)) = item else {
                bail!("request {id}: no chunk within {:?}", self.timeout);
            };
            let chunk: Value = serde_json::from_str(&raw)
                .with_context(|| format!("request {id}: malformed chunk {raw:.80}"))?;
            n += 1;
            on_chunk(chunk["chunk"].as_str().unwrap_or(""));
            if chunk["last"].as_bool().unwrap_or(true) {
                break;
            }
        }
        let _: i64 = self.conn.del(hash_key(&id)).await?;
        Ok(n)
    }
}
