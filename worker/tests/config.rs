//! Start-up checks of the real rtq-worker binary: a configuration mistake
//! is a usage error (exit 2) that names the flag, found before Redis is
//! contacted (the Redis URL here points at a closed port: reaching it
//! would exit 3), and never prints a secret.

use std::process::Command;

/// A closed port: a worker that got as far as connecting exits 3.
const NO_REDIS: &str = "redis://127.0.0.1:1/";

/// Runs rtq-worker with `args` (plus `env`); returns its exit code and
/// stderr.
fn start(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtq-worker"));
    cmd.args(["--redis", NO_REDIS, "--probe-addr", "off"])
        .args(args)
        .env_remove("RTQ_UPSTREAM_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a usage error whose message contains every one of `words`.
fn refused(args: &[&str], env: &[(&str, &str)], words: &[&str]) -> String {
    let (code, err) = start(args, env);
    assert_eq!(code, Some(2), "{args:?}: a usage error: {err}");
    for word in words {
        assert!(err.contains(word), "{args:?}: {word:?} missing: {err}");
    }
    assert!(!err.contains("cannot reach Redis"), "{args:?}: {err}");
    err
}

#[test]
fn a_malformed_upstream_or_health_url_is_refused_before_connecting() {
    for bad in ["http://", "http://[::1", "http://user:hunter22@[::1/x"] {
        let err = refused(
            &["--handler", "http", "--upstream-url", bad],
            &[],
            &["--upstream-url"],
        );
        assert!(!err.contains("hunter22"), "{err}");
    }
    refused(
        &[
            "--handler",
            "http",
            "--upstream-url",
            "http://127.0.0.1:8000/x",
            "--health-url",
            "http://",
        ],
        &[],
        &["--health-url", "not a valid URL"],
    );
}

#[test]
fn concurrency_outside_1_to_1024_is_a_usage_error() {
    for bad in ["0", "1025", "5000", "lots"] {
        refused(&["--concurrency", bad], &[], &["--concurrency"]);
    }
}

#[test]
fn an_invalid_log_filter_is_a_usage_error() {
    refused(&["--log", "rtq_worker=loud"], &[], &["--log"]);
}

#[test]
fn the_result_limit_goes_up_to_16_mib_and_no_further() {
    refused(
        &["--max-result-bytes", "16777217"],
        &[],
        &["--max-result-bytes"],
    );
    // Accepted: the worker goes on to connect (and finds no Redis).
    let (code, err) = start(&["--max-result-bytes", "16777216"], &[]);
    assert_eq!(code, Some(3), "{err}");
}

#[test]
fn a_bad_header_file_or_api_key_is_reported_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("headers");
    std::fs::write(&file, "X-Api-Key: fine\nBad Header Name: hdrsecret-777\n").unwrap();
    let http = [
        "--handler",
        "http",
        "--upstream-url",
        "http://127.0.0.1:8000/x",
    ];
    let mut args = http.to_vec();
    let path = file.display().to_string();
    args.extend(["--upstream-header-file", path.as_str()]);
    let err = refused(&args, &[], &["--upstream-header-file", "line 2"]);
    assert!(!err.contains("hdrsecret-777"), "{err}");

    let mut args = http.to_vec();
    let missing = dir.path().join("nope").display().to_string();
    args.extend(["--upstream-header-file", missing.as_str()]);
    refused(&args, &[], &["cannot read --upstream-header-file"]);

    refused(
        &http,
        &[("RTQ_UPSTREAM_API_KEY", "key-with\nnewline")],
        &["--upstream-api-key"],
    );
}

#[test]
fn a_password_in_the_upstream_url_together_with_an_api_key_is_refused() {
    let err = refused(
        &[
            "--handler",
            "http",
            "--upstream-url",
            "http://bob:pw-upstream-999@127.0.0.1:8000/x",
        ],
        &[("RTQ_UPSTREAM_API_KEY", "apikey-SECRET-123")],
        &["--upstream-url", "--upstream-api-key", "Authorization"],
    );
    assert!(
        !err.contains("pw-upstream-999") && !err.contains("apikey-SECRET-123"),
        "{err}"
    );
}

#[test]
fn help_shows_no_value_of_the_exec_command_or_the_labels() {
    let out = Command::new(env!("CARGO_BIN_EXE_rtq-worker"))
        .arg("--help")
        .env("RTQ_EXEC_COMMAND", "python3 infer.py --token tok-8d1f")
        .env("RTQ_LABELS", "tenant=acme-secret-42")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("RTQ_EXEC_COMMAND") && help.contains("RTQ_LABELS"));
    assert!(
        !help.contains("tok-8d1f") && !help.contains("acme-secret-42"),
        "{help}"
    );
}

#[test]
fn an_output_buffer_outside_its_bounds_is_refused() {
    for bad in ["1000", "67108865", "lots"] {
        refused(
            &["--handler", "mock", "--max-buffered-output-bytes", bad],
            &[],
            &["--max-buffered-output-bytes"],
        );
    }
    // In bounds, the worker gets as far as connecting (exit 3: no Redis).
    let (code, err) = start(
        &["--handler", "mock", "--max-buffered-output-bytes", "262144"],
        &[],
    );
    assert_eq!(code, Some(3), "{err}");
}
