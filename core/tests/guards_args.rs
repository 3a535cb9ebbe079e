//! Every protocol function's argument checks at their exact boundaries:
//! the largest and smallest accepted value of each argument is accepted,
//! one past it is refused with `INVALID`, the argument count is enforced,
//! and a refused call writes nothing.
//!
//! The limits come from the Rust side (`rtq_core::protocol`,
//! `rtq_core::keys`), never from the Lua source, so a script whose bound
//! drifts by one (a mutation run's `<` for `<=`, or a constant shifted by
//! one) fails here. Entities in the calls need not exist: every function
//! validates all its arguments before it looks anything up.

mod support;

use rtq_core::keys::MAX_ID_LEN;
use rtq_core::protocol::{
    MAX_ATTEMPTS, MAX_ATTEMPT_NUMBER, MAX_CHUNKS_PER_CALL, MAX_CHUNK_BYTES, MAX_DURATION,
    MAX_OUTPUT_CHUNKS, MAX_RESULT_BYTES, MAX_SLOTS, MAX_SPEC_BYTES, MAX_TEXT_BYTES, PRIORITY_MAX,
    PRIORITY_MIN,
};
use support::proto::{Proto, RedisServer};

/// The lease bounds a worker may register with (PROTOCOL.md, rtq2_register).
const MIN_LEASE_MS: u64 = 100;
const MAX_LEASE_MS: u64 = 600_000;
/// The largest batch a purge call takes.
const MAX_PURGE_BATCH: u64 = 1000;
/// The largest max depth a queue can be given (2^40).
const MAX_DEPTH: u64 = 1 << 40;

/// One function's valid call and the variants to try on it.
struct Case {
    function: &'static str,
    base: Vec<String>,
    /// (what, arguments, must be refused)
    variants: Vec<(String, Vec<String>, bool)>,
}

impl Case {
    fn new(function: &'static str, base: &[&str]) -> Case {
        Case {
            function,
            base: base.iter().map(|s| s.to_string()).collect(),
            variants: Vec::new(),
        }
    }

    /// Argument `i` set to `value`.
    fn with(&mut self, what: &str, i: usize, value: String, refused: bool) -> &mut Case {
        let mut args = self.base.clone();
        args[i] = value;
        self.variants.push((what.to_string(), args, refused));
        self
    }

    /// Integer argument `i` at `lo` and `hi` (accepted) and one past each
    /// (refused).
    fn int(&mut self, name: &str, i: usize, lo: i128, hi: i128) -> &mut Case {
        self.with(&format!("{name} = {lo}"), i, lo.to_string(), false)
            .with(
                &format!("{name} = {}", lo - 1),
                i,
                (lo - 1).to_string(),
                true,
            )
            .with(&format!("{name} = {hi}"), i, hi.to_string(), false)
            .with(
                &format!("{name} = {}", hi + 1),
                i,
                (hi + 1).to_string(),
                true,
            )
            .with(&format!("{name} not a number"), i, "1x".into(), true)
            .with(&format!("{name} in exponent form"), i, "1e3".into(), true);
        if lo >= 0 {
            // At most 20 characters, whatever the value.
            self.with(
                &format!("{name} zero-padded to 20"),
                i,
                format!("{lo:0>20}"),
                false,
            )
            .with(
                &format!("{name} zero-padded to 21"),
                i,
                format!("{lo:0>21}"),
                true,
            );
        }
        self
    }

    /// Id argument `i`: the longest accepted, one byte longer, empty and a
    /// forbidden character.
    fn id(&mut self, name: &str, i: usize) -> &mut Case {
        self.with(
            &format!("{name} of {MAX_ID_LEN} bytes"),
            i,
            "i".repeat(MAX_ID_LEN),
            false,
        )
        .with(
            &format!("{name} of {} bytes", MAX_ID_LEN + 1),
            i,
            "i".repeat(MAX_ID_LEN + 1),
            true,
        )
        .with(&format!("{name} empty"), i, String::new(), true)
        .with(&format!("{name} with a space"), i, "a b".into(), true)
    }

    /// Text argument `i` of at most `max` bytes.
    fn text(&mut self, name: &str, i: usize, max: usize) -> &mut Case {
        self.with(&format!("{name} of {max} bytes"), i, "t".repeat(max), false)
            .with(
                &format!("{name} of {} bytes", max + 1),
                i,
                "t".repeat(max + 1),
                true,
            )
    }

