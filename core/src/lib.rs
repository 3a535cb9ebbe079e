//! # rtq-core: a real-time task queue for AI inference on Redis
//!
//! Clients submit tasks and wait for the result, stream chunks (tokens,
//! frames) as they are produced, fetch later, or cancel. Workers on GPU nodes
//! receive tasks pushed into their inbox the moment they are submitted, run
//! a [`Handler`], and push results back. A request costs two network round
//! trips end to end; no task is lost when a worker dies; every wait ends
//! with the task's real outcome or the real cause. The wire protocol (v2,
//! one Redis Functions library) is specified in `PROTOCOL.md`.
//!
//! # Layout
//! - [`acl`]: least-privilege Redis users per role (`ACL SETUSER` lines).
//! - [`keys`]: the key layout, name validation, cluster slots.
//! - [`functions`]: the Functions library (`core/lua/`) and one typed
//!   binding per function.
//! - [`protocol`]: task spec, inbox messages, reply events, states, limits.
//! - `connection`: shared and dedicated (blocking) connections, to one
//!   node or a Redis Cluster; `cluster`: the slot map, functions on every
//!   master.
//! - `tls`: [`TlsConfig`], TLS settings for `rediss://` URLs.
//! - [`signing`]: optional ed25519-signed tasks (clients sign, workers
//!   verify).
//! - [`server`]: what rtq needs from the Redis server, checked at start-up.
//! - `client`: [`Client`], [`Queue`], [`TaskRequest`], [`TaskStream`],
//!   [`TaskInfo`]: submit, wait, stream, fetch, cancel.
//! - `durable`: durable submits (the submit and `WAIT 1 <ms>` in one
//!   pipeline on the queue's master).
//! - [`worker`]: [`Worker`], [`Handler`], [`TaskContext`], the slot pool,
//!   chunk writing, heartbeats.
//! - [`admin`]: queue listing, counts, workers, task pages, operator actions,
//!   statistics.
//! - `error`: [`Error`], one variant per reason.

mod client;
mod cluster;
mod connection;
mod durable;
mod error;
mod tls;

pub mod acl;
pub mod admin;
pub mod functions;
pub mod keys;
pub mod protocol;
pub mod server;
pub mod signing;
pub mod worker;

pub use async_trait::async_trait;
pub use client::{
    Chunk, Client, ClientConfig, Queue, StreamEvent, Submitted, TaskInfo, TaskOutput, TaskRequest,
    TaskStream, DEFAULT_MAX_INLINE_BYTES, DEFAULT_MAX_REPLY_READERS, DEFAULT_RETENTION,
};
pub use connection::{redis_node_urls, validate_redis_url};
pub use error::{redact_url, redact_urls_in, ConnectionProblem, Error, Result, TimeoutPhase};
pub use protocol::{Outcome, TaskState};
pub use tls::TlsConfig;
pub use worker::{
    ForceStop, Granularity, Handler, HandlerError, IntakeSwitch, StopReason, Stopped, TaskContext,
    Worker, WorkerConfig, WorkerStatus, DEFAULT_MAX_BUFFERED_OUTPUT_BYTES, FORCED_LEAVE_TIMEOUT,
};
