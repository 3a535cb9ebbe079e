//! `rtq acl <role>` prints `ACL SETUSER` lines that work: each line is run
//! on a real redis-server, and the user it makes does its job through the
//! real `rtq` binary and is refused the rest by Redis itself, with exit
//! code 6 and a message naming the refused command.

use std::process::{Command, Output};

use rtq_testkit::RedisServer;

fn rtq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rtq"))
        .args(args)
        .env_remove("RTQ_REDIS_URL")
        .output()
        .unwrap()
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// Runs `rtq acl <args>` and creates its user with password `pw`; returns
/// the user's URL.
fn create(redis: &RedisServer, args: &[&str]) -> String {
    let out = rtq(&[&["acl"], args].concat());
    assert!(out.status.success(), "{out:?}");
    let line = text(&out.stdout);
    assert!(
        line.contains("><password>"),
        "rtq prints no password: {line}"
    );
    let words: Vec<String> = line
        .trim()
        .replace("<password>", "pw")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(&words[..2], ["ACL", "SETUSER"]);
    let _: () = redis::cmd("ACL")
        .arg(&words[1..])
        .query(&mut redis.conn())
        .expect("the printed line is valid ACL SETUSER");
    format!("redis://{}:pw@127.0.0.1:{}/", words[2], redis.port())
}

#[test]
fn each_printed_role_does_its_job_and_redis_refuses_the_rest_naming_the_command() {
    let redis = RedisServer::start();
    // The admin (here the default user) loads the library and lists a queue.
    let setup = rtq(&["--redis", &redis.url(), "pause", "gpu", "--create"]);
    assert!(setup.status.success(), "{setup:?}");

    let client = create(&redis, &["client", "--queue", "gpu"]);
    let submitted = rtq(&["--redis", &client, "submit", "gpu", "{}", "--no-wait"]);
    assert!(submitted.status.success(), "{submitted:?}");
    let purge = rtq(&["--redis", &client, "purge", "gpu", "--confirm", "gpu"]);
    assert_eq!(purge.status.code(), Some(6), "{purge:?}");
    assert!(
        text(&purge.stderr).contains("rtq2_purge"),
        "{}",
        text(&purge.stderr)
    );
    let other = rtq(&["--redis", &client, "submit", "other", "{}", "--no-wait"]);
    assert_eq!(other.status.code(), Some(6), "{other:?}");

    let console = create(&redis, &["console"]);
    let stats = rtq(&["--redis", &console, "--read-only", "stats", "--json"]);
    assert!(stats.status.success(), "{stats:?}");
    assert!(
        text(&stats.stdout).contains("\"pending\":1"),
        "{}",
        text(&stats.stdout)
    );
    // Without --read-only the console user still cannot write: Redis says no.
    let pause = rtq(&["--redis", &console, "resume", "gpu"]);
    assert_eq!(pause.status.code(), Some(6), "{pause:?}");
    assert!(
        text(&pause.stderr).contains("'sadd'"),
        "{}",
        text(&pause.stderr)
    );
    let cancel = rtq(&["--redis", &console, "cancel", "gpu", "some-task"]);
    assert_eq!(cancel.status.code(), Some(6), "{cancel:?}");
    assert!(
        text(&cancel.stderr).contains("rtq2_cancel"),
        "{}",
        text(&cancel.stderr)
    );

    let admin = create(&redis, &["admin", "--user", "ops"]);
    assert!(admin.starts_with("redis://ops:"));
    let resume = rtq(&["--redis", &admin, "resume", "gpu"]);
    assert!(resume.status.success(), "{resume:?}");

    let missing = rtq(&["acl", "worker"]);
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    assert!(
        text(&missing.stderr).contains("--queue"),
        "{}",
        text(&missing.stderr)
    );
}
