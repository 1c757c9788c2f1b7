//! ringcast: a sharded, thread-per-core WebSocket push broker.
//!
//! Three crates, and the lines between them are the point:
//!
//! - `ringcast-proto`: WebSocket and HTTP/1.1 as sans-I/O state machines.
//! - `ringcast-core`: the pub/sub engine as a sans-I/O state machine.
//! - this crate: the runtime ([`runtime`], the only code that touches
//!   sockets, threads, rings and clocks, and the only one that names
//!   `tokio-uring`) and the `ringcast` binary ([`config`], [`metrics`],
//!   [`demo`]).

pub mod auth;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod loop_runtime;
pub mod metrics;
pub mod runtime;
pub mod uring;

pub use error::{Error, HttpError, ProtocolError};
