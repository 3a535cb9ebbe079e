//! The HTTP/1.1 server: the accept loop (optionally TLS via rustls), a
//! timeout on request headers, and graceful shutdown: on the shutdown
//! signal it stops accepting, lets open requests and streams finish within
//! the grace period, then cancels the tasks the gateway owns (never those
//! it only follows, see [`crate::open`]) and returns. A second signal
//! during the grace period ends it at once (after the same cancels, given
//! a short time).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::open::OpenTasks;

/// How the server runs.
pub struct ServeOptions {
    /// TLS termination, if configured.
    pub tls: Option<TlsAcceptor>,
    /// Time a client may take to send its request headers (and the TLS
    /// handshake).
    pub header_timeout: Duration,
    /// Time open requests get to finish after the shutdown signal.
    pub grace: Duration,
}

/// Builds the TLS acceptor from PEM files.
///
/// # Errors
/// Unreadable files, PEM without a certificate or key, a key that does not
/// match.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("TLS certificate {} is not valid PEM", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "TLS certificate file {} holds no certificate",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a PEM private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS key does not fit the certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Time the cancels of owned tasks get when the gateway stops.
const CANCEL_WITHIN: Duration = Duration::from_secs(5);

/// Time the cancels get when a second signal asked to stop at once.
const CANCEL_WITHIN_FORCED: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown` fires, then drains for the
/// grace period, or until `force` fires (a second signal).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    open: Arc<OpenTasks>,
    shutdown: CancellationToken,
    force: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let service = TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let http = http.clone();
        let watcher = graceful.watcher();
        let tls = options.tls.clone();
        let handshake_timeout = options.header_timeout;
        tokio::spawn(async move {
            let result =
                match tls {
                    None => {
                        let conn = http.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn).await
                    }
                    Some(acceptor) => {
                        let tls_stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let conn = http.serve_connection(TokioIo::new(tls_stream), service);
                        watcher.watch(conn).await
                    }
                };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        open_streams = open.len(),
        owned_tasks = open.owned(),
        grace_secs = options.grace.as_secs(),
        "shutting down: no new connections; open requests may finish \
         (a second SIGTERM/SIGINT stops at once)"
    );
    let within = tokio::select! {
        finished = tokio::time::timeout(options.grace, graceful.shutdown()) => {
            if finished.is_ok() {
                tracing::info!("every open request finished");
                return;
            }
            tracing::warn!("grace period over");
            CANCEL_WITHIN
        }
        _ = force.cancelled() => {
            tracing::warn!("second signal: stopping at once");
            CANCEL_WITHIN_FORCED
        }
    };
    let n = open.cancel_owned("the gateway shut down", within).await;
    tracing::warn!(
        cancelled = n,
        followed_left_running = open.len().saturating_sub(n),
        "cancelled the tasks the gateway owned for requests still open"
    );
}
