//! Slots being moved between masters (live resharding), which rtq does
//! not serve a queue through.

use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{RedisResult, Value};

use crate::connection::RedisConnection;
use crate::error::Error;
use crate::keys::cluster_slot;
use crate::protocol::value_to_string;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
