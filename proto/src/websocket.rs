//! The WebSocket connection state machine (RFC 6455 sections 5-7), sans I/O.
//!
//! Bytes go in through [`WebSocket::poll`], events come out; the control
//! frames the protocol itself requires (pong, the close reply, the close
//! sent when the peer is failed) are queued and taken with
//! [`WebSocket::take_output`]. Nothing here reads a socket or a clock, so
//! every rule is tested deterministically, and the same machine serves the
//! broker (server role) and the load generator (client role).
//!
//! Payloads are processed as they arrive rather than once a frame is
//! complete: a text frame is UTF-8 validated piece by piece so invalid input
//! fails the connection at once (Autobahn 6.4), and a frame that arrives
//! whole is split off the read buffer without a copy.

use bytes::{Buf, Bytes, BytesMut};

use crate::close::{CloseCode, CloseFrame};
use crate::error::ProtocolError;
use crate::frame::{encode_frame, FrameHeader, OpCode};
use crate::mask::apply_mask;
use crate::utf8::Utf8Validator;

/// Which end of the connection we are: decides who masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// Size limits, checked from the frame header so an oversized frame is
/// refused before its payload is read.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame: usize,
    pub max_message: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 16 << 20,
            max_message: 16 << 20,
        }
    }
}

/// What the peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete text message; already validated as UTF-8.
    Text(Bytes),
    /// A complete binary message.
    Binary(Bytes),
    /// A ping; the pong is already queued.
    Ping(Bytes),
    /// A pong (solicited or not).
    Pong(Bytes),
    /// The peer closed. If we had not sent a close, the reply is queued.
    Close(Option<CloseFrame>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// We sent a close and wait for the peer's.
    CloseSent,
    /// Both closes exchanged, or the connection was failed. Input is ignored.
    Closed,
}

/// The frame whose payload is being received.
#[derive(Debug)]
struct InFrame {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    len: usize,
    done: usize,
}

/// A data message being assembled from one or more frames.
///
/// Its bytes are boxed, and only once a first piece of it has to be kept:
/// a message that arrives whole (nearly every one) is split off the read
/// buffer and never needs this buffer, and keeping one inline made every
/// connection's state 24 bytes larger for it (issue 12's per-connection
/// budget, docs/benchmarks.md).
#[derive(Debug)]
struct Assembly {
    opcode: OpCode,
    buf: Option<Box<BytesMut>>,
    utf8: Utf8Validator,
}

impl Assembly {
    fn new(opcode: OpCode) -> Self {
        Assembly {
            opcode,
            buf: None,
            utf8: Utf8Validator::new(),
        }
    }

    /// Bytes assembled so far.
    fn len(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.len())
    }

    fn append(&mut self, chunk: BytesMut) {
        match &mut self.buf {
            // Adopt the chunk's allocation when we can; `unsplit` is free
            // for contiguous pieces of the same buffer.
            Some(buf) if buf.is_empty() => **buf = chunk,
            Some(buf) => buf.unsplit(chunk),
            None if chunk.is_empty() => {}
            None => self.buf = Some(Box::new(chunk)),
        }
    }

    fn into_payload(self) -> Bytes {
        self.buf.map_or_else(Bytes::new, |b| b.freeze())
    }
}

/// One WebSocket connection's protocol state.
#[derive(Debug)]
pub struct WebSocket {
    role: Role,
    limits: Limits,
    state: State,
    frame: Option<InFrame>,
    message: Option<Assembly>,
    out: BytesMut,
    error: Option<ProtocolError>,
    close_sent: Option<CloseCode>,
}

