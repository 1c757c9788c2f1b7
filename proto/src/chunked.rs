//! Chunked request bodies (RFC 9112 section 7.1), incrementally and with
//! hard limits.
//!
//! Feed the bytes that follow a head to [`ChunkedDecoder::decode`] as they
//! arrive; it appends the body's data to an output buffer and says how much
//! of the input it consumed. Once [`ChunkedDecoder::is_done`], the rest of
//! the input is the next request.
//!
//! Read strictly, since a lenient chunked parser is the other half of a
//! request-smuggling attack:
//!
//! - a chunk size is one or more hex digits; the body's running total may
//!   not pass the limit given to [`ChunkedDecoder::new`] (checked as the
//!   digits arrive, so an absurd size fails at once, with
//!   [`HttpError::PayloadTooLarge`]);
//! - chunk extensions (`;name=value`) are skipped, but only after optional
//!   spaces and a `;`, and hold no control characters;
//! - every line ends with CRLF (a bare LF or CR is an error), and the CRLF
//!   after each chunk's data must be exactly there;
//! - trailer fields are skipped, not interpreted;
//! - a size line or a trailer line is at most [`MAX_LINE`] bytes, the
//!   trailer section at most [`MAX_TRAILERS`].
//!
//! Every violation is [`HttpError::BadChunk`] (400, close the connection).

use bytes::BufMut;

use crate::error::HttpError;

/// Longest chunk-size line (size, extensions, CRLF) or trailer line.
pub const MAX_LINE: usize = 4096;

/// Most bytes of trailer fields after the last chunk.
pub const MAX_TRAILERS: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The hex digits of a chunk size.
    Size,
    /// After the digits: optional whitespace before a `;` (`semi` false),
    /// or inside the extensions (`semi` true), up to CR.
    Ext { semi: bool },
    /// The LF ending a size line.
    SizeLf,
    /// This many bytes of chunk data still to come.
    Data(u64),
    /// The CR after a chunk's data.
    DataCr,
    /// The LF after a chunk's data.
    DataLf,
    /// The start of a trailer line, or of the final empty line.
    LineStart,
    /// Inside a trailer line.
    Trailer,
    /// The LF ending a trailer line.
    TrailerLf,
    /// The LF of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// Incremental decoder of one chunked body; keep one per request.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    max_body: u64,
    /// Data bytes decoded so far.
    body: u64,
    /// The chunk size being read.
    size: u64,
    /// Whether the size has at least one digit.
    digits: bool,
    /// Bytes of the current size or trailer line.
    line: usize,
    /// Bytes of trailer section so far.
    trailers: usize,
    /// An error is final.
    failed: Option<HttpError>,
}

impl ChunkedDecoder {
    /// A decoder for a body of at most `max_body` bytes of data.
    pub fn new(max_body: usize) -> Self {
        ChunkedDecoder {
            state: State::Size,
            max_body: max_body as u64,
            body: 0,
            size: 0,
            digits: false,
            line: 0,
            trailers: 0,
            failed: None,
        }
    }

    /// Whether the whole body (last chunk, trailers, final CRLF) is in.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Data bytes decoded so far.
    pub fn body_len(&self) -> u64 {
        self.body
    }

    /// Whether the decoder is inside a chunk's data: a hint for the reader
    /// (how much more it should ask for).
    pub fn data_left(&self) -> u64 {
        match self.state {
            State::Data(n) => n,
            _ => 0,
        }
    }

