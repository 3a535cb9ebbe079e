//! API keys: the key file (hashed keys, each with its queues, route
//! families and limits), the lookup of a request's bearer key, and the
//! per-key rate and concurrency limits.
//!
//! Keys are stored as the hex SHA-256 of the key, never the key itself: a
//! leaked key file grants nothing. A request's key is hashed and looked up.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The hex SHA-256 of a key, as the key file stores it.
pub fn hash_key(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Which queues a key may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Queues {
    /// Every queue (`queues=*`).
    All,
    /// Only these.
    Only(BTreeSet<String>),
}

impl Queues {
    /// True if the key may use `queue`.
    pub fn allows(&self, queue: &str) -> bool {
        match self {
            Queues::All => true,
            Queues::Only(set) => set.contains(queue),
        }
    }
}

/// The two families of `/v1/` routes a key may be granted (`routes=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    /// The OpenAI-compatible routes: `/v1/chat/completions`,
    /// `/v1/completions`, `/v1/models`.
    OpenAi,
    /// The task API under `/v1/queues/`.
    Tasks,
}

impl Route {
    /// The family of a request path (every `/v1/` path is one of the two).
    pub fn of_path(path: &str) -> Self {
        if path.starts_with("/v1/queues/") {
            Route::Tasks
        } else {
            Route::OpenAi
        }
    }

    /// Its name in `routes=`.
    pub fn name(self) -> &'static str {
        match self {
            Route::OpenAi => "openai",
            Route::Tasks => "tasks",
        }
    }

    fn parse(word: &str) -> Result<Self, String> {
        match word {
            "openai" => Ok(Route::OpenAi),
            "tasks" => Ok(Route::Tasks),
            other => Err(format!(
                "routes= names {other:?}; the route families are openai and tasks"
            )),
        }
    }
}

/// A token bucket: `rate` requests per second, up to `burst` at once.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes a token at `now`, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Distinct queues a key may wait on at once unless its line says
/// `wait_queues=` (`--key-wait-queues`).
pub const DEFAULT_WAIT_QUEUES: usize = 16;

/// One API key's grants and limits.
#[derive(Debug)]
pub struct ApiKey {
    /// A name for logs, metrics and task labels (never the key).
    pub name: String,
    /// The queues it may use.
    pub queues: Queues,
    /// The route families it may use (`routes=`, default both): a request
    /// on another is refused on its head, before any of its body is read.
    pub routes: BTreeSet<Route>,
    /// Largest request body it may send, in bytes (`max_body=`; the
    /// smaller of this and `--max-body-bytes` applies).
    pub max_body: Option<usize>,
    rate: Option<Mutex<Bucket>>,
    concurrency: Option<Arc<Semaphore>>,
    /// The configured concurrency limit (for messages).
    pub max_concurrent: Option<usize>,
    /// Most distinct queues its open waits and streams may be on at once:
    /// each such queue holds one of the gateway's reply readers, which
    /// every key shares (`wait_queues=`, default `--key-wait-queues`).
    pub max_wait_queues: usize,
    /// Open waits and streams by queue.
    waiting: Mutex<HashMap<String, usize>>,
}

/// Held while a wait or stream of a key is open on a queue: the key's
/// share of the queues waited on (see [`ApiKey::wait_on`]).
#[derive(Debug)]
pub struct QueueShare {
    key: Arc<ApiKey>,
    queue: String,
}

impl Drop for QueueShare {
    fn drop(&mut self) {
        let mut waiting = self.key.waiting.lock().expect("queue shares poisoned");
        if let Some(n) = waiting.get_mut(&self.queue) {
            *n -= 1;
            if *n == 0 {
                waiting.remove(&self.queue);
            }
        }
    }
}

/// Why a key may not start a request now.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over its rate; retry after this long.
    Rate(Duration),
    /// At its concurrency limit.
    Concurrency(usize),
}

/// Held while a request of a key with a concurrency limit runs (moved into
/// a stream for as long as the stream is open).
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Permit {
    /// A permit of a request without limits.
    pub fn none() -> Self {
        Self(None)
    }
}

impl ApiKey {
    /// True if the key may use the routes of `route`.
    pub fn allows_route(&self, route: Route) -> bool {
        self.routes.contains(&route)
    }

    /// Takes a share of `queue` for one open wait or stream: free on a
    /// queue the key waits on already, refused when the key waits on
    /// [`ApiKey::max_wait_queues`] other queues.
    ///
    /// # Errors
    /// The limit, when it is reached.
    pub fn wait_on(self: &Arc<Self>, queue: &str) -> Result<QueueShare, usize> {
        let mut waiting = self.waiting.lock().expect("queue shares poisoned");
        if let Some(n) = waiting.get_mut(queue) {
            *n += 1;
        } else if waiting.len() >= self.max_wait_queues {
            return Err(self.max_wait_queues);
        } else {
            waiting.insert(queue.to_string(), 1);
        }
        Ok(QueueShare {
            key: Arc::clone(self),
            queue: queue.to_string(),
        })
    }

