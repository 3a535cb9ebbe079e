//! One console over a Redis Cluster: `rtq stats` lists queues that live on
//! different masters, with their counts and the master holding each.

mod support;

use std::process::Command;

use rtq_console::fetch;
use rtq_console::state::App;
use rtq_core::admin::Admin;
use rtq_core::keys::{cluster_slot, QueueKeys};
use rtq_core::{Client, TaskRequest};
use rtq_testkit::RedisCluster;
use serde_json::Value;

/// One queue name per third of the slot space (per master).
fn queues_on_every_master() -> Vec<String> {
    let mut out: Vec<Option<String>> = vec![None; 3];
    for n in 0.. {
        let name = format!("console-{n}");
        let slot = cluster_slot(&QueueKeys::new(&name).unwrap().meta());
        let shard = usize::from(slot) * 3 / 16384;
        out[shard].get_or_insert(name);
        if out.iter().all(Option::is_some) {
            break;
        }
    }
    out.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_lists_queues_on_every_master_with_their_node() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let queues = queues_on_every_master();
    let client = Client::connect(&url).await.unwrap();
    for (i, q) in queues.iter().enumerate() {
        let queue = client.queue(q).unwrap();
        for _ in 0..=i {
            queue
                .submit(TaskRequest::json(serde_json::json!({})))
                .await
                .unwrap();
        }
        Admin::new(&client).register_queue(q).await.unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_rtq"))
        .args(["--redis", &url, "stats", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut nodes = Vec::new();
    for (i, q) in queues.iter().enumerate() {
        let row = v["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["queue"] == q.as_str())
            .unwrap_or_else(|| panic!("{q} missing: {v}"));
        assert_eq!(row["pending"].as_u64(), Some(i as u64 + 1), "{row}");
        nodes.push(row["node"].as_str().unwrap().to_string());
    }
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "{v}");
    // The text table names the node too.
    let out = Command::new(env!("CARGO_BIN_EXE_rtq"))
        .args(["--redis", &url, "stats"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().next().unwrap().ends_with("NODE"), "{text}");
    for n in &nodes {
        assert!(text.contains(n.as_str()), "{n} not in {text}");
    }
    // The console's queues view names the node on a wide screen.
    let admin = Admin::new(&client);
    let mut app = App::new(rtq_core::redact_url(&url), true);
    app.on_fetched(fetch::queues(&admin).await.unwrap());
    let screen = support::render(&app, 200, 30);
    assert!(screen.contains("NODE"), "{screen}");
    for n in &nodes {
        assert!(screen.contains(n.as_str()), "{n} not in\n{screen}");
    }
    let narrow = support::render(&app, 80, 24);
    assert!(!narrow.contains("NODE"), "{narrow}");
}
