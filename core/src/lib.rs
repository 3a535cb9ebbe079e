//! # rtq-core: a real-time task queue for AI inference on Redis
//!
//! Clients submit tasks and wait for the result, stream chunks (tokens,
//! frames) as they are produced, fetch later, or cancel. Workers on GPU nodes
//! receive tasks pushed into their inbox the moment they are submitted, run
//! a [`Handler`], and push results back. A request costs two network round
//! trips end to end; no task is lost when a worker dies; every wait can say
//! why it is still waiting. The wire protocol is specified in `PROTOCOL.md`.
//!
//! # Layout
//! - [`keys`]: the key layout, name validation, cluster slots.
//! - `scripts`: the Lua scripts (one file per operation in `core/lua/`).
//! - [`protocol`]: task spec, inbox messages, reply events, states.
//! - `connection`: shared and dedicated (blocking) connections.
//! - `client` / `queue`: [`Client`] and the per-queue [`Queue`] handle.
//! - `request`: [`TaskRequest`], what a client submits.
//! - `router`: one blocking reader per client and queue routes replies.
//! - `tracker`: follows one task; turns every way a wait ends into an answer.
//! - `stream`: [`TaskStream`], a task's chunks as a `futures::Stream`.
//! - `info`: [`TaskInfo`], a task's stored state.
//! - [`worker`]: [`Worker`], [`Handler`], [`TaskContext`], chunk writing.
//! - [`admin`]: queue listing, counts, workers, task pages, operator actions,
//!   statistics.
//! - `error`: [`Error`], one variant per reason.

mod client;
mod connection;
mod error;
mod info;
mod queue;
mod request;
mod router;
mod scripts;
mod stream;
mod tracker;

pub mod admin;
pub mod keys;
pub mod protocol;
pub mod worker;

pub use async_trait::async_trait;
pub use client::{Client, ClientConfig};
pub use error::{redact_url, Error, Result, TimeoutPhase};
pub use info::TaskInfo;
pub use protocol::{Outcome, TaskState};
pub use queue::{Queue, Submitted, TaskOutput};
pub use request::{TaskRequest, DEFAULT_MAX_INLINE_BYTES, DEFAULT_RETENTION};
pub use stream::{Chunk, StreamEvent, TaskStream};
pub use worker::{
    Granularity, Handler, HandlerError, IntakeSwitch, Stopped, TaskContext, Worker, WorkerConfig,
    WorkerStatus,
};
