//! Secrets never leave the process: every text the worker sends somewhere
//! (a task's failure reason stored in Redis and shown to clients, the
//! heartbeat's `last_error`, logs) goes through [`scrub`], which redacts
//! URLs (passwords, tokens in query strings) and masks every secret value
//! the worker was configured with (Redis and upstream passwords, the API
//! key, header-file values), wherever they appear, e.g. quoted back in an
//! upstream's error body.

use std::sync::OnceLock;

static KNOWN: OnceLock<Vec<String>> = OnceLock::new();

/// Shortest value treated as a secret to mask: shorter ones would mask
/// ordinary words.
const MIN_SECRET_LEN: usize = 4;

/// Records the secret values to mask (once, at start-up; later calls are
/// ignored).
pub fn register(values: impl IntoIterator<Item = String>) {
    let mut values: Vec<String> = values
        .into_iter()
        .map(|v| v.trim().to_string())
        .filter(|v| v.len() >= MIN_SECRET_LEN)
        .collect();
    // Longest first, so a secret containing another is masked whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.dedup();
    let _ = KNOWN.set(values);
}

/// Length in bytes of the longest registered secret (0 before
/// [`register`]): how far past a cut a text must be read for a secret
/// that starts before the cut to be seen whole.
pub fn longest() -> usize {
    // Sorted longest first by `register`.
    KNOWN
        .get()
        .and_then(|known| known.first())
        .map_or(0, String::len)
}

/// The secret parts of a URL: userinfo and secret query values, raw and
/// percent-decoded.
pub fn of_url(url: &str) -> Vec<String> {
    // A Redis Cluster seed list (`redis+cluster://:pw@h1:6379,h2:6379`,
    // or several URLs): the secrets of each entry (a comma may also be
    // part of a password: rtq_core splits the way it connects).
    if url.to_ascii_lowercase().starts_with("redis") && url.contains(',') {
        let nodes = rtq_core::redis_node_urls(url);
        if nodes.len() > 1 || nodes[0] != url {
            return nodes.iter().flat_map(|u| of_url(u)).collect();
        }
    }
    let Ok(parsed) = url::Url::parse(url) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(pw) = parsed.password() {
        out.push(pw.to_string());
        // What HTTP basic authentication sends (and a careless server may
        // quote back): base64 of `user:password`.
        out.push(base64(format!("{}:{pw}", parsed.username()).as_bytes()));
    } else if !parsed.username().is_empty() {
        out.push(parsed.username().to_string());
    }
    for (k, v) in parsed.query_pairs() {
        if rtq_core::redact_url(&format!("x://h/?{k}=v")).contains("***") {
            out.push(v.into_owned());
        }
    }
    let decoded: Vec<String> = out
        .iter()
        .filter_map(|s| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
        })
        .collect();
    out.extend(decoded);
    out
}

/// Standard base64 with padding (RFC 4648), for the basic-auth form of a
/// URL's credentials.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `text` with every URL redacted and every registered secret masked.
pub fn scrub(text: &str) -> String {
    let mut out = rtq_core::redact_urls_in(text);
    if let Some(known) = KNOWN.get() {
        for secret in known {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_secrets_are_found_raw_and_decoded() {
        let found = of_url("http://user:p%40ss@h/x?api_key=k3y&model=m");
        assert!(found.contains(&"p%40ss".to_string()), "{found:?}");
        assert!(found.contains(&"p@ss".to_string()), "{found:?}");
        assert!(found.contains(&"k3y".to_string()), "{found:?}");
        assert!(!found.contains(&"m".to_string()), "{found:?}");
        assert!(found.contains(&"dXNlcjpwJTQwc3M=".to_string()), "{found:?}");
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn a_cluster_seed_list_yields_its_password() {
        let found = of_url("redis+cluster://:s3cret@10.0.0.1:6379,10.0.0.2:6379");
        assert!(found.contains(&"s3cret".to_string()), "{found:?}");
        let found = of_url("redis://:pw-one@a:1,redis://:pw-two@b:2");
        assert!(found.contains(&"pw-one".to_string()) && found.contains(&"pw-two".to_string()));
        let found = of_url("redis://:pa,ss@h:1");
        assert!(found.contains(&"pa,ss".to_string()), "{found:?}");
        let found = of_url("redis+cluster://:a,b@h1:1,h2:2");
        assert!(found.contains(&"a,b".to_string()), "{found:?}");
    }
}
