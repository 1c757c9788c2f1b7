//! The completion-driven shard loop, on the `io-uring` crate: what the
//! shards run on (`crate::runtime`). It knows nothing of HTTP or pub/sub;
//! its [`Handler`] does.
//!
//! - [`ring`]: one ring per thread, set up for a single issuer, and the
//!   probe that refuses a kernel missing what the loop needs (Linux 6.0,
//!   [`MIN_KERNEL`]).
//! - [`bufring`]: the shard's provided-buffer ring. The kernel picks a
//!   buffer only when bytes arrive, so an idle connection holds none.
//! - [`Loop`] (`event.rs`, `conn.rs`, `token.rs`): connections in a slab,
//!   each a small record driven by completions; multishot accept straight
//!   into the fixed-file table, multishot recv from the buffer ring, one
//!   send in flight per connection gathering everything queued (a plain
//!   `send` for one buffer, a `sendmsg` for several).
//! - [`Waker`] (`wake.rs`): how another thread wakes the loop (an eventfd
//!   read armed on the ring, or `IORING_OP_MSG_RING` from another ring).
//!
//! The rules the loop keeps are in `docs/architecture.md`, section "The
//! completion loop".

pub mod bufring;
mod conn;
mod event;
pub mod ring;
mod token;
mod wake;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;

pub use conn::ConnId;
pub(crate) use event::nofile_limit;
pub use event::{
    Action, CloseReason, Config, Handler, Loop, Ops, Stats, ACCEPT_HEADROOM, ADDR_ACCEPTS,
};
pub use ring::{Mode, RingInfo, MIN_KERNEL};
pub use wake::Waker;

/// What can go wrong setting up or running a loop.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// `io_uring_setup` itself failed: io_uring is missing, disabled
    /// (`kernel.io_uring_disabled`), or forbidden by a seccomp profile
    /// (container runtimes' default profiles refuse it).
    Setup(io::Error),
    /// The kernel lacks something the loop needs; `min_kernel` is the
    /// first Linux release that has it.
    Unsupported {
        /// What is missing, in words.
        what: &'static str,
        /// The first Linux release that has it.
        min_kernel: &'static str,
        /// This machine's release (`uname -r`).
        kernel: String,
        /// The error the kernel gave, if it gave one.
        source: Option<io::Error>,
    },
    /// A configuration value the loop cannot work with.
    Config(String),
    /// Any other failure of a ring call; the string says which.
    Io(&'static str, io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Setup(e) => write!(
                f,
                "cannot create an io_uring ({e}); is io_uring disabled \
                 (sysctl kernel.io_uring_disabled) or blocked by a seccomp profile?"
            ),
            Error::Unsupported {
                what,
                min_kernel,
                kernel,
                source,
            } => {
                write!(
                    f,
                    "this kernel ({kernel}) lacks {what}, which needs Linux {min_kernel}; \
                     ringcast needs Linux {MIN_KERNEL} or newer"
                )?;
                if let Some(e) = source {
                    write!(f, " ({e})")?;
                }
                Ok(())
            }
            Error::Config(msg) => write!(f, "bad loop configuration: {msg}"),
            Error::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Setup(e) | Error::Io(_, e) => Some(e),
            Error::Unsupported { source, .. } => source.as_ref().map(|e| e as _),
            Error::Config(_) => None,
        }
    }
}
