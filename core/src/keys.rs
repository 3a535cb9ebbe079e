//! The key layout: every Redis key rtq uses is built here and nowhere else.
//!
//! All keys of a queue start with `rtq:{<queue>}:`, whose `{<queue>}` hash tag
//! puts them in one Redis Cluster slot, so every multi-key script is
//! cluster-safe. The queue registry [`QUEUES`] is the only key outside a
//! queue's slot, and no function touches it.

use crate::error::Error;

/// Global set of queue names, read by the console to list queues.
pub const QUEUES: &str = "rtq:queues";

/// Longest accepted queue name, in bytes.
pub const MAX_QUEUE_NAME: usize = 64;
/// Longest accepted task or worker id, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Checks a queue name: 1..=64 bytes of `[A-Za-z0-9._-]`.
///
/// Braces would break the hash tag and `:` the key structure, so both are
/// refused rather than escaped.
///
/// # Errors
/// [`Error::InvalidName`] naming the offending input.
pub fn validate_queue_name(name: &str) -> Result<(), Error> {
    validate(name, MAX_QUEUE_NAME, "queue name", ". _ -", |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
    })
}

/// Checks a task or worker id: 1..=128 bytes of `[A-Za-z0-9._:-]`.
///
/// Tabs and whitespace would break the inbox message format; braces the
/// hash tag.
///
/// # Errors
/// [`Error::InvalidName`] naming the offending input.
pub fn validate_id(id: &str, what: &'static str) -> Result<(), Error> {
    validate(id, MAX_ID_LEN, what, ". _ - :", |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')
    })
}

