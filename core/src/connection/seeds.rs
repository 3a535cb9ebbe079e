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
    let pieces: Vec<&str> = config.split(',').map(str::trim).collect();
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
                if piece.contains('@') {
                    ""
                } else {
                    userinfo.as_deref().unwrap_or("")
                }
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

/// Parses one node URL with rtq's TCP settings.
pub(super) fn parse_info(url: &str) -> Result<ConnectionInfo, Error> {
    // TCP_NODELAY: rtq pipelines small writes (a heartbeat, then a
    // complete); with Nagle's algorithm the second would wait for the
    // first's ACK, which delayed ACK holds back for a whole round trip.
    Ok(redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| Error::Connection {
            url: redact_url(url),
            source: e,
        })?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(split_seeds("a:1").unwrap_err().contains("redis://"));
        assert!(split_seeds("unix:///tmp/r.sock,redis://b:2")
            .unwrap_err()
            .contains("unix"));
    }
}
