//! Opening connections: a shared auto-reconnecting multiplexed connection for
//! ordinary commands and scripts, and dedicated connections for blocking
//! reads (BLMPOP, XREAD BLOCK), which must never share a connection with
//! other callers.
//!
//! One configuration string picks a single node or a Redis Cluster:
//! `redis://`, `rediss://` and `unix://` URLs name one node;
//! `redis+cluster://` / `rediss+cluster://` URLs, or several seed URLs
//! separated by commas, name a cluster (see [`Endpoint::parse`]). Core code
//! sees one [`RedisConnection`] either way; only blocking reads and
//! commands that concern every master (loading the Functions library)
//! look at which it is.
//!
//! # Layout
//! - this file: [`RedisConnection`], opening shared and blocking
//!   connections, TLS, the URL checks;
//! - `seeds`: the configuration string split into node URLs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, Pipeline, RedisFuture, Value,
};

use crate::error::{redact_url, Error};
use crate::tls::TlsConfig;
use seeds::{parse_info, split_seeds};

mod seeds;

/// How long to wait for a TCP/TLS connection to Redis.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a non-blocking command may take before it fails.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared connection every core component uses for non-blocking
/// commands and function calls: one auto-reconnecting multiplexed
/// connection to a single node, or a cluster connection that routes each
/// command by its key (following MOVED/ASK and failovers by itself).
/// Cheap to clone; clones share the underlying connections.
#[derive(Clone)]
pub enum RedisConnection {
    /// One Redis server.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

/// The error for a `MOVED` reply (`detail`: "slot host:port") on a
/// single-node connection: the URL names one node of a Redis Cluster.
/// Not retryable: it will not go away without a cluster URL.
fn moved_on_single_node(detail: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "this Redis is one node of a Redis Cluster and the key lives on another node: connect with a redis+cluster:// URL (or several comma-separated seed URLs)",
        format!("MOVED {detail}"),
    ))
}

/// `moved_on_single_node` for a reply that is a `MOVED` error.
fn check_moved(value: &Value) -> Result<(), redis::RedisError> {
    match value {
        Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::Moved) => {
            Err(moved_on_single_node(e.details().unwrap_or_default()))
        }
        _ => Ok(()),
    }
}

/// Explains `MOVED` replies and errors of a single-node connection.
fn explain_moved<T>(
    reply: redis::RedisResult<T>,
    values: impl Fn(&T) -> &[Value],
) -> redis::RedisResult<T> {
    match reply {
        Ok(v) => {
            for value in values(&v) {
                check_moved(value)?;
            }
            Ok(v)
        }
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Moved) => {
            Err(moved_on_single_node(e.detail().unwrap_or_default()))
        }
        Err(e) => Err(e),
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c
                .req_packed_command(cmd)
                .map(|r| explain_moved(r, std::slice::from_ref))
                .boxed(),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c
                .req_packed_commands(cmd, offset, count)
                .map(|r| explain_moved(r, Vec::as_slice))
                .boxed(),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// A Redis endpoint: one node or a cluster's seeds, plus a printable
/// (redacted) form of the configuration.
#[derive(Clone)]
pub struct Endpoint {
    target: Target,
    redacted: String,
}

#[derive(Clone)]
enum Target {
    Single(Box<redis::Client>),
    Cluster(Arc<ClusterTarget>),
}

/// What a cluster endpoint needs to open cluster connections and plain
/// connections to single nodes (for blocking reads).
pub(crate) struct ClusterTarget {
    /// The seed URLs, parsed (auth, TLS mode and TCP settings included).
    seeds: Vec<ConnectionInfo>,
    /// TLS certificates when the settings are not the defaults.
    certificates: Option<redis::TlsCertificates>,
    /// Nodes learned from the last slot map (tried before the seeds when
    /// resolving a slot: a seed may be the node that died).
    known: Mutex<Vec<(String, u16)>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.redacted)
            .field("cluster", &self.is_cluster())
            .finish()
    }
}

/// The node URLs of a Redis configuration string: the URL itself for one
/// node; each seed as a full URL (scheme and credentials) for a cluster.
/// A string that cannot be split comes back unchanged. For tools that
/// must know every credential in it (to mask it in their output).
pub fn redis_node_urls(config: &str) -> Vec<String> {
    split_seeds(config).map_or_else(|_| vec![config.to_string()], |(urls, _)| urls)
}

/// Checks a Redis configuration string without connecting: one node's
/// URL, a `redis+cluster://` URL, or a comma-separated list of cluster
/// seeds (what [`Client::connect`](crate::Client::connect) accepts).
///
/// # Errors
/// [`Error::Connection`] or [`Error::InvalidInput`] saying what is wrong
/// (the password redacted).
pub fn validate_redis_url(url: &str) -> Result<(), Error> {
    Endpoint::parse(url, &TlsConfig::default()).map(|_| ())
}

