//! The Redis configuration string: one node's URL, a `redis+cluster://`
//! URL, or comma-separated cluster seeds, split into node URLs.

use redis::ConnectionInfo;

use crate::error::{redact_url, Error};

/// URL schemes that name a Redis Cluster (plain and TLS).
const CLUSTER_SCHEMES: [(&str, &str); 2] =
    [("redis+cluster", "redis"), ("rediss+cluster", "rediss")];

/// The configuration string split into node URLs (with the `+cluster`
/// scheme suffix removed), and whether it names a cluster.
pub(super) fn split_seeds(config: &str) -> Result<(Vec<String>, bool), String> {
    let config = config.trim();
    let entries = entries(config);
    let pieces: Vec<&str> = entries.iter().map(|e| e.trim()).collect();
    if pieces.iter().any(|p| p.is_empty()) {
        return Err("an empty entry in the comma-separated list of Redis URLs".into());
    }
    let mut cluster = pieces.len() > 1;
    // Scheme and user info of the first URL, inherited by later entries
    // given as bare host:port.
    let (first_scheme, first_rest) = pieces[0]
        .split_once("://")
        .ok_or_else(|| "a Redis URL must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://".to_string())?;
    let base_scheme = match CLUSTER_SCHEMES
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(first_scheme))
    {
        Some((_, base)) => {
            cluster = true;
            *base
        }
        None => first_scheme,
    };
    let userinfo = first_rest
        .split(['/', '?', '#'])
        .next()
        .and_then(|authority| authority.rsplit_once('@'))
        .map(|(user, _)| format!("{user}@"));
    let mut urls = Vec::with_capacity(pieces.len());
    for (i, piece) in pieces.iter().enumerate() {
        let url = match piece.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = CLUSTER_SCHEMES
                    .iter()
                    .find(|(c, _)| c.eq_ignore_ascii_case(scheme))
                    .map_or(scheme, |(_, base)| *base);
                format!("{scheme}://{rest}")
            }
            None if i > 0 => format!(
                "{base_scheme}://{}{piece}",
                userinfo.as_deref().unwrap_or("")
            ),
            None => unreachable!("checked above"),
        };
        if cluster && url.to_ascii_lowercase().starts_with("unix:") {
            return Err(
                "a Redis Cluster is reached over TCP: unix:// sockets cannot be cluster seeds"
                    .into(),
            );
        }
        urls.push(url);
    }
    Ok((urls, cluster))
}

/// The comma-separated entries of `config`: URLs (with a scheme) and bare
/// `host:port` seeds (never with user info). A comma inside a URL's user
/// info (a password with a comma) does not split it: a URL runs through
/// the last following piece that holds an `@`, up to the next URL; a
/// `unix:` URL runs up to the next URL.
fn entries(config: &str) -> Vec<String> {
    let raw: Vec<&str> = config.split(',').collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i].contains("://") || out.is_empty() {
            let mut end = i;
            let mut j = i + 1;
            // A socket URL keeps every following bare piece (its query,
            // which holds the password, may contain commas).
            let socket = raw[i]
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("unix:")
                || raw[i]
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with("redis+unix:");
            while j < raw.len() && !raw[j].contains("://") {
                if socket || raw[j].contains('@') {
                    end = j;
                }
                j += 1;
            }
            out.push(raw[i..=end].join(","));
            i = end + 1;
        } else {
            out.push(raw[i].to_string());
            i += 1;
        }
    }
    out
}

/// A URL redis-rs could not parse, as [`Error::InvalidUrl`]: the URL
/// redacted, and the reason without the URL itself (which would carry
/// its password).
fn invalid_url(url: &str, e: &redis::RedisError) -> Error {
    // The user info (`user:password`) of `scheme://user:password@host...`,
    // masked wherever the reason repeats it (the rest of the reason stays).
    let user_info = url
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
        .and_then(|authority| authority.rsplit_once('@'))
        .map_or("", |(info, _)| info);
    let mut reason = e.to_string().replace(url, &redact_url(url));
    if !user_info.is_empty() {
        reason = reason.replace(user_info, "***");
    }
    Error::InvalidUrl {
        url: redact_url(url),
        reason,
    }
}

