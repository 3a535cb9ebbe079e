//! Shared bits of the rtq examples: where Redis is, which queue to use, and
//! the delay proxy used by the benchmarks.

#[path = "delay_proxy.rs"]
pub mod delay_proxy;

/// The Redis URL: `$RTQ_REDIS_URL` or the local default.
pub fn redis_url() -> String {
    std::env::var("RTQ_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// The queue: `$RTQ_QUEUE` or "demo".
pub fn queue() -> String {
    std::env::var("RTQ_QUEUE").unwrap_or_else(|_| "demo".into())
}