    /// Decodes from the front of `input`, appending chunk data to `out`.
    /// Returns how many bytes of `input` were consumed: all of it unless
    /// the body ended inside it (then [`is_done`](Self::is_done), and what
    /// follows is the next request). An error is final: every later call
    /// returns it again.
    pub fn decode(&mut self, input: &[u8], out: &mut impl BufMut) -> Result<usize, HttpError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let r = self.run(input, out);
        if let Err(e) = r {
            self.failed = Some(e);
        }
        r
    }

    fn run(&mut self, input: &[u8], out: &mut impl BufMut) -> Result<usize, HttpError> {
        let mut i = 0;
        while i < input.len() {
            if let State::Data(left) = self.state {
                let n = (left.min((input.len() - i) as u64)) as usize;
                out.put_slice(&input[i..i + n]);
                i += n;
                self.state = if left == n as u64 {
                    State::DataCr
                } else {
                    State::Data(left - n as u64)
                };
                continue;
            }
            let b = input[i];
            i += 1;
            match self.state {
                State::Size | State::Ext { .. } => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(HttpError::BadChunk);
                    }
                }
                State::LineStart | State::Trailer => {
                    self.line += 1;
                    self.trailers += 1;
                    if self.line > MAX_LINE || self.trailers > MAX_TRAILERS {
                        return Err(HttpError::BadChunk);
                    }
                }
                _ => {}
            }
            self.state = match (self.state, b) {
                (State::Size, _) if b.is_ascii_hexdigit() => {
                    let digit = (b as char).to_digit(16).expect("hex digit") as u64;
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(digit))
                        .ok_or(HttpError::PayloadTooLarge)?;
                    if self.body.saturating_add(self.size) > self.max_body {
                        return Err(HttpError::PayloadTooLarge);
                    }
                    self.digits = true;
                    State::Size
                }
                (State::Size, b' ' | b'\t' | b';' | b'\r') if self.digits => match b {
                    b'\r' => State::SizeLf,
                    b';' => State::Ext { semi: true },
                    _ => State::Ext { semi: false },
                },
                (State::Size, _) => return Err(HttpError::BadChunk),
                (State::Ext { .. }, b'\r') => State::SizeLf,
                (State::Ext { semi: false }, b' ' | b'\t') => State::Ext { semi: false },
                (State::Ext { semi: false }, b';') => State::Ext { semi: true },
                (State::Ext { semi: true }, _) if b == b'\t' || (b >= 0x20 && b != 0x7f) => {
                    State::Ext { semi: true }
                }
                (State::Ext { .. }, _) => return Err(HttpError::BadChunk),
                (State::SizeLf, b'\n') => {
                    let size = std::mem::take(&mut self.size);
                    self.digits = false;
                    self.line = 0;
                    self.body += size;
                    if size == 0 {
                        State::LineStart
                    } else {
                        State::Data(size)
                    }
                }
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => State::Size,
                (State::LineStart, b'\r') => State::EndLf,
                (State::Trailer, b'\r') => State::TrailerLf,
                (State::LineStart | State::Trailer, b'\n') => return Err(HttpError::BadChunk),
                (State::LineStart | State::Trailer, _) => State::Trailer,
                (State::TrailerLf, b'\n') => {
                    self.line = 0;
                    State::LineStart
                }
                (State::EndLf, b'\n') => {
                    self.state = State::Done;
                    return Ok(i);
                }
                (State::Done, _) => return Ok(i - 1),
                _ => return Err(HttpError::BadChunk),
            };
        }
        Ok(i)
    }
}