/// Parses one node URL with rtq's TCP settings.
pub(super) fn parse_info(url: &str) -> Result<ConnectionInfo, Error> {
    // TCP_NODELAY: rtq pipelines small writes (a heartbeat, then a
    // complete); with Nagle's algorithm the second would wait for the
    // first's ACK, which delayed ACK holds back for a whole round trip.
    Ok(redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| invalid_url(url, &e))?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_that_does_not_parse_is_an_invalid_url_never_retried_nor_printed_whole() {
        for url in [
            "redis://:s3cret@host:notaport",
            "redis://u:s3cret@host:6379/notadb",
            "redis://:s3cret@",
            "redis://:s3cret@host:99999",
        ] {
            let e = parse_info(url).unwrap_err();
            assert!(matches!(e, Error::InvalidUrl { .. }), "{url}: {e:?}");
            assert!(!e.is_retryable(), "{url}");
            assert_eq!(e.connection_problem(), None, "{url}");
            let text = e.to_string();
            assert!(text.starts_with("invalid Redis URL "), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
        assert!(parse_info("redis://:s3cret@host:6379/2").is_ok());
    }

    #[test]
    fn one_url_is_one_node_and_a_list_or_cluster_scheme_is_a_cluster() {
        assert_eq!(
            split_seeds("redis://h:1").unwrap(),
            (vec!["redis://h:1".to_string()], false)
        );
        assert_eq!(
            split_seeds("redis+cluster://u:p@h:1").unwrap(),
            (vec!["redis://u:p@h:1".to_string()], true)
        );
        assert_eq!(
            split_seeds("rediss+cluster://:p@h:1,h2:2 , redis://x@h3:3").unwrap(),
            (
                vec![
                    "rediss://:p@h:1".to_string(),
                    "rediss://:p@h2:2".to_string(),
                    "redis://x@h3:3".to_string()
                ],
                true
            )
        );
        assert_eq!(
            split_seeds("redis://a:1,redis://b:2").unwrap(),
            (
                vec!["redis://a:1".to_string(), "redis://b:2".to_string()],
                true
            )
        );
        assert!(split_seeds("redis://a:1,").unwrap_err().contains("empty"));
        // Commas in a password (legal in a URL's user info) are no list.
        assert_eq!(
            split_seeds("redis://:pa,ss@h:1/0").unwrap(),
            (vec!["redis://:pa,ss@h:1/0".to_string()], false)
        );
        assert_eq!(
            split_seeds("redis://u:a,b,c@h:1").unwrap(),
            (vec!["redis://u:a,b,c@h:1".to_string()], false)
        );
        assert_eq!(
            split_seeds("redis+cluster://:a,b@h1:1,h2:2").unwrap(),
            (
                vec![
                    "redis://:a,b@h1:1".to_string(),
                    "redis://:a,b@h2:2".to_string()
                ],
                true
            )
        );
        assert_eq!(
            split_seeds("redis://:x,y@h1:1,redis://:z@h2:2").unwrap(),
            (
                vec![
                    "redis://:x,y@h1:1".to_string(),
                    "redis://:z@h2:2".to_string()
                ],
                true
            )
        );
        assert_eq!(
            split_seeds("unix:///tmp/r.sock?pass=a,b").unwrap(),
            (vec!["unix:///tmp/r.sock?pass=a,b".to_string()], false)
        );
        assert!(split_seeds("a:1").unwrap_err().contains("redis://"));
        assert!(split_seeds("unix:///tmp/r.sock,redis://b:2")
            .unwrap_err()
            .contains("unix"));
    }
}
