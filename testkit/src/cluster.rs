//! A local Redis Cluster for tests: N masters with R replicas each, every
//! node a private [`RedisServer`] in cluster mode on a free port, created
//! with `redis-cli --cluster create`, killed on drop.
//!
//! Nodes run with a short `cluster-node-timeout` (so a killed master is
//! replaced within seconds), `cluster-replica-validity-factor 0` and
//! `cluster-require-full-coverage no` (a dead shard does not stop the
//! others).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Options, RedisServer};

/// `cluster-node-timeout` of test clusters, in milliseconds.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// A running local Redis Cluster.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    password: Option<String>,
}

/// A node's role as the cluster sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRole {
    /// Index into [`RedisCluster::node`].
    pub index: usize,
    /// True for a master serving slots.
    pub master: bool,
    /// The node id.
    pub id: String,
    /// The master's id (replicas only).
    pub master_id: Option<String>,
}

impl RedisCluster {
    /// Starts 3 masters with one replica each and waits until the cluster
    /// is healthy.
    ///
    /// # Panics
    /// If redis-server or redis-cli is missing, or the cluster does not
    /// form within 30 s.
    pub fn start() -> Self {
        Self::start_with(3, 1, None)
    }

    /// Starts `masters` masters with `replicas` replicas each, optionally
    /// password-protected.
    ///
    /// # Panics
    /// As [`RedisCluster::start`].
    pub fn start_with(masters: usize, replicas: usize, password: Option<&str>) -> Self {
        Self::start_inner(masters, replicas, password)
    }