    /// Admits one request: takes a rate token and a concurrency slot.
    ///
    /// # Errors
    /// The [`Refusal`] when a limit is reached.
    pub fn admit(&self) -> Result<Permit, Refusal> {
        let permit = match &self.concurrency {
            Some(sem) => Some(
                Arc::clone(sem)
                    .try_acquire_owned()
                    .map_err(|_| Refusal::Concurrency(self.max_concurrent.unwrap_or(0)))?,
            ),
            None => None,
        };
        if let Some(bucket) = &self.rate {
            bucket
                .lock()
                .expect("rate bucket poisoned")
                .take(Instant::now())
                .map_err(Refusal::Rate)?;
        }
        Ok(Permit(permit))
    }
}

/// The loaded keys, by hash. Empty means authentication is off.
#[derive(Debug)]
pub struct KeyStore {
    by_hash: HashMap<String, Arc<ApiKey>>,
    /// `wait_queues=` of the lines that do not say it.
    default_wait_queues: usize,
}

impl Default for KeyStore {
    /// No keys; [`DEFAULT_WAIT_QUEUES`] for the keys parsed later.
    fn default() -> Self {
        Self {
            by_hash: HashMap::new(),
            default_wait_queues: DEFAULT_WAIT_QUEUES,
        }
    }
}

/// What a request presented.
#[derive(Debug)]
pub enum Lookup {
    /// Authentication is off: every request is let in.
    Open,
    /// A known key.
    Key(Arc<ApiKey>),
    /// No key in the request.
    Missing,
    /// A key that is not in the file.
    Unknown,
}

impl KeyStore {
    /// Sets `wait_queues=` of the keys parsed from now on whose line does
    /// not say it (`--key-wait-queues`; at least 1).
    pub fn default_wait_queues(mut self, n: usize) -> Self {
        self.default_wait_queues = n.max(1);
        self
    }

    /// Parses key lines (the file format, see `--api-keys`). `origin` names
    /// the source in messages.
    ///
    /// # Errors
    /// A message naming the line and what is wrong with it.
    pub fn parse(&mut self, text: &str, origin: &str) -> Result<(), String> {
        for (n, raw) in text.split(['\n', ';']).enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (hash, key) = parse_line(line, self.default_wait_queues)
                .map_err(|e| format!("{origin}: entry {}: {e}", n + 1))?;
            if self.by_hash.insert(hash, Arc::new(key)).is_some() {
                return Err(format!("{origin}: entry {}: the same key twice", n + 1));
            }
        }
        Ok(())
    }

    /// True if no key is configured (authentication off).
    pub fn is_open(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Number of keys loaded.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// True if no key is loaded.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Finds the key of an `Authorization` header value.
    pub fn lookup(&self, authorization: Option<&str>) -> Lookup {
        if self.is_open() {
            return Lookup::Open;
        }
        let Some(value) = authorization else {
            return Lookup::Missing;
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .unwrap_or(value)
            .trim();
        if token.is_empty() {
            return Lookup::Missing;
        }
        match self.by_hash.get(&hash_key(token)) {
            Some(key) => Lookup::Key(Arc::clone(key)),
            None => Lookup::Unknown,
        }
    }
}

/// One entry: `sha256:<hex> queues=.. [routes=..] [rate=..] [burst=..]
/// [concurrency=..] [wait_queues=..] [max_body=..] [name=..]`.
fn parse_line(line: &str, default_wait_queues: usize) -> Result<(String, ApiKey), String> {
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or("");
    let hash = first
        .strip_prefix("sha256:")
        .ok_or("must start with sha256:<64 hex digits> (print one with `rtq-gateway hash-key`)")?
        .to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the sha256 hash must be 64 hex digits".into());
    }
    let mut queues = None;
    let (mut rate, mut burst, mut concurrency, mut name) = (None, None, None, None);
    let (mut wait_queues, mut routes, mut max_body) = (None, None, None);
    for word in words {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| format!("{word:?} is not key=value"))?;
        match k {
            "queues" if v == "*" => queues = Some(Queues::All),
            "queues" => {
                let set: BTreeSet<String> = v
                    .split(',')
                    .filter(|q| !q.is_empty())
                    .map(String::from)
                    .collect();
                if set.is_empty() {
                    return Err("queues= lists no queue (use * for all)".into());
                }
                queues = Some(Queues::Only(set));
            }
            "rate" => rate = Some(positive(k, v)?),
            "burst" => {
                let b = positive(k, v)?;
                if b < 1.0 {
                    return Err(format!(
                        "burst= must be at least 1 (requests let through at once; \
                         below 1 no request ever is), got {v:?}"
                    ));
                }
                burst = Some(b);
            }
            "concurrency" => {
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("concurrency= must be a whole number above 0")?;
                concurrency = Some(n);
            }
            "wait_queues" => {
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("wait_queues= must be a whole number above 0")?;
                wait_queues = Some(n);
            }
            "routes" => {
                let set = v
                    .split(',')
                    .filter(|r| !r.is_empty())
                    .map(Route::parse)
                    .collect::<Result<BTreeSet<Route>, String>>()?;
                if set.is_empty() {
                    return Err("routes= lists no route family (openai, tasks)".into());
                }
                routes = Some(set);
            }
            "max_body" => {
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("max_body= must be a whole number of bytes above 0")?;
                max_body = Some(n);
            }
            "name" => name = Some(key_name(v)?),
            other => {
                return Err(format!(
                    "unknown field {other:?} (known: queues, routes, rate, burst, concurrency, \
                     wait_queues, max_body, name)"
                ))
            }
        }
    }
    let queues = queues.ok_or("queues= is missing (a list like a,b or *)")?;
    if burst.is_some() && rate.is_none() {
        return Err("burst= needs rate=".into());
    }
    let key = ApiKey {
        name: name.unwrap_or_else(|| hash[..8].to_string()),
        queues,
        routes: routes.unwrap_or_else(|| [Route::OpenAi, Route::Tasks].into()),
        max_body,
        rate: rate.map(|r| Mutex::new(Bucket::new(r, burst.unwrap_or(r.max(1.0))))),
        concurrency: concurrency.map(|n| Arc::new(Semaphore::new(n))),
        max_concurrent: concurrency,
        max_wait_queues: wait_queues.unwrap_or(default_wait_queues),
        waiting: Mutex::new(HashMap::new()),
    };
    Ok((hash, key))
}

