//! The JSON wire contract (`docs/protocol.md`) in both roles, written once.
//!
//! - [`command`]: what a client sends, as the broker parses it.
//! - [`reply`]: what the broker sends, encoded straight into WebSocket
//!   frames (and the SSE and long-poll forms of the same objects).
//! - [`client`]: the client role of both: encoding commands and parsing
//!   the broker's objects (the load generator and the tests use it).
//! - [`cluster`]: the messages nodes of a cluster exchange through Redis.

pub mod client;
pub mod cluster;
pub mod command;
pub mod reply;