impl Endpoint {
    /// Parses the Redis configuration: a `redis://` / `rediss://` /
    /// `unix://` URL names one node; a `redis+cluster://` /
    /// `rediss+cluster://` URL, or several URLs separated by commas, name
    /// the seed nodes of a Redis Cluster (`redis://:pw@10.0.0.1:6379,10.0.0.2:6379`:
    /// entries without a scheme inherit the first one's scheme and user
    /// info). `tls` applies to `rediss://` URLs (and may only be set for
    /// them).
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] with the redacted URL if it cannot be parsed;
    /// [`Error::TlsSetup`] for TLS settings on a plain URL or unusable PEM;
    /// [`Error::InvalidInput`] for a malformed seed list.
    pub fn parse(url: &str, tls: &TlsConfig) -> Result<Self, Error> {
        let (urls, cluster) = split_seeds(url).map_err(|why| {
            Error::InvalidInput(format!("{why} (given: {})", redact_url(url.trim())))
        })?;
        let redacted = urls
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(",");
        let redacted = if cluster && urls.len() == 1 {
            // Keep saying what was asked for: a cluster.
            redacted.replacen("://", "+cluster://", 1)
        } else {
            redacted
        };
        let infos = urls
            .iter()
            .map(|u| parse_info(u))
            .collect::<Result<Vec<_>, _>>()?;
        let is_tls = matches!(infos[0].addr(), ConnectionAddr::TcpTls { .. });
        if is_tls {
            crate::tls::install_crypto_provider();
        }
        if !tls.is_default() {
            if !is_tls {
                return Err(Error::TlsSetup(format!(
                    "TLS settings (CA file, client certificate) were given, but {redacted} is not a rediss:// URL"
                )));
            }
            tls.check()?;
        }
        if !cluster {
            let info = infos.into_iter().next().expect("one URL");
            let client = if tls.is_default() {
                redis::Client::open(info).map_err(|e| Error::from_connect(&redacted, e))?
            } else {
                redis::Client::build_with_tls(info, tls.certificates())
                    .map_err(|e| Error::TlsSetup(format!("{redacted}: {e}")))?
            };
            return Ok(Self {
                target: Target::Single(Box::new(client)),
                redacted,
            });
        }
        if infos
            .iter()
            .any(|i| matches!(i.addr(), ConnectionAddr::TcpTls { .. }) != is_tls)
        {
            return Err(Error::InvalidInput(format!(
                "the cluster seeds mix rediss:// and redis:// URLs: {redacted}"
            )));
        }
        let target = ClusterTarget {
            seeds: infos,
            certificates: (!tls.is_default()).then(|| tls.certificates()),
            known: Mutex::new(Vec::new()),
        };
        // Build once now so configuration errors (different passwords per
        // seed, a database other than 0) show at parse time.
        target
            .client(RESPONSE_TIMEOUT)
            .map_err(|e| Error::from_connect(&redacted, e))?;
        Ok(Self {
            target: Target::Cluster(Arc::new(target)),
            redacted,
        })
    }

    /// The URL with its password masked.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// True when the configuration names a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    fn wrap(&self, source: redis::RedisError) -> Error {
        Error::from_connect(&self.redacted, source)
    }

    /// Sorts a failure to open a cluster connection: redis-rs reports the
    /// cause of every seed's failure inside one message.
    fn cluster_connect_error(&self, e: redis::RedisError) -> Error {
        let text = e.to_string();
        if text.contains("AuthenticationFailed") || text.contains("WRONGPASS") {
            return Error::AuthenticationFailed {
                url: self.redacted.clone(),
                reason: "the cluster nodes refused the credentials".into(),
            };
        }
        if text.contains("cluster support disabled") {
            return Error::UnsuitableServer(format!(
                "{} is not a Redis Cluster (cluster support disabled): use a redis:// URL for a single server",
                self.redacted
            ));
        }
        self.wrap(e)
    }

    /// Opens the shared connection (reconnects by itself after failures).
    ///
    /// # Errors
    /// [`Error::Connection`] if Redis is unreachable,
    /// [`Error::AuthenticationFailed`] if it refuses the credentials,
    /// [`Error::Tls`] if the TLS handshake fails,
    /// [`Error::PermissionDenied`] if the user may not run what rtq needs.
    pub async fn shared(&self) -> Result<RedisConnection, Error> {
        self.shared_with(RESPONSE_TIMEOUT).await
    }

    /// [`Endpoint::shared`] with a response timeout of its own: how long a
    /// command may go unanswered before it fails.
    ///
    /// # Errors
    /// As [`Endpoint::shared`].
    pub async fn shared_with(&self, response_timeout: Duration) -> Result<RedisConnection, Error> {
        let mut conn = match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(response_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                RedisConnection::Single(
                    ConnectionManager::new_with_config(client.as_ref().clone(), config)
                        .await
                        .map_err(|e| self.wrap(e))?,
                )
            }
            Target::Cluster(target) => {
                let client = target.client(response_timeout).map_err(|e| self.wrap(e))?;
                RedisConnection::Cluster(
                    client
                        .get_async_connection()
                        .await
                        .map_err(|e| self.cluster_connect_error(e))?,
                )
            }
        };
        match crate::cluster::ensure_loaded(&mut conn).await {
            Ok(()) => Ok(conn),
            Err(Error::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                    && e.detail().is_some_and(|d| d.starts_with("unknown command")) =>
            {
                Err(Error::UnsuitableServer(format!(
                    "{} does not know FCALL: rtq needs Redis 7.0 or newer",
                    self.redacted
                )))
            }
            Err(Error::Redis(e)) => Err(self.wrap(e)),
            Err(other) => Err(other),
        }
    }

    /// Opens a connection of its own for blocking commands on `key`: to the
    /// single node, or to the cluster master that owns `key`'s slot now
    /// (resolved afresh on every call, so reconnecting after MOVED, a
    /// failover or a lost connection follows the slot). Blocking calls must
    /// pass a server-side timeout shorter than `response_timeout`.
    ///
    /// # Errors
    /// [`Error::Connection`] if Redis (or every known cluster node) is
    /// unreachable.
    pub async fn dedicated(
        &self,
        key: &str,
        response_timeout: Duration,
    ) -> Result<MultiplexedConnection, Error> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout));
        match &self.target {
            Target::Single(client) => client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| self.wrap(e)),
            Target::Cluster(target) => crate::cluster::connect_to_owner(target, key, &config)
                .await
                .map_err(|e| self.wrap(e)),
        }
    }
}