    /// Flag argument `i` ('0' or '1').
    fn flag(&mut self, name: &str, i: usize) -> &mut Case {
        self.with(&format!("{name} = 0"), i, "0".into(), false)
            .with(&format!("{name} = 1"), i, "1".into(), false)
            .with(&format!("{name} = 2"), i, "2".into(), true)
            .with(&format!("{name} empty"), i, String::new(), true)
    }

    /// Enum argument `i`.
    fn one_of(&mut self, name: &str, i: usize, allowed: &[&str]) -> &mut Case {
        for a in allowed {
            self.with(&format!("{name} = {a}"), i, a.to_string(), false);
        }
        self.with(&format!("{name} unknown"), i, "nope".into(), true)
    }

    /// One argument fewer and (for fixed arity) one more are refused.
    fn arity(&mut self, fixed: bool) -> &mut Case {
        let mut fewer = self.base.clone();
        fewer.pop();
        self.variants
            .push(("one argument fewer".into(), fewer, true));
        if fixed {
            self.one_more();
        }
        self
    }

    /// One argument more is refused (the base has every optional one).
    fn one_more(&mut self) -> &mut Case {
        let mut more = self.base.clone();
        more.push("0".into());
        self.variants.push(("one argument more".into(), more, true));
        self
    }
}

/// The error code of a call, or None when it was not refused.
async fn fcall(p: &mut Proto, function: &str, args: &[String]) -> Result<redis::Value, String> {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(function).arg(1).arg(p.keys.meta());
    for a in args {
        cmd.arg(a.as_bytes());
    }
    cmd.query_async::<redis::Value>(&mut p.conn)
        .await
        .map_err(|e| e.code().unwrap_or("?").to_string() + ": " + &e.to_string())
}

async fn check(p: &mut Proto, case: &Case) {
    let base = fcall(p, case.function, &case.base).await;
    assert!(
        base.is_ok(),
        "{}: the base call must be accepted: {base:?}",
        case.function
    );
    for (what, args, refused) in &case.variants {
        let before = if *refused {
            Some(p.snapshot().await)
        } else {
            None
        };
        let r = fcall(p, case.function, args).await;
        match (refused, &r) {
            (true, Err(e)) if e.starts_with("INVALID") => {}
            (false, Ok(_)) => {}
            _ => panic!(
                "{} with {what}: expected {}, got {}",
                case.function,
                if *refused { "INVALID" } else { "acceptance" },
                match &r {
                    Ok(v) => format!("{v:?}").chars().take(200).collect::<String>(),
                    Err(e) => e.clone(),
                }
            ),
        }
        if let Some(before) = before {
            assert_eq!(
                p.snapshot().await,
                before,
                "{} with {what} wrote",
                case.function
            );
        }
    }
}

fn days30() -> i128 {
    MAX_DURATION.as_millis() as i128
}

#[tokio::test]
async fn submit_checks_every_argument_at_its_bounds() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    let mut c = Case::new("rtq2_submit", &["t1", "{}", "0", "0", "3", "1000", "", "0"]);
    // A fresh id per accepted variant would not matter: a duplicate is
    // answered as DUPLICATE after validation, never INVALID.
    c.id("task id", 0)
        .with("spec empty", 1, String::new(), true)
        .with("spec at the cap", 1, "s".repeat(MAX_SPEC_BYTES), false)
        .with("spec past the cap", 1, "s".repeat(MAX_SPEC_BYTES + 1), true)
        .int(
            "priority",
            2,
            i128::from(PRIORITY_MIN),
            i128::from(PRIORITY_MAX),
        )
        .int("timeout", 3, 0, days30())
        .int("max attempts", 4, 1, i128::from(MAX_ATTEMPTS))
        .int("retention", 5, 1, days30())
        .with(
            "reply stream of another queue",
            6,
            "rtq:{x}:r:c1".into(),
            true,
        )
        .with(
            "reply stream of this queue",
            6,
            "rtq:{q}:r:c1".into(),
            false,
        )
        .with(
            "reply stream with a bad client id",
            6,
            "rtq:{q}:r:a b".into(),
            true,
        )
        .with(
            "reply stream with a bad first character",
            6,
            "rtq:{q}:r: b".into(),
            true,
        )
        .with(
            "reply stream with no client id",
            6,
            "rtq:{q}:r:".into(),
            true,
        )
        .with(
            "reply stream of the longest client id",
            6,
            format!("rtq:{{q}}:r:{}", "c".repeat(MAX_ID_LEN)),
            false,
        )
        .with(
            "reply stream of a client id too long",
            6,
            format!("rtq:{{q}}:r:{}", "c".repeat(MAX_ID_LEN + 1)),
            true,
        )
        .flag("stream flag", 7)
        .arity(true);
    check(&mut p, &c).await;
}

