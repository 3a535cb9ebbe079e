//! TLS for `rediss://` connections (rustls, ring crypto provider).
//!
//! A `rediss://` URL always verifies the server: against the system's root
//! certificates by default, or against a CA file given here (a managed
//! Redis with a private CA, a self-signed test server). A client certificate
//! and key enable mutual TLS (`tls-auth-clients yes`). There is no insecure
//! mode: a `#insecure` URL fragment is refused at connect.
//!
//! The name checked against the server's certificate is the URL's host, so
//! connect by the name in the certificate (an `/etc/hosts` entry or a DNS
//! alias when only an IP address is routable).

use std::path::Path;

use crate::error::Error;

/// TLS settings for `rediss://` URLs. `Default` means "system roots, no
/// client certificate", which is what a managed Redis with a public
/// certificate needs.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), rtq_core::Error> {
/// use rtq_core::{Client, ClientConfig, TlsConfig};
/// let tls = TlsConfig::from_files(Some("ca.pem".as_ref()), None, None)?;
/// let client = Client::connect_with("rediss://redis.internal:6380", ClientConfig::default().tls(tls)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificates trusted instead of the system roots.
    ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain and private key (mutual TLS).
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never prints key material.
        f.debug_struct("TlsConfig")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl TlsConfig {
    /// Trust these PEM certificates (one or more CAs) instead of the
    /// system's roots.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Present this PEM certificate chain and private key (mutual TLS).
    pub fn client_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.client = Some((cert.into(), key.into()));
        self
    }

    /// Reads the CA, client certificate and key files (all PEM). A
    /// certificate needs its key and a key its certificate.
    ///
    /// # Errors
    /// [`Error::TlsSetup`] naming the file that cannot be read, or a
    /// certificate given without its key (or the reverse).
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, Error> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                Error::TlsSetup(format!("cannot read the {what} {}: {e}", path.display()))
            })
        };
        let mut config = Self::default();
        if let Some(ca) = ca {
            config = config.ca_pem(read("CA file", ca)?);
        }
        match (cert, key) {
            (Some(cert), Some(key)) => {
                config =
                    config.client_pem(read("client certificate", cert)?, read("client key", key)?);
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(Error::TlsSetup(
                    "a client certificate needs its private key (RTQ_TLS_KEY; --tls-key, or --redis-tls-key for rtq-gateway)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(Error::TlsSetup(
                    "a client key needs its certificate (RTQ_TLS_CERT; --tls-cert, or --redis-tls-cert for rtq-gateway)".into(),
                ))
            }
        }
        Ok(config)
    }

    /// True when nothing beyond the defaults is set.
    pub fn is_default(&self) -> bool {
        self.ca_pem.is_none() && self.client.is_none()
    }

    /// Checks that the PEM holds what it should (redis-rs silently trusts
    /// nothing when a CA file holds no certificate).
    pub(crate) fn check(&self) -> Result<(), Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let count = |pem: &[u8], what: &str| {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::TlsSetup(format!("the {what} is not valid PEM: {e}")))?;
            if certs.is_empty() {
                return Err(Error::TlsSetup(format!(
                    "the {what} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)"
                )));
            }
            Ok(())
        };
        if let Some(ca) = &self.ca_pem {
            count(ca, "CA file")?;
        }
        if let Some((cert, key)) = &self.client {
            count(cert, "client certificate")?;
            PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                Error::TlsSetup(format!("the client key holds no usable private key: {e}"))
            })?;
        }
        Ok(())
    }

    /// The redis-rs form of these settings.
    pub(crate) fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca_pem.clone(),
        }
    }
}

/// Makes ring the process's rustls crypto provider unless one is set
/// already (rustls refuses to guess when several are compiled in).
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The TLS failure inside an error chain, described for an operator, or
/// `None` when the error has nothing to do with TLS.
pub(crate) fn describe_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        // redis-rs keeps the io::Error in an Arc, whose `source()` skips
        // the io::Error itself: look inside.
        let e: &(dyn std::error::Error + 'static) = match e.downcast_ref::<Shared>() {
            Some(shared) => shared.as_ref(),
            None => e,
        };
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(explain(tls));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(explain(tls));
            }
        }
        current = e.source();
    }
    None
}

fn explain(e: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error as E};
    let hint = match e {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is not signed by a trusted CA: pass the CA that signed it (RTQ_TLS_CA; --tls-ca, or --redis-tls-ca for rtq-gateway)"
        }
        E::InvalidCertificate(CertificateError::NotValidForName)
        | E::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "the server's certificate does not name the host in the URL: connect by a name the certificate lists"
        }
        E::InvalidCertificate(CertificateError::Expired)
        | E::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "the server's certificate has expired"
        }
        E::AlertReceived(AlertDescription::CertificateRequired)
        | E::AlertReceived(AlertDescription::HandshakeFailure)
        | E::AlertReceived(AlertDescription::BadCertificate)
        | E::AlertReceived(AlertDescription::UnknownCA) => {
            "the server refused this client: it requires a client certificate it trusts (--tls-cert and --tls-key)"
        }
        E::InvalidMessage(_) => "the server does not speak TLS on this port (use redis:// for a plain port)",
        _ => "",
    };
    if hint.is_empty() {
        e.to_string()
    } else {
        format!("{e}: {hint}")
    }
}
