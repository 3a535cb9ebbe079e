//! A hostile user of the protocol v3 library (`rtq3`,
//! `core/lua/v3/stream.lua`): every function with arguments it must
//! refuse, keys of the queue that hold another type, a server that lost
//! its data and its functions, and the semantics a client relies on.
//!
//! The house rule under attack: every function validates all its
//! arguments, then computes reading only, then writes; Redis does not roll
//! back a function that fails halfway. So a refused call must answer an
//! error starting with `INVALID` (or, for a key of a foreign type, the
//! library's own `WRONGTYPE ... nothing was written`) and leave the whole
//! keyspace as it was: every key, its type, its serialized value (`DUMP`,
//! which for a stream includes its groups' pending lists) and its expiry.
//! Batch calls put a valid item (one that would write) before the bad one,
//! so a function that writes before it has checked everything is caught.

mod support;

use redis::aio::MultiplexedConnection;
use redis::Value;
use rtq_core::functions::v3::{
    self, Admission, Cancelled, Completed, EndState, Ending, Held, NewTask, Status,
};
use rtq_core::keys::QueueKeys;
use rtq_core::protocol::TaskState;
use rtq_core::Error;
use support::keyspace::snapshot;
use support::{patient_conn, RedisServer};

/// The queue every test attacks.
const Q: &str = "g";
/// A lease longer than any test runs: only entries aged on purpose lapse.
const LEASE: &str = "600000";
/// Idle time given to an entry to make its lease lapse.
const AGED_MS: &str = "10000000";

/// A raw command; panics on an error (test setup).
async fn raw(conn: &mut MultiplexedConnection, args: &[&str]) -> Value {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// FCALL `function` with `keys` and `args`, as raw bytes.
async fn fcall_keys(
    conn: &mut MultiplexedConnection,
    function: &str,
    keys: &[String],
    args: &[Vec<u8>],
) -> redis::RedisResult<Value> {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(function).arg(keys.len());
    for k in keys {
        cmd.arg(k);
    }
    for a in args {
        cmd.arg(a.as_slice());
    }
    cmd.query_async(conn).await
}

async fn fcall(
    conn: &mut MultiplexedConnection,
    function: &str,
    args: &[Vec<u8>],
) -> redis::RedisResult<Value> {
    let meta = QueueKeys::new(Q).unwrap().meta();
    fcall_keys(conn, function, &[meta], args).await
}

fn bytes(args: &[&str]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.as_bytes().to_vec()).collect()
}

fn short(v: &redis::RedisResult<Value>) -> String {
    format!("{v:?}").chars().take(300).collect()
}

/// A refusal the library made on purpose, before any write.
fn deliberate(e: &redis::RedisError) -> bool {
    match e.code() {
        Some("INVALID") => true,
        Some("WRONGTYPE") => e.to_string().contains("nothing was written"),
        _ => false,
    }
}

/// The state every attack starts from (queue `g`, three bands, reply
/// stream `r:c`): `t1` on band 0 held by `w1` (delivery 1, `e1`), `t2`
/// queued on band 1 (`e2`).
struct Scene {
    e1: String,
    e2: String,
    reply: String,
}

async fn fresh(conn: &mut MultiplexedConnection) {
    raw(conn, &["FLUSHALL"]).await;
}

fn task(id: &str, band: u8, reply: &str) -> NewTask {
    NewTask {
        id: id.into(),
        band,
        spec: b"{}".to_vec(),
        reply: reply.into(),
        deadline_ms: 0,
        max_attempts: 3,
        retention_ms: 3_600_000,
    }
}

fn entry_of(a: &Admission) -> String {
    match a {
        Admission::Added { entry } => entry.clone(),
        other => panic!("expected an added task, got {other:?}"),
    }
}

async fn scene(conn: &mut MultiplexedConnection) -> Scene {
    fresh(conn).await;
    let keys = QueueKeys::new(Q).unwrap();
    v3::create(conn, &keys, 3, 0).await.unwrap();
    let reply = keys.reply("c");
    raw(conn, &["XADD", &reply, "MAXLEN", "0", "*", "created", "1"]).await;
    let out = v3::submit(conn, &keys, &[task("t1", 0, &reply), task("t2", 1, &reply)])
        .await
        .unwrap();
    let got = v3::read_new(conn, &keys, "w1", 0, 1, None).await.unwrap();
    assert_eq!(got.len(), 1);
    v3::beat(conn, &keys, "w1", 600_000, &[got[0].held.clone()])
        .await
        .unwrap();
    Scene {
        e1: entry_of(&out[0]),
        e2: entry_of(&out[1]),
        reply,
    }
}

/// One function's valid call and the variants of it that must be refused.
struct Case {
    function: &'static str,
    base: Vec<Vec<u8>>,
    /// (what, arguments)
    variants: Vec<(String, Vec<Vec<u8>>)>,
}