    fn start_inner(masters: usize, replicas: usize, password: Option<&str>) -> Self {
        assert!(masters >= 3, "redis-cli --cluster create needs 3 masters");
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                RedisServer::start_with(Options {
                    password: password.map(str::to_string),
                    cluster_node_timeout_ms: Some(NODE_TIMEOUT_MS),
                    ..Options::default()
                })
            })
            .collect();
        let mut cmd = Command::new("redis-cli");
        if let Some(pw) = password {
            cmd.args(["-a", pw, "--no-auth-warning"]);
        }
        cmd.args(["--cluster", "create"]);
        for n in &nodes {
            cmd.arg(format!("127.0.0.1:{}", n.port()));
        }
        cmd.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("redis-cli not runnable ({e}); install redis-tools"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        spawn_reaper(&nodes);
        let cluster = Self {
            nodes,
            password: password.map(str::to_string),
        };
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// The seed list rtq takes: `redis+cluster://[:pw@]127.0.0.1:<p1>,127.0.0.1:<p2>,...`
    /// (every node, so any of them can be down).
    pub fn url(&self) -> String {
        let auth = self
            .password
            .as_ref()
            .map(|pw| format!(":{pw}@"))
            .unwrap_or_default();
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{auth}{}", hosts.join(","))
    }

    /// Node `i` (in creation order: masters first, then replicas).
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// Node `i`, mutable (to kill or restart it).
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true (a cluster has nodes); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn query(&self, i: usize, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = self.nodes[i].client()?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
    }

    fn text(&self, i: usize, args: &[&str]) -> Option<String> {
        match self.query(i, args).ok()? {
            redis::Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            redis::Value::VerbatimString { text, .. } => Some(text),
            redis::Value::SimpleString(s) => Some(s),
            _ => None,
        }
    }

    /// Every running node's role, from `CLUSTER NODES` as the node itself
    /// reports it (`myself`).
    pub fn roles(&self) -> Vec<NodeRole> {
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            if self.nodes[i].pid().is_none() {
                continue;
            }
            let Some(text) = self.text(i, &["CLUSTER", "NODES"]) else {
                continue;
            };
            let Some(line) = text.lines().find(|l| l.contains("myself")) else {
                continue;
            };
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 8 {
                continue;
            }
            let master = fields[2].contains("master");
            out.push(NodeRole {
                index: i,
                master,
                id: fields[0].to_string(),
                master_id: (!master && fields[3] != "-").then(|| fields[3].to_string()),
            });
        }
        out
    }

    /// The index of the node that serves `slot` as master now (asked of
    /// the running nodes; the first answer that names a running node).
    pub fn master_of_slot(&self, slot: u16) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].pid().is_none() {
                continue;
            }
            let Ok(redis::Value::Array(ranges)) = self.query(i, &["CLUSTER", "SLOTS"]) else {
                continue;
            };
            for r in ranges {
                let redis::Value::Array(items) = r else {
                    continue;
                };
                let int = |v: &redis::Value| match v {
                    redis::Value::Int(n) => *n,
                    _ => -1,
                };
                if items.len() < 3 {
                    continue;
                }
                let (first, last) = (int(&items[0]), int(&items[1]));
                if first <= i64::from(slot) && i64::from(slot) <= last {
                    let redis::Value::Array(master) = &items[2] else {
                        continue;
                    };
                    let port = master.get(1).map(int).unwrap_or(-1);
                    return self
                        .nodes
                        .iter()
                        .position(|n| i64::from(n.port()) == port && n.pid().is_some());
                }
            }
        }
        None
    }

    /// A replica (index) of master `master`, if one runs.
    pub fn replica_of(&self, master: usize) -> Option<usize> {
        let roles = self.roles();
        let id = roles.iter().find(|r| r.index == master)?.id.clone();
        roles
            .iter()
            .find(|r| r.master_id.as_deref() == Some(id.as_str()))
            .map(|r| r.index)
    }

    /// Waits until every running node reports `cluster_state:ok`, all 16384
    /// slots are assigned, and every running node agrees on the masters.
    ///
    /// # Panics
    /// If that does not happen within `timeout`.
    pub fn wait_healthy(&self, timeout: Duration) {
        let started = Instant::now();
        loop {
            let ok = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].pid().is_some())
                .all(|i| {
                    self.text(i, &["CLUSTER", "INFO"]).is_some_and(|t| {
                        t.contains("cluster_state:ok") && t.contains("cluster_slots_ok:16384")
                    })
                });
            if ok && self.replicas_in_sync() {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "the cluster did not become healthy within {timeout:?}: {:?}",
                (0..self.nodes.len())
                    .map(|i| self.text(i, &["CLUSTER", "INFO"]))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// True when every running replica's link to its master is up.
    fn replicas_in_sync(&self) -> bool {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].pid().is_some())
            .all(|i| match self.text(i, &["INFO", "replication"]) {
                Some(t) if t.contains("role:slave") => t.contains("master_link_status:up"),
                Some(_) => true,
                None => false,
            })
    }

    /// Fails master `master` over to one of its replicas with
    /// `CLUSTER FAILOVER` (a coordinated handover: no acknowledged write is
    /// lost) and waits until the replica serves as master. Returns the new
    /// master's index.
    ///
    /// # Panics
    /// If `master` has no replica or the failover does not finish in 20 s.
    pub fn failover(&self, master: usize) -> usize {
        let replica = self
            .replica_of(master)
            .unwrap_or_else(|| panic!("node {master} has no replica"));
        let reply = self.query(replica, &["CLUSTER", "FAILOVER"]);
        assert!(reply.is_ok(), "CLUSTER FAILOVER: {reply:?}");
        let started = Instant::now();
        while !self.roles().iter().any(|r| r.index == replica && r.master) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "node {replica} did not take over from {master}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        replica
    }
}

/// Starts a watcher that kills the nodes once this test process is gone:
/// a cluster kept in a `static` (shared by a test binary's tests) is never
/// dropped, and its nodes would outlive the tests. It kills only a
/// process that is still the redis-server of that node's port.
fn spawn_reaper(nodes: &[RedisServer]) {
    const SCRIPT: &str = r#"parent=$1; shift
while kill -0 "$parent" 2>/dev/null; do sleep 1; done
for t in "$@"; do
  pid=${t%%:*}; port=${t##*:}
  if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "redis-server .*:$port\b"; then
    kill -9 "$pid" 2>/dev/null
  fi
done"#;
    let targets: Vec<String> = nodes
        .iter()
        .filter_map(|n| n.pid().map(|pid| format!("{pid}:{}", n.port())))
        .collect();
    let _ = Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("rtq-cluster-reaper")
        .arg(std::process::id().to_string())
        .args(targets)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}
