//! ringcast: a sharded, thread-per-core WebSocket push broker.
//!
//! Three crates, and the lines between them are the point:
//!
//! - `ringcast-proto`: WebSocket and HTTP/1.1 as sans-I/O state machines.
//! - `ringcast-core`: the pub/sub engine as a sans-I/O state machine.
//! - this crate: the runtime ([`runtime`] on the completion loop of
//!   [`uring`]: the only code that touches sockets, threads, rings and
//!   clocks), the Redis backend ([`cluster`]) and the `ringcast` binary
//!   ([`config`], [`metrics`], [`demo`]).

pub mod auth;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod metrics;
pub mod runtime;
pub mod uring;

pub use error::{Error, HttpError, ProtocolError};