/// Integers that are not canonical, or not integers, or past 2^53.
const BAD_NUMBERS: &[&str] = &[
    "",
    "01",
    "00",
    "-0",
    "1e3",
    " 1",
    "1 ",
    "+1",
    "0x1",
    "1.0",
    "1.5",
    "inf",
    "nan",
    "9007199254740992",
    "9007199254740993",
    "99999999999999999",
    "18446744073709551616",
    "-9007199254740993",
    "\u{0661}",
];

fn bad_ids() -> Vec<String> {
    let mut out: Vec<String> = [
        "", "a b", "a\tb", "a\nb", "a\rb", "a\0b", "a\x7fb", "a\x0bb", " a", "a ",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    out.push("i".repeat(129));
    out
}

const BAD_ENTRIES: &[&str] = &[
    "",
    "1",
    "1-",
    "-1",
    "-",
    "1-0-0",
    "abc",
    "1-x",
    "0x1-0",
    " 1-0",
    "1-0 ",
    "+1-0",
    "1--0",
    "01-0",
    "1-00",
    "18446744073709551616-0",
    "0-18446744073709551616",
    "99999999999999999999-0",
    "111111111111111111111-0",
    "1111111111111111111111111111111111111111-1",
];

const BAD_STATES: &[&str] = &[
    "",
    "DONE",
    "Done",
    "cancelled",
    "done ",
    "running",
    "queued",
];

impl Case {
    fn new(function: &'static str, base: Vec<Vec<u8>>) -> Case {
        Case {
            function,
            base,
            variants: Vec::new(),
        }
    }

    fn set(&mut self, what: String, i: usize, value: &[u8]) -> &mut Case {
        let mut args = self.base.clone();
        args[i] = value.to_vec();
        self.variants.push((what, args));
        self
    }

    /// Integer argument `i`: every malformed number, and `outside` values.
    fn int(&mut self, name: &str, i: usize, outside: &[&str]) -> &mut Case {
        for v in BAD_NUMBERS.iter().chain(outside) {
            self.set(format!("{name} = {v:?}"), i, v.as_bytes());
        }
        self
    }

    fn id(&mut self, name: &str, i: usize) -> &mut Case {
        for v in bad_ids() {
            self.set(format!("{name} = {v:?}"), i, v.as_bytes());
        }
        self
    }

    fn entry(&mut self, i: usize) -> &mut Case {
        for v in BAD_ENTRIES {
            self.set(format!("entry = {v:?}"), i, v.as_bytes());
        }
        self
    }

    fn one_of(&mut self, name: &str, i: usize, bad: &[&str]) -> &mut Case {
        for v in bad {
            self.set(format!("{name} = {v:?}"), i, v.as_bytes());
        }
        self
    }

    /// One argument more, one fewer, none.
    fn arity(&mut self) -> &mut Case {
        let mut more = self.base.clone();
        more.push(b"1".to_vec());
        let mut fewer = self.base.clone();
        fewer.pop();
        self.variants.push(("one argument more".into(), more));
        self.variants.push(("one argument fewer".into(), fewer));
        self.variants.push(("no arguments".into(), Vec::new()));
        self
    }
}

/// Every variant is refused with INVALID and writes nothing; then the base
/// call (the same call with nothing wrong) is accepted, so each refusal
/// was for the argument the variant changed.
async fn check(conn: &mut MultiplexedConnection, case: &Case) {
    let before = snapshot(conn).await;
    for (what, args) in &case.variants {
        let r = fcall(conn, case.function, args).await;
        match &r {
            Err(e) if e.code() == Some("INVALID") => {}
            _ => panic!(
                "{} with {what}: expected an INVALID error, got {}",
                case.function,
                short(&r)
            ),
        }
        assert!(
            snapshot(conn).await == before,
            "{} with {what} was refused but wrote",
            case.function
        );
    }
    // The wrong keys, for every function.
    let meta = QueueKeys::new(Q).unwrap().meta();
    let key_variants: Vec<(&str, Vec<String>)> = vec![
        ("no key", vec![]),
        ("two keys", vec![meta.clone(), meta.clone()]),
        ("a band key", vec!["rtq:{g}:b:0".into()]),
        ("a key without a hash tag", vec!["rtq:g:meta".into()]),
        ("a queue name with a space", vec!["rtq:{g h}:meta".into()]),
        ("a trailing space", vec![format!("{meta} ")]),
    ];
    for (what, keys) in key_variants {
        let r = fcall_keys(conn, case.function, &keys, &case.base).await;
        assert!(
            matches!(&r, Err(e) if e.code() == Some("INVALID")),
            "{} with {what}: {}",
            case.function,
            short(&r)
        );
        assert!(
            snapshot(conn).await == before,
            "{} with {what} wrote",
            case.function
        );
    }
    let r = fcall(conn, case.function, &case.base).await;
    assert!(
        r.is_ok(),
        "{}: the base call must be accepted: {}",
        case.function,
        short(&r)
    );
}

#[tokio::test]
async fn create_and_submit_refuse_every_bad_argument_and_write_nothing() {
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;

    let s = scene(&mut conn).await;
    let mut case = Case::new("rtq3_create", bytes(&["3", "7"]));
    case.int("bands", 0, &["0", "6", "-1", "2", "4"])
        .int("max depth", 1, &["-1"])
        .arity();
    check(&mut conn, &case).await;

    scene(&mut conn).await;
    let r = &s.reply;
    let big = vec![b'x'; 16 * 1024 * 1024 + 1];
    let mut case = Case::new(
        "rtq3_submit",
        bytes(&[
            "2", "n1", "0", "{}", r, "0", "3", "60000", "n2", "2", "{}", r, "0", "3", "60000",
        ]),
    );
    case.int("count", 0, &["0", "1", "3", "1025"])
        .id("id", 8)
        .int("band", 9, &["3", "5", "-1"])
        .set("an empty spec".into(), 10, b"")
        .set("a spec of 16 MiB + 1".into(), 10, &big)
        .one_of(
            "reply",
            11,
            &[
                "rtq:{h}:r:c",
                "r:c",
                "rtq:{g}:x:c",
                "rtq:{g}:b:0",
                "rtq:{g}:meta",
                "rtq:{g}:r:",
                "rtq:{g}:r:a b",
                "rtq:{g}:r:a\nb",
                "rtq:{g}:rc",
                " rtq:{g}:r:c",
            ],
        )
        .set(
            "a reply key of 201 bytes".into(),
            11,
            format!("rtq:{{g}}:r:{}", "c".repeat(191)).as_bytes(),
        )
        .int("deadline", 12, &["-1"])
        .int("max attempts", 13, &["0", "1001", "-1"])
        .int("retention", 14, &["0", "2592000001", "-1"])
        .id("first id", 1)
        .arity();
    check(&mut conn, &case).await;
}

#[tokio::test]
async fn worker_calls_refuse_every_bad_argument_and_write_nothing() {
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;
    let big = vec![b'x'; 16 * 1024 * 1024 + 1];

    // complete: the first ending (t1 done) would write.
    let s = scene(&mut conn).await;
    let mut case = Case::new(
        "rtq3_complete",
        bytes(&[
            "w1", "2", "0", &s.e1, "t1", "1", "0", "done", "{}", "-", "1", &s.e2, "t2", "1", "0",
            "failed", "why", "0",
        ]),
    );
    case.id("worker", 0)
        .int("count", 1, &["0", "1", "3", "1025"])
        .int("band", 10, &["3", "5", "-1"])
        .entry(11)
        .id("id", 12)
        .int("deliveries", 13, &["0", "-1"])
        .int("a0", 14, &["-1"])
        .one_of("state", 15, BAD_STATES)
        .set("a reason of 4097 bytes".into(), 16, &[b'r'; 4097])
        .int("output", 17, &["100001", "-1", ""])
        .entry(3)
        .arity();
    let mut done_big = case.base.clone();
    done_big[15] = b"done".to_vec();
    done_big[16] = big.clone();
    case.variants
        .push(("a result of 16 MiB + 1".into(), done_big));
    let mut done_empty = case.base.clone();
    done_empty[15] = b"done".to_vec();
    done_empty[16] = Vec::new();
    case.variants.push(("an empty result".into(), done_empty));
    check(&mut conn, &case).await;

    // beat: the worker's liveness (ZADD) would be written first.
    let s = scene(&mut conn).await;
    let mut case = Case::new(
        "rtq3_beat",
        bytes(&["w1", "1000", "2", "0", &s.e1, "1", "1", &s.e2, "1"]),
    );
    case.id("worker", 0)
        .int("lease", 1, &["99", "600001", "0", "-1"])
        .int("count", 2, &["1", "3", "1025", "-1"])
        .int("band", 6, &["3", "-1"])
        .entry(7)
        .int("deliveries", 8, &["0", "-1"])
        .arity();
    check(&mut conn, &case).await;

    for (function, base) in [
        ("rtq3_join", vec!["w1"]),
        ("rtq3_takeover", vec!["w3", "1000", "10"]),
    ] {
        scene(&mut conn).await;
        let mut case = Case::new(function, bytes(&base));
        case.id("worker", 0).arity();
        if function == "rtq3_takeover" {
            case.int("lease", 1, &["99", "600001", "-1"])
                .int("free", 2, &["1025", "-1"]);
        }
        check(&mut conn, &case).await;
    }

    // cancel and status.
    scene(&mut conn).await;
    let mut case = Case::new("rtq3_cancel", bytes(&["t1", "stop"]));
    case.id("id", 0)
        .set("a reason of 4097 bytes".into(), 1, &[b'r'; 4097])
        .arity();
    check(&mut conn, &case).await;
    scene(&mut conn).await;
    let mut case = Case::new("rtq3_expire", bytes(&["t1"]));
    case.id("id", 0).arity();
    check(&mut conn, &case).await;
    scene(&mut conn).await;
    let mut case = Case::new("rtq3_status", bytes(&["t1"]));
    case.id("id", 0).arity();
    check(&mut conn, &case).await;
}

/// The state the corruption attacks start from (queue `g`, two bands,
/// everything reporting to `r:c`): `w1` holds t1 and t2 on band 0 (t2
/// aged past the lease, one attempt allowed), `w2` holds t5 on band 0 and
/// t3 on band 1 (aged, one attempt allowed), t4 waits on band 0 past its
/// deadline.
struct Messy {
    entries: std::collections::HashMap<&'static str, String>,
}

async fn messy(conn: &mut MultiplexedConnection) -> Messy {
    fresh(conn).await;
    let keys = QueueKeys::new(Q).unwrap();
    v3::create(conn, &keys, 2, 0).await.unwrap();
    let reply = keys.reply("c");
    raw(conn, &["XADD", &reply, "MAXLEN", "0", "*", "created", "1"]).await;
    let once = |id: &str, band| NewTask {
        max_attempts: 1,
        ..task(id, band, &reply)
    };
    let late = NewTask {
        deadline_ms: 1,
        ..task("t4", 0, &reply)
    };
    let tasks = [
        task("t1", 0, &reply),
        once("t2", 0),
        task("t5", 0, &reply),
        once("t3", 1),
    ];
    let mut out = v3::submit(conn, &keys, &tasks).await.unwrap();
    out.extend(v3::submit(conn, &keys, &[late]).await.unwrap());
    let mut entries = std::collections::HashMap::new();
    for (id, a) in ["t1", "t2", "t5", "t3", "t4"].iter().zip(&out) {
        entries.insert(*id, entry_of(a));
    }
    assert_eq!(
        v3::read_new(conn, &keys, "w1", 0, 2, None)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        v3::read_new(conn, &keys, "w2", 0, 1, None)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        v3::read_new(conn, &keys, "w2", 1, 1, None)
            .await
            .unwrap()
            .len(),
        1
    );
    v3::beat(conn, &keys, "w1", 600_000, &[]).await.unwrap();
    v3::beat(conn, &keys, "w2", 600_000, &[]).await.unwrap();
    let b0 = v3::band_key(&keys, 0);
    let b1 = v3::band_key(&keys, 1);
    raw(
        conn,
        &[
            "XCLAIM",
            &b0,
            "w",
            "w1",
            "0",
            &entries["t2"],
            "IDLE",
            AGED_MS,
            "JUSTID",
        ],
    )
    .await;
    raw(
        conn,
        &[
            "XCLAIM",
            &b1,
            "w",
            "w2",
            "0",
            &entries["t3"],
            "IDLE",
            AGED_MS,
            "JUSTID",
        ],
    )
    .await;
    Messy { entries }
}

/// The calls made on a corrupted queue: each would write before it meets
/// the corrupt key (on band 0, or for an earlier item).
fn messy_calls(m: &Messy) -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let e = |id: &str| m.entries[id].clone();
    let r = QueueKeys::new(Q).unwrap().reply("c");
    vec![
        (
            "rtq3_submit",
            bytes(&[
                "2", "n1", "0", "{}", &r, "0", "3", "60000", "n2", "1", "{}", &r, "0", "3", "60000",
            ]),
        ),
        (
            "rtq3_complete",
            bytes(&[
                "w1",
                "2",
                "0",
                &e("t1"),
                "t1",
                "1",
                "0",
                "done",
                "{}",
                "-",
                "1",
                &e("t3"),
                "t3",
                "1",
                "0",
                "failed",
                "x",
                "-",
            ]),
        ),
        (
            "rtq3_complete",
            bytes(&[
                "w2",
                "2",
                "0",
                &e("t5"),
                "t5",
                "1",
                "0",
                "retry",
                "x",
                "-",
                "1",
                &e("t3"),
                "t3",
                "1",
                "0",
                "done",
                "{}",
                "-",
            ]),
        ),
        (
            "rtq3_complete",
            bytes(&[
                "w1",
                "2",
                "0",
                &e("t1"),
                "t1",
                "1",
                "0",
                "failed",
                "x",
                "-",
                "0",
                &e("t2"),
                "t2",
                "1",
                "0",
                "done",
                "{}",
                "-",
            ]),
        ),
        (
            "rtq3_write",
            bytes(&[
                "w2",
                "2",
                "0",
                &e("t5"),
                "t5",
                "1",
                "0",
                "0",
                "1",
                "a",
                "1",
                &e("t3"),
                "t3",
                "1",
                "0",
                "0",
                "1",
                "b",
            ]),
        ),
        (
            "rtq3_write",
            bytes(&[
                "w1",
                "2",
                "0",
                &e("t2"),
                "t2",
                "1",
                "0",
                "0",
                "1",
                "a",
                "0",
                &e("t1"),
                "t1",
                "1",
                "0",
                "0",
                "1",
                "b",
            ]),
        ),
        (
            "rtq3_beat",
            bytes(&["w1", "600000", "2", "0", &e("t1"), "1", "1", &e("t3"), "1"]),
        ),
        ("rtq3_join", bytes(&["w2"])),
        ("rtq3_join", bytes(&["w1"])),
        ("rtq3_takeover", bytes(&["w3", LEASE, "10"])),
        ("rtq3_cancel", bytes(&["t1", "stop"])),
        ("rtq3_cancel", bytes(&["t3", "stop"])),
        ("rtq3_cancel", bytes(&["t4", "stop"])),
        ("rtq3_expire", bytes(&["t4"])),
        ("rtq3_expire", bytes(&["t1"])),
        ("rtq3_status", bytes(&["t1"])),
        ("rtq3_status", bytes(&["t3"])),
        ("rtq3_create", bytes(&["2", "5"])),
    ]
}

