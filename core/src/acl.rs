//! Least-privilege Redis users for rtq: one role per use, as `ACL SETUSER`
//! lines. This is the one source of the rules: `rtq acl <role>` prints
//! them, PROTOCOL.md section 14 shows them (a test checks the two agree),
//! and `core/tests/acl.rs` proves each role on a real server.
//!
//! Redis checks every command a function runs against the caller's ACL, so
//! a role that calls a writing function needs every command the library
//! runs ([`LIBRARY_COMMANDS`]).

use crate::error::Error;
use crate::keys::QueueKeys;

/// Every command the functions library runs (`redis.call`/`pcall`).
pub const LIBRARY_COMMANDS: &[&str] = &[
    "time",
    "type",
    "hget",
    "hmget",
    "hset",
    "hincrby",
    "del",
    "pexpire",
    "pttl",
    "persist",
    "rpush",
    "lrange",
    "sadd",
    "srem",
    "smembers",
    "scard",
    "sismember",
    // Revision 12: which of a complete call's tasks the worker owns (a
    // user made before it falls back to SISMEMBER).
    "smismember",
    "zadd",
    "zrem",
    "zrange",
    "zscore",
    "zcard",
    "zcount",
    "zincrby",
    "zpopmin",
    "zremrangebyscore",
    "xadd",
    // The v3 library (`rtq3`, stream queues): markers, output lists and
    // the bands' consumer group.
    "get",
    "set",
    "append",
    "exists",
    "llen",
    "hsetnx",
    "zrangebyscore",
    "xrange",
    "xpending",
    "xclaim",
    "xack",
    "xdel",
    "xgroup",
    "xinfo",
];

/// A use of rtq that gets a Redis user of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Submits, waits, streams, cancels on one queue.
    Client,
    /// Serves one queue (`rtq-worker`, or `Worker` in a program).
    Worker,
    /// Reads every queue and writes nothing (`rtq --read-only`): Redis
    /// refuses every write, whatever the console does.
    Console,
    /// Everything, every queue; the only role that loads the library.
    Admin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Client, Role::Worker, Role::Console, Role::Admin];

    /// The role's name (`client`, `worker`, `console`, `admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Console => "console",
            Role::Admin => "admin",
        }
    }

    /// True for roles made per queue (client, worker).
    pub fn per_queue(self) -> bool {
        matches!(self, Role::Client | Role::Worker)
    }

    /// The default user name: `rtq-<role>-<queue>` or `rtq-<role>`.
    pub fn user(self, queue: Option<&str>) -> String {
        match queue.filter(|_| self.per_queue()) {
            Some(q) => format!("rtq-{}-{q}", self.as_str()),
            None => format!("rtq-{}", self.as_str()),
        }
    }

    /// The role's rules (keys, then commands) for `queue` (ignored by
    /// fleet-wide roles), without validating the name; see [`setuser`].
    pub fn rules(self, queue: &str) -> Vec<String> {
        let own = format!("~rtq:{{{queue}}}:*");
        let (keys, commands): (Vec<String>, Vec<&str>) = match self {
            Role::Client => (
                vec![own, "%W~rtq:queues".into()],
                vec![
                    "fcall|rtq2_submit",
                    "fcall|rtq2_submit_many",
                    "fcall|rtq2_watch",
                    "fcall|rtq2_unwatch",
                    "fcall|rtq2_cancel",
                    "fcall|rtq2_housekeep",
                    "fcall_ro|rtq2_read",
                    "fcall_ro|rtq2_version",
                    // Stream queues (protocol v3).
                    "fcall|rtq3_create",
                    "fcall|rtq3_submit",
                    "fcall|rtq3_cancel",
                    "fcall|rtq3_expire",
                    "fcall_ro|rtq3_status",
                    "fcall_ro|rtq3_version",
                    "xread",
                    "xtrim",
                    "hgetall",
                    // A durable submit (`TaskRequest::durable`) waits for
                    // a replica.
                    "wait",
                    // On a cluster: the slot map.
                    "cluster|slots",
                ],
            ),
            Role::Worker => (
                vec![own, "%W~rtq:queues".into()],
                vec![
                    "fcall|rtq2_register",
                    "fcall|rtq2_heartbeat",
                    "fcall|rtq2_complete",
                    "fcall|rtq2_complete_many",
                    "fcall|rtq2_write_many",
                    "fcall|rtq2_chunk",
                    "fcall|rtq2_release",
                    "fcall|rtq2_cancel",
                    "fcall_ro|rtq2_version",
                    // Stream queues (protocol v3): its own reads of new
                    // entries, and the functions.
                    "fcall|rtq3_beat",
                    "fcall|rtq3_join",
                    "fcall|rtq3_takeover",
                    "fcall|rtq3_complete",
                    "fcall|rtq3_write",
                    "fcall_ro|rtq3_version",
                    "xreadgroup",
                    "blmpop",
                    "info",
                    // On a cluster: the slot map, and whether the queue's
                    // slot is migrating.
                    "cluster|slots",
                    "cluster|nodes",
                ],
            ),
            Role::Console => (
                vec!["%R~rtq:*".into()],
                vec![
                    "fcall_ro|rtq2_version",
                    "fcall_ro|rtq2_read",
                    "fcall_ro|rtq3_status",
                    "fcall_ro|rtq3_version",
                    "time",
                    "smembers",
                    "hgetall",
                    "hget",
                    "hmget",
                    "zcard",
                    "zrange",
                    "scard",
                    "xrevrange",
                    "lrange",
                    // Whether a listed queue exists (`Admin::queue_exists`).
                    "sismember",
                    // Task lists read a spec for its labels only when it
                    // is small (`Admin::task_summaries`).
                    "hstrlen",
                    // Whether Redis restarted (run id, uptime): the console
                    // tells "Redis lost its data" from "no data".
                    "info",
                    // Stream queues: markers, bands, their pending lists.
                    "get",
                    "xrange",
                    "xpending",
                    "xinfo|groups",
                    // On a cluster: the slot map (which master holds a queue).
                    "cluster|slots",
                ],
            ),
            Role::Admin => (
                vec!["~rtq:*".into()],
                vec![
                    "fcall",
                    "fcall_ro",
                    "function|load",
                    "function|list",
                    "info",
                    "blmpop",
                    "xread",
                    "xtrim",
                    "xrevrange",
                    "hgetall",
                    "hstrlen",
                    // Queue deletion (`Admin::delete_queue`).
                    "scan",
                    "unlink",
                    "wait",
                    "cluster|slots",
                    "cluster|nodes",
                ],
            ),
        };
        let library: &[&str] = if self == Role::Console {
            &[]
        } else {
            LIBRARY_COMMANDS
        };
        keys.into_iter()
            .chain(commands.iter().chain(library).map(|c| format!("+{c}")))
            .collect()
    }
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown role {s:?}: one of client, worker, console, admin"
                ))
            })
    }
}