/// `punctuation` names the characters `allowed` accepts besides ASCII
/// letters and digits, for the error message.
fn validate(
    value: &str,
    max: usize,
    what: &'static str,
    punctuation: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), Error> {
    let reason = if value.is_empty() {
        Some("must not be empty".to_string())
    } else if value.len() > max {
        Some(format!("is {} bytes long, the limit is {max}", value.len()))
    } else {
        value
            .chars()
            .find(|c| !allowed(*c))
            .map(|c| format!("contains {c:?}; allowed are letters, digits and {punctuation}"))
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            what,
            value: value.chars().take(80).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Builds the keys of one queue. Cheap to clone; holds the validated prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueKeys {
    name: String,
    prefix: String,
}

impl QueueKeys {
    /// Keys for queue `name`.
    ///
    /// # Errors
    /// [`Error::InvalidName`] if the name does not pass [`validate_queue_name`].
    pub fn new(name: &str) -> Result<Self, Error> {
        validate_queue_name(name)?;
        Ok(Self {
            name: name.to_string(),
            prefix: format!("rtq:{{{name}}}:"),
        })
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `rtq:{q}:` - the prefix of every key of the queue.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// Hash: `v` (protocol), `paused`, `maxd` (max depth, 0 = unlimited),
    /// `dd` (earliest due retry, ms; absent = unknown).
    /// `KEYS[1]` of every function: it exists while the queue exists.
    pub fn meta(&self) -> String {
        self.key("meta")
    }
    /// Zset of queued task ids, scored by priority band then submit time.
    pub fn pending(&self) -> String {
        self.key("pending")
    }
    /// Zset of retries waiting out their backoff, scored by due time.
    pub fn delayed(&self) -> String {
        self.key("delayed")
    }
    /// Zset worker id -> free slots (only workers with free slots).
    pub fn free(&self) -> String {
        self.key("free")
    }
    /// Zset worker id -> lease expiry (ms, Redis time).
    pub fn workers(&self) -> String {
        self.key("workers")
    }
    /// Zset task id -> deadline (ms) of unfinished tasks that have one.
    pub fn deadlines(&self) -> String {
        self.key("deadlines")
    }
    /// Stream of ended tasks (`t` id, `st` state), capped near 1000 entries.
    pub fn ended(&self) -> String {
        self.key("ended")
    }
    /// Stream of queue events (`k` kind, `t` task, `w` worker, `m`
    /// message): failures, requeues, retries, cancels, lost and departed
    /// workers, operator actions; capped near 1000 entries.
    pub fn events(&self) -> String {
        self.key("ev")
    }
    /// Zset worker id -> when (ms) of workers that died or left in the last
    /// 10 minutes.
    pub fn departed(&self) -> String {
        self.key("gone")
    }
    /// Hash of one task.
    pub fn task(&self, id: &str) -> String {
        self.key(&format!("t:{id}"))
    }
    /// Hash keeping a deleted task's replay mark (`ca`, `nx`, `st`, `nc`,
    /// `fc`) for 10 minutes, so a retried complete still replays.
    pub fn replay_mark(&self, id: &str) -> String {
        self.key(&format!("ca:{id}"))
    }
    /// List of the output chunks of a task's current attempt.
    pub fn output(&self, id: &str) -> String {
        self.key(&format!("o:{id}"))
    }
    /// Set of extra reply streams following a task.
    pub fn watchers(&self, id: &str) -> String {
        self.key(&format!("wt:{id}"))
    }
    /// Hash describing a worker (heartbeat info).
    pub fn worker(&self, worker_id: &str) -> String {
        self.key(&format!("w:{worker_id}"))
    }
    /// Set of task ids a worker currently owns.
    pub fn worker_tasks(&self, worker_id: &str) -> String {
        self.key(&format!("wq:{worker_id}"))
    }
    /// List: a worker's inbox of task and cancel messages.
    pub fn inbox(&self, worker_id: &str) -> String {
        self.key(&format!("in:{worker_id}"))
    }
    /// Stream: events for the tasks of one client process.
    pub fn reply(&self, client_id: &str) -> String {
        self.key(&format!("r:{client_id}"))
    }
    /// Hash of counters and latency histograms for one 10-second bucket.
    pub fn stats(&self, bucket: i64) -> String {
        self.key(&format!("s:{bucket}"))
    }
}

/// Redis Cluster hash slot of a key (CRC16/XMODEM of the hash tag, mod 16384).
///
/// Used by tests to prove that every key of a queue lands in one slot.
pub fn cluster_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        rest.iter()
            .position(|b| *b == b'}')
            .filter(|len| *len > 0)
            .map(|len| &rest[..len])
    });
    crc16(tagged.unwrap_or(bytes)) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in data {
        crc ^= (*byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_cluster_spec_example() {
        // From the Redis Cluster specification: CRC16("123456789") = 0x31C3.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(cluster_slot("foo"), 12182);
    }

    #[test]
    fn only_the_first_non_empty_hash_tag_is_hashed() {
        // The hash tag examples of the Redis Cluster specification.
        let user = cluster_slot("user1000");
        assert_eq!(cluster_slot("{user1000}.following"), user);
        assert_eq!(cluster_slot("{user1000}.followers"), user);
        assert_eq!(cluster_slot("foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(cluster_slot("foo{{bar}}zap"), crc16(b"{bar") % 16384);
        assert_eq!(cluster_slot("foo{bar}{zap}"), cluster_slot("bar"));
    }

    #[test]
    fn every_key_of_a_queue_shares_one_slot() {
        let k = QueueKeys::new("llm-70b").unwrap();
        let slot = cluster_slot(k.prefix());
        for key in [
            k.meta(),
            k.pending(),
            k.delayed(),
            k.free(),
            k.workers(),
            k.deadlines(),
            k.ended(),
            k.task("a1"),
            k.replay_mark("a1"),
            k.output("a1"),
            k.watchers("a1"),
            k.worker("w1"),
            k.worker_tasks("w1"),
            k.inbox("w1"),
            k.reply("c1"),
            k.stats(17),
        ] {
            assert_eq!(cluster_slot(&key), slot, "{key}");
        }
        assert_ne!(
            cluster_slot(QueueKeys::new("other").unwrap().prefix()),
            slot
        );
    }

    #[test]
    fn names_that_break_the_layout_are_refused() {
        for bad in ["", "a{b}", "a:b", "a b", "tab\t", &"x".repeat(65), "é"] {
            assert!(validate_queue_name(bad).is_err(), "{bad:?}");
        }
        for good in ["llm", "whisper-large.v3", "A_1"] {
            validate_queue_name(good).unwrap();
        }
        // The length limits are inclusive.
        validate_queue_name(&"q".repeat(MAX_QUEUE_NAME)).unwrap();
        validate_id(&"i".repeat(MAX_ID_LEN), "task id").unwrap();
        assert!(validate_id(&"i".repeat(MAX_ID_LEN + 1), "task id").is_err());
        assert!(validate_id("a\tb", "task id").is_err());
        assert!(validate_id("{x}", "task id").is_err());
        validate_id("019a:abc-1", "task id").unwrap();
    }

    #[test]
    fn a_refusal_names_the_characters_that_are_allowed() {
        let reason = |e: Error| match e {
            Error::InvalidName { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        let id = reason(validate_id("a b", "task id").unwrap_err());
        assert!(id.ends_with("letters, digits and . _ - :"), "{id}");
        let queue = reason(validate_queue_name("a:b").unwrap_err());
        assert!(queue.ends_with("letters, digits and . _ -"), "{queue}");
    }
}
