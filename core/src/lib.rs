//! ringcast-core: the pub/sub engine, with no I/O.
//!
//! Everything that decides what a subscriber receives lives here: topic
//! names and their logs (seq, history, epoch), which shard owns a topic,
//! which shards and connections are interested, per-connection sessions,
//! the outbox bound and the slow-consumer policy, and every limit. It is
//! driven from outside in the manner of `quinn-proto`: the runtime hands it
//! inputs (a command from a connection, a message from another shard, the
//! time) and carries out what it asks for. There is no clock, no socket, no
//! thread and no `async` here, so the whole engine, several shards of it,
//! runs deterministically in one thread under test.

pub mod auth;
pub mod engine;
pub mod limits;
mod mirror;
pub mod outbox;
mod owner;
pub mod pattern;
pub mod route;
pub mod session;
pub mod stats;
mod table;
pub mod topic;
pub mod units;
pub mod wire;

pub use auth::{AllowAll, Authorizer, Credentials, Denied, Grant};
pub use engine::{Engine, Flow, Output};
pub use limits::{Limits, SlowConsumer};
pub use route::{Ack, Head, Msg, Placement, Route, ShardId, Snapshot};
pub use session::{ConnId, Transport};
pub use stats::Stats;
