//! Redis Cluster specifics: the Functions library on every master, the
//! slot map (which master owns a queue), connections to one node for
//! blocking reads, pipelines spread over slots, and slots in motion.
//!
//! Everything else in rtq needs nothing cluster-specific: all keys of a
//! queue share one hash slot (`rtq:{name}:...`), every function's first
//! key is the queue's meta key, and the cluster connection routes each
//! command by its key.
//!
//! # Layout
//! - this file: the library on every master, redirect errors;
//! - [`pinned`]: connections pinned to one node or slot, pipelines spread
//!   over slots (the dashboard);
//! - [`slots`]: the slot map (`CLUSTER SLOTS`), the owner of a key,
//!   connections to it for blocking reads, the node of each queue;
//! - [`moves`]: slots being migrated (`CLUSTER NODES`), and the refusal to
//!   serve a queue whose slot moves.

mod moves;
mod pinned;
mod slots;

pub(crate) use moves::{refuse_moving_queue, slot_moves};
pub(crate) use pinned::{query_spread, NodeConnection, SlotConnection};
pub(crate) use slots::{connect_to_owner, queue_nodes};

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{ErrorKind, RedisResult, Value};

use crate::connection::RedisConnection;
use crate::error::Error;
use crate::protocol::value_to_string;

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

/// [`crate::functions::v3::ensure_loaded`] on every master of a cluster
/// (on one server: on it).
///
/// # Errors
/// As `v3::ensure_loaded`; cluster topology reads.
pub(crate) async fn ensure_v3_loaded(conn: &mut RedisConnection) -> Result<(), Error> {
    let cluster = match conn {
        RedisConnection::Single(_) => return crate::functions::v3::ensure_loaded(conn).await,
        RedisConnection::Cluster(c) => c,
    };
    let masters = masters(cluster).await?;
    let loads = masters.iter().filter_map(|address| {
        let mut node = NodeConnection::new(cluster.clone(), address)?;
        Some(async move { crate::functions::v3::ensure_loaded(&mut node).await })
    });
    for result in futures::future::join_all(loads).await {
        result?;
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