/// Encodes `body` as a chunked body with chunks of the given sizes
/// (cycling; a size of 0 is skipped, and all zeros means one chunk), for
/// tests and clients.
pub fn encode(body: &[u8], sizes: &[usize], out: &mut Vec<u8>) {
    let mut rest = body;
    let mut sizes = sizes.iter().copied().filter(|&s| s > 0).cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `input` in one call: (body, consumed) or the error.
    fn one_shot(input: &[u8], max: usize) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut d = ChunkedDecoder::new(max);
        let mut out = Vec::new();
        let n = d.decode(input, &mut out)?;
        Ok((out, n, d.is_done()))
    }

    #[test]
    fn rfc_example_with_extensions_and_trailers() {
        let input = b"4\r\nWiki\r\n5;ext=\"x y\"\r\npedia\r\nE ; a ; b=c\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\nX: y\r\n\r\nGET / HTTP/1.1\r\n";
        let (body, n, done) = one_shot(input, 1024).unwrap();
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        assert!(done);
        assert_eq!(
            &input[n..],
            b"GET / HTTP/1.1\r\n",
            "the next request is left"
        );
    }

    #[test]
    fn sizes_are_hex_and_limited() {
        let (body, _, done) = one_shot(b"A\r\n0123456789\r\n0\r\n\r\n", 10).unwrap();
        assert_eq!((body.len(), done), (10, true));
        assert_eq!(
            one_shot(b"A\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n", 10),
            Err(HttpError::PayloadTooLarge)
        );
        // Refused at the digits, before any data.
        assert_eq!(
            one_shot(b"ffffffffffffffffffffff", 1 << 20),
            Err(HttpError::PayloadTooLarge)
        );
        assert_eq!(
            one_shot(b"0000000000000000000000005\r\nhello\r\n0\r\n\r\n", 5).map(|r| r.0),
            Ok(b"hello".to_vec())
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"-1\r\n",
            b"+1\r\nx\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"5;a\x00\r\nhello\r\n0\r\n\r\n",
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"0\r\nX: y\n\r\n",
            b"0\r\n\n",
            b"0\r\n\rX",
            b" 5\r\nhello\r\n0\r\n\r\n",
        ] {
            assert_eq!(
                one_shot(bad, 1024).map(|r| r.0),
                Err(HttpError::BadChunk),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn line_limits() {
        let mut long_ext = b"1;".to_vec();
        long_ext.resize(MAX_LINE + 10, b'a');
        assert_eq!(
            one_shot(&long_ext, 1024).map(|r| r.0),
            Err(HttpError::BadChunk)
        );
        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() < 2 * MAX_TRAILERS {
            trailers.extend_from_slice(b"X-Trailer: some value here\r\n");
        }
        assert_eq!(
            one_shot(&trailers, 1024).map(|r| r.0),
            Err(HttpError::BadChunk)
        );
        // Leading zeros count against the line.
        let zeros = vec![b'0'; MAX_LINE + 1];
        assert_eq!(
            one_shot(&zeros, 1024).map(|r| r.0),
            Err(HttpError::BadChunk)
        );
    }

    #[test]
    fn errors_are_final_and_done_consumes_nothing_more() {
        let mut d = ChunkedDecoder::new(100);
        let mut out = Vec::new();
        assert_eq!(d.decode(b"zz", &mut out), Err(HttpError::BadChunk));
        assert_eq!(d.decode(b"0\r\n\r\n", &mut out), Err(HttpError::BadChunk));
        let mut d = ChunkedDecoder::new(100);
        assert_eq!(d.decode(b"0\r\n\r\n", &mut out), Ok(5));
        assert!(d.is_done());
        assert_eq!(d.decode(b"more", &mut out), Ok(0));
        assert!(out.is_empty());
    }

    proptest! {
        /// Any body, any chunking, any read boundaries: the same body, the
        /// same end, and the bytes after it untouched.
        #[test]
        fn round_trip_at_any_split(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            sizes in proptest::collection::vec(0usize..70, 0..6),
            reads in proptest::collection::vec(1usize..40, 1..8),
            trailer in any::<bool>(),
        ) {
            let mut wire = Vec::new();
            encode(&body, &sizes, &mut wire);
            if trailer {
                wire.truncate(wire.len() - 2);
                wire.extend_from_slice(b"X-Sum: 1\r\n\r\n");
            }
            let end = wire.len();
            wire.extend_from_slice(b"NEXT");
            let mut d = ChunkedDecoder::new(body.len());
            let mut out = Vec::new();
            let mut pos = 0;
            let mut k = 0;
            while !d.is_done() {
                prop_assert!(pos < end, "not done at the end of the body");
                let n = reads[k % reads.len()].min(wire.len() - pos);
                k += 1;
                let used = d.decode(&wire[pos..pos + n], &mut out).unwrap();
                prop_assert!(used <= n);
                prop_assert!(used == n || d.is_done());
                pos += used;
            }
            prop_assert_eq!(pos, end);
            prop_assert_eq!(out, body);
        }

        /// Arbitrary input: one call or a byte at a time, the same outcome;
        /// never more data than the limit, never past the input.
        #[test]
        fn arbitrary_input_is_split_independent(
            input in proptest::collection::vec(
                prop_oneof![
                    Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b'3'), Just(b'a'),
                    Just(b';'), Just(b' '), any::<u8>()
                ],
                0..200,
            ),
            max in 0usize..64,
        ) {
            let whole = one_shot(&input, max);
            let mut d = ChunkedDecoder::new(max);
            let mut out = Vec::new();
            let mut used = 0;
            let mut err = None;
            for i in 0..input.len() {
                match d.decode(&input[i..i + 1], &mut out) {
                    Ok(n) => used += n,
                    Err(e) => { err = Some(e); break; }
                }
                if d.is_done() { break; }
            }
            match whole {
                Ok((body, n, done)) => {
                    prop_assert_eq!(err, None);
                    prop_assert_eq!(&out, &body);
                    prop_assert_eq!(used, n);
                    prop_assert_eq!(d.is_done(), done);
                    prop_assert!(body.len() <= max);
                }
                Err(e) => prop_assert_eq!(err, Some(e)),
            }
        }
    }
}