/// Longest `name=`, in bytes (it goes into logs and task labels).
const MAX_NAME_BYTES: usize = 128;

/// Checks a `name=` value: not empty, no control characters, bounded.
fn key_name(v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err("name= is empty (leave it out to name the key by its hash)".into());
    }
    if v.len() > MAX_NAME_BYTES || v.chars().any(char::is_control) {
        return Err(format!(
            "name= must be at most {MAX_NAME_BYTES} bytes without control characters"
        ));
    }
    Ok(v.to_string())
}

fn positive(field: &str, v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x > 0.0)
        .ok_or_else(|| format!("{field}= must be a number above 0, got {v:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hashed_as_sha256_hex() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_key_file_grants_queues_and_rejects_unknown_keys() {
        let mut store = KeyStore::default();
        let text = format!(
            "# team a\nsha256:{} queues=llm,embed name=a\n\nsha256:{} queues=* concurrency=1\n",
            hash_key("k1"),
            hash_key("k2")
        );
        store.parse(&text, "keys").unwrap();
        assert_eq!(store.len(), 2);
        let Lookup::Key(k1) = store.lookup(Some("Bearer k1")) else {
            panic!("k1 not found")
        };
        assert_eq!(k1.name, "a");
        assert!(k1.queues.allows("llm") && !k1.queues.allows("other"));
        let Lookup::Key(k2) = store.lookup(Some("Bearer k2")) else {
            panic!("k2 not found")
        };
        assert!(k2.queues.allows("anything"));
        assert!(matches!(store.lookup(Some("Bearer nope")), Lookup::Unknown));
        assert!(matches!(store.lookup(None), Lookup::Missing));
        assert!(matches!(store.lookup(Some("Bearer ")), Lookup::Missing));
    }

    #[test]
    fn keys_may_use_both_route_families_unless_their_line_says_which() {
        let mut store = KeyStore::default();
        let text = format!(
            "sha256:{} queues=*\nsha256:{} queues=* routes=tasks max_body=4096",
            hash_key("both"),
            hash_key("tasks")
        );
        store.parse(&text, "f").unwrap();
        let Lookup::Key(both) = store.lookup(Some("Bearer both")) else {
            panic!()
        };
        assert!(both.allows_route(Route::OpenAi) && both.allows_route(Route::Tasks));
        assert_eq!(both.max_body, None);
        let Lookup::Key(tasks) = store.lookup(Some("Bearer tasks")) else {
            panic!()
        };
        assert!(!tasks.allows_route(Route::OpenAi) && tasks.allows_route(Route::Tasks));
        assert_eq!(tasks.max_body, Some(4096));
        assert_eq!(Route::of_path("/v1/queues/q/tasks"), Route::Tasks);
        assert_eq!(Route::of_path("/v1/chat/completions"), Route::OpenAi);
        assert_eq!(Route::of_path("/v1/models"), Route::OpenAi);
    }

    #[test]
    fn no_keys_means_open() {
        assert!(matches!(KeyStore::default().lookup(None), Lookup::Open));
    }

    #[test]
    fn bad_lines_name_the_problem() {
        let h = hash_key("x");
        for (line, needle) in [
            ("plain", "sha256:"),
            ("sha256:abc queues=*", "64 hex"),
            (&format!("sha256:{h}") as &str, "queues= is missing"),
            (&format!("sha256:{h} queues=* rate=-1"), "rate="),
            (
                &format!("sha256:{h} queues=* concurrency=0"),
                "concurrency=",
            ),
            (&format!("sha256:{h} queues=* colour=red"), "unknown field"),
            (
                &format!("sha256:{h} queues=* burst=3"),
                "burst= needs rate=",
            ),
            (&format!("sha256:{h} queues="), "lists no queue"),
            (&format!("sha256:{h} queues=, rate=1"), "lists no queue"),
            (
                &format!("sha256:{h} queues=* rate=1 burst=0.5"),
                "burst= must be at least 1",
            ),
            (&format!("sha256:{h} queues=* name="), "name= is empty"),
            (
                &format!("sha256:{h} queues=* routes=admin"),
                "openai and tasks",
            ),
            (&format!("sha256:{h} queues=* routes=,"), "lists no route"),
            (&format!("sha256:{h} queues=* max_body=0"), "max_body="),
            (&format!("sha256:{h} queues=* max_body=1k"), "max_body="),
            (&format!("sha256:{h} queues=* name=a\u{7}b"), "control"),
            (
                &format!("sha256:{h} queues=* name={}", "n".repeat(129)),
                "at most 128",
            ),
        ] {
            let err = KeyStore::default().parse(line, "f").unwrap_err();
            assert!(err.contains(needle), "{line}: {err}");
        }
        let twice = format!("sha256:{h} queues=*;sha256:{h} queues=a");
        assert!(KeyStore::default()
            .parse(&twice, "f")
            .unwrap_err()
            .contains("twice"));
    }

    #[test]
    fn the_concurrency_limit_frees_its_slot_when_the_permit_drops() {
        let mut store = KeyStore::default();
        store
            .parse(
                &format!("sha256:{} queues=* concurrency=1", hash_key("k")),
                "f",
            )
            .unwrap();
        let Lookup::Key(k) = store.lookup(Some("Bearer k")) else {
            panic!()
        };
        let held = k.admit().unwrap();
        assert_eq!(k.admit().unwrap_err(), Refusal::Concurrency(1));
        drop(held);
        assert!(k.admit().is_ok());
    }

    #[test]
    fn a_key_waits_on_at_most_its_share_of_distinct_queues() {
        let mut store = KeyStore::default().default_wait_queues(2);
        let text = format!(
            "sha256:{} queues=*\nsha256:{} queues=* wait_queues=1",
            hash_key("k"),
            hash_key("one")
        );
        store.parse(&text, "f").unwrap();
        let Lookup::Key(k) = store.lookup(Some("Bearer k")) else {
            panic!()
        };
        assert_eq!(k.max_wait_queues, 2);
        let a = k.wait_on("a").unwrap();
        let b = k.wait_on("b").unwrap();
        assert_eq!(k.wait_on("c").unwrap_err(), 2);
        // More waits on a queue it waits on already are free.
        let a2 = k.wait_on("a").unwrap();
        drop(a);
        assert_eq!(k.wait_on("c").unwrap_err(), 2, "a is still waited on");
        drop(a2);
        let _c = k.wait_on("c").unwrap();
        drop(b);
        let Lookup::Key(one) = store.lookup(Some("Bearer one")) else {
            panic!()
        };
        assert_eq!(one.max_wait_queues, 1);
        let _x = one.wait_on("x").unwrap();
        assert!(one.wait_on("y").is_err());
        assert!(KeyStore::default()
            .parse(
                &format!("sha256:{} queues=* wait_queues=0", hash_key("z")),
                "f"
            )
            .unwrap_err()
            .contains("wait_queues="));
    }

    #[test]
    fn the_rate_bucket_refills_over_time() {
        let mut b = Bucket::new(2.0, 2.0);
        let t0 = b.at;
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        let wait = b.take(t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        assert!(b.take(t0 + Duration::from_millis(500)).is_ok());
    }
}
