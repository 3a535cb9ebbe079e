//! The HTTP client for upstream requests and health probes, and the checks
//! of its configuration made at start-up (before Redis is contacted).
//!
//! The client never follows a redirect: a redirect would carry the
//! authentication headers (`--upstream-api-key`, `--upstream-header-file`)
//! and the task's input to whatever host the upstream names, and a 302
//! turns a POST into a bodiless GET. A 3xx reply fails the task with the
//! `Location` it named (see `handlers::reply_failed`).

use std::time::Duration;

use anyhow::Context;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use crate::Config;

/// How long a TCP connection to the upstream may take to open.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Parses an http(s) URL given with `flag`; the message names the flag and
/// shows the URL with its credentials masked.
///
/// # Errors
/// Not a URL, not http/https, or no host.
pub(crate) fn check_url(flag: &str, raw: &str) -> Result<url::Url, String> {
    let shown = rtq_core::redact_url(raw.trim());
    let url = url::Url::parse(raw.trim())
        .map_err(|e| format!("{flag} {shown:?} is not a valid URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{flag} {shown:?} must start with http:// or https://"
        ));
    }
    if url.host_str().unwrap_or("").is_empty() {
        return Err(format!("{flag} {shown:?} names no host"));
    }
    Ok(url)
}

/// The headers sent with every upstream request: `Authorization: Bearer`
/// from `--upstream-api-key` and the lines of `--upstream-header-file`,
/// marked sensitive so they never appear in debug output.
///
/// # Errors
/// A message naming the flag (and the file's line number, never its
/// content: it holds secrets).
pub(crate) fn default_headers(config: &Config) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    if let Some(key) = config.upstream_api_key.as_deref().filter(|k| !k.is_empty()) {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", key.trim())).map_err(|_| {
            "--upstream-api-key (RTQ_UPSTREAM_API_KEY) holds characters a header cannot carry"
                .to_string()
        })?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    let Some(path) = &config.upstream_header_file else {
        return Ok(headers);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --upstream-header-file {}: {e}", path.display()))?;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || {
            format!(
                "--upstream-header-file {} line {}: expected `Name: value`",
                path.display(),
                n + 1
            )
        };
        let (name, value) = line.split_once(':').ok_or_else(bad)?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
        let mut value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

/// The certificates of `--upstream-ca`, if given.
///
/// # Errors
/// The file cannot be read, is not PEM, or holds no certificate.
pub(crate) fn extra_roots(config: &Config) -> Result<Vec<reqwest::Certificate>, String> {
    let Some(path) = &config.upstream_ca else {
        return Ok(Vec::new());
    };
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read --upstream-ca {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("--upstream-ca {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--upstream-ca {} holds no certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// The HTTP client for upstream requests and health probes: rustls with
/// the system's roots plus `--upstream-ca`, the [`default_headers`], no
/// redirects (see the module docs).
///
/// # Errors
/// As [`default_headers`] and [`extra_roots`] (already checked by
/// [`Config::validate`]), or the TLS backend cannot start.
pub(crate) fn upstream_client(config: &Config) -> anyhow::Result<reqwest::Client> {
    let mut http = reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .default_headers(default_headers(config).map_err(anyhow::Error::msg)?);
    for cert in extra_roots(config).map_err(anyhow::Error::msg)? {
        http = http.add_root_certificate(cert);
    }
    if config.upstream_timeout_secs > 0 {
        http = http.timeout(Duration::from_secs(config.upstream_timeout_secs));
    }
    http.build().context("building the HTTP client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_needs_http_or_https_and_a_host_and_its_password_is_never_shown() {
        assert!(check_url("--upstream-url", "http://127.0.0.1:8000/x").is_ok());
        assert!(check_url("--upstream-url", " https://model.internal ").is_ok());
        for bad in [
            "http://",
            "http://[::1",
            "ftp://model.internal/x",
            "model.internal:8000",
            "http://u:hunter22@[::1",
        ] {
            let err = check_url("--upstream-url", bad).unwrap_err();
            assert!(err.contains("--upstream-url"), "{bad}: {err}");
            assert!(!err.contains("hunter22"), "{bad}: {err}");
        }
    }
}
