//! Redis Cluster specifics: the Functions library on every master, the
//! slot map (which master owns a queue), and connections to one node for
//! blocking reads.
//!
//! Everything else in rtq needs nothing cluster-specific: all keys of a
//! queue share one hash slot (`rtq:{name}:...`), every function's first
//! key is the queue's meta key, and the cluster connection routes each
//! command by its key.

use std::collections::HashMap;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisFuture, RedisResult, Value};

use crate::connection::{ClusterTarget, RedisConnection};
use crate::error::Error;
use crate::keys::cluster_slot;
use crate::protocol::value_to_string;

/// A cluster connection pinned to one node: every command and pipeline
/// goes there, whatever its keys (or none).
#[derive(Clone)]
pub(crate) struct NodeConnection {
    conn: ClusterConnection,
    route: SingleNodeRoutingInfo,
}

impl NodeConnection {
    /// Pins `conn` to the node at `address` (`host:port`, as the cluster
    /// connection names nodes).
    pub(crate) fn new(conn: ClusterConnection, address: &str) -> Option<Self> {
        let (host, port) = address.rsplit_once(':')?;
        Some(Self {
            conn,
            route: SingleNodeRoutingInfo::ByAddress {
                host: host.to_string(),
                port: port.parse().ok()?,
            },
        })
    }

    /// Pins `conn` to whichever master serves `key`'s slot (followed
    /// across MOVED and failovers).
    pub(crate) fn for_key(conn: ClusterConnection, key: &str) -> Self {
        Self {
            conn,
            route: SingleNodeRoutingInfo::SpecificNode(Route::new(
                cluster_slot(key),
                SlotAddr::Master,
            )),
        }
    }

    fn route(&self) -> SingleNodeRoutingInfo {
        self.route.clone()
    }
}

/// A connection on which keyless commands (SCAN) reach the master of
/// `key`'s slot: the connection itself on a single node.
#[derive(Clone)]
pub(crate) enum SlotConnection {
    /// A single node: everything is there.
    Single(RedisConnection),
    /// The cluster master of the slot.
    Node(NodeConnection),
}

impl SlotConnection {
    /// `conn`, pinned to the master of `key`'s slot on a cluster.
    pub(crate) fn new(conn: &RedisConnection, key: &str) -> Self {
        match conn {
            RedisConnection::Cluster(c) => Self::Node(NodeConnection::for_key(c.clone(), key)),
            single => Self::Single(single.clone()),
        }
    }
}

