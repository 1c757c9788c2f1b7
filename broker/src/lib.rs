//! ringcast: a sharded, thread-per-core WebSocket push broker.
//!
//! The crate has two layers, and the line between them is the point:
//!
//! - **Protocol** ([`http`], [`handshake`], [`frame`], [`mask`], [`utf8`],
//!   [`close`], [`websocket`]): sans-I/O state machines. Bytes in, events
//!   out; no sockets, no clocks, no runtime. They serve the broker (server
//!   role) and the load generator (client role) and are tested
//!   deterministically.
//! - **Runtime** ([`runtime`]): the only module that knows about
//!   `tokio-uring`: shards, listeners, the per-connection reader and writer
//!   tasks.

pub mod config;
pub mod demo;
pub mod error;
pub mod metrics;
pub mod outbox;
pub mod runtime;

pub use error::{Error, HttpError, ProtocolError};