#[tokio::test]
async fn worker_calls_check_every_argument_at_their_bounds() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    let max_chunks = i128::from(u32::try_from(MAX_OUTPUT_CHUNKS).unwrap());
    let slots = MAX_SLOTS as i128;

    for function in ["rtq2_register", "rtq2_heartbeat"] {
        let mut c = Case::new(function, &["w1", "i1", "1000", "2", "1", "0"]);
        c.id("worker id", 0)
            .id("instance", 1)
            .int(
                "lease",
                2,
                i128::from(MIN_LEASE_MS as u32),
                i128::from(MAX_LEASE_MS as u32),
            )
            .int("slots", 3, 1, slots)
            .flag("accepting", 4)
            .with("running count 1 without its pair", 5, "1".into(), true)
            .with("running count -1", 5, "-1".into(), true)
            .arity(false);
        // Running pairs: an attempt of 0 is refused, a count past the limit
        // too, the full count is accepted.
        let mut pair = c.base.clone();
        pair[5] = "1".into();
        pair.extend(["t1".to_string(), "1".to_string()]);
        c.variants
            .push(("one running pair".into(), pair.clone(), false));
        let mut zero = pair.clone();
        zero[7] = "0".into();
        c.variants
            .push(("a running attempt of 0".into(), zero, true));
        let mut bad_id = pair.clone();
        bad_id[6] = "a b".into();
        c.variants
            .push(("a running id with a space".into(), bad_id, true));
        for (n, refused) in [(MAX_SLOTS, false), (MAX_SLOTS + 1, true)] {
            let mut full = c.base.clone();
            full[5] = n.to_string();
            for i in 0..n {
                full.extend([format!("t{i}"), "1".to_string()]);
            }
            c.variants
                .push((format!("{n} running pairs"), full, refused));
        }
        // Worker info: a known field with a value at the cap, one past it,
        // an unknown field, an odd count.
        let mut info = c.base.clone();
        info.extend(["host".to_string(), "h".repeat(MAX_TEXT_BYTES)]);
        c.variants
            .push(("host info at the cap".into(), info.clone(), false));
        let mut long = c.base.clone();
        long.extend(["host".to_string(), "h".repeat(MAX_TEXT_BYTES + 1)]);
        c.variants
            .push(("host info past the cap".into(), long, true));
        let mut unknown = c.base.clone();
        unknown.extend(["colour".to_string(), "red".to_string()]);
        c.variants
            .push(("an unknown info field".into(), unknown, true));
        let mut odd = c.base.clone();
        odd.push("host".into());
        c.variants
            .push(("info without its value".into(), odd, true));
        check(&mut p, &c).await;
    }

    let mut c = Case::new("rtq2_chunk", &["w1", "t1", "1", "0"]);
    c.id("worker id", 0)
        .id("task id", 1)
        .int("attempt", 2, 1, 1_000_000_000_000_000)
        .int("seq0", 3, 0, max_chunks)
        .arity(false);
    let mut at_cap = c.base.clone();
    at_cap.extend((0..MAX_CHUNKS_PER_CALL).map(|_| "c".to_string()));
    c.variants
        .push(("chunks at the per-call cap".into(), at_cap.clone(), false));
    let mut past_cap = at_cap;
    past_cap.push("c".into());
    c.variants
        .push(("chunks past the per-call cap".into(), past_cap, true));
    let mut big = c.base.clone();
    big.push("b".repeat(MAX_CHUNK_BYTES));
    c.variants
        .push(("a chunk at the size cap".into(), big.clone(), false));
    big[4].push('b');
    c.variants
        .push(("a chunk past the size cap".into(), big, true));
    check(&mut p, &c).await;

    let mut c = Case::new("rtq2_complete", &["w1", "t1", "1", "0", "done", "{}", "0"]);
    c.id("worker id", 0)
        .id("task id", 1)
        .int("attempt", 2, 1, 1_000_000_000_000_000)
        .int("seq0", 3, 0, max_chunks)
        .one_of("outcome", 4, &["done", "failed", "retry"])
        .text("result", 5, MAX_RESULT_BYTES)
        .one_of("want next", 6, &["0", "1", "2"])
        .with("want next empty", 6, String::new(), true)
        .arity(false);
    for outcome in ["failed", "retry"] {
        let mut reason = c.base.clone();
        reason[4] = outcome.into();
        reason[5] = "r".repeat(16 * MAX_TEXT_BYTES);
        c.variants.push((
            format!("{outcome} reason at the cap"),
            reason.clone(),
            false,
        ));
        reason[5].push('r');
        c.variants
            .push((format!("{outcome} reason past the cap"), reason, true));
    }
    let mut past_cap = c.base.clone();
    past_cap.extend((0..=MAX_CHUNKS_PER_CALL).map(|_| "c".to_string()));
    c.variants
        .push(("trailing chunks past the cap".into(), past_cap, true));
    check(&mut p, &c).await;

    // rtq2_complete_many: the second completion's arguments at their
    // bounds (every completion is checked before anything is written).
    let mut c = Case::new(
        "rtq2_complete_many",
        &[
            "w1", "2", "t1", "1", "0", "done", "{}", "0", "0", "t2", "1", "0", "done", "{}", "0",
            "1", "c",
        ],
    );
    c.id("worker id", 0)
        .id("task id", 9)
        .int("attempt", 10, 1, 1_000_000_000_000_000)
        .int("seq0", 11, 0, max_chunks)
        .one_of("outcome", 12, &["done", "failed", "retry"])
        .text("result", 13, MAX_RESULT_BYTES)
        .one_of("want next", 14, &["0", "1", "2"])
        .with("want next empty", 14, String::new(), true)
        .with("completion count 0", 1, "0".into(), true)
        .with(
            "completion count above the completions",
            1,
            "3".into(),
            true,
        )
        .with(
            "completion count below the completions",
            1,
            "1".into(),
            true,
        )
        .with("completion count not a number", 1, "2x".into(), true)
        .with("chunk count 0 with a chunk after it", 15, "0".into(), true)
        .with("chunk count past the arguments", 15, "2".into(), true)
        .with("chunk count past the cap", 15, "513".into(), true)
        .with("chunk count not a number", 15, "x".into(), true)
        .arity(false);
    let mut chunk_cap = c.base.clone();
    chunk_cap[16] = "b".repeat(MAX_CHUNK_BYTES);
    c.variants
        .push(("a chunk at the size cap".into(), chunk_cap.clone(), false));
    chunk_cap[16].push('b');
    c.variants
        .push(("a chunk past the size cap".into(), chunk_cap, true));
    check(&mut p, &c).await;

    let mut c = Case::new("rtq2_release", &["w1", "i1", "pause", "0"]);
    c.id("worker id", 0)
        .id("instance", 1)
        .one_of("mode", 2, &["pause", "handback", "leave"])
        .with("count 1 without its triple", 3, "1".into(), true)
        .with("count -1", 3, "-1".into(), true)
        .arity(false);
    let mut triple = c.base.clone();
    triple[3] = "1".into();
    triple.extend(["t1".to_string(), "1".to_string(), "1".to_string()]);
    c.variants
        .push(("one triple".into(), triple.clone(), false));
    for (i, value, what) in [
        (4, "a b", "a listed id with a space"),
        (5, "0", "a listed attempt of 0"),
        (6, "2", "a started flag of 2"),
    ] {
        let mut bad = triple.clone();
        bad[i] = value.into();
        c.variants.push((what.into(), bad, true));
    }
    let mut extra = triple;
    extra.push("x".into());
    c.variants
        .push(("a triple and one more".into(), extra, true));
    for (n, refused) in [(MAX_SLOTS, false), (MAX_SLOTS + 1, true)] {
        let mut full = c.base.clone();
        full[3] = n.to_string();
        for i in 0..n {
            full.extend([format!("t{i}"), "1".to_string(), "0".to_string()]);
        }
        c.variants.push((format!("{n} triples"), full, refused));
    }
    check(&mut p, &c).await;
}