impl ConnectionLike for SlotConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Node(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Node(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// Runs a pipeline whose commands concern several queues (the dashboard's):
/// as one pipeline on a single node; on a cluster split into one pipeline
/// per hash slot, run concurrently, the replies put back in command order.
/// Every command's key must be its first argument; keyless commands (TIME)
/// join the first slot's pipeline. `ignore_errors` must match the
/// pipeline's own setting (errors of single commands in place).
///
/// # Errors
/// Connection errors (of any of the pipelines).
pub(crate) async fn query_spread(
    conn: &mut RedisConnection,
    pipe: &Pipeline,
    ignore_errors: bool,
) -> RedisResult<Vec<Value>> {
    let RedisConnection::Cluster(cluster) = conn else {
        return pipe.query_async(conn).await;
    };
    let mut groups: Vec<(Pipeline, Vec<usize>)> = Vec::new();
    let mut by_slot: HashMap<u16, usize> = HashMap::new();
    let mut keyless = Vec::new();
    for (i, cmd) in pipe.cmd_iter().enumerate() {
        let key = cmd.args_iter().nth(1).and_then(|a| match a {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        });
        let Some(key) = key else {
            keyless.push((i, cmd.clone()));
            continue;
        };
        let slot = cluster_slot(&String::from_utf8_lossy(key));
        let g = *by_slot.entry(slot).or_insert_with(|| {
            let mut p = redis::pipe();
            if ignore_errors {
                p.ignore_errors();
            }
            groups.push((p, Vec::new()));
            groups.len() - 1
        });
        groups[g].0.add_command(cmd.clone());
        groups[g].1.push(i);
    }
    if !keyless.is_empty() {
        if groups.is_empty() {
            let mut p = redis::pipe();
            if ignore_errors {
                p.ignore_errors();
            }
            groups.push((p, Vec::new()));
        }
        // Keyless commands go first in the first group; their order among
        // themselves is kept.
        let (first, indexes) = &mut groups[0];
        let mut p = redis::pipe();
        if ignore_errors {
            p.ignore_errors();
        }
        let mut order = Vec::new();
        for (i, cmd) in &keyless {
            p.add_command(cmd.clone());
            order.push(*i);
        }
        for cmd in first.cmd_iter() {
            p.add_command(cmd.clone());
        }
        order.append(indexes);
        *first = p;
        *indexes = order;
    }
    let replies = futures::future::try_join_all(groups.iter().map(|(p, _)| {
        let mut c = cluster.clone();
        async move { p.query_async::<Vec<Value>>(&mut c).await }
    }))
    .await?;
    let mut out = vec![Value::Nil; pipe.len()];
    for ((_, indexes), values) in groups.iter().zip(replies) {
        for (i, v) in indexes.iter().zip(values) {
            out[*i] = v;
        }
    }
    Ok(out)
}

/// For each queue name, the master (`host:port`) that holds it now; empty
/// on a single node.
///
/// # Errors
/// Connection errors.
pub(crate) async fn queue_nodes(
    conn: &mut RedisConnection,
    names: &[String],
) -> RedisResult<HashMap<String, String>> {
    let RedisConnection::Cluster(cluster) = conn else {
        return Ok(HashMap::new());
    };
    let reply = cluster
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
        )
        .await?;
    let ranges = parse_slots(reply, "?");
    Ok(names
        .iter()
        .filter_map(|n| {
            let k = crate::keys::QueueKeys::new(n).ok()?;
            let (h, p) = owner(&ranges, cluster_slot(&k.meta()))?;
            Some((n.clone(), format!("{h}:{p}")))
        })
        .collect())
}

impl ConnectionLike for NodeConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let route = RoutingInfo::SingleNode(self.route());
        Box::pin(self.conn.route_command(cmd.clone(), route))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let route = self.route();
        Box::pin(self.conn.route_pipeline(cmd.clone(), offset, count, route))
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// The addresses (`host:port`) of every master, as the cluster connection
/// knows them. Asks with `FCALL_RO rtq2_version 0`, which every rtq role
/// may run (a master without the library answers with an error, which
/// names it all the same).
///
/// # Errors
/// Connection errors.
pub(crate) async fn masters(conn: &mut ClusterConnection) -> RedisResult<Vec<String>> {
    let reply = conn
        .route_command(
            redis::cmd("FCALL_RO").arg("rtq2_version").arg(0).clone(),
            RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
        )
        .await?;
    let mut out: Vec<String> = match reply {
        Value::Map(pairs) => pairs.iter().map(|(k, _)| value_to_string(k)).collect(),
        other => {
            return Err(redis::RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "FCALL_RO rtq2_version to every master",
                format!("{other:?}"),
            )))
        }
    };
    out.sort();
    Ok(out)
}

/// Makes sure every master runs this library revision or a newer one
/// (one node: as [`crate::functions::ensure_loaded`]).
///
/// # Errors
/// As [`crate::functions::ensure_loaded`], for the first master that fails.
pub(crate) async fn ensure_loaded(conn: &mut RedisConnection) -> Result<(), Error> {
    let cluster = match conn {
        RedisConnection::Single(_) => return crate::functions::ensure_loaded(conn).await,
        RedisConnection::Cluster(c) => c,
    };
    let masters = masters(cluster).await?;
    let loads = masters.iter().filter_map(|address| {
        let mut node = NodeConnection::new(cluster.clone(), address)?;
        Some(async move { crate::functions::ensure_loaded(&mut node).await })
    });
    for result in futures::future::join_all(loads).await {
        result?;
    }
    Ok(())
}

/// One slot range of `CLUSTER SLOTS`: its first and last slot and the
/// master's `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotRange {
    pub first: u16,
    pub last: u16,
    pub master: (String, u16),
    /// Replicas' `host:port`.
    pub replicas: Vec<(String, u16)>,
}

/// Parses a `CLUSTER SLOTS` reply; a node listed with an empty or `?`
/// host is the node that answered (`asked`).
pub(crate) fn parse_slots(reply: Value, asked: &str) -> Vec<SlotRange> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    let node = |v: &Value| -> Option<(String, u16)> {
        let Value::Array(items) = v else { return None };
        let host = value_to_string(items.first()?);
        let port = match items.get(1)? {
            Value::Int(p) => u16::try_from(*p).ok()?,
            other => value_to_string(other).parse().ok()?,
        };
        let host = if host.is_empty() || host == "?" {
            asked.to_string()
        } else {
            host
        };
        Some((host, port))
    };
    let int = |v: Option<&Value>| -> Option<u16> {
        match v? {
            Value::Int(i) => u16::try_from(*i).ok(),
            _ => None,
        }
    };
    ranges
        .iter()
        .filter_map(|r| {
            let Value::Array(items) = r else { return None };
            Some(SlotRange {
                first: int(items.first())?,
                last: int(items.get(1))?,
                master: node(items.get(2)?)?,
                replicas: items.iter().skip(3).filter_map(node).collect(),
            })
        })
        .collect()
}

