//! The protocol v2 Redis Functions library and one typed binding per
//! function: an arguments struct that encodes its ARGV and a reply type
//! that decodes what the function answers. No call site builds positional
//! arguments or reads status words by hand; a protocol change is one edit
//! here, one in the `.lua` file and one in PROTOCOL.md.
//!
//! This is also the low-level protocol API for tools and tests that need
//! to drive single operations (the model-based test, the chaos checker).
//! Applications use [`Client`](crate::Client) and [`Worker`](crate::Worker).
//!
//! # Layout
//! - this file: the library source, loading it (once per server, again
//!   when a call finds it missing), the [`Function`] trait, [`call`],
//!   reply decoding helpers;
//! - [`v3`]: protocol v3's library (stream queues, stage 1: the server
//!   half) and its bindings;
//! - [`submit`], [`heartbeat`] (register and heartbeat), [`complete`],
//!   [`chunk`], [`release`], [`cancel`], [`watch`] (watch, read, unwatch),
//!   [`requeue`], [`queue_admin`] (priority, pause, max depth, purge,
//!   task deletion, housekeeping); [`complete`] also holds
//!   `rtq2_complete_many` and `rtq2_write_many`;
//! - `batch`: the coalescing loop and answer sorting shared by the
//!   client's submit batcher and the worker's coalescer.

pub(crate) mod batch;
pub mod cancel;
pub mod chunk;
pub mod complete;
pub mod heartbeat;
pub mod queue_admin;
pub mod release;
pub mod requeue;
pub mod submit;
pub mod v3;
pub mod watch;

use std::borrow::Cow;

use redis::aio::ConnectionLike;
use redis::{Cmd, Value};

use crate::error::Error;
use crate::keys::QueueKeys;
use crate::protocol::{value_to_bytes, value_to_i64, value_to_string, PROTOCOL_VERSION};

/// Name of the Functions library (`FUNCTION LIST LIBRARYNAME rtq2`).
pub const LIBRARY_NAME: &str = "rtq2";

/// Revision of the library source; a client loads its copy when the server
/// holds an older revision or none. Must equal `REVISION` in `lib.lua`.
pub const LIBRARY_REVISION: i64 = 16;

/// FNV-1a hash of the library source of [`LIBRARY_REVISION`]: a test
/// fails when the Lua changes without a revision bump (a server holding
/// the same revision would keep running the old code).
#[cfg(test)]
const LIBRARY_SOURCE_HASH: u64 = 4890323336139221320;

/// The library's files in load order (`lib.lua` first: it carries the
/// `#!lua name=rtq2` header and the shared helpers).
pub const LIBRARY_FILES: [(&str, &str); 10] = [
    ("lib.lua", include_str!("../../lua/lib.lua")),
    ("submit.lua", include_str!("../../lua/submit.lua")),
    ("heartbeat.lua", include_str!("../../lua/heartbeat.lua")),
    ("complete.lua", include_str!("../../lua/complete.lua")),
    ("chunk.lua", include_str!("../../lua/chunk.lua")),
    ("release.lua", include_str!("../../lua/release.lua")),
    ("cancel.lua", include_str!("../../lua/cancel.lua")),
    ("watch.lua", include_str!("../../lua/watch.lua")),
    ("requeue.lua", include_str!("../../lua/requeue.lua")),
    ("queue_admin.lua", include_str!("../../lua/queue_admin.lua")),
];

/// The library source as loaded with `FUNCTION LOAD`.
///
/// Built with the `lua-dir-override` feature and `RTQ_LUA_DIR` set, the
/// files are read from that directory at run time instead (the Lua
/// mutation runner uses this to test mutants without rebuilding).
pub fn library_source() -> Cow<'static, str> {
    if let Some(dir) = override_dir() {
        let mut source = String::new();
        for (name, _) in LIBRARY_FILES {
            let path = std::path::Path::new(&dir).join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => source.push_str(&text),
                Err(e) => panic!("RTQ_LUA_DIR: cannot read {}: {e}", path.display()),
            }
            source.push('\n');
        }
        return Cow::Owned(source);
    }
    static SOURCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    Cow::Borrowed(SOURCE.get_or_init(|| {
        LIBRARY_FILES
            .iter()
            .map(|(_, text)| format!("{text}\n"))
            .collect()
    }))
}

