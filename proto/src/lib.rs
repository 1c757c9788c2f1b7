//! ringcast-proto: WebSocket (RFC 6455) and the HTTP/1.1 it starts from,
//! as sans-I/O state machines in both roles.
//!
//! Bytes go in, events and bytes to send come out; there are no sockets,
//! clocks or runtimes here, and no serde. That is what lets the broker
//! (server role), the load generator (client role), the benches and the
//! fuzz targets share one implementation, and what lets every parser be
//! tested deterministically and fuzzed without a network.
//!
//! - [`http`]: request heads, bounded, their body framing (RFC 9112
//!   section 6), and response encoding.
//! - [`chunked`]: chunked request bodies, incrementally and bounded.
//! - [`handshake`]: the opening handshake, server and client side.
//! - [`frame`], [`mask`], [`utf8`], [`close`]: the pieces of a frame.
//! - [`websocket`]: the connection state machine that ties them together.
//! - [`error`]: one error enum with a typed sub-error per layer, each
//!   knowing how it is reported on the wire (a status, a close code).

pub mod chunked;
pub mod close;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod mask;
pub mod utf8;
pub mod websocket;

pub use error::{Error, HttpError, ProtocolError};