/// The master that owns `slot`, if any range covers it.
pub(crate) fn owner(ranges: &[SlotRange], slot: u16) -> Option<&(String, u16)> {
    ranges
        .iter()
        .find(|r| r.first <= slot && slot <= r.last)
        .map(|r| &r.master)
}

/// Reads the slot map from the first node that answers.
async fn slot_map(
    target: &ClusterTarget,
    config: &AsyncConnectionConfig,
) -> RedisResult<(Vec<SlotRange>, MultiplexedConnection, (String, u16))> {
    let mut last_error = None;
    let mut seen = Vec::new();
    for info in target.candidates() {
        let (host, port) = match info.addr() {
            redis::ConnectionAddr::Tcp(h, p)
            | redis::ConnectionAddr::TcpTls {
                host: h, port: p, ..
            } => (h.clone(), *p),
            redis::ConnectionAddr::Unix(_) => continue,
            _ => continue,
        };
        if seen.contains(&(host.clone(), port)) {
            continue;
        }
        seen.push((host.clone(), port));
        let attempt = async {
            let client = target.node_client(info)?;
            let mut conn = client
                .get_multiplexed_async_connection_with_config(config)
                .await?;
            let reply: Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>((parse_slots(reply, &host), conn))
        };
        match attempt.await {
            Ok((ranges, conn)) if !ranges.is_empty() => {
                let mut nodes: Vec<(String, u16)> = Vec::new();
                for r in &ranges {
                    for n in std::iter::once(&r.master).chain(&r.replicas) {
                        if !nodes.contains(n) {
                            nodes.push(n.clone());
                        }
                    }
                }
                target.learn(nodes);
                return Ok((ranges, conn, (host, port)));
            }
            Ok(_) => {
                last_error = Some(redis::RedisError::from((
                    ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                    "the node serves no slots (CLUSTER SLOTS is empty): is it part of a cluster?",
                    format!("{host}:{port}"),
                )))
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        redis::RedisError::from((ErrorKind::InvalidClientConfig, "no cluster node to ask"))
    }))
}

/// Opens a plain connection to the master that owns `key`'s slot (for
/// blocking reads), resolving the slot map afresh.
///
/// # Errors
/// Connection errors; `CLUSTERDOWN` when no master serves the slot.
pub(crate) async fn connect_to_owner(
    target: &ClusterTarget,
    key: &str,
    config: &AsyncConnectionConfig,
) -> RedisResult<MultiplexedConnection> {
    let slot = cluster_slot(key);
    let (ranges, conn, asked) = slot_map(target, config).await?;
    let Some(owner) = owner(&ranges, slot) else {
        return Err(redis::RedisError::from((
            ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
            "no master serves the slot",
            format!("slot {slot} of {key}"),
        )));
    };
    if *owner == asked {
        return Ok(conn);
    }
    let client = target.node_client(target.node(&owner.0, owner.1))?;
    client
        .get_multiplexed_async_connection_with_config(config)
        .await
}

/// A hash slot being moved between masters (live resharding), as the
/// master moving it out (`migrating`) or in (`importing`) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotMove {
    /// The slot.
    pub slot: u16,
    /// The reporting master (`host:port`).
    pub node: String,
    /// True on the source (`[slot->-target]`), false on the target
    /// (`[slot-<-source]`).
    pub migrating: bool,
}

/// Parses the `myself` line of one node's `CLUSTER NODES` for slots in
/// motion.
pub(crate) fn parse_moves(node: &str, cluster_nodes: &str) -> Vec<SlotMove> {
    let Some(line) = cluster_nodes.lines().find(|l| l.contains("myself")) else {
        return Vec::new();
    };
    line.split(' ')
        .filter_map(|field| {
            let inner = field.strip_prefix('[')?.strip_suffix(']')?;
            let (slot, migrating) = match inner.split_once("->-") {
                Some((slot, _)) => (slot, true),
                None => (inner.split_once("-<-")?.0, false),
            };
            Some(SlotMove {
                slot: slot.parse().ok()?,
                node: node.to_string(),
                migrating,
            })
        })
        .collect()
}

