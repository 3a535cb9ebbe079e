//! The slot map: which master owns a slot, connections to it for
//! blocking reads, the master holding each queue.

use std::collections::HashMap;

use redis::aio::MultiplexedConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncConnectionConfig, ErrorKind, RedisResult, Value};

use crate::connection::{ClusterTarget, RedisConnection};
use crate::keys::cluster_slot;
use crate::protocol::value_to_string;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
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