/// A key of the queue made to hold a foreign value, by commands.
struct Corruption {
    what: &'static str,
    commands: Vec<Vec<String>>,
}

fn corruptions(m: &Messy) -> Vec<Corruption> {
    let p = "rtq:{g}:";
    let c = |what, cmds: &[&[&str]]| Corruption {
        what,
        commands: cmds
            .iter()
            .map(|c| c.iter().map(|s| s.replace("P:", p)).collect())
            .collect(),
    };
    let e2 = m.entries["t2"].clone();
    vec![
        c(
            "meta a list",
            &[&["DEL", "P:meta"], &["RPUSH", "P:meta", "x"]],
        ),
        c("meta's n not a number", &[&["HSET", "P:meta", "n", "abc"]]),
        c(
            "meta's bands not a number",
            &[&["HSET", "P:meta", "bands", "x"]],
        ),
        c("b:1 a string", &[&["DEL", "P:b:1"], &["SET", "P:b:1", "x"]]),
        c(
            "b:1 without its group",
            &[&["XGROUP", "DESTROY", "P:b:1", "w"]],
        ),
        c("b:1 deleted", &[&["DEL", "P:b:1"]]),
        c(
            "an entry on b:0 with a retention that is not an integer",
            &[&[
                "XADD", "P:b:0", "*", "t", "zz", "s", "{}", "r", "", "d", "1", "x", "3", "a0", "0",
                "ret", "1.5", "u", "1",
            ]],
        ),
        c(
            "a foreign entry on b:1",
            &[&["XADD", "P:b:1", "*", "foo", "bar"]],
        ),
        c(
            "m:t3 a hash",
            &[&["DEL", "P:m:t3"], &["HSET", "P:m:t3", "f", "v"]],
        ),
        c(
            "m:t1 a hash",
            &[&["DEL", "P:m:t1"], &["HSET", "P:m:t1", "f", "v"]],
        ),
        c(
            "m:t4 a hash",
            &[&["DEL", "P:m:t4"], &["HSET", "P:m:t4", "f", "v"]],
        ),
        c("o:t1:1 a string", &[&["SET", "P:o:t1:1", "x"]]),
        c("o:t2:1 a string", &[&["SET", "P:o:t2:1", "x"]]),
        c("o:t3:1 a hash", &[&["HSET", "P:o:t3:1", "f", "v"]]),
        c("o:t1:0 a string", &[&["SET", "P:o:t1:0", "x"]]),
        c("in:w1 a hash", &[&["HSET", "P:in:w1", "f", "v"]]),
        c("dl a string", &[&["DEL", "P:dl"], &["SET", "P:dl", "x"]]),
        c("lv a string", &[&["DEL", "P:lv"], &["SET", "P:lv", "x"]]),
        c(
            "the reply stream a string",
            &[&["DEL", "P:r:c"], &["SET", "P:r:c", "x"]],
        ),
        c(
            "m:t3 names t2's entry",
            &[&["SET", "P:m:t3", &format!("0 {e2} 60000 -")]],
        ),
    ]
}