impl ClusterTarget {
    /// A cluster client with rtq's timeouts and retry policy.
    fn client(&self, response_timeout: Duration) -> redis::RedisResult<ClusterClient> {
        let mut builder = ClusterClientBuilder::new(self.seeds.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(response_timeout)
            .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
            // MOVED, ASK, TRYAGAIN and lost nodes are retried: 8 tries,
            // waits of 100 ms doubling up to 1 s (about 5 s in all, enough
            // to ride out a failover with a short cluster-node-timeout).
            .retries(8)
            .min_retry_wait(50)
            .max_retry_wait(1000)
            .retry_wait_formula(100, 2);
        if let Some(certs) = &self.certificates {
            builder = builder.certs(certs.clone());
        }
        builder.build()
    }

    /// Nodes to ask for the slot map: those learned last time, then the
    /// seeds.
    pub(crate) fn candidates(&self) -> Vec<ConnectionInfo> {
        let learned = self.known.lock().map(|k| k.clone()).unwrap_or_default();
        let mut out: Vec<ConnectionInfo> = learned.iter().map(|(h, p)| self.node(h, *p)).collect();
        out.extend(self.seeds.iter().cloned());
        out
    }

    /// Remembers the nodes of the latest slot map.
    pub(crate) fn learn(&self, nodes: Vec<(String, u16)>) {
        if let Ok(mut k) = self.known.lock() {
            *k = nodes;
        }
    }

    /// Connection settings for node `host:port`: the first seed's, with
    /// its address replaced (same auth, TLS and TCP settings).
    pub(crate) fn node(&self, host: &str, port: u16) -> ConnectionInfo {
        let seed = &self.seeds[0];
        let addr = match seed.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.to_string(), port),
        };
        seed.clone().set_addr(addr)
    }

    /// A client for one node, with the TLS certificates if any.
    pub(crate) fn node_client(&self, info: ConnectionInfo) -> redis::RedisResult<redis::Client> {
        match &self.certificates {
            Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
            None => redis::Client::open(info),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_picks_the_kind_and_never_shows_the_password() {
        let tls = TlsConfig::default();
        let single = Endpoint::parse("redis://:secret@127.0.0.1:1", &tls).unwrap();
        assert!(!single.is_cluster());
        let cluster = Endpoint::parse("redis+cluster://:secret@127.0.0.1:1", &tls).unwrap();
        assert!(cluster.is_cluster());
        assert!(
            !cluster.redacted().contains("secret"),
            "{}",
            cluster.redacted()
        );
        assert!(
            cluster.redacted().starts_with("redis+cluster://"),
            "{}",
            cluster.redacted()
        );
        let list = Endpoint::parse("redis://:secret@127.0.0.1:1,127.0.0.1:2", &tls).unwrap();
        assert!(list.is_cluster());
        assert!(!list.redacted().contains("secret"), "{}", list.redacted());
        let err = Endpoint::parse("redis://:a@127.0.0.1:1,redis://:b@127.0.0.1:2", &tls)
            .unwrap_err()
            .to_string();
        assert!(!err.contains(":a@") && !err.contains(":b@"), "{err}");
        let err = Endpoint::parse("redis://:secret@h:1,", &tls)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret") && err.contains("empty"), "{err}");
    }
}
