//! Close codes (RFC 6455 section 7.4) and close-frame payloads.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;

/// A WebSocket close status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    pub const POLICY: CloseCode = CloseCode(1008);
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    pub const INTERNAL: CloseCode = CloseCode(1011);

    /// Whether the code may appear in a close frame on the wire.
    ///
    /// 1004-1006 and 1015 are reserved for local use ("no status", "abnormal
    /// closure", "TLS failure") and must never be sent. 1012-1014 were
    /// registered with IANA after the RFC (service restart, try again later,
    /// bad gateway); the Autobahn suite no longer lists them as invalid and
    /// real servers send them, so they are accepted. 3000-4999 belong to
    /// libraries and applications.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// A parsed close frame payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: CloseCode,
    /// Validated UTF-8.
    pub reason: Bytes,
}

impl CloseFrame {
    /// Parses a close payload. `None` means the peer sent no status code,
    /// which is legal; one byte, a bad code or a non-UTF-8 reason is not.
    pub fn parse(payload: &Bytes) -> Result<Option<CloseFrame>, ProtocolError> {
        match payload.len() {
            0 => Ok(None),
            1 => Err(ProtocolError::CloseTooShort),
            _ => {
                let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                if !code.is_valid_on_wire() {
                    return Err(ProtocolError::InvalidCloseCode(code.0));
                }
                let reason = payload.slice(2..);
                simdutf8::basic::from_utf8(&reason).map_err(|_| ProtocolError::InvalidUtf8)?;
                Ok(Some(CloseFrame { code, reason }))
            }
        }
    }

    /// The payload of a close frame with this code and reason, truncating
    /// the reason on a character boundary so the frame stays within the
    /// 125-byte control-frame limit.
    pub fn payload(code: CloseCode, reason: &str) -> Bytes {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut out = BytesMut::with_capacity(2 + end);
        out.put_u16(code.0);
        out.extend_from_slice(&reason.as_bytes()[..end]);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_validity_matches_rfc_and_autobahn() {
        for code in 0..=5000u16 {
            let valid = CloseCode(code).is_valid_on_wire();
            let expected = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(valid, expected, "code {code}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000] {
            assert!(!CloseCode(bad).is_valid_on_wire(), "{bad}");
        }
    }

    #[test]
    fn parse_rules() {
        assert_eq!(CloseFrame::parse(&Bytes::new()), Ok(None));
        assert_eq!(
            CloseFrame::parse(&Bytes::from_static(&[3])),
            Err(ProtocolError::CloseTooShort)
        );
        assert_eq!(
            CloseFrame::parse(&Bytes::from_static(&[0x03, 0xed])),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
        assert_eq!(
            CloseFrame::parse(&Bytes::from_static(&[0x03, 0xe8, 0xff])),
            Err(ProtocolError::InvalidUtf8)
        );
        let ok = CloseFrame::parse(&Bytes::from_static(b"\x0f\xa0bye"))
            .unwrap()
            .unwrap();
        assert_eq!(ok.code, CloseCode(4000));
        assert_eq!(&ok.reason[..], b"bye");
    }

    #[test]
    fn payload_truncates_on_char_boundary() {
        let long = "\u{00e9}".repeat(100); // 200 bytes
        let p = CloseFrame::payload(CloseCode::NORMAL, &long);
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }
}
