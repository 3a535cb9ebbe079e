//! Connections pinned to one node or to the master of one slot, and
//! pipelines spread over slots.

use std::collections::HashMap;

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::connection::RedisConnection;
use crate::keys::cluster_slot;

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
