//! Opening connections: a shared auto-reconnecting multiplexed connection for
//! ordinary commands and scripts, and dedicated connections for blocking
//! reads (BLPOP, XREAD BLOCK), which must never share a connection with
//! other callers.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::AsyncConnectionConfig;

use crate::error::{redact_url, Error};
use crate::tls::TlsConfig;

/// How long to wait for a TCP/TLS connection to Redis.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a non-blocking command may take before it fails.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A Redis endpoint: the parsed client plus a printable (redacted) URL.
#[derive(Clone)]
pub struct Endpoint {
    client: redis::Client,
    redacted: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.redacted)
            .finish()
    }
}

impl Endpoint {
    /// Parses a `redis://` / `rediss://` / `unix://` URL; `tls` applies to
    /// `rediss://` URLs (and may only be set for them).
    ///
    /// # Errors
    /// [`Error::Connection`] with the redacted URL if it cannot be parsed;
    /// [`Error::TlsSetup`] for TLS settings on a plain URL or unusable PEM.
    pub fn parse(url: &str, tls: &TlsConfig) -> Result<Self, Error> {
        let redacted = redact_url(url);
        let wrap = |source| Error::from_connect(&redacted, source);
        // TCP_NODELAY: rtq pipelines small writes (a heartbeat, then a
        // complete); with Nagle's algorithm the second would wait for the
        // first's ACK, which delayed ACK holds back for a whole round trip.
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| Error::Connection {
                url: redacted.clone(),
                source: e,
            })?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let is_tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        if is_tls {
            crate::tls::install_crypto_provider();
        }
        let client = if tls.is_default() {
            redis::Client::open(info).map_err(wrap)?
        } else if is_tls {
            tls.check()?;
            redis::Client::build_with_tls(info, tls.certificates())
                .map_err(|e| Error::TlsSetup(format!("{redacted}: {e}")))?
        } else {
            return Err(Error::TlsSetup(format!(
                "TLS settings (CA file, client certificate) were given, but {redacted} is not a rediss:// URL"
            )));
        };
        Ok(Self { client, redacted })
    }

    /// The URL with its password masked.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    fn wrap(&self, source: redis::RedisError) -> Error {
        Error::from_connect(&self.redacted, source)
    }

    /// Opens the shared connection (reconnects by itself after failures).
    ///
    /// # Errors
    /// [`Error::Connection`] if Redis is unreachable,
    /// [`Error::AuthenticationFailed`] if it refuses the credentials,
    /// [`Error::Tls`] if the TLS handshake fails,
    /// [`Error::PermissionDenied`] if the user may not run what rtq needs.
    pub async fn shared(&self) -> Result<ConnectionManager, Error> {
        self.shared_with(RESPONSE_TIMEOUT).await
    }

    /// [`Endpoint::shared`] with a response timeout of its own: how long a
    /// command may go unanswered before it fails.
    ///
    /// # Errors
    /// As [`Endpoint::shared`].
    pub async fn shared_with(
        &self,
        response_timeout: Duration,
    ) -> Result<ConnectionManager, Error> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let mut conn = ConnectionManager::new_with_config(self.client.clone(), config)
            .await
            .map_err(|e| self.wrap(e))?;
        match crate::functions::ensure_loaded(&mut conn).await {
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

    /// Opens a connection of its own for blocking commands. Blocking calls
    /// must pass a server-side timeout shorter than `response_timeout`.
    ///
    /// # Errors
    /// [`Error::Connection`] if Redis is unreachable.
    pub async fn dedicated(
        &self,
        response_timeout: Duration,
    ) -> Result<MultiplexedConnection, Error> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.wrap(e))
    }
}
