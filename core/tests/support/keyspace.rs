//! The whole keyspace as data, to prove a refused call wrote nothing.
#![allow(dead_code)]

use redis::aio::MultiplexedConnection;

/// Every key: name, type, `DUMP`, absolute expiry (`PEXPIRETIME`).
pub type Snapshot = Vec<(Vec<u8>, String, Option<Vec<u8>>, i64)>;

/// Reads every key of the server (tests' own small data sets only).
pub async fn snapshot(conn: &mut MultiplexedConnection) -> Snapshot {
    let mut keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query_async(conn).await.unwrap();
    keys.sort();
    let mut out = Vec::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE").arg(&k).query_async(conn).await.unwrap();
        let dump: Option<Vec<u8>> = redis::cmd("DUMP").arg(&k).query_async(conn).await.unwrap();
        let expiry: i64 = redis::cmd("PEXPIRETIME")
            .arg(&k)
            .query_async(conn)
            .await
            .unwrap();
        out.push((k, kind, dump, expiry));
    }
    out
}
