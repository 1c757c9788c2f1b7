//! The WebSocket frame header (RFC 6455 section 5.2): pure encode/decode.
//!
//! Decoding enforces what the RFC says of any frame regardless of who sent
//! it or what was negotiated: known opcodes, control-frame size and FIN,
//! minimal length encoding, no 64-bit length with the top bit set. Rules
//! that depend on role, extensions or limits live in [`crate::websocket`].

use bytes::{BufMut, BytesMut};

use crate::error::ProtocolError;
use crate::mask::apply_mask;

/// The longest possible header: 2 + 8 (64-bit length) + 4 (mask key).
pub const MAX_HEADER_LEN: usize = 14;

/// Frame opcodes defined by RFC 6455.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xa,
}

impl OpCode {
    pub fn from_u8(op: u8) -> Result<OpCode, ProtocolError> {
        Ok(match op {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xa => OpCode::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    /// Close, ping and pong: at most 125 bytes, never fragmented, allowed
    /// between the fragments of a data message.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits.
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

impl FrameHeader {
    /// Decodes a header from the front of `buf`.
    ///
    /// `Ok(None)` means more bytes are needed; `Ok(Some((h, n)))` means the
    /// header occupied `buf[..n]`.
    pub fn decode(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        let opcode = OpCode::from_u8(b0 & 0x0f)?;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7f;
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControl);
            }
            if len7 > 125 {
                return Err(ProtocolError::ControlTooLong);
            }
        }
        let (payload_len, mut pos) = match len7 {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                let n = u16::from_be_bytes([buf[2], buf[3]]) as u64;
                if n < 126 {
                    return Err(ProtocolError::NonMinimalLength);
                }
                (n, 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
                if n >> 63 != 0 {
                    return Err(ProtocolError::LengthOverflow);
                }
                if n <= u16::MAX as u64 {
                    return Err(ProtocolError::NonMinimalLength);
                }
                (n, 10)
            }
            n => (n as u64, 2),
        };
        let mask = if masked {
            if buf.len() < pos + 4 {
                return Ok(None);
            }
            let key = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
            pos += 4;
            Some(key)
        } else {
            None
        };
        let header = FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            payload_len,
        };
        Ok(Some((header, pos)))
    }

    /// Encoded size of this header.
    pub fn encoded_len(&self) -> usize {
        let len = match self.payload_len {
            0..=125 => 2,
            126..=0xffff => 4,
            _ => 10,
        };
        len + if self.mask.is_some() { 4 } else { 0 }
    }

    /// Writes the header into `out`, returning the number of bytes used.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (self.fin as u8) << 7 | (self.rsv & 0x7) << 4 | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut pos = match self.payload_len {
            n @ 0..=125 => {
                out[1] = mask_bit | n as u8;
                2
            }
            n @ 126..=0xffff => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                4
            }
            n => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&n.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[pos..pos + 4].copy_from_slice(&key);
            pos += 4;
        }
        pos
    }
}

/// Appends one complete frame (header and payload, masked if `mask` is set)
/// to `dst`.
pub fn encode_frame(
    dst: &mut BytesMut,
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let header = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut h);
    dst.reserve(n + payload.len());
    dst.put_slice(&h[..n]);
    let start = dst.len();
    dst.put_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut dst[start..], key, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(h: FrameHeader) {
        let mut out = [0u8; MAX_HEADER_LEN];
        let n = h.encode(&mut out);
        assert_eq!(n, h.encoded_len());
        // Every strict prefix is "need more".
        for cut in 0..n {
            assert_eq!(
                FrameHeader::decode(&out[..cut]),
                Ok(None),
                "{h:?} cut {cut}"
            );
        }
        assert_eq!(FrameHeader::decode(&out[..n]), Ok(Some((h, n))));
    }

    #[test]
    fn length_boundaries_roundtrip() {
        for len in [
            0u64,
            1,
            125,
            126,
            127,
            65535,
            65536,
            16 << 20,
            (1 << 63) - 1,
        ] {
            for mask in [None, Some([1, 2, 3, 4])] {
                for opcode in [OpCode::Text, OpCode::Binary, OpCode::Continuation] {
                    roundtrip(FrameHeader {
                        fin: len % 2 == 0,
                        rsv: 0,
                        opcode,
                        mask,
                        payload_len: len,
                    });
                }
            }
        }
        for opcode in [OpCode::Close, OpCode::Ping, OpCode::Pong] {
            for len in [0, 125] {
                roundtrip(FrameHeader {
                    fin: true,
                    rsv: 0,
                    opcode,
                    mask: Some([9, 9, 9, 9]),
                    payload_len: len,
                });
            }
        }
    }

    #[test]
    fn header_sizes() {
        let h = |len| FrameHeader {
            fin: true,
            rsv: 0,
            opcode: OpCode::Binary,
            mask: None,
            payload_len: len,
        };
        assert_eq!(h(125).encoded_len(), 2);
        assert_eq!(h(126).encoded_len(), 4);
        assert_eq!(h(65535).encoded_len(), 4);
        assert_eq!(h(65536).encoded_len(), 10);
    }

    #[test]
    fn rejects_what_the_rfc_forbids() {
        let e = |b: &[u8]| FrameHeader::decode(b).unwrap_err();
        for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            assert_eq!(e(&[0x80 | op, 0]), ProtocolError::ReservedOpcode(op));
        }
        assert_eq!(e(&[0x09, 0x00]), ProtocolError::FragmentedControl);
        assert_eq!(e(&[0x89, 126, 0, 126]), ProtocolError::ControlTooLong);
        assert_eq!(e(&[0x82, 126, 0, 125]), ProtocolError::NonMinimalLength);
        assert_eq!(
            e(&[0x82, 127, 0, 0, 0, 0, 0, 0, 0xff, 0xff]),
            ProtocolError::NonMinimalLength
        );
        assert_eq!(
            e(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            ProtocolError::LengthOverflow
        );
    }

    #[test]
    fn rsv_bits_are_reported_not_judged() {
        let (h, _) = FrameHeader::decode(&[0xf1, 0x00]).unwrap().unwrap();
        assert_eq!(h.rsv, 0x7);
    }

    #[test]
    fn encode_frame_masks_payload() {
        let mut out = BytesMut::new();
        encode_frame(&mut out, true, OpCode::Text, Some([1, 2, 3, 4]), b"Hello");
        let (h, n) = FrameHeader::decode(&out).unwrap().unwrap();
        assert_eq!(h.payload_len, 5);
        let mut p = out[n..].to_vec();
        apply_mask(&mut p, [1, 2, 3, 4], 0);
        assert_eq!(&p, b"Hello");
        // RFC 6455 5.7: single-frame unmasked text "Hello".
        let mut out = BytesMut::new();
        encode_frame(&mut out, true, OpCode::Text, None, b"Hello");
        assert_eq!(&out[..], b"\x81\x05Hello");
    }
}
