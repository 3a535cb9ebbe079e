//! Shared bits of the rtq examples: their command-line arguments for Redis
//! and the queue, the delay proxy used by the benchmarks ([`delay_proxy`]),
//! the benchmarks' shared parts ([`bench_util`]) and their implementation
//! of the reference design ([`reference_design`]), and the chaos run
//! ([`chaos`]).
//!
//! No example uses a Redis it was not given: the URL comes from `--redis`
//! or `RTQ_REDIS_URL`, and without one the example stops with a usage
//! error before it does anything. `--help` works without either.

#[path = "bench_util.rs"]
pub mod bench_util;
#[path = "chaos/mod.rs"]
pub mod chaos;
#[path = "delay_proxy.rs"]
pub mod delay_proxy;
#[path = "reference_design.rs"]
pub mod reference_design;

use clap::error::ErrorKind;
use clap::CommandFactory;

/// Where Redis is. Flatten it into an example's arguments and call
/// [`RedisArgs::url`] first thing.
// No `Debug`: the URL may carry a password.
#[derive(Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL (required; no example guesses one), e.g.
    /// redis://127.0.0.1:6379/ - use a private server for the benchmarks.
    #[arg(
        long,
        env = "RTQ_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    redis: Option<String>,
}

impl RedisArgs {
    /// The Redis URL. Without one, prints a usage error for command `C`
    /// naming `--redis` and `RTQ_REDIS_URL` and exits with status 2.
    pub fn url<C: CommandFactory>(&self) -> String {
        match self.redis.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => url.to_string(),
            None => C::command()
                .bin_name(program_name())
                .error(
                    ErrorKind::MissingRequiredArgument,
                    "--redis <URL> (or RTQ_REDIS_URL) is required: the examples use no Redis \
                     they were not given",
                )
                .exit(),
        }
    }
}

/// The name this program was started as, for usage messages.
fn program_name() -> String {
    std::env::args()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rtq-example".into())
}

/// Which queue an example serves or submits to.
#[derive(Clone, Debug, clap::Args)]
pub struct QueueArgs {
    /// Queue name.
    #[arg(long, env = "RTQ_QUEUE", default_value = "demo")]
    pub queue: String,
}
