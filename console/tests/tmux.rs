//! End to end: the real console in tmux, driven by keys, read by
//! capture-pane, and the terminal restored on quit.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

struct Tmux {
    session: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(args)
            .output()
            .expect("tmux is installed (scripts/ensure-deps.sh)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", &self.session])
    }
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend(keys);
        self.run(&args);
    }
    fn wait_for(&self, text: &str) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            if start.elapsed() > Duration::from_secs(20) {
                panic!("{text:?} never appeared; screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-session", "-t", &self.session]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_runs_in_a_real_terminal_and_restores_it_on_quit() {
    let seed = Seeded::new().await;
    let t = Tmux {
        session: format!("rtq-e2e-{}", std::process::id()),
    };
    t.run(&[
        "new-session",
        "-d",
        "-s",
        &t.session,
        "-x",
        "100",
        "-y",
        "30",
        "bash",
        "--norc",
        "--noprofile",
    ]);
    let cmd = format!(
        "{} --redis {} --refresh-ms 200; echo CONSOLE-EXITED-$?",
        env!("CARGO_BIN_EXE_rtq"),
        seed.redis.url()
    );
    t.keys(&[&cmd, "Enter"]);
    let screen = t.wait_for("connected");
    assert!(screen.contains("llm"), "{screen}");
    // Sort keys name the sort in the title.
    t.keys(&["s"]);
    t.wait_for("sorted by state [s/S]");
    t.keys(&["2"]);
    t.wait_for("gpu-1");
    // The nodes view has the queue's event tail (the seed paused it).
    t.wait_for("events, newest first");
    t.wait_for("paused");
    t.keys(&["3"]);
    t.wait_for("1-5 of 5");
    t.keys(&["s"]);
    t.wait_for("sorted by id (this page)");
    t.keys(&["S"]);
    t.wait_for("sorted by id, reversed");
    // Finished tasks filtered by error text; d names what it would delete.
    t.keys(&["t", "t"]);
    t.wait_for("finished");
    t.keys(&["/", "err:memory", "Enter"]);
    t.wait_for("filter: err:memory");
    t.keys(&["d"]);
    t.wait_for("Delete task bad");
    t.keys(&["n"]);
    t.wait_for("not done");
    t.keys(&["Escape"]);
    // Help scrolls: more keys than rows.
    t.keys(&["?"]);
    t.wait_for("j/k scroll");
    t.keys(&["Escape"]);
    t.keys(&["q"]);
    let screen = t.wait_for("CONSOLE-EXITED-0");
    // Back on the normal screen: the console's frame is gone.
    assert!(
        !screen.contains("1:Queues"),
        "terminal not restored:\n{screen}"
    );
}
