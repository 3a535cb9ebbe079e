//! What rtq needs from the Redis server, checked at start-up by workers and
//! the console: Redis 7.0 or newer (Functions), `maxmemory-policy
//! noeviction` (an evicting policy deletes tasks silently), and persistence
//! (without AOF, a restart loses every queued and running task).

use std::collections::HashMap;

use redis::aio::ConnectionLike;

use crate::error::Error;

/// The facts read from `INFO server memory persistence`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerReport {
    /// `redis_version`, e.g. "7.0.15".
    pub version: String,
    /// `maxmemory` in bytes (0 = no limit).
    pub maxmemory: u64,
    /// `maxmemory_policy`, e.g. "noeviction".
    pub policy: String,
    /// `aof_enabled`.
    pub aof: bool,
}

/// The text of an INFO reply (a bulk or verbatim string).
fn info_text(value: redis::Value) -> Result<String, Error> {
    match value {
        redis::Value::BulkString(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        redis::Value::VerbatimString { text, .. } => Ok(text),
        redis::Value::SimpleString(s) => Ok(s),
        other => Err(Error::Protocol(format!("INFO replied {other:?}"))),
    }
}

/// One thing wrong with the server, and how serious it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Concern {
    /// True if rtq must not run on this server as configured.
    pub fatal: bool,
    /// What is wrong and what to do.
    pub message: String,
}

impl ServerReport {
    /// Reads the report (one round trip).
    ///
    /// # Errors
    /// Connection errors, or [`Error::PermissionDenied`] if the user may
    /// not run INFO.
    pub async fn read<C: ConnectionLike + Send>(conn: &mut C) -> Result<Self, Error> {
        let reply: redis::Value = redis::cmd("INFO")
            .arg("server")
            .arg("memory")
            .arg("persistence")
            .query_async(conn)
            .await?;
        match reply {
            // A Redis Cluster answers per master: the weakest one counts.
            redis::Value::Map(nodes) => {
                let mut reports = Vec::new();
                for (_, info) in nodes {
                    if let redis::Value::ServerError(e) = info {
                        return Err(redis::RedisError::from(e).into());
                    }
                    reports.push(Self::parse(&info_text(info)?));
                }
                Ok(Self::weakest(reports))
            }
            other => Ok(Self::parse(&info_text(other)?)),
        }
    }

    /// One report for several servers (a cluster's masters): the oldest
    /// version, the first policy other than noeviction, AOF only if all
    /// have it.
    fn weakest(reports: Vec<Self>) -> Self {
        let mut out = reports.first().cloned().unwrap_or(Self {
            version: String::new(),
            maxmemory: 0,
            policy: String::new(),
            aof: false,
        });
        for r in reports {
            if r.major_minor() < out.major_minor() {
                out.version = r.version;
            }
            if r.policy != "noeviction" && !r.policy.is_empty() {
                out.policy = r.policy;
            }
            out.aof &= r.aof;
            out.maxmemory = out.maxmemory.max(r.maxmemory);
        }
        out
    }

    /// Parses INFO text.
    pub fn parse(text: &str) -> Self {
        let fields: HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').split_once(':'))
            .collect();
        let get = |k: &str| fields.get(k).copied().unwrap_or("");
        Self {
            version: get("redis_version").to_string(),
            maxmemory: get("maxmemory").parse().unwrap_or(0),
            policy: get("maxmemory_policy").to_string(),
            aof: get("aof_enabled") == "1",
        }
    }

    /// `(major, minor)` of the version, if it can be read.
    pub fn major_minor(&self) -> Option<(u32, u32)> {
        let mut parts = self.version.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }

    /// Everything rtq finds wrong with this server.
    pub fn concerns(&self) -> Vec<Concern> {
        let mut out = Vec::new();
        match self.major_minor() {
            Some(v) if v < (7, 0) => out.push(Concern {
                fatal: true,
                message: format!(
                    "Redis {} is too old: rtq needs 7.0 or newer (Functions)",
                    self.version
                ),
            }),
            _ => {}
        }
        if !self.policy.is_empty() && self.policy != "noeviction" {
            out.push(Concern {
                fatal: true,
                message: format!(
                    "maxmemory-policy is {}: Redis would silently delete tasks and queues under memory pressure; set it to noeviction (then a full Redis refuses new submits and workers keep draining)",
                    self.policy
                ),
            });
        }
        if !self.aof {
            out.push(Concern {
                fatal: false,
                message: "append-only file (AOF) is off: a Redis restart loses queued and running tasks (waits then end with TaskLost); enable appendonly for 'nothing lost'".into(),
            });
        }
        out
    }

    /// Logs every concern and fails on a fatal one.
    ///
    /// # Errors
    /// [`Error::UnsuitableServer`] naming the first fatal concern.
    pub fn enforce(&self) -> Result<(), Error> {
        let concerns = self.concerns();
        for c in &concerns {
            if c.fatal {
                tracing::error!(concern = %c.message, "unsuitable Redis server");
            } else {
                tracing::warn!(concern = %c.message, "Redis server check");
            }
        }
        match concerns.into_iter().find(|c| c.fatal) {
            Some(c) => Err(Error::UnsuitableServer(c.message)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_and_old_versions_are_fatal_missing_aof_is_a_warning() {
        let ok = ServerReport::parse(
            "# Server\r\nredis_version:7.0.15\r\n# Memory\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n# Persistence\r\naof_enabled:1\r\n",
        );
        assert_eq!(ok.major_minor(), Some((7, 0)));
        assert!(ok.concerns().is_empty());
        let lossy = ServerReport {
            aof: false,
            ..ok.clone()
        };
        let c = lossy.concerns();
        assert_eq!(c.len(), 1);
        assert!(!c[0].fatal);
        assert!(lossy.enforce().is_ok());
        let evicting = ServerReport {
            policy: "allkeys-lru".into(),
            ..ok.clone()
        };
        assert!(matches!(
            evicting.enforce(),
            Err(Error::UnsuitableServer(m)) if m.contains("allkeys-lru")
        ));
        let old = ServerReport {
            version: "6.2.14".into(),
            ..ok
        };
        assert!(old.concerns()[0].fatal);
    }
}
