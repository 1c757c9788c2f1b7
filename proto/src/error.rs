//! The protocol layer's errors: one enum with a typed sub-error per layer.
//!
//! Every sub-error knows how it must be reported on the wire: an HTTP error
//! becomes a status line, a WebSocket protocol error becomes a close code.
//! Callers never have to map strings to behaviour.

use std::fmt;

use crate::close::CloseCode;

/// Anything the protocol layer can refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The HTTP request (or, in client role, response) was unacceptable.
    Http(HttpError),
    /// The peer broke RFC 6455; the connection must be failed.
    Protocol(ProtocolError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Http(e) => write!(f, "http: {e}"),
            Error::Protocol(e) => write!(f, "websocket protocol: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Http(e) => Some(e),
            Error::Protocol(e) => Some(e),
        }
    }
}

impl From<HttpError> for Error {
    fn from(e: HttpError) -> Self {
        Error::Http(e)
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}

/// Why an HTTP request head (or an upgrade) was refused.
///
/// Each variant maps to exactly one status code so that every rejection is a
/// complete, well-formed HTTP response rather than a silent close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// The head did not fit in the configured limit.
    HeadTooLarge,
    /// More header lines than the configured limit.
    TooManyHeaders,
    /// Not parseable as HTTP/1.x.
    Malformed,
    /// The endpoint takes another method (the one named; an upgrade takes GET).
    MethodNotAllowed(&'static str),
    /// HTTP/1.0 cannot upgrade.
    VersionTooOld,
    /// HTTP/1.1 requires `Host`.
    MissingHost,
    /// `Upgrade: websocket` / `Connection: upgrade` missing on an upgrade path.
    NotAnUpgrade,
    /// `Sec-WebSocket-Version` is not 13.
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` missing or not 16 base64-encoded bytes.
    BadKey,
    /// The Origin allowlist refused the request.
    OriginRejected,
    /// No such endpoint.
    NotFound,
    /// The shard is at its connection limit.
    Overloaded,
    /// A body-carrying request (`POST /publish`) with neither
    /// `Content-Length` nor a chunked body.
    LengthRequired,
    /// A body over the message size limit.
    PayloadTooLarge,
    /// Client role: the server's response was not a valid 101 upgrade.
    UpgradeRefused(u16),
    /// `Content-Length` that is not a plain decimal number (RFC 9112 6.3):
    /// a sign, a space inside, a list of values, an overflow.
    BadContentLength,
    /// Several `Content-Length` values that differ (RFC 9112 6.3).
    ConflictingLength,
    /// `Content-Length` and `Transfer-Encoding` on one request (RFC 9112
    /// 6.1: a request smuggling attempt or a broken proxy).
    LengthWithChunked,
    /// A `Transfer-Encoding` other than a final `chunked`, or one on an
    /// HTTP/1.0 request (RFC 9112 6.1, 6.3).
    BadTransferEncoding,
    /// A chunked body that breaks RFC 9112 section 7.1 (or its line
    /// limits).
    BadChunk,
    /// More than one `Host` header (RFC 9112 3.2).
    DuplicateHost,
    /// A body on a request whose endpoint takes none: refused, never read
    /// as the next request.
    BodyNotAllowed,
    /// Client role: `Sec-WebSocket-Accept` did not match our key.
    BadAccept,
}

impl HttpError {
    /// The status code this error is reported with.
    pub fn status(self) -> u16 {
        match self {
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::MethodNotAllowed(_) => 405,
            HttpError::VersionTooOld => 505,
            HttpError::UnsupportedVersion => 426,
            HttpError::OriginRejected => 403,
            HttpError::NotFound => 404,
            HttpError::Overloaded => 503,
            HttpError::LengthRequired => 411,
            HttpError::PayloadTooLarge => 413,
            HttpError::UpgradeRefused(s) => s,
            HttpError::Malformed
            | HttpError::BadContentLength
            | HttpError::ConflictingLength
            | HttpError::LengthWithChunked
            | HttpError::BadTransferEncoding
            | HttpError::BadChunk
            | HttpError::DuplicateHost
            | HttpError::BodyNotAllowed
            | HttpError::MissingHost
            | HttpError::NotAnUpgrade
            | HttpError::BadKey
            | HttpError::BadAccept => 400,
        }
    }

    /// A short machine-stable reason, used as the response body and in logs.
    pub fn reason(self) -> &'static str {
        match self {
            HttpError::HeadTooLarge => "request head too large",
            HttpError::TooManyHeaders => "too many headers",
            HttpError::Malformed => "malformed request",
            HttpError::MethodNotAllowed(_) => "method not allowed",
            HttpError::VersionTooOld => "HTTP/1.1 or later required",
            HttpError::MissingHost => "missing Host header",
            HttpError::NotAnUpgrade => "websocket upgrade required",
            HttpError::UnsupportedVersion => "unsupported Sec-WebSocket-Version (13 only)",
            HttpError::BadKey => "missing or invalid Sec-WebSocket-Key",
            HttpError::OriginRejected => "origin not allowed",
            HttpError::NotFound => "not found",
            HttpError::Overloaded => "connection limit reached",
            HttpError::LengthRequired => "Content-Length or a chunked body required",
            HttpError::PayloadTooLarge => "body over the message size limit",
            HttpError::UpgradeRefused(_) => "server refused the upgrade",
            HttpError::BadAccept => "Sec-WebSocket-Accept mismatch",
            HttpError::BadContentLength => "invalid Content-Length",
            HttpError::ConflictingLength => "conflicting Content-Length values",
            HttpError::LengthWithChunked => "Content-Length with Transfer-Encoding",
            HttpError::BadTransferEncoding => "unsupported Transfer-Encoding",
            HttpError::BadChunk => "malformed chunked body",
            HttpError::DuplicateHost => "more than one Host header",
            HttpError::BodyNotAllowed => "this request takes no body",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.reason())
    }
}

impl std::error::Error for HttpError {}

/// A violation of RFC 6455 by the peer.
///
/// The variant decides the close code (see [`ProtocolError::close_code`]),
/// which is what Autobahn and real clients check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// Server received an unmasked frame (RFC 6455 5.1).
    UnmaskedFrame,
    /// Client received a masked frame (RFC 6455 5.1).
    MaskedFrame,
    /// RSV1-3 set without a negotiated extension.
    ReservedBits,
    /// Opcodes 3-7 and 11-15.
    ReservedOpcode(u8),
    /// A 64-bit length with the most significant bit set.
    LengthOverflow,
    /// A length not encoded in the minimal number of bytes.
    NonMinimalLength,
    /// Control frame payload over 125 bytes.
    ControlTooLong,
    /// Control frame with FIN clear.
    FragmentedControl,
    /// Continuation frame with no message in progress.
    UnexpectedContinuation,
    /// New text/binary frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// A frame larger than the configured limit.
    FrameTooBig,
    /// A message larger than the configured limit.
    MessageTooBig,
    /// Text payload or close reason is not UTF-8.
    InvalidUtf8,
    /// Close payload of exactly one byte.
    CloseTooShort,
    /// A close code that may not appear on the wire.
    InvalidCloseCode(u16),
}

impl ProtocolError {
    /// The close code the connection is failed with.
    pub fn close_code(self) -> CloseCode {
        match self {
            ProtocolError::FrameTooBig | ProtocolError::MessageTooBig => CloseCode::TOO_BIG,
            ProtocolError::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// A short reason, sent in the close frame (always under 123 bytes).
    pub fn reason(self) -> &'static str {
        match self {
            ProtocolError::UnmaskedFrame => "unmasked client frame",
            ProtocolError::MaskedFrame => "masked server frame",
            ProtocolError::ReservedBits => "reserved bits set",
            ProtocolError::ReservedOpcode(_) => "reserved opcode",
            ProtocolError::LengthOverflow => "64-bit length has MSB set",
            ProtocolError::NonMinimalLength => "length not minimally encoded",
            ProtocolError::ControlTooLong => "control frame over 125 bytes",
            ProtocolError::FragmentedControl => "fragmented control frame",
            ProtocolError::UnexpectedContinuation => "continuation without a message",
            ProtocolError::ExpectedContinuation => "expected continuation frame",
            ProtocolError::FrameTooBig => "frame too big",
            ProtocolError::MessageTooBig => "message too big",
            ProtocolError::InvalidUtf8 => "invalid UTF-8",
            ProtocolError::CloseTooShort => "1-byte close payload",
            ProtocolError::InvalidCloseCode(_) => "invalid close code",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ReservedOpcode(op) => write!(f, "reserved opcode {op}"),
            ProtocolError::InvalidCloseCode(c) => write!(f, "invalid close code {c}"),
            other => f.write_str(other.reason()),
        }
    }
}

impl std::error::Error for ProtocolError {}