/// Slots being moved between masters right now (empty on a single node).
///
/// # Errors
/// Connection errors.
pub(crate) async fn slot_moves(conn: &mut RedisConnection) -> RedisResult<Vec<SlotMove>> {
    let RedisConnection::Cluster(cluster) = conn else {
        return Ok(Vec::new());
    };
    let reply = cluster
        .route_command(
            redis::cmd("CLUSTER").arg("NODES").clone(),
            RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
        )
        .await?;
    let Value::Map(nodes) = reply else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (node, text) in nodes {
        let text = match text {
            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            Value::VerbatimString { text, .. } => text,
            Value::ServerError(e) => return Err(e.into()),
            _ => continue,
        };
        out.extend(parse_moves(&value_to_string(&node), &text));
    }
    Ok(out)
}

/// Refuses to run on a queue whose slot is being moved between masters:
/// rtq's functions declare only the queue's meta key, so during a move a
/// call could run on a node that holds part of the queue's keys.
///
/// # Errors
/// [`Error::UnsuitableServer`] naming the queue, its slot and what to do;
/// connection errors.
pub(crate) async fn refuse_moving_queue(
    conn: &mut RedisConnection,
    keys: &crate::keys::QueueKeys,
) -> Result<(), Error> {
    let slot = cluster_slot(&keys.meta());
    let moves = match slot_moves(conn).await {
        Ok(moves) => moves,
        Err(e) => {
            // A role without `cluster|nodes`: the check is skipped.
            tracing::warn!(error = %e, "could not check whether the queue's slot is being migrated (CLUSTER NODES)");
            return Ok(());
        }
    };
    if let Some(m) = moves.iter().find(|m| m.slot == slot) {
        return Err(Error::UnsuitableServer(format!(
            "queue {}: its hash slot {slot} is being {} {} (live resharding); rtq does not serve a queue while its slot moves, because a call could see only part of its keys. Let the migration finish (or undo it with `redis-cli --cluster fix`) and move queues only while they are idle: pause, stop their workers, move, resume (see docs/CLUSTER.md)",
            keys.name(),
            if m.migrating { "moved out of" } else { "moved into" },
            m.node
        )));
    }
    Ok(())
}

/// True for errors that mean "this node no longer serves the key": a
/// dedicated connection getting one must be dropped and re-resolved.
pub fn is_redirect(e: &redis::RedisError) -> bool {
    use redis::ServerErrorKind as S;
    matches!(
        e.kind(),
        ErrorKind::Server(
            S::Moved | S::Ask | S::ClusterDown | S::TryAgain | S::MasterDown | S::ReadOnly
        )
    ) || e.code().is_some_and(|c| c == "UNBLOCKED")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn slots_in_motion_are_read_from_the_myself_line() {
        let nodes =
            "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [93->-b2] [77-<-c3]\n\
                     b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922 [94->-a1]\n";
        let moves = parse_moves("127.0.0.1:7000", nodes);
        assert_eq!(
            moves,
            vec![
                SlotMove {
                    slot: 93,
                    node: "127.0.0.1:7000".into(),
                    migrating: true
                },
                SlotMove {
                    slot: 77,
                    node: "127.0.0.1:7000".into(),
                    migrating: false
                },
            ]
        );
        assert!(parse_moves("x", "b2 h:1@2 master - 0 0 2 connected 1-2").is_empty());
    }

    #[test]
    fn slot_map_parsing_finds_each_slots_master() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![b("10.0.0.1"), Value::Int(7000), b("id1")]),
                Value::Array(vec![b("10.0.0.4"), Value::Int(7003), b("id4")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![b(""), Value::Int(7001), b("id2")]),
            ]),
        ]);
        let ranges = parse_slots(reply, "seed");
        assert_eq!(ranges.len(), 2);
        assert_eq!(owner(&ranges, 0), Some(&("10.0.0.1".to_string(), 7000)));
        assert_eq!(owner(&ranges, 5460), Some(&("10.0.0.1".to_string(), 7000)));
        assert_eq!(owner(&ranges, 5461), Some(&("seed".to_string(), 7001)));
        assert_eq!(ranges[0].replicas, vec![("10.0.0.4".to_string(), 7003)]);
        assert!(parse_slots(Value::Nil, "x").is_empty());
        assert_eq!(owner(&parse_slots(Value::Array(vec![]), "x"), 1), None);
    }
}