/// The `ACL SETUSER` line of `role` for `queue` (required by client and
/// worker, ignored by the fleet-wide console and admin), with the user
/// name `user` (default [`Role::user`]) and the literal password
/// placeholder `<password>`: rtq never prints a password; put yours (or
/// `#<sha256 hex>`) in its place.
///
/// # Errors
/// [`Error::InvalidInput`] without a queue for a per-queue role,
/// [`Error::InvalidName`] for a queue name that would break the key layout.
///
/// # Examples
/// ```
/// use rtq_core::acl::{setuser, Role};
/// let line = setuser(Role::Worker, Some("llm"), None).unwrap();
/// assert!(line.starts_with("ACL SETUSER rtq-worker-llm reset on ><password> ~rtq:{llm}:* "));
/// ```
pub fn setuser(role: Role, queue: Option<&str>, user: Option<&str>) -> Result<String, Error> {
    let queue = match (role.per_queue(), queue) {
        (true, None) => {
            return Err(Error::InvalidInput(format!(
                "the {} role is per queue: name the queue (rtq acl: --queue)",
                role.as_str()
            )))
        }
        (true, Some(q)) => Some(QueueKeys::new(q)?.name().to_string()),
        (false, _) => None,
    };
    let user = user
        .map(str::to_string)
        .unwrap_or_else(|| role.user(queue.as_deref()));
    if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::InvalidInput(format!("invalid user name {user:?}")));
    }
    Ok(format!(
        "ACL SETUSER {user} reset on ><password> {}",
        role.rules(queue.as_deref().unwrap_or("")).join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PROTOCOL.md shows exactly the lines this module makes.
    #[test]
    fn protocol_md_shows_the_generated_lines() {
        let documented: Vec<&str> = include_str!("../PROTOCOL.md")
            .lines()
            .filter(|l| l.starts_with("ACL SETUSER "))
            .collect();
        let generated: Vec<String> = Role::ALL
            .into_iter()
            .map(|r| {
                let user = r.user(Some("<q>"));
                format!(
                    "ACL SETUSER {user} reset on ><password> {}",
                    r.rules("<q>").join(" ")
                )
            })
            .collect();
        assert_eq!(documented, generated);
    }

    #[test]
    fn per_queue_roles_need_a_valid_queue_and_fleet_roles_ignore_it() {
        assert!(setuser(Role::Client, None, None).is_err());
        assert!(setuser(Role::Worker, Some("a{b}"), None).is_err());
        let console = setuser(Role::Console, Some("llm"), None).unwrap();
        assert!(console.starts_with("ACL SETUSER rtq-console reset on ><password> %R~rtq:* "));
        assert!(!console.contains("+hset") && !console.contains("+fcall|"));
        let client = setuser(Role::Client, Some("llm"), Some("app")).unwrap();
        assert!(client.starts_with("ACL SETUSER app reset on ><password> ~rtq:{llm}:* "));
        assert_eq!("worker".parse::<Role>().unwrap(), Role::Worker);
        assert!("root".parse::<Role>().is_err());
    }
}
