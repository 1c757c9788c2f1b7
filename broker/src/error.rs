//! The broker's error: the protocol layer's errors plus what only a
//! running process can meet (configuration, the operating system).

use std::fmt;

pub use ringcast_proto::{HttpError, ProtocolError};

/// Anything that can stop the broker from starting or serving.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The peer broke HTTP or RFC 6455 (the protocol layer's error).
    Protocol(ringcast_proto::Error),
    /// The configuration is invalid; nothing was started.
    Config(String),
    /// An operating-system error (bind, spawn, ...).
    Io(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Protocol(e) => e.fmt(f),
            Error::Config(e) => write!(f, "configuration: {e}"),
            Error::Io(e) => write!(f, "io: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Protocol(e) => Some(e),
            Error::Config(_) => None,
            Error::Io(e) => Some(e),
        }
    }
}

impl From<ringcast_proto::Error> for Error {
    fn from(e: ringcast_proto::Error) -> Self {
        Error::Protocol(e)
    }
}

impl From<HttpError> for Error {
    fn from(e: HttpError) -> Self {
        Error::Protocol(e.into())
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e.into())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}