impl WebSocket {
    pub fn new(role: Role, limits: Limits) -> Self {
        WebSocket {
            role,
            limits,
            state: State::Open,
            frame: None,
            message: None,
            out: BytesMut::new(),
            error: None,
            close_sent: None,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether messages may still be sent (no close sent or received).
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// The close handshake is complete or the connection was failed: once
    /// the queued output is written, the TCP connection should be closed
    /// (a server closes first, RFC 6455 section 7.1.1).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The error the connection was failed with, if any.
    pub fn error(&self) -> Option<ProtocolError> {
        self.error
    }

    /// A frame or a fragmented message has begun and not ended: the
    /// runtime bounds how long that may take, so a peer cannot pin a
    /// message buffer by trickling it a byte at a time.
    pub fn in_message(&self) -> bool {
        self.frame.is_some() || self.message.is_some()
    }

    /// How many more bytes the current frame needs; a hint for read sizes.
    pub fn read_hint(&self) -> usize {
        self.frame.as_ref().map_or(0, |f| f.len - f.done)
    }

    /// Control frames queued by the protocol (pong, close), ready to write.
    ///
    /// The whole buffer goes with them: `split` would leave its spare
    /// capacity here, and with it the allocation the returned frames share,
    /// kept alive after they are written for as long as the connection
    /// lives (every idle connection pinged once kept one). The next control
    /// frame allocates afresh; they are rare.
    pub fn take_output(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.out).freeze())
        }
    }

    /// Starts the closing handshake. Ignored if a close was already sent.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        if self.state == State::Open {
            self.push_control(OpCode::Close, &CloseFrame::payload(code, reason));
            self.state = State::CloseSent;
        }
    }

    /// Queues a ping (e.g. a keep-alive). Ignored once closing.
    pub fn ping(&mut self, payload: &[u8]) {
        if self.state == State::Open {
            self.push_control(OpCode::Ping, &payload[..payload.len().min(125)]);
        }
    }

    /// Appends a complete single-frame message for this role to `dst`
    /// (masked with a fresh random key in client role).
    pub fn encode_message(&self, dst: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
        encode_frame(dst, true, opcode, self.mask_key(), payload);
    }

    fn mask_key(&self) -> Option<[u8; 4]> {
        match self.role {
            Role::Client => Some(rand::random()),
            Role::Server => None,
        }
    }

    fn push_control(&mut self, opcode: OpCode, payload: &[u8]) {
        let mask = self.mask_key();
        encode_frame(&mut self.out, true, opcode, mask, payload);
        if opcode == OpCode::Close {
            self.close_sent = Some(match payload {
                [a, b, ..] => CloseCode(u16::from_be_bytes([*a, *b])),
                _ => CloseCode(1005), // "no status": an empty close
            });
        }
    }

    /// The close code this side sent, if it sent a close (1005 for an
    /// empty close frame).
    pub fn close_sent(&self) -> Option<CloseCode> {
        self.close_sent
    }

    /// Consumes bytes from the front of `buf` and returns the next event,
    /// `Ok(None)` when more input is needed.
    ///
    /// On `Err` the connection has been failed: the close frame with the
    /// matching code is queued, and the caller should write the output and
    /// close the TCP connection.
    pub fn poll(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, ProtocolError> {
        if self.state == State::Closed {
            buf.clear();
            return Ok(None);
        }
        match self.poll_frames(buf) {
            Ok(ev) => Ok(ev),
            Err(e) => {
                if self.state == State::Open {
                    self.push_control(
                        OpCode::Close,
                        &CloseFrame::payload(e.close_code(), e.reason()),
                    );
                }
                self.state = State::Closed;
                self.error = Some(e);
                self.frame = None;
                self.message = None;
                buf.clear();
                Err(e)
            }
        }
    }

    fn poll_frames(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, ProtocolError> {
        loop {
            if self.frame.is_none() {
                let Some((header, n)) = FrameHeader::decode(buf)? else {
                    return Ok(None);
                };
                self.check_header(&header)?;
                buf.advance(n);
                self.frame = Some(InFrame {
                    opcode: header.opcode,
                    fin: header.fin,
                    mask: header.mask,
                    len: header.payload_len as usize,
                    done: 0,
                });
            }
            let frame = self.frame.as_mut().expect("frame set above");

            if frame.opcode.is_control() {
                if buf.len() < frame.len {
                    return Ok(None);
                }
                let mut payload = buf.split_to(frame.len);
                if let Some(key) = frame.mask {
                    apply_mask(&mut payload, key, 0);
                }
                let opcode = frame.opcode;
                self.frame = None;
                return self.on_control(opcode, payload.freeze()).map(Some);
            }

            let message = self
                .message
                .as_mut()
                .expect("check_header starts a message");
            // Fast path: a whole single-frame message is already buffered.
            if frame.fin && frame.done == 0 && message.len() == 0 && buf.len() >= frame.len {
                let mut payload = buf.split_to(frame.len);
                if let Some(key) = frame.mask {
                    apply_mask(&mut payload, key, 0);
                }
                if message.opcode == OpCode::Text {
                    simdutf8::basic::from_utf8(&payload).map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                let opcode = message.opcode;
                self.frame = None;
                self.message = None;
                return Ok(Some(data_event(opcode, payload.freeze())));
            }

            // Streaming path: take what has arrived, validate it now.
            let take = buf.len().min(frame.len - frame.done);
            if take == 0 && frame.done < frame.len {
                return Ok(None);
            }
            let mut chunk = buf.split_to(take);
            if let Some(key) = frame.mask {
                apply_mask(&mut chunk, key, frame.done);
            }
            if message.opcode == OpCode::Text {
                message
                    .utf8
                    .feed(&chunk)
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            message.append(chunk);
            frame.done += take;
            if frame.done < frame.len {
                return Ok(None);
            }
            let fin = frame.fin;
            self.frame = None;
            if fin {
                let mut message = self.message.take().expect("message in progress");
                if message.opcode == OpCode::Text {
                    message
                        .utf8
                        .finish()
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                let opcode = message.opcode;
                return Ok(Some(data_event(opcode, message.into_payload())));
            }
        }
    }

    /// Role, extension, sequencing and size rules for a new frame.
    fn check_header(&mut self, h: &FrameHeader) -> Result<(), ProtocolError> {
        if h.rsv != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        if h.payload_len > self.limits.max_frame as u64 {
            return Err(ProtocolError::FrameTooBig);
        }
        let len = h.payload_len as usize;
        match h.opcode {
            OpCode::Continuation => {
                let Some(message) = self.message.as_mut() else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                if message.len() + len > self.limits.max_message {
                    return Err(ProtocolError::MessageTooBig);
                }
            }
            OpCode::Text | OpCode::Binary => {
                if self.message.is_some() {
                    return Err(ProtocolError::ExpectedContinuation);
                }
                if len > self.limits.max_message {
                    return Err(ProtocolError::MessageTooBig);
                }
                self.message = Some(Assembly::new(h.opcode));
            }
            OpCode::Close | OpCode::Ping | OpCode::Pong => {}
        }
        Ok(())
    }

    fn on_control(&mut self, opcode: OpCode, payload: Bytes) -> Result<Event, ProtocolError> {
        match opcode {
            OpCode::Ping => {
                if self.state == State::Open {
                    self.push_control(OpCode::Pong, &payload);
                }
                Ok(Event::Ping(payload))
            }
            OpCode::Pong => Ok(Event::Pong(payload)),
            OpCode::Close => {
                let frame = CloseFrame::parse(&payload)?;
                if self.state == State::Open {
                    // Echo the status code, as most peers and Autobahn expect.
                    let reply = match &frame {
                        Some(f) => CloseFrame::payload(f.code, ""),
                        None => Bytes::new(),
                    };
                    self.push_control(OpCode::Close, &reply);
                }
                self.state = State::Closed;
                self.frame = None;
                self.message = None;
                Ok(Event::Close(frame))
            }
            _ => unreachable!("only control opcodes reach on_control"),
        }
    }
}

fn data_event(opcode: OpCode, payload: Bytes) -> Event {
    match opcode {
        OpCode::Text => Event::Text(payload),
        _ => Event::Binary(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        frame_rsv(fin, 0, op, payload)
    }

    fn frame_rsv(fin: bool, rsv: u8, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let opcode = OpCode::from_u8(op).unwrap();
        encode_frame(&mut out, fin, opcode, Some(KEY), payload);
        out[0] |= rsv << 4;
        out.to_vec()
    }

    fn server() -> WebSocket {
        WebSocket::new(Role::Server, Limits::default())
    }

    /// Feeds `input` in pieces of `step` bytes; returns events and the error.
    fn run(ws: &mut WebSocket, input: &[u8], step: usize) -> (Vec<Event>, Option<ProtocolError>) {
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match ws.poll(&mut buf) {
                    Ok(Some(e)) => events.push(e),
                    Ok(None) => break,
                    Err(e) => return (events, Some(e)),
                }
            }
        }
        (events, None)
    }

    fn sent_close_code(ws: &mut WebSocket) -> Option<u16> {
        let out = ws.take_output()?;
        let (h, n) = FrameHeader::decode(&out).unwrap().unwrap();
        assert_eq!(h.opcode, OpCode::Close);
        assert!(h.mask.is_none(), "server frames are unmasked");
        Some(u16::from_be_bytes([out[n], out[n + 1]]))
    }

    #[test]
    fn single_frame_text_any_split() {
        for step in [1, 2, 3, 7, 100] {
            let mut ws = server();
            let (ev, err) = run(&mut ws, &frame(true, 1, "héllo".as_bytes()), step);
            assert_eq!(err, None);
            assert_eq!(ev, vec![Event::Text(Bytes::from("héllo"))]);
        }
    }

    /// Between messages the machine holds no buffer: not the output that
    /// was taken (its spare capacity used to stay, pinning the allocation
    /// the written frames shared), not a message's assembly. It is kept per
    /// connection, idle or not (issue 12), so its size is bounded too.
    #[test]
    fn an_idle_machine_holds_no_buffer() {
        assert!(std::mem::size_of::<WebSocket>() <= 104);
        let mut ws = server();
        ws.ping(b"keep-alive");
        let ping = ws.take_output().unwrap();
        assert_eq!(ws.out.capacity(), 0, "the output went with the frame");
        drop(ping);
        let mut input = frame(false, 1, b"frag");
        input.extend(frame(true, 9, b"ping!"));
        input.extend(frame(true, 0, b"mented"));
        let (ev, err) = run(&mut ws, &input, 3);
        assert_eq!(err, None);
        assert_eq!(
            ev.last(),
            Some(&Event::Text(Bytes::from_static(b"fragmented")))
        );
        assert!(ws.take_output().is_some(), "the pong");
        assert!(!ws.in_message() && ws.out.capacity() == 0);
        // A whole message split off the read buffer never makes a copy.
        let (ev, _) = run(&mut ws, &frame(true, 2, b"whole"), 100);
        assert_eq!(ev, vec![Event::Binary(Bytes::from_static(b"whole"))]);
        assert!(ws.message.is_none());
    }

    #[test]
    fn fragmented_with_interleaved_ping() {
        let mut input = frame(false, 1, b"frag");
        input.extend(frame(true, 9, b"ping!"));
        input.extend(frame(false, 0, b"men"));
        input.extend(frame(true, 0, b"ted"));
        for step in [1, 5, 1000] {
            let mut ws = server();
            let (ev, err) = run(&mut ws, &input, step);
            assert_eq!(err, None);
            assert_eq!(
                ev,
                vec![
                    Event::Ping(Bytes::from_static(b"ping!")),
                    Event::Text(Bytes::from_static(b"fragmented"))
                ]
            );
            let pong = ws.take_output().unwrap();
            assert_eq!(&pong[..], b"\x8a\x05ping!");
        }
    }

    #[test]
    fn empty_fragments_and_empty_messages() {
        let mut input = frame(true, 1, b"");
        input.extend(frame(false, 2, b""));
        input.extend(frame(false, 0, b""));
        input.extend(frame(true, 0, b""));
        let (ev, err) = run(&mut server(), &input, 1);
        assert_eq!(err, None);
        assert_eq!(
            ev,
            vec![Event::Text(Bytes::new()), Event::Binary(Bytes::new())]
        );
    }

    #[test]
    fn payload_length_boundaries() {
        for len in [0usize, 125, 126, 127, 65535, 65536, 1 << 20] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for step in [len.max(1) + 14, 4093] {
                let (ev, err) = run(&mut server(), &frame(true, 2, &payload), step);
                assert_eq!(err, None);
                assert_eq!(
                    ev,
                    vec![Event::Binary(Bytes::from(payload.clone()))],
                    "len {len}"
                );
            }
        }
    }

    #[test]
    fn protocol_violations_close_with_1002() {
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            (frame_rsv(true, 1, 1, b"x"), ProtocolError::ReservedBits),
            (frame_rsv(true, 4, 9, b""), ProtocolError::ReservedBits),
            (
                vec![0x83, 0x80, 1, 2, 3, 4],
                ProtocolError::ReservedOpcode(3),
            ),
            (
                vec![0x8b, 0x80, 1, 2, 3, 4],
                ProtocolError::ReservedOpcode(11),
            ),
            (vec![0x81, 0x01, b'x'], ProtocolError::UnmaskedFrame),
            (frame(true, 0, b"x"), ProtocolError::UnexpectedContinuation),
            (
                [frame(false, 1, b"a"), frame(true, 1, b"b")].concat(),
                ProtocolError::ExpectedContinuation,
            ),
            (frame(false, 9, b""), ProtocolError::FragmentedControl),
            (vec![0x89, 0xfe, 0x00, 0x7e], ProtocolError::ControlTooLong),
            (frame(true, 8, b"\x03"), ProtocolError::CloseTooShort),
            (
                frame(true, 8, b"\x03\xec"),
                ProtocolError::InvalidCloseCode(1004),
            ),
            (
                frame(true, 8, b"\x13\x88"),
                ProtocolError::InvalidCloseCode(5000),
            ),
        ];
        for (input, want) in cases {
            let mut ws = server();
            let (_, err) = run(&mut ws, &input, 1);
            assert_eq!(err, Some(want), "{input:?}");
            assert_eq!(sent_close_code(&mut ws), Some(1002), "{want:?}");
            assert!(ws.is_closed());
        }
    }

    #[test]
    fn application_close_codes_are_accepted() {
        for code in [1000u16, 1003, 1007, 1011, 1012, 1014, 3000, 4999] {
            let mut ws = server();
            let (ev, err) = run(&mut ws, &frame(true, 8, &code.to_be_bytes()), 1);
            assert_eq!(err, None, "{code}");
            assert_eq!(ev.len(), 1);
            assert_eq!(sent_close_code(&mut ws), Some(code));
        }
    }

    #[test]
    fn client_role_rejects_masked_frames() {
        let mut ws = WebSocket::new(Role::Client, Limits::default());
        let (_, err) = run(&mut ws, &frame(true, 1, b"x"), 10);
        assert_eq!(err, Some(ProtocolError::MaskedFrame));
        let out = ws.take_output().unwrap();
        let (h, _) = FrameHeader::decode(&out).unwrap().unwrap();
        assert!(h.mask.is_some(), "client frames are masked");
    }

    #[test]
    fn invalid_utf8_fails_fast_with_1007() {
        // The invalid byte is in the first fragment; the message never ends.
        let input = frame(false, 1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xf4\x90\x80\x80");
        let mut ws = server();
        let (_, err) = run(&mut ws, &input, 1);
        assert_eq!(err, Some(ProtocolError::InvalidUtf8));
        assert_eq!(sent_close_code(&mut ws), Some(1007));
        // Also mid-frame: the frame is never completed.
        let full = frame(true, 1, b"ok ok ok \xff and then a lot more text");
        let mut ws = server();
        let (_, err) = run(&mut ws, &full[..20], 1);
        assert_eq!(err, Some(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn utf8_split_across_fragments_at_every_position() {
        let text = "κόσμε€𝄞!".as_bytes();
        for cut in 0..=text.len() {
            let mut input = frame(false, 1, &text[..cut]);
            input.extend(frame(true, 0, &text[cut..]));
            let (ev, err) = run(&mut server(), &input, 3);
            assert_eq!(err, None, "cut {cut}");
            assert_eq!(ev, vec![Event::Text(Bytes::from_static(text))]);
        }
        // A code point left incomplete at the end of the message is invalid.
        let (_, err) = run(&mut server(), &frame(true, 1, b"ab\xe2\x82"), 100);
        assert_eq!(err, Some(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn invalid_close_reason_is_1007() {
        let mut ws = server();
        let (_, err) = run(&mut ws, &frame(true, 8, b"\x03\xe8\xff\xfe"), 100);
        assert_eq!(err, Some(ProtocolError::InvalidUtf8));
        assert_eq!(sent_close_code(&mut ws), Some(1007));
    }

    #[test]
    fn limits_are_1009_from_the_header() {
        let limits = Limits {
            max_frame: 100,
            max_message: 150,
        };
        let mut ws = WebSocket::new(Role::Server, limits);
        // Only the header is sent: refused before any payload.
        let f = frame(true, 2, &[0u8; 101]);
        let (_, err) = run(&mut ws, &f[..8], 100);
        assert_eq!(err, Some(ProtocolError::FrameTooBig));
        assert_eq!(sent_close_code(&mut ws), Some(1009));

        let mut ws = WebSocket::new(Role::Server, limits);
        let mut input = frame(false, 2, &[0u8; 100]);
        input.extend(frame(true, 0, &[0u8; 51]));
        let (_, err) = run(&mut ws, &input, 1000);
        assert_eq!(err, Some(ProtocolError::MessageTooBig));
    }

    #[test]
    fn close_handshake_peer_initiated() {
        let mut ws = server();
        let mut input = frame(true, 8, b"\x03\xe8bye");
        input.extend(frame(true, 1, b"ignored after close"));
        let (ev, err) = run(&mut ws, &input, 1);
        assert_eq!(err, None);
        assert_eq!(
            ev,
            vec![Event::Close(Some(CloseFrame {
                code: CloseCode::NORMAL,
                reason: Bytes::from_static(b"bye")
            }))]
        );
        assert_eq!(sent_close_code(&mut ws), Some(1000));
        assert!(ws.is_closed());
    }

    #[test]
    fn close_without_code_gets_empty_close() {
        let mut ws = server();
        let (ev, _) = run(&mut ws, &frame(true, 8, b""), 1);
        assert_eq!(ev, vec![Event::Close(None)]);
        assert_eq!(&ws.take_output().unwrap()[..], b"\x88\x00");
    }

    #[test]
    fn close_handshake_we_initiate() {
        let mut ws = server();
        ws.close(CloseCode::GOING_AWAY, "shutting down");
        assert!(!ws.is_open());
        assert_eq!(sent_close_code(&mut ws), Some(1001));
        // Pings after our close get no pong; the peer's close finishes it.
        let mut input = frame(true, 9, b"p");
        input.extend(frame(true, 8, b"\x03\xe9"));
        let (ev, err) = run(&mut ws, &input, 1);
        assert_eq!(err, None);
        assert_eq!(ev.len(), 2);
        assert!(ws.take_output().is_none(), "no second close, no pong");
        assert!(ws.is_closed());
    }

    #[test]
    fn unsolicited_pong_is_just_an_event() {
        let mut ws = server();
        let (ev, err) = run(&mut ws, &frame(true, 10, b"x"), 1);
        assert_eq!(err, None);
        assert_eq!(ev, vec![Event::Pong(Bytes::from_static(b"x"))]);
        assert!(ws.take_output().is_none());
    }

    #[test]
    fn client_encodes_masked_and_server_decodes() {
        let client = WebSocket::new(Role::Client, Limits::default());
        let mut wire = BytesMut::new();
        client.encode_message(&mut wire, OpCode::Binary, b"round trip");
        assert_ne!(&wire[6..], b"round trip", "masked");
        let (ev, err) = run(&mut server(), &wire, 2);
        assert_eq!(err, None);
        assert_eq!(ev, vec![Event::Binary(Bytes::from_static(b"round trip"))]);
    }

    proptest::proptest! {
        /// Any byte soup: no panic, and on error a close frame is queued.
        #[test]
        fn never_panics(input in proptest::collection::vec(proptest::num::u8::ANY, 0..512), step in 1usize..64) {
            let mut ws = server();
            let (_, err) = run(&mut ws, &input, step);
            if err.is_some() {
                proptest::prop_assert!(ws.take_output().is_some());
                proptest::prop_assert!(ws.is_closed());
            }
        }
    }
}