/// Every function on every corruption: it either succeeds, or refuses
/// on purpose (INVALID, or the library's WRONGTYPE) having written
/// nothing; never a Redis error halfway through its writes.
#[tokio::test]
async fn no_function_writes_half_on_a_key_of_a_foreign_type() {
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;
    let m = messy(&mut conn).await;
    let (calls, corruptions) = (messy_calls(&m).len(), corruptions(&m).len());
    let mut failures = Vec::new();
    for ci in 0..corruptions {
        for fi in 0..calls {
            // A fresh scene for each attack: entry ids differ every time.
            let m = messy(&mut conn).await;
            let c = &crate::corruptions(&m)[ci];
            let (function, args) = &messy_calls(&m)[fi];
            for cmd in &c.commands {
                let parts: Vec<&str> = cmd.iter().map(String::as_str).collect();
                raw(&mut conn, &parts).await;
            }
            let before = snapshot(&mut conn).await;
            let r = fcall(&mut conn, function, args).await;
            let what = format!("{function} {} with {}", printable(args), c.what);
            match &r {
                Ok(_) => {}
                Err(e) if deliberate(e) => {
                    if snapshot(&mut conn).await != before {
                        failures.push(format!("{what}: refused ({e}) but wrote"));
                    }
                }
                Err(e) => {
                    let wrote = snapshot(&mut conn).await != before;
                    failures.push(format!(
                        "{what}: failed inside the function ({e}){}",
                        if wrote { " after writing" } else { "" }
                    ));
                }
            }
            if c.what == "the reply stream a string" && r.is_err() {
                failures.push(format!(
                    "{what}: a client's broken reply stream failed the call"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn printable(args: &[Vec<u8>]) -> String {
    args.iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The one attack that made the library write half before this test: an
/// entry id Redis cannot parse (past 2^64 - 1) in a later item passed the
/// argument checks, and Redis refused it only after the first item was
/// written (complete: t1 ended; beat: the worker's liveness renewed).
#[tokio::test]
async fn an_entry_id_past_2_64_in_a_later_item_is_refused_before_the_first_is_written() {
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;
    let s = scene(&mut conn).await;
    let before = snapshot(&mut conn).await;
    for (function, args) in [
        (
            "rtq3_complete",
            bytes(&[
                "w1",
                "2",
                "0",
                &s.e1,
                "t1",
                "1",
                "0",
                "done",
                "{}",
                "-",
                "1",
                "18446744073709551616-0",
                "t2",
                "1",
                "0",
                "failed",
                "why",
                "-",
            ]),
        ),
        (
            "rtq3_beat",
            bytes(&[
                "w1",
                "1000",
                "2",
                "0",
                &s.e1,
                "1",
                "0",
                "0-18446744073709551616",
                "1",
            ]),
        ),
    ] {
        let r = fcall(&mut conn, function, &args).await;
        assert!(
            matches!(&r, Err(e) if e.code() == Some("INVALID")),
            "{function}: {}",
            short(&r)
        );
        assert!(
            snapshot(&mut conn).await == before,
            "{function} wrote before it refused"
        );
    }
    // The largest entry id Redis knows is an entry id: not refused.
    let r = fcall(
        &mut conn,
        "rtq3_beat",
        &bytes(&[
            "w1",
            "1000",
            "1",
            "0",
            "18446744073709551615-18446744073709551615",
            "1",
        ]),
    )
    .await;
    assert!(r.is_ok(), "{}", short(&r));
}

/// Redis restarted empty (its data and its functions gone): every binding
/// loads the library again by itself and answers a clear InvalidInput for
/// the queue that no longer exists, writing nothing; creating the queue
/// again makes it usable.
#[tokio::test]
async fn after_redis_lost_everything_the_bindings_reload_and_name_the_missing_queue() {
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;
    let keys = QueueKeys::new(Q).unwrap();
    v3::create(&mut conn, &keys, 2, 0).await.unwrap();
    let out = v3::submit(&mut conn, &keys, &[task("t1", 0, "")])
        .await
        .unwrap();
    let entry = entry_of(&out[0]);

    let wiped = |conn: &mut MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            raw(&mut conn, &["FLUSHALL"]).await;
            raw(&mut conn, &["FUNCTION", "FLUSH"]).await;
        }
    };
    let held = Held {
        band: 0,
        entry,
        deliveries: 1,
        a0: 0,
    };
    let ending = Ending {
        held: held.clone(),
        id: "t1".into(),
        state: EndState::Done("{}".into()),
        output: None,
    };
    let missing = |what: &str, e: Error| match e {
        Error::InvalidInput(m) if m.contains("not a stream queue") => {}
        other => panic!("{what}: expected InvalidInput naming the missing queue, got {other:?}"),
    };
    // Each binding first finds the library missing.
    wiped(&mut conn).await;
    missing(
        "status",
        v3::status(&mut conn, &keys, "t1").await.unwrap_err(),
    );
    wiped(&mut conn).await;
    missing(
        "submit",
        v3::submit(&mut conn, &keys, &[task("t2", 0, "")])
            .await
            .unwrap_err(),
    );
    wiped(&mut conn).await;
    missing(
        "complete",
        v3::complete(&mut conn, &keys, "w1", std::slice::from_ref(&ending))
            .await
            .unwrap_err(),
    );
    wiped(&mut conn).await;
    missing(
        "beat",
        v3::beat(&mut conn, &keys, "w1", 1000, &[held])
            .await
            .unwrap_err(),
    );
    wiped(&mut conn).await;
    missing("join", v3::join(&mut conn, &keys, "w1").await.unwrap_err());
    wiped(&mut conn).await;
    missing(
        "takeover",
        v3::takeover(&mut conn, &keys, "w1", 1000, 4)
            .await
            .unwrap_err(),
    );
    wiped(&mut conn).await;
    missing(
        "cancel",
        v3::cancel(&mut conn, &keys, "t1", "stop")
            .await
            .unwrap_err(),
    );
    assert!(snapshot(&mut conn).await.is_empty(), "a refused call wrote");

    wiped(&mut conn).await;
    v3::create(&mut conn, &keys, 2, 0).await.unwrap();
    let out = v3::submit(&mut conn, &keys, &[task("t1", 1, "")])
        .await
        .unwrap();
    assert!(matches!(out[0], Admission::Added { .. }), "{out:?}");
    assert!(matches!(
        v3::status(&mut conn, &keys, "t1").await.unwrap(),
        Status::Queued {
            band: 1,
            ahead: 0,
            ..
        }
    ));
}

/// A v2 (`exact`) queue is not a stream queue: v3 neither submits to it
/// nor turns it into one, and writes nothing trying.
#[tokio::test]
async fn a_v2_queue_refuses_v3_submits_and_v3_create() {
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;
    // A v2 queue made by v2's own submit (no client left running that
    // could write while the keyspace is compared).
    let mut v2 = support::proto::Proto::connect(&redis, Q).await;
    v2.submit(&support::proto::Task::new("v2-task")).await;
    let keys = QueueKeys::new(Q).unwrap();
    let before = snapshot(&mut conn).await;
    let e = v3::submit(&mut conn, &keys, &[task("t1", 0, "")])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput(m) if m.contains("not a stream queue")),
        "{e:?}"
    );
    let e = v3::create(&mut conn, &keys, 1, 0).await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput(m) if m.contains("exact (v2) queue")),
        "{e:?}"
    );
    assert!(snapshot(&mut conn).await == before, "a refused call wrote");
}

/// What a client and a worker rely on: an ending whose entry holds another
/// task is LOST and writes nothing; cancelling an ended task answers how
/// it ended; an unknown id is unknown; a task past its deadline while
/// queued ends expired at the next housekeeping with one final event.
#[tokio::test]
async fn endings_cancels_and_deadlines_keep_their_contract() {
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;
    let keys = QueueKeys::new(Q).unwrap();
    let s = scene(&mut conn).await;
    let held = Held {
        band: 0,
        entry: s.e1.clone(),
        deliveries: 1,
        a0: 0,
    };

    // w1 holds t1's entry; an ending of it under t2's (or no task's) id.
    let before = snapshot(&mut conn).await;
    for id in ["t2", "nobody"] {
        let out = v3::complete(
            &mut conn,
            &keys,
            "w1",
            &[Ending {
                held: held.clone(),
                id: id.into(),
                state: EndState::Done("{}".into()),
                output: None,
            }],
        )
        .await
        .unwrap();
        assert_eq!(out, vec![Completed::Lost], "ending t1's entry as {id}");
        assert!(
            snapshot(&mut conn).await == before,
            "a LOST ending as {id} wrote"
        );
    }

    // Cancels of ended tasks.
    let out = v3::complete(
        &mut conn,
        &keys,
        "w1",
        &[Ending {
            held,
            id: "t1".into(),
            state: EndState::Done("{\"ok\":1}".into()),
            output: None,
        }],
    )
    .await
    .unwrap();
    assert_eq!(out, vec![Completed::Ok]);
    let before = snapshot(&mut conn).await;
    assert_eq!(
        v3::cancel(&mut conn, &keys, "t1", "late").await.unwrap(),
        Cancelled::Ended(TaskState::Done)
    );
    assert!(
        snapshot(&mut conn).await == before,
        "a cancel of an ended task wrote"
    );
    assert_eq!(
        v3::cancel(&mut conn, &keys, "t2", "stop").await.unwrap(),
        Cancelled::Ok(None)
    );
    assert_eq!(
        v3::cancel(&mut conn, &keys, "t2", "again").await.unwrap(),
        Cancelled::Ended(TaskState::Cancelled)
    );
    assert_eq!(
        v3::cancel(&mut conn, &keys, "nobody", "stop")
            .await
            .unwrap(),
        Cancelled::NotFound
    );
    assert_eq!(
        v3::status(&mut conn, &keys, "nobody").await.unwrap(),
        Status::Unknown
    );

    // A deadline already past at submit.
    let late = NewTask {
        deadline_ms: 1,
        ..task("late", 2, &s.reply)
    };
    v3::submit(&mut conn, &keys, &[late]).await.unwrap();
    let (ended, taken) = v3::takeover(&mut conn, &keys, "w2", 600_000, 4)
        .await
        .unwrap();
    assert_eq!((ended, taken.len()), (1, 0));
    match v3::status(&mut conn, &keys, "late").await.unwrap() {
        Status::Ended {
            state,
            kind,
            attempt,
            ..
        } => {
            assert_eq!(
                (state, kind.as_str(), attempt),
                (TaskState::Expired, "timeout_queued", 0)
            );
        }
        other => panic!("late: {other:?}"),
    }
    assert_eq!(
        v3::takeover(&mut conn, &keys, "w2", 600_000, 4)
            .await
            .unwrap()
            .0,
        0
    );
    assert_eq!(
        v3::cancel(&mut conn, &keys, "late", "stop").await.unwrap(),
        Cancelled::Ended(TaskState::Expired)
    );
    let events = final_events(&mut conn, &s.reply, "late").await;
    assert_eq!(
        events,
        vec!["expired".to_string()],
        "one final event for late"
    );
}

/// The states of the final (`e` = `f`) events of task `id` in `reply`.
async fn final_events(conn: &mut MultiplexedConnection, reply: &str, id: &str) -> Vec<String> {
    let rows: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(reply)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    rows.into_iter()
        .filter_map(|(_, fields)| {
            let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
            (get("t").as_deref() == Some(id) && get("e").as_deref() == Some("f"))
                .then(|| get("st").unwrap_or_default())
        })
        .collect()
}

/// A marker that names another task's entry (a foreign write) never makes
/// cancel end that other task, nor status report it as this one.
#[tokio::test]
async fn a_marker_naming_another_tasks_entry_is_not_that_task() {
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;
    let keys = QueueKeys::new(Q).unwrap();
    let s = scene(&mut conn).await;
    let marker = v3::marker_key(&keys, "zz");
    raw(&mut conn, &["SET", &marker, &format!("0 {} 60000 -", s.e1)]).await;
    let before = snapshot(&mut conn).await;
    assert_eq!(
        v3::status(&mut conn, &keys, "zz").await.unwrap(),
        Status::Unknown
    );
    assert_eq!(
        v3::cancel(&mut conn, &keys, "zz", "stop").await.unwrap(),
        Cancelled::NotFound
    );
    assert!(snapshot(&mut conn).await == before, "cancel of zz wrote");
    assert!(matches!(
        v3::status(&mut conn, &keys, "t1").await.unwrap(),
        Status::Running { attempt: 1, .. }
    ));
}

/// A stream queue is not fed or served through v2: a v2 submit and a v2
/// worker's registration are refused, with nothing written (v2 would
/// otherwise keep its tasks in keys the stream queue's readers never see).
#[tokio::test]
async fn a_stream_queue_refuses_v2_submits_and_v2_workers() {
    use rtq_core::functions::heartbeat::{Beat, Register};
    use rtq_core::functions::submit::Submit;
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;
    let keys = QueueKeys::new(Q).unwrap();
    v3::create(&mut conn, &keys, 1, 0).await.unwrap();
    rtq_core::functions::ensure_loaded(&mut conn).await.unwrap();
    let before = snapshot(&mut conn).await;
    let submit = rtq_core::functions::call(
        &mut conn,
        &keys,
        &Submit {
            id: "t1",
            spec: r#"{"v":2,"id":"t1","input":{}}"#,
            priority: 0,
            timeout_ms: 0,
            max_attempts: 1,
            retention_ms: 60_000,
            reply: "",
            stream: false,
        },
    )
    .await;
    assert!(
        matches!(&submit, Err(Error::InvalidInput(m)) if m.contains("stream queue")),
        "{submit:?}"
    );
    let running: Vec<(String, u64)> = Vec::new();
    let register = rtq_core::functions::call(
        &mut conn,
        &keys,
        &Register(Beat {
            worker: "w1",
            instance: "i1",
            lease_ms: 5_000,
            slots: 1,
            accepting: true,
            running: &running,
            info: &[],
        }),
    )
    .await;
    assert!(
        matches!(&register, Err(Error::InvalidInput(m)) if m.contains("stream queue")),
        "{register:?}"
    );
    assert!(
        snapshot(&mut conn).await == before,
        "a refused v2 call wrote"
    );
}

/// v2's operator functions (revision 16) refuse a stream queue before
/// reading or writing anything: a pause, purge or requeue through v2
/// would act on keys a stream queue does not use (or write `paused` and
/// `maxd` that v3 reads differently).
#[tokio::test]
async fn v2_operator_functions_refuse_a_stream_queue() {
    let redis = RedisServer::start();
    let mut conn = patient_conn(&redis.url()).await;
    let keys = QueueKeys::new(Q).unwrap();
    v3::create(&mut conn, &keys, 1, 0).await.unwrap();
    v3::submit(&mut conn, &keys, &[task("t1", 0, "")])
        .await
        .unwrap();
    rtq_core::functions::ensure_loaded(&mut conn).await.unwrap();
    let before = snapshot(&mut conn).await;
    for (function, args) in [
        ("rtq2_pause", vec!["1"]),
        ("rtq2_set_max_depth", vec!["5"]),
        ("rtq2_purge", vec!["10"]),
        ("rtq2_set_priority", vec!["t1", "5"]),
        ("rtq2_delete_task", vec!["t1"]),
        ("rtq2_housekeep", vec![]),
        ("rtq2_requeue", vec!["t1", "again"]),
    ] {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function).arg(1).arg(keys.meta());
        for a in &args {
            cmd.arg(*a);
        }
        let reply: redis::RedisResult<redis::Value> = cmd.query_async(&mut conn).await;
        let refused = reply
            .as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("is a stream queue"));
        assert!(refused, "{function}: {reply:?}");
    }
    assert!(
        snapshot(&mut conn).await == before,
        "a refused v2 operator call wrote"
    );
}