#[tokio::test]
async fn client_and_operator_calls_check_every_argument_at_their_bounds() {
    let redis = RedisServer::start();
    let mut p = Proto::connect(&redis, "q").await;
    let max_chunks = i128::from(u32::try_from(MAX_OUTPUT_CHUNKS).unwrap());

    let mut c = Case::new("rtq2_cancel", &["t1", "cancel", "why"]);
    c.id("task id", 0)
        .one_of("mode", 1, &["cancel", "deadline"])
        .text("reason", 2, MAX_TEXT_BYTES)
        .arity(true);
    check(&mut p, &c).await;

    let mut c = Case::new("rtq2_watch", &["t1", "rtq:{q}:r:c1", "0"]);
    c.id("task id", 0)
        .with("no reply stream", 1, String::new(), true)
        .with(
            "reply stream of another queue",
            1,
            "rtq:{x}:r:c1".into(),
            true,
        )
        .int("first index", 2, 0, max_chunks)
        .arity(false);
    check(&mut p, &c).await;
    // With the optional held attempt (revision 13).
    let max_attempt = i128::from(MAX_ATTEMPT_NUMBER);
    let mut c = Case::new("rtq2_watch", &["t1", "rtq:{q}:r:c1", "0", "1"]);
    c.id("task id", 0)
        .int("first index", 2, 0, max_chunks)
        .int("held attempt", 3, 0, max_attempt)
        .one_more();
    check(&mut p, &c).await;

    let mut c = Case::new("rtq2_read", &["t1", "0"]);
    c.id("task id", 0)
        .int("first index", 1, 0, max_chunks)
        .arity(false);
    check(&mut p, &c).await;
    let mut c = Case::new("rtq2_read", &["t1", "0", "1"]);
    c.id("task id", 0)
        .int("first index", 1, 0, max_chunks)
        .int("held attempt", 2, 0, max_attempt)
        .one_more();
    check(&mut p, &c).await;

    let mut c = Case::new("rtq2_unwatch", &["t1", "rtq:{q}:r:c1"]);
    c.id("task id", 0)
        .with(
            "reply stream of another queue",
            1,
            "rtq:{x}:r:c1".into(),
            true,
        )
        .arity(true);
    check(&mut p, &c).await;

    let mut c = Case::new("rtq2_requeue", &["t1", "why"]);
    c.id("task id", 0)
        .text("reason", 1, MAX_TEXT_BYTES)
        .arity(true);
    check(&mut p, &c).await;

    let mut c = Case::new("rtq2_set_priority", &["t1", "0"]);
    c.id("task id", 0)
        .int(
            "priority",
            1,
            i128::from(PRIORITY_MIN),
            i128::from(PRIORITY_MAX),
        )
        .arity(true);
    check(&mut p, &c).await;

    let mut c = Case::new("rtq2_pause", &["0"]);
    c.flag("paused", 0).arity(true);
    check(&mut p, &c).await;

    let mut c = Case::new("rtq2_set_max_depth", &["0"]);
    c.int("max depth", 0, 0, i128::from(MAX_DEPTH)).arity(true);
    check(&mut p, &c).await;

    let mut c = Case::new("rtq2_purge", &["10"]);
    c.int("batch", 0, 1, i128::from(MAX_PURGE_BATCH))
        .arity(true);
    check(&mut p, &c).await;

    let c = Case {
        function: "rtq2_housekeep",
        base: Vec::new(),
        variants: vec![("one argument".into(), vec!["0".into()], true)],
    };
    check(&mut p, &c).await;
}