#[cfg(feature = "lua-dir-override")]
fn override_dir() -> Option<String> {
    std::env::var("RTQ_LUA_DIR").ok().filter(|d| !d.is_empty())
}

#[cfg(not(feature = "lua-dir-override"))]
fn override_dir() -> Option<String> {
    None
}

/// One protocol function: its name, how its arguments are encoded and how
/// its reply is decoded. KEYS is always the queue's meta key.
pub trait Function {
    /// The FCALL name (`rtq2_...`).
    const NAME: &'static str;
    /// True for functions flagged `no-writes` (called with FCALL_RO, so
    /// read-only users may call them).
    const READ_ONLY: bool = false;
    /// The decoded reply.
    type Reply;
    /// The task the call is about, if any (named in errors).
    fn task_id(&self) -> Option<&str> {
        None
    }
    /// Appends the ARGV items to `cmd`.
    fn write_args(&self, cmd: &mut Cmd);
    /// Decodes the function's reply.
    ///
    /// # Errors
    /// [`Error::Protocol`] for a reply of the wrong shape.
    fn decode(reply: Value) -> Result<Self::Reply, Error>;
}

/// The FCALL command for `function` on queue `keys`, ready to send (owned,
/// so it can move into a spawned future).
pub fn command<F: Function>(keys: &QueueKeys, function: &F) -> Cmd {
    let mut cmd = redis::cmd(if F::READ_ONLY { "FCALL_RO" } else { "FCALL" });
    cmd.arg(F::NAME).arg(1).arg(keys.meta());
    function.write_args(&mut cmd);
    cmd
}

/// Calls `function` on queue `keys` and decodes its reply. Loads the
/// library first if the server does not have it (a restarted Redis without
/// persistence, a new server).
///
/// # Errors
/// [`Error::InvalidInput`] when the function refused an argument,
/// [`Error::OutOfMemory`], [`Error::PermissionDenied`], connection errors,
/// [`Error::Protocol`] for a malformed reply.
pub async fn call<F: Function, C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &QueueKeys,
    function: &F,
) -> Result<F::Reply, Error> {
    let value = send::<F, C>(conn, command(keys, function))
        .await
        .map_err(|e| name_error(e, F::NAME, keys.name(), function.task_id()))?;
    F::decode(value)
}

/// A Lua error inside a function (a runtime error, or a command the
/// function ran that Redis refused, e.g. WRONGTYPE on a corrupt key) is
/// reported by Redis as `<text> script: <function>, on @user_function:<line>.`,
/// a line number of the whole library. It becomes [`Error::Function`],
/// naming the operation, queue and task; other errors pass unchanged.
pub(crate) fn name_error(
    e: Error,
    function: &'static str,
    queue: &str,
    task: Option<&str>,
) -> Error {
    if let Error::PermissionDenied(detail) = &e {
        // Redis 7.0 does not say which command inside the function the ACL
        // refused; name the function, and where the role's rules are.
        if let Some(cut) = detail.find(" script: ") {
            return Error::PermissionDenied(format!(
                "{function} on queue {queue}: {} (the user needs every command the rtq library runs: `rtq acl <role>` prints a role's rules)",
                detail[..cut].trim()
            ));
        }
        // Refused at the FCALL itself: Redis names only `fcall`.
        return Error::PermissionDenied(format!(
            "{} (calling {function} on queue {queue})",
            detail.trim()
        ));
    }
    let Error::Redis(redis_err) = &e else {
        return e;
    };
    let Some(detail) = redis_err.detail() else {
        return e;
    };
    let Some(cut) = detail.find(" script: ") else {
        return e;
    };
    let text = detail[..cut].trim();
    // Runtime errors start with `user_function:<line>: `.
    let text = match text.strip_prefix("user_function:") {
        Some(rest) => rest.split_once(": ").map_or(rest, |(_, t)| t),
        None => text,
    };
    let code = redis_err.code().filter(|c| *c != "ERR");
    Error::Function {
        function,
        queue: queue.to_string(),
        task: task.map(str::to_string),
        reason: match code {
            Some(code) => format!("{code} {text}"),
            None => text.to_string(),
        },
    }
}

