//! Shared bits of the rtq examples: where Redis is, which queue to use, and
//! the delay proxy used by the benchmarks.

#[path = "delay_proxy.rs"]
pub mod delay_proxy;

/// The value after `--name` on the command line, if present.
pub fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == &format!("--{name}"))
        .and_then(|i| args.get(i + 1).cloned())
}

/// Positional numeric arguments (flags and their values skipped).
pub fn numbers() -> Vec<u64> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
        } else if a.starts_with("--") {
            skip = true;
        } else if let Ok(n) = a.parse() {
            out.push(n);
        }
    }
    out
}

/// The Redis URL: `--redis URL`, else `$RTQ_REDIS_URL`, else the local default.
pub fn redis_url() -> String {
    flag("redis")
        .or_else(|| std::env::var("RTQ_REDIS_URL").ok())
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into())
}

/// The queue: `$RTQ_QUEUE` or "demo".
pub fn queue() -> String {
    std::env::var("RTQ_QUEUE").unwrap_or_else(|_| "demo".into())
}
