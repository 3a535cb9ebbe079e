//! The official `openai` Python package as a client of the gateway
//! (`gateway/tests/sdk/test_openai_sdk.py`, run with pytest): the stack is
//! started here, the SDK tests run against it. The SDK and pytest are
//! installed from PyPI into `target/gateway-sdk-venv` on first use
//! (pinned in `gateway/tests/sdk/requirements.txt`). The pytest counts
//! are written to `target/gateway-sdk-summary.txt`, which
//! `scripts/test.sh` adds to its total.

mod support;

use std::path::{Path, PathBuf};

use rtq_testkit::target_dir;
use support::Stack;

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sdk")
}

/// The venv's python, created and filled on first use.
async fn venv_python() -> PathBuf {
    let target = target_dir().parent().unwrap().to_path_buf();
    let venv = target.join("gateway-sdk-venv");
    let python = venv.join("bin").join("python");
    let ready = python.exists()
        && tokio::process::Command::new(&python)
            .args(["-c", "import openai, pytest"])
            .status()
            .await
            .is_ok_and(|s| s.success());
    if !ready {
        let out = tokio::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .await
            .expect("python3 runs (scripts/ensure-deps.sh installs it)");
        assert!(
            out.status.success(),
            "python3 -m venv failed (Debian: apt-get install python3-venv): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = tokio::process::Command::new(venv.join("bin").join("pip"))
            .args(["install", "-q", "--disable-pip-version-check", "-r"])
            .arg(sdk_dir().join("requirements.txt"))
            .output()
            .await
            .expect("pip runs");
        assert!(
            out.status.success(),
            "pip install of the OpenAI SDK failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    python
}

/// The `N passed` / `M failed` counts of pytest's last line.
fn counts(summary: &str) -> (u64, u64) {
    let count = |word: &str| -> u64 {
        let words: Vec<&str> = summary.split(|c: char| !c.is_alphanumeric()).collect();
        words
            .windows(2)
            .filter(|w| w[1].starts_with(word))
            .filter_map(|w| w[0].parse::<u64>().ok())
            .sum()
    };
    (count("passed"), count("failed") + count("error"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_works_against_the_gateway() {
    let python = venv_python().await;
    let s = Stack::start(&[], &[]).await;
    let out = tokio::process::Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(sdk_dir())
        .env("RTQ_GATEWAY_URL", &s.gw.url)
        .env("RTQ_FAKE_URL", &s.upstream.url)
        .output()
        .await
        .expect("pytest runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let (passed, failed) = counts(last);
    let summary = target_dir()
        .parent()
        .unwrap()
        .join("gateway-sdk-summary.txt");
    std::fs::write(&summary, format!("{passed} {failed}\n")).unwrap();
    println!("{stdout}");
    assert!(
        out.status.success() && passed > 0,
        "pytest failed ({last})\n{stdout}\n{}\n--- gateway log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.gw.proc.log()
    );
}

#[test]
fn pytest_summaries_are_counted() {
    assert_eq!(counts("9 passed in 2.01s"), (9, 0));
    assert_eq!(counts("1 failed, 8 passed in 3.00s"), (8, 1));
    assert_eq!(counts("2 failed, 7 passed, 1 error in 3.00s"), (7, 3));
}