/// Sends a command built by [`command`] for function `F` and returns the raw
/// reply, loading the library and retrying once if it is missing.
///
/// # Errors
/// As [`call`].
pub async fn send<F: Function, C: ConnectionLike + Send>(
    conn: &mut C,
    cmd: Cmd,
) -> Result<Value, Error> {
    match cmd.query_async::<Value>(conn).await {
        Err(e) if is_library_missing(&e) => {
            tracing::info!(
                function = F::NAME,
                "the rtq functions library is missing on the server; loading it"
            );
            load(conn, false).await?;
            Ok(cmd.query_async::<Value>(conn).await?)
        }
        other => Ok(other?),
    }
}

/// True for the error FCALL answers when the library is not loaded.
pub fn is_library_missing(e: &redis::RedisError) -> bool {
    e.code() == Some("ERR") && e.detail() == Some("Function not found")
}

/// Makes sure the server runs this library revision or a newer one: one
/// round trip when it does, two when it must be loaded.
///
/// # Errors
/// Connection errors, [`Error::PermissionDenied`] (the user may not load
/// functions and nobody loaded them), [`Error::Protocol`] if the server's
/// library speaks another protocol version.
pub async fn ensure_loaded<C: ConnectionLike + Send>(conn: &mut C) -> Result<(), Error> {
    let reply: redis::RedisResult<Value> = redis::cmd("FCALL_RO")
        .arg("rtq2_version")
        .arg(0)
        .query_async(conn)
        .await;
    match reply {
        Ok(value) => {
            let mut items = ReplyItems::new(value, "rtq2_version")?;
            let protocol = items.int()?;
            let revision = items.int()?;
            if protocol != i64::from(PROTOCOL_VERSION) {
                return Err(Error::Protocol(format!(
                    "the server's {LIBRARY_NAME} library speaks protocol {protocol}, this build {PROTOCOL_VERSION}"
                )));
            }
            if revision < LIBRARY_REVISION {
                tracing::info!(
                    server = revision,
                    ours = LIBRARY_REVISION,
                    "upgrading the rtq functions library"
                );
                match load(conn, true).await {
                    // A role that may not load functions runs on the
                    // server's older revision of the same protocol.
                    Err(Error::PermissionDenied(why)) => tracing::warn!(
                        server = revision,
                        ours = LIBRARY_REVISION,
                        %why,
                        "the server runs an older revision of the rtq functions library and this user may not upgrade it; an admin should connect once to load it"
                    ),
                    other => other?,
                }
            }
            Ok(())
        }
        Err(e) if is_library_missing(&e) => load(conn, false).await,
        Err(e) => Err(e.into()),
    }
}

