//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! A text message may be split across frames, and a frame across reads, at
//! any byte, including inside a code point. RFC 6455 (section 8.1) asks an
//! endpoint to fail the connection as soon as it sees invalid UTF-8, so we
//! validate each piece as it arrives rather than the whole message at the
//! end: a client streaming garbage is refused after the first bad byte, not
//! after 16 MiB. `simdutf8` does the bulk work; only the at most three bytes
//! of a code point cut by a piece boundary are carried over.

use simdutf8::compat;

/// Validation failed: the bytes seen so far can never become valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error;

/// Streaming validator state: the incomplete code point at the end of the
/// last piece, if any.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: u8,
}

/// Length of the code point introduced by `lead`, for a lead byte that the
/// validator has already accepted as the start of an incomplete sequence.
fn width(lead: u8) -> usize {
    match lead {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Where an unfinished code point at the end of `piece` starts (its
/// length if there is none): a lead byte within the last three bytes whose
/// sequence runs past the end.
fn incomplete_tail(piece: &[u8]) -> usize {
    let len = piece.len();
    for back in 1..=3.min(len) {
        let b = piece[len - back];
        if b < 0x80 {
            break;
        }
        if b >= 0xc0 {
            return if width(b) > back { len - back } else { len };
        }
    }
    len
}

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a code point is cut at the end of the input so far.
    pub fn is_incomplete(&self) -> bool {
        self.pending_len != 0
    }

    /// Validates the next piece. Fails on the first byte that makes the
    /// input invalid, even when that byte ends the piece.
    pub fn feed(&mut self, mut piece: &[u8]) -> Result<(), Utf8Error> {
        if self.pending_len > 0 {
            let have = self.pending_len as usize;
            let need = width(self.pending[0]) - have;
            let take = need.min(piece.len());
            let mut cp = self.pending;
            cp[have..have + take].copy_from_slice(&piece[..take]);
            let cp = &cp[..have + take];
            if take < need {
                // Still incomplete: make sure what we have can still be valid.
                match compat::from_utf8(cp) {
                    Err(e) if e.error_len().is_some() => return Err(Utf8Error),
                    _ => {}
                }
                self.pending[have..have + take].copy_from_slice(&piece[..take]);
                self.pending_len += take as u8;
                return Ok(());
            }
            compat::from_utf8(cp).map_err(|_| Utf8Error)?;
            self.pending_len = 0;
            piece = &piece[take..];
        }
        // A piece read off a socket often ends inside a code point. Set the
        // cut tail aside first, so the common case is one fast pass.
        let (body, tail) = piece.split_at(incomplete_tail(piece));
        if simdutf8::basic::from_utf8(body).is_ok() {
            if tail.is_empty() {
                return Ok(());
            }
            return match compat::from_utf8(tail) {
                Err(e) if e.error_len().is_some() => Err(Utf8Error),
                _ => {
                    self.pending[..tail.len()].copy_from_slice(tail);
                    self.pending_len = tail.len() as u8;
                    Ok(())
                }
            };
        }
        // Slow path, only on a piece that is invalid or ends mid-code-point.
        match compat::from_utf8(piece) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(Utf8Error),
            Err(e) => {
                let tail = &piece[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// The message ended: a cut code point is now an error.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let incomplete = self.is_incomplete();
        self.pending_len = 0;
        if incomplete {
            Err(Utf8Error)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_everywhere(input: &[u8]) -> Vec<Result<(), Utf8Error>> {
        let mut out = Vec::new();
        for cut in 0..=input.len() {
            let mut v = Utf8Validator::new();
            let r = v
                .feed(&input[..cut])
                .and_then(|_| v.feed(&input[cut..]))
                .and_then(|_| v.finish());
            out.push(r);
        }
        out
    }

    #[test]
    fn valid_text_split_at_every_position() {
        let s = "κόσμε ascii €𝄞 中文 \u{10ffff}";
        for r in split_everywhere(s.as_bytes()) {
            assert_eq!(r, Ok(()));
        }
    }

    #[test]
    fn byte_at_a_time() {
        let s = "ab€𝄞\u{7ff}\u{800}\u{ffff}\u{10000}";
        let mut v = Utf8Validator::new();
        for b in s.as_bytes() {
            v.feed(std::slice::from_ref(b)).unwrap();
        }
        v.finish().unwrap();
    }

    #[test]
    fn invalid_text_split_at_every_position() {
        let cases: &[&[u8]] = &[
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", // surrogate
            b"\xf4\x90\x80\x80",                                               // > U+10FFFF
            b"\xc0\xaf",                                                       // overlong
            b"\xff",
            b"ok\xe2\x82",          // truncated at end
            b"\xe0\x80\xafabc",     // overlong 3-byte
            b"\xf0\x8f\xbf\xbfxyz", // overlong 4-byte
        ];
        for c in cases {
            for (cut, r) in split_everywhere(c).into_iter().enumerate() {
                assert_eq!(r, Err(Utf8Error), "{c:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn fails_fast_before_the_message_ends() {
        // Autobahn 6.4.x: the invalid byte arrives mid-message; we must
        // reject it without waiting for the rest.
        let mut v = Utf8Validator::new();
        v.feed(b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5")
            .unwrap();
        assert_eq!(v.feed(b"\xf4\x90"), Err(Utf8Error));

        let mut v = Utf8Validator::new();
        v.feed(b"\xf4").unwrap();
        assert_eq!(v.feed(b"\x90"), Err(Utf8Error));

        let mut v = Utf8Validator::new();
        v.feed(b"\xed").unwrap();
        assert_eq!(v.feed(b"\xa0"), Err(Utf8Error)); // surrogate, second byte
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_std_on_any_split(
            v in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            cuts in proptest::collection::vec(0usize..64, 0..4),
        ) {
            let expected = std::str::from_utf8(&v).is_ok();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(v.len())).collect();
            points.sort();
            let mut val = Utf8Validator::new();
            let mut pos = 0;
            let mut ok = true;
            for p in points.into_iter().chain(std::iter::once(v.len())) {
                ok &= val.feed(&v[pos..p]).is_ok();
                if !ok { break; }
                pos = p;
            }
            if ok { ok = val.finish().is_ok(); }
            proptest::prop_assert_eq!(ok, expected);
        }
    }
}