#[tokio::test]
async fn the_queue_key_is_checked_like_a_queue_name() {
    use rtq_core::keys::MAX_QUEUE_NAME;
    let redis = RedisServer::start();
    let mut conn = support::patient_conn(&redis.url()).await;
    rtq_core::functions::ensure_loaded(&mut conn).await.unwrap();
    let longest = format!("rtq:{{{}}}:meta", "q".repeat(MAX_QUEUE_NAME));
    let too_long = format!("rtq:{{{}}}:meta", "q".repeat(MAX_QUEUE_NAME + 1));
    let cases: Vec<(Vec<String>, bool)> = vec![
        (vec![longest.clone()], false),
        (vec!["rtq:{a.b_c-1}:meta".into()], false),
        (vec![too_long], true),
        (vec!["rtq:{}:meta".into()], true),
        (vec!["rtq:{a b}:meta".into()], true),
        (vec!["rtq:{q}:pending".into()], true),
        (vec!["x:{q}:meta".into()], true),
        (vec![longest.clone(), longest], true),
        (vec![], true),
    ];
    for (keys, refused) in cases {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("rtq2_read").arg(keys.len());
        for k in &keys {
            cmd.arg(k);
        }
        cmd.arg("t1").arg(0);
        let r: redis::RedisResult<redis::Value> = cmd.query_async(&mut conn).await;
        match (&r, refused) {
            (Err(e), true) if e.code() == Some("INVALID") => {}
            (Ok(_), false) => {}
            _ => panic!("KEYS {keys:?}: expected refused={refused}, got {r:?}"),
        }
    }
}