/// Loads the library (`FUNCTION LOAD [REPLACE]`). A concurrent load by
/// another process is not an error.
async fn load<C: ConnectionLike + Send>(conn: &mut C, replace: bool) -> Result<(), Error> {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD");
    if replace {
        cmd.arg("REPLACE");
    }
    cmd.arg(library_source().as_ref());
    match cmd.query_async::<Value>(conn).await {
        Ok(_) => Ok(()),
        Err(e) if e.detail().is_some_and(|d| d.contains("already exists")) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reads a function's reply array item by item, naming the function in
/// every error.
pub struct ReplyItems {
    items: std::vec::IntoIter<Value>,
    function: &'static str,
}

impl ReplyItems {
    /// Starts reading an array reply.
    ///
    /// # Errors
    /// [`Error::Protocol`] if the reply is not an array.
    pub fn new(reply: Value, function: &'static str) -> Result<Self, Error> {
        match reply {
            Value::Array(items) => Ok(Self {
                items: items.into_iter(),
                function,
            }),
            other => Err(Error::Protocol(format!(
                "{function} replied {other:?}, expected an array"
            ))),
        }
    }

    fn next_value(&mut self, what: &str) -> Result<Value, Error> {
        self.items.next().ok_or_else(|| {
            Error::Protocol(format!("{} reply ends before its {what}", self.function))
        })
    }

    /// The next item as it came (a nested array, say).
    ///
    /// # Errors
    /// [`Error::Protocol`] if the reply has no more items.
    pub fn next_raw(&mut self) -> Result<Value, Error> {
        self.next_value("item")
    }

    /// The next item as text.
    ///
    /// # Errors
    /// [`Error::Protocol`] if the reply has no more items.
    pub fn string(&mut self) -> Result<String, Error> {
        Ok(value_to_string(&self.next_value("text item")?))
    }

    /// The next item as an integer.
    ///
    /// # Errors
    /// [`Error::Protocol`] if there is none or it is not a number.
    pub fn int(&mut self) -> Result<i64, Error> {
        let value = self.next_value("number")?;
        match value {
            Value::Int(i) => Ok(i),
            other => {
                let text = value_to_string(&other);
                text.parse().map_err(|_| {
                    Error::Protocol(format!(
                        "{} replied {text:?} where a number belongs",
                        self.function
                    ))
                })
            }
        }
    }

    /// The next item as a non-negative integer.
    ///
    /// # Errors
    /// As [`ReplyItems::int`], and for negative numbers.
    pub fn uint(&mut self) -> Result<u64, Error> {
        let n = self.int()?;
        u64::try_from(n)
            .map_err(|_| Error::Protocol(format!("{} replied a negative count {n}", self.function)))
    }

    /// The next item as raw bytes.
    ///
    /// # Errors
    /// [`Error::Protocol`] if the reply has no more items.
    pub fn bytes(&mut self) -> Result<Vec<u8>, Error> {
        Ok(value_to_bytes(&self.next_value("data item")?))
    }

    /// The remaining items as raw bytes.
    pub fn rest_bytes(self) -> Vec<Vec<u8>> {
        self.items.map(|v| value_to_bytes(&v)).collect()
    }

    /// An error naming an unexpected status word.
    pub fn unexpected(&self, status: &str) -> Error {
        Error::Protocol(format!(
            "{} replied with unknown status {status:?}",
            self.function
        ))
    }

    /// The next item as an integer, for replies whose remaining length is
    /// fixed (convenience for optional trailing numbers).
    pub fn int_or(&mut self, default: i64) -> i64 {
        self.items.next().map_or(default, |v| value_to_i64(&v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_revision_matches_lib_lua() {
        let lib = LIBRARY_FILES[0].1;
        assert!(
            lib.starts_with("#!lua name=rtq2\n"),
            "lib.lua must come first"
        );
        assert!(
            lib.contains(&format!("local REVISION = {LIBRARY_REVISION}\n")),
            "bump LIBRARY_REVISION and REVISION in lib.lua together"
        );
        assert!(lib.contains(&format!("local PROTOCOL = {PROTOCOL_VERSION}\n")));
    }

    #[test]
    fn the_lua_never_changes_without_a_revision_bump() {
        if override_dir().is_some() {
            return; // a mutation run: the source differs on purpose
        }
        let hash = library_source()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        assert_eq!(
            hash, LIBRARY_SOURCE_HASH,
            "the library changed: bump REVISION in lib.lua and LIBRARY_REVISION, then set LIBRARY_SOURCE_HASH to {hash}"
        );
    }

    #[test]
    fn every_file_registers_what_the_bindings_call() {
        let source = library_source();
        for name in [
            submit::Submit::NAME,
            heartbeat::Register::NAME,
            heartbeat::Heartbeat::NAME,
            complete::Complete::NAME,
            complete::CompleteMany::NAME,
            complete::WriteMany::NAME,
            chunk::Chunk::NAME,
            release::Release::NAME,
            cancel::Cancel::NAME,
            watch::Watch::NAME,
            watch::Read::NAME,
            watch::Unwatch::NAME,
            requeue::Requeue::NAME,
            queue_admin::SetPriority::NAME,
            queue_admin::Pause::NAME,
            queue_admin::SetMaxDepth::NAME,
            queue_admin::Purge::NAME,
            queue_admin::Housekeep::NAME,
        ] {
            assert!(
                source.contains(&format!("function_name = '{name}'")),
                "{name} is not registered"
            );
        }
    }

    #[test]
    fn reply_items_read_in_order_and_name_the_function_in_errors() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            b("OK"),
            Value::Int(7),
            b("12"),
            Value::Int(-3),
            b("raw"),
            Value::Int(9),
            b("r1"),
            b("r2"),
        ]);
        let mut items = ReplyItems::new(reply, "rtq2_test").unwrap();
        assert_eq!(items.string().unwrap(), "OK");
        assert_eq!(items.int().unwrap(), 7);
        assert_eq!(items.uint().unwrap(), 12);
        let negative = items.uint().unwrap_err().to_string();
        assert!(
            negative.contains("rtq2_test") && negative.contains("-3"),
            "{negative}"
        );
        assert_eq!(items.bytes().unwrap(), b"raw");
        assert_eq!(items.int_or(0), 9);
        assert_eq!(items.rest_bytes(), vec![b"r1".to_vec(), b"r2".to_vec()]);

        let mut empty = ReplyItems::new(Value::Array(vec![]), "rtq2_test").unwrap();
        assert_eq!(empty.int_or(42), 42);
        assert!(empty
            .string()
            .unwrap_err()
            .to_string()
            .contains("rtq2_test"));
        assert!(ReplyItems::new(Value::Int(1), "rtq2_test").is_err());
        let mut not_a_number = ReplyItems::new(Value::Array(vec![b("x")]), "rtq2_test").unwrap();
        assert!(not_a_number.int().is_err());
    }

    #[test]
    fn the_limits_shared_with_the_functions_agree_with_lib_lua() {
        use crate::protocol::*;
        let source = library_source();
        let lua = |name: &str| -> i64 {
            let line = source
                .lines()
                .find(|l| l.starts_with(&format!("local {name} = ")))
                .unwrap_or_else(|| panic!("lib.lua has no {name}"));
            let value = line.split('=').nth(1).unwrap().split("--").next().unwrap();
            value.trim().parse().unwrap()
        };
        let as_i64 = |n: u64| i64::try_from(n).unwrap();
        assert_eq!(
            lua("MAX_DURATION_MS"),
            as_i64(MAX_DURATION.as_millis() as u64)
        );
        assert_eq!(lua("MAX_DURATION_MS"), 30 * 24 * 3600 * 1000, "30 days");
        assert_eq!(lua("MAX_ATTEMPTS"), i64::from(MAX_ATTEMPTS));
        assert_eq!(lua("MAX_ATTEMPT_NUMBER"), as_i64(MAX_ATTEMPT_NUMBER));
        assert_eq!(lua("MAX_ID_BYTES"), crate::keys::MAX_ID_LEN as i64);
        assert_eq!(lua("MAX_SPEC_BYTES"), MAX_SPEC_BYTES as i64);
        assert_eq!(lua("MAX_RESULT_BYTES"), MAX_RESULT_BYTES as i64);
        assert_eq!(lua("MAX_TEXT_BYTES"), MAX_TEXT_BYTES as i64);
        assert_eq!(lua("MAX_CHUNK_BYTES"), MAX_CHUNK_BYTES as i64);
        assert_eq!(lua("MAX_CHUNKS_PER_CALL"), MAX_CHUNKS_PER_CALL as i64);
        assert_eq!(lua("MAX_OUTPUT_CHUNKS"), as_i64(MAX_OUTPUT_CHUNKS));
        assert_eq!(lua("MAX_OUTPUT_BYTES"), as_i64(MAX_OUTPUT_BYTES));
        assert_eq!(lua("MAX_SLOTS"), MAX_SLOTS as i64);
        assert_eq!(lua("READ_PAGE"), as_i64(READ_PAGE));
        assert_eq!(lua("PRIORITY_LIMIT"), i64::from(PRIORITY_MAX));
        assert_eq!(-lua("PRIORITY_LIMIT"), i64::from(PRIORITY_MIN));
        assert_eq!(lua("STATS_BUCKET_MS"), crate::admin::stats::BUCKET_MS);
    }
}
