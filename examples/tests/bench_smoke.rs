//! Smoke test of the performance suite: every benchmark program runs at a
//! tiny size against a private redis-server and prints its tables. Checks
//! that they run and report, not how fast anything is (benchmarks print
//! numbers; tests never assert timings).

use std::process::Command;

use rtq_testkit::{target_dir, RedisServer};

fn run(name: &str, args: &[&str], redis: &RedisServer) -> String {
    let path = target_dir().join("examples").join(name);
    assert!(path.exists(), "{} not built", path.display());
    let out = Command::new(&path)
        .args(args)
        .env("RTQ_REDIS_URL", redis.url())
        .output()
        .expect("benchmark runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn bench_prints_its_line_and_the_per_command_breakdown() {
    let redis = RedisServer::start();
    let out = run(
        "bench",
        &["4", "2", "20", "0", "--warmup", "2", "--breakdown"],
        &redis,
    );
    assert!(
        out.contains("peer=rtq") && out.contains("tasks/s="),
        "{out}"
    );
    assert!(
        out.contains("| command | calls/task | usec/task |"),
        "{out}"
    );
    assert!(
        out.contains("| fcall |"),
        "the functions show in the breakdown: {out}"
    );
    let out = run("bench", &["2", "2", "4", "3", "--warmup", "1"], &redis);
    assert!(out.contains("chunks=3 tasks=4"), "{out}");
}

#[test]
fn the_cost_curves_print_every_table_and_plot() {
    let redis = RedisServer::start();
    let dir = std::env::temp_dir().join(format!("rtq-curves-{}", std::process::id()));
    let out = run(
        "bench_curves",
        &["--quick", "--flush", "--svg-dir", dir.to_str().unwrap()],
        &redis,
    );
    for heading in [
        "Tasks in flight",
        "Payload size",
        "Number of queues",
        "Idle workers",
        "Open waits",
    ] {
        assert!(out.contains(heading), "{heading} missing: {out}");
    }
    for svg in [
        "inflight-throughput.svg",
        "inflight-redis-cpu.svg",
        "payload-redis-cpu.svg",
        "queues-dashboard.svg",
        "workers-redis-cpu.svg",
        "waits-client-rss.svg",
    ] {
        let text = std::fs::read_to_string(dir.join(svg)).expect(svg);
        assert!(
            text.starts_with("<svg") && text.contains("<polyline"),
            "{svg}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_open_loop_and_reference_tables_print() {
    let redis = RedisServer::start();
    let out = run(
        "bench_open_loop",
        &["--max-rate", "100", "--seconds", "1", "--rates", "25,50"],
        &redis,
    );
    assert!(out.contains("| 25/s | 25 % | 25 |"), "{out}");
    assert!(out.contains("| 50/s | 50 % | 50 |"), "{out}");
    assert!(out.contains("| 2 x PING p50 / p99 ms |"), "{out}");
    // The worker in a process of its own serves every request too.
    let out = run(
        "bench_open_loop",
        &[
            "--max-rate",
            "100",
            "--seconds",
            "1",
            "--rates",
            "30",
            "--worker-process",
        ],
        &redis,
    );
    let row = out
        .lines()
        .find(|l| l.starts_with("| 30/s | 30 % | 30 | "))
        .unwrap_or_else(|| panic!("no 30/s row: {out}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(cells[11], "0", "requests failed: {row}");
    let out = run(
        "bench_table",
        &[
            "--rtt-ms",
            "2",
            "--runs",
            "1",
            "--requests",
            "2",
            "--reference",
        ],
        &redis,
    );
    assert!(out.contains("| reference avg ms |"), "{out}");
    assert_eq!(out.matches(" worker(s) | ").count(), 6, "{out}");
}

#[test]
fn the_new_benchmarks_need_a_redis_url_but_not_for_help() {
    for name in [
        "bench_curves",
        "bench_open_loop",
        "bench_stream",
        "bench_floor",
    ] {
        let path = target_dir().join("examples").join(name);
        let out = Command::new(&path)
            .env_remove("RTQ_REDIS_URL")
            .output()
            .expect("benchmark runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains("RTQ_REDIS_URL"), "{name}: {err}");
        let help = Command::new(&path)
            .arg("--help")
            .env_remove("RTQ_REDIS_URL")
            .output()
            .expect("benchmark runs");
        assert!(help.status.success(), "{name} --help: {help:?}");
    }
    // Bad values are refused with a usage error, not a panic.
    let out = Command::new(target_dir().join("examples").join("bench_open_loop"))
        .args(["--redis", "redis://127.0.0.1:1/", "--rates", "0"])
        .output()
        .expect("benchmark runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn the_paced_streaming_bench_prints_one_row_per_granularity() {
    let redis = RedisServer::start();
    let out = run(
        "bench_stream",
        &[
            "--streams",
            "2",
            "--chunks",
            "3",
            "--interval-ms",
            "5",
            "--secs",
            "1",
            "--max-delay-ms",
            "0,20",
        ],
        &redis,
    );
    assert!(out.contains("| max delay | tasks/s | chunks/s |"), "{out}");
    assert!(out.contains("\n| 0 ms | "), "{out}");
    assert!(out.contains("\n| 20 ms | "), "{out}");
    // Chunks were received and measured in the window.
    let row = out.lines().find(|l| l.starts_with("| 0 ms |")).unwrap();
    let chunks_per_s: f64 = row.split('|').nth(3).unwrap().trim().parse().unwrap();
    assert!(chunks_per_s > 0.0, "{out}");
}

#[test]
fn the_deterministic_complete_driver_ends_every_task_batched_or_one_by_one() {
    let redis = RedisServer::start();
    let out = run("bench_complete", &["4", "0", "30", "0"], &redis);
    assert!(
        out.contains("batch=4 single=false tasks=30 redis_cmds/task="),
        "{out}"
    );
    let out = run("bench_complete", &["4", "0", "30", "0", "--single"], &redis);
    assert!(out.contains("batch=4 single=true tasks=30"), "{out}");
}

#[test]
fn the_floor_bench_answers_every_request_and_cleans_up() {
    let redis = RedisServer::start();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    // Each variant: its option, its peer name, and a command it must use
    // (plain: the worker's read; results kept: one SET per request; the
    // two functions: FCALL; the v3 design's: XPENDING).
    for (option, peer, row) in [
        (None, "floor", "| xreadgroup |"),
        (Some("--store-results"), "floor+results", "| set | 1.00 |"),
        (Some("--lua"), "floor+lua", "| fcall |"),
        // The v3 design's complete reads the pending list per ending.
        (Some("--v3"), "floor+v3", "| xpending |"),
        // The real v3 library writes an ending's payload with APPEND.
        (Some("--rtq3"), "rtq3", "| append |"),
    ] {
        let mut args = vec!["4", "3", "40", "--breakdown"];
        args.extend(option);
        let out = run("bench_floor", &args, &redis);
        assert!(
            out.contains(&format!(
                "peer={peer} clients=4 slots=3 chunks=0 tasks=40 tasks/s="
            )),
            "{out}"
        );
        assert!(out.contains(row), "{option:?}: {out}");
        // Its streams, results and markers are gone afterwards.
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
        assert!(keys.is_empty(), "{option:?}: {keys:?}");
    }
}
