//! Fuzz target bodies for ringcast's sans-I/O protocol core.
//!
//! Each `pub fn <target>(data: &[u8])` is one fuzz target. The libFuzzer
//! binaries in `fuzz_targets/` are one-line wrappers around these, and
//! `tests/replay.rs` runs every file under `seeds/<target>/` through the same
//! functions on plain stable Rust, so the committed corpus is a regression
//! suite that needs no libFuzzer and no nightly.
//!
//! A target panics (and so "crashes") on any invariant violation; every
//! check below is a property the protocol code documents or that RFC 6455 /
//! RFC 9112 imply, not an implementation detail.
//!
//! Input layout: most targets take a few control bytes first, then the bytes
//! under test. A *chunk plan* is `[n & 0x0f][n size bytes]`: the payload is
//! fed in pieces of those sizes, cycling (a size of 0 feeds an empty piece;
//! a plan of all zeros, or no plan, feeds everything at once). Missing
//! control bytes read as zero, so every input is valid.

use bytes::{Bytes, BytesMut};
use ringcast_core::topic;
use ringcast_core::wire::command::{self, Command, Id};
use ringcast_core::wire::reply;
use ringcast_proto::chunked::{self, ChunkedDecoder};
use ringcast_proto::close::{CloseCode, CloseFrame};
use ringcast_proto::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use ringcast_proto::handshake::{self, AllowAll, ClientHandshake, StaticPolicy};
use ringcast_proto::http::{BodyFraming, HeadLimits, HeadParser, Request};
use ringcast_proto::mask;
use ringcast_proto::utf8::Utf8Validator;
use ringcast_proto::websocket::{Event, Limits, Role, WebSocket};
use ringcast_proto::{HttpError, ProtocolError};

pub mod cluster;
pub use cluster::cluster_message;
pub mod engine;
pub use engine::engine;
pub mod pattern;
pub use pattern::pattern;
pub mod token;
pub use token::token;

/// A fuzz target body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` binary and `seeds/` folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("http_head", http_head),
    ("client_handshake", client_handshake),
    ("frame_header", frame_header),
    ("websocket_server", websocket_server),
    ("websocket_client", websocket_client),
    ("utf8", utf8),
    ("command", command),
    ("mask", mask),
    ("engine", engine),
    ("chunked", chunked),
    ("pattern", pattern),
    ("token", token),
    ("cluster_message", cluster_message),
];

/// Lower-case hex, for reporting inputs.
pub fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// Control bytes off the front of the input; missing bytes read as 0.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A chunk plan: `[n & 0x0f][n sizes]`.
    fn plan(&mut self) -> &'a [u8] {
        let n = (self.byte() & 0x0f) as usize;
        self.bytes(n)
    }

    fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Splits `payload` by the chunk plan `sizes` (see the crate docs). Always
/// returns at least one piece; the pieces concatenate to `payload`.
pub fn chunks<'a>(sizes: &[u8], payload: &'a [u8]) -> Vec<&'a [u8]> {
    if sizes.iter().all(|&s| s == 0) {
        return vec![payload];
    }
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < payload.len() {
        let s = (sizes[i % sizes.len()] as usize).min(payload.len() - pos);
        out.push(&payload[pos..pos + s]);
        pos += s;
        i += 1;
    }
    if out.is_empty() {
        out.push(payload);
    }
    out
}

// ---------------------------------------------------------------------------
// HTTP responses we generate must be well-formed.

/// Checks a complete `Content-Length` response built by `ringcast_proto::http`.
fn check_response(resp: &[u8], status: u16) {
    let text = std::str::from_utf8(resp).expect("responses are UTF-8");
    let status_line = format!("HTTP/1.1 {status} ");
    assert!(text.starts_with(&status_line), "{text:?}");
    let (head, body) = text.split_once("\r\n\r\n").expect("head ends");
    for line in head.split("\r\n") {
        assert!(!line.contains(['\r', '\n']), "bare CR/LF in {text:?}");
    }
    if status != 101 {
        assert!(
            head.contains(&format!("\r\nContent-Length: {}", body.len())),
            "{text:?}"
        );
    } else {
        assert!(body.is_empty(), "101 has no body: {text:?}");
    }
}

fn check_http_error(e: HttpError) {
    let status = e.status();
    let _ = (e.reason(), e.to_string());
    if (100..=599).contains(&status) && status != 101 {
        check_response(&e.to_response(), status);
    }
}

// ---------------------------------------------------------------------------
// http_head: HeadParser (fed incrementally) + handshake::accept.

/// Input: `[limits][chunk plan][request bytes]`.
///
/// `limits`: bit 7 set = default limits; otherwise `max_headers = low 4
/// bits`, `max_head = 16 << bits 4..6` (16..2048).
pub fn http_head(data: &[u8]) {
    let mut r = Reader::new(data);
    let cfg = r.byte();
    let sizes = r.plan();
    let input = r.rest();
    let limits = if cfg & 0x80 != 0 {
        HeadLimits::default()
    } else {
        HeadLimits {
            max_head: 16 << ((cfg >> 4) & 7),
            max_headers: (cfg & 0x0f) as usize,
        }
    };

    // Incremental: one parser, a growing buffer, as a connection uses it.
    let mut parser = HeadParser::new();
    let mut buf = Vec::with_capacity(input.len());
    let mut result = Ok(None);
    for piece in chunks(sizes, input) {
        buf.extend_from_slice(piece);
        result = parser.parse(&buf, limits);
        if !matches!(result, Ok(None)) {
            break;
        }
    }

    // The resumable scan must not change the answer: a fresh parser on the
    // bytes seen so far, and on the whole input, agree with it.
    let fresh = HeadParser::new().parse(&buf, limits);
    assert_eq!(result, fresh, "incremental vs one-shot on the same bytes");
    // Arrival may change how a bad head is refused: trickled, an implausible
    // prefix is refused early as Malformed (only while short), while the
    // same bytes at once may be HeadTooLarge, or "read more" until the
    // blank line comes. It never changes whether a head is accepted, nor
    // what it parses to.
    let whole = HeadParser::new().parse(input, limits);
    if matches!(result, Ok(Some(_))) || matches!(whole, Ok(Some(_))) {
        assert_eq!(result, whole, "incremental vs one-shot on the whole input");
    }

    match result {
        Ok(None) => assert!(buf.len() <= limits.max_head),
        Ok(Some((req, n))) => {
            assert!(n <= buf.len());
            assert!(n <= limits.max_head, "head of {n} bytes over the limit");
            assert!(req.headers.len() <= limits.max_headers);
            assert!(
                buf[..n].ends_with(b"\n\n") || buf[..n].ends_with(b"\n\r\n"),
                "head must end at a blank line"
            );
            check_request(&req);
        }
        Err(e) => {
            assert!(
                matches!(
                    e,
                    HttpError::HeadTooLarge | HttpError::TooManyHeaders | HttpError::Malformed
                ),
                "{e:?}"
            );
            check_http_error(e);
        }
    }
}

fn check_request(req: &Request) {
    // Accessors never panic and are consistent.
    let path = req.path();
    assert!(req.target.starts_with(path));
    if let Some(q) = req.query() {
        assert_eq!(req.target, format!("{path}?{q}"));
    }
    for (name, _) in &req.headers {
        assert!(req.header(name).is_some());
    }
    let _ = handshake::is_upgrade(req);
    let _ = req.expects_continue();
    match req.check_host() {
        Ok(()) => assert!(req.headers_named("host").count() <= 1),
        Err(e) => check_http_error(e),
    }
    // RFC 9112 section 6, strictly: one framing or an error, never both
    // a length and a coding.
    match req.body_framing() {
        Ok(BodyFraming::Chunked) => {
            assert!(req.header("content-length").is_none());
            assert_eq!(req.version, 1);
        }
        Ok(BodyFraming::Length(n)) => {
            assert!(req.header("transfer-encoding").is_none());
            for v in req.headers_named("content-length") {
                for item in v.split(|&b| b == b',') {
                    assert_eq!(
                        std::str::from_utf8(item.trim_ascii())
                            .ok()
                            .and_then(|t| t.parse::<u64>().ok()),
                        Some(n)
                    );
                }
            }
        }
        Ok(BodyFraming::None) => {
            assert!(req.header("content-length").is_none());
            assert!(req.header("transfer-encoding").is_none());
        }
        Err(e) => {
            assert_eq!(e.status(), 400, "{e}");
            check_http_error(e);
        }
    }

    match handshake::accept(req, &AllowAll) {
        Ok(a) => {
            check_accepted(req, &a);
            assert_eq!(a.protocol, None, "AllowAll selects no subprotocol");
        }
        Err(e) => check_http_error(e),
    }

    let policy = StaticPolicy {
        origins: vec!["https://ok.example".into()],
        subprotocols: vec!["ringcast.v1".into(), "chat".into()],
    };
    match handshake::accept(req, &policy) {
        Ok(a) => {
            check_accepted(req, &a);
            if let Some(p) = &a.protocol {
                assert!(policy.subprotocols.contains(p));
                let offered = req
                    .headers_named("sec-websocket-protocol")
                    .filter_map(|v| std::str::from_utf8(v).ok())
                    .flat_map(|v| v.split(','))
                    .any(|o| o.trim() == p);
                assert!(offered, "selected {p:?} was not offered");
            }
            if let Some(o) = req.header("origin") {
                assert!(o.eq_ignore_ascii_case(b"https://ok.example"));
            }
        }
        Err(e) => check_http_error(e),
    }
}

fn check_accepted(req: &Request, a: &handshake::Accepted) {
    assert_eq!(req.method, "GET");
    assert!(req.version >= 1);
    assert!(req.header("host").is_some());
    let key = req.header("sec-websocket-key").expect("key").trim_ascii();
    assert_eq!(a.accept, handshake::accept_key(key));
    check_response(&a.response(), 101);
}

// ---------------------------------------------------------------------------
// client_handshake: ClientHandshake::parse_response.

/// The literal `{accept}` in the input is replaced by the correct
/// `Sec-WebSocket-Accept` for this handshake's random key, so the fuzzer
/// gets past the accept check and into what follows it.
pub const ACCEPT_PLACEHOLDER: &[u8] = b"{accept}";

/// Input: `[cfg][chunk plan][response bytes]`.
///
/// `cfg`: bit 0 offers `ringcast.v1`, bit 1 offers `chat`;
/// `max_head = 64 << bits 2..4` (64..8192).
pub fn client_handshake(data: &[u8]) {
    let mut r = Reader::new(data);
    let cfg = r.byte();
    let sizes = r.plan();
    let raw = r.rest();
    let mut offered = Vec::new();
    if cfg & 1 != 0 {
        offered.push("ringcast.v1");
    }
    if cfg & 2 != 0 {
        offered.push("chat");
    }
    let max_head = 64usize << ((cfg >> 2) & 7);

    let (hs, request) = ClientHandshake::new("example.com:80", "/ws", &offered);
    let key = request
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"Sec-WebSocket-Key: "))
        .expect("request has a key")
        .trim_ascii();
    let accept = handshake::accept_key(key);
    let input = replace_all(raw, ACCEPT_PLACEHOLDER, accept.as_bytes());

    let mut buf = Vec::with_capacity(input.len());
    let mut result = Ok(None);
    for piece in chunks(sizes, &input) {
        buf.extend_from_slice(piece);
        result = hs.parse_response(&buf, max_head);
        if !matches!(result, Ok(None)) {
            break;
        }
    }
    // Stateless: the same bytes give the same answer.
    assert_eq!(result, hs.parse_response(&buf, max_head));

    match result {
        Ok(None) => assert!(buf.len() <= max_head),
        Ok(Some((n, protocol))) => {
            assert!(n <= buf.len());
            // The head limit holds however the response arrives.
            assert!(n <= max_head, "response head of {n} bytes over {max_head}");
            assert!(buf[..n].ends_with(b"\n\n") || buf[..n].ends_with(b"\n\r\n"));
            if let Some(p) = protocol {
                assert!(offered.contains(&p.as_str()), "{p:?} was not offered");
            }
        }
        Err(e) => check_http_error(e),
    }
}

/// Extra checks for issues already reported and not yet fixed.
fn strict() -> bool {
    use std::sync::OnceLock;
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("RINGCAST_FUZZ_STRICT").is_some_and(|v| v != "0"))
}

fn replace_all(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// frame_header: FrameHeader::decode / encode.

/// Input: raw header bytes.
pub fn frame_header(data: &[u8]) {
    match FrameHeader::decode(data) {
        Ok(None) => assert!(
            data.len() < MAX_HEADER_LEN,
            "a full header is always decidable"
        ),
        Ok(Some((h, n))) => {
            assert!((2..=MAX_HEADER_LEN).contains(&n) && n <= data.len());
            assert_eq!(n, h.encoded_len());
            assert!(h.rsv <= 7);
            assert!(h.payload_len >> 63 == 0);
            if h.opcode.is_control() {
                assert!(h.fin && h.payload_len <= 125);
            }
            // encode(decode(x)) == x, and decode(encode(h)) == h.
            let mut out = [0u8; MAX_HEADER_LEN];
            let m = h.encode(&mut out);
            assert_eq!(&out[..m], &data[..n], "encode(decode(x)) != x for {h:?}");
            assert_eq!(FrameHeader::decode(&out[..m]), Ok(Some((h, m))));
            // Every strict prefix of an accepted header is "need more".
            for cut in 0..n {
                assert_eq!(FrameHeader::decode(&data[..cut]), Ok(None), "cut {cut}");
            }
        }
        Err(e) => {
            // An error is final: more bytes cannot make it acceptable.
            let mut longer = data.to_vec();
            longer.extend_from_slice(&[0xff; MAX_HEADER_LEN]);
            assert_eq!(FrameHeader::decode(&longer), Err(e));
            let _ = (e.close_code(), e.reason(), e.to_string());
        }
    }
}

// ---------------------------------------------------------------------------
// websocket_{server,client}: WebSocket::poll.

/// Input: `[flags][max_frame/4][max_message/4][chunk plan][wire bytes]`.
///
/// `flags`: bit 0 = we call `close()`, bit 1 = we call `ping()`, before the
/// piece number in bits 4..7; bit 3 = default (16 MiB) limits instead.
pub fn websocket_server(data: &[u8]) {
    websocket(data, Role::Server)
}

/// As [`websocket_server`], in client role (frames must arrive unmasked).
pub fn websocket_client(data: &[u8]) {
    websocket(data, Role::Client)
}

fn websocket(data: &[u8], role: Role) {
    let mut r = Reader::new(data);
    let flags = r.byte();
    let max_frame = r.byte() as usize * 4;
    let max_message = r.byte() as usize * 4;
    let sizes = r.plan();
    let input = r.rest();
    let limits = if flags & 0x08 != 0 {
        Limits::default()
    } else {
        Limits {
            max_frame,
            max_message,
        }
    };
    let action = flags & 0x03;
    let action_at = (flags >> 4) as usize;
    let pieces = chunks(sizes, input);

    let run = drive(role, limits, &pieces, action, action_at);
    if action == 0 && pieces.len() > 1 {
        // How the bytes were cut must not change what the peer said.
        let whole = drive(role, limits, &[input], 0, 0);
        assert_eq!(run.events, whole.events, "events depend on read boundaries");
        assert_eq!(run.error, whole.error, "error depends on read boundaries");
        assert_eq!(
            run.output, whole.output,
            "output depends on read boundaries"
        );
    }
}

#[derive(Default)]
struct Run {
    events: Vec<Event>,
    error: Option<ProtocolError>,
    /// Every frame queued by the machine: opcode and unmasked payload.
    output: Vec<(OpCode, Vec<u8>)>,
}

fn drive(role: Role, limits: Limits, pieces: &[&[u8]], action: u8, action_at: usize) -> Run {
    let mut ws = WebSocket::new(role, limits);
    assert_eq!(ws.role(), role);
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let mut buf = BytesMut::new();
    let mut run = Run::default();
    for (i, piece) in pieces.iter().enumerate() {
        if action != 0 && i == action_at {
            let was_open = ws.is_open();
            let mut want = Vec::new();
            if action & 2 != 0 {
                ws.ping(b"hb");
                if was_open {
                    want.push((OpCode::Ping, b"hb".to_vec()));
                }
            }
            if action & 1 != 0 {
                ws.close(CloseCode::GOING_AWAY, "bye");
                if was_open {
                    want.push((OpCode::Close, b"\x03\xe9bye".to_vec()));
                }
                assert!(!ws.is_open());
            }
            let out = take_frames(&mut ws, role);
            assert_eq!(out, want, "output of ping()/close()");
            run.output.extend(out);
        }
        buf.extend_from_slice(piece);
        let mut polls = 0;
        loop {
            polls += 1;
            assert!(polls <= total + 2, "poll() loops without progress");
            let was_open = ws.is_open();
            let was_closed = ws.is_closed();
            let _ = ws.read_hint();
            let res = ws.poll(&mut buf);
            let out = take_frames(&mut ws, role);
            if was_closed {
                assert_eq!(res, Ok(None), "input after close must be ignored");
                assert!(buf.is_empty() && out.is_empty());
                break;
            }
            match res {
                Ok(None) => {
                    assert!(out.is_empty(), "output without an event: {out:?}");
                    assert_eq!(ws.is_open(), was_open);
                    // Asking again without new bytes changes nothing.
                    let left = buf.len();
                    assert_eq!(ws.poll(&mut buf), Ok(None));
                    assert_eq!(buf.len(), left);
                    assert!(ws.take_output().is_none());
                    break;
                }
                Ok(Some(ev)) => {
                    check_event(&ev, &out, was_open, limits);
                    if !matches!(ev, Event::Close(_)) {
                        assert_eq!(ws.is_open(), was_open);
                        assert!(!ws.is_closed());
                    }
                    run.output.extend(out);
                    run.events.push(ev);
                }
                Err(e) => {
                    assert!(ws.is_closed(), "failed but not closed: {e:?}");
                    assert!(!ws.is_open());
                    assert_eq!(ws.error(), Some(e));
                    assert!(buf.is_empty());
                    let want = if was_open {
                        let payload = CloseFrame::payload(e.close_code(), e.reason());
                        vec![(OpCode::Close, payload.to_vec())]
                    } else {
                        Vec::new() // our close was already sent
                    };
                    assert_eq!(out, want, "close frame queued for {e:?}");
                    run.output.extend(out);
                    run.error = Some(e);
                    break;
                }
            }
        }
    }
    run
}

fn check_event(ev: &Event, out: &[(OpCode, Vec<u8>)], was_open: bool, limits: Limits) {
    match ev {
        Event::Text(p) => {
            assert!(std::str::from_utf8(p).is_ok(), "Text event is not UTF-8");
            assert!(p.len() <= limits.max_message);
            assert!(out.is_empty());
        }
        Event::Binary(p) => {
            assert!(p.len() <= limits.max_message);
            assert!(out.is_empty());
        }
        Event::Ping(p) => {
            assert!(p.len() <= 125);
            if was_open {
                assert_eq!(out, [(OpCode::Pong, p.to_vec())], "pong echoes the ping");
            } else {
                assert!(out.is_empty(), "no pong once our close is sent");
            }
        }
        Event::Pong(p) => {
            assert!(p.len() <= 125);
            assert!(out.is_empty());
        }
        Event::Close(frame) => {
            if let Some(f) = frame {
                assert!(f.code.is_valid_on_wire(), "{:?}", f.code);
                assert!(f.reason.len() <= 123);
                assert!(std::str::from_utf8(&f.reason).is_ok());
            }
            if was_open {
                let reply = frame
                    .as_ref()
                    .map_or(Vec::new(), |f| f.code.0.to_be_bytes().to_vec());
                assert_eq!(out, [(OpCode::Close, reply)], "close reply");
            } else {
                assert!(out.is_empty(), "no second close");
            }
        }
    }
}

/// Takes the queued output and decodes it: only complete, final control
/// frames, masked exactly in client role.
fn take_frames(ws: &mut WebSocket, role: Role) -> Vec<(OpCode, Vec<u8>)> {
    let mut frames = Vec::new();
    let Some(out) = ws.take_output() else {
        return frames;
    };
    assert!(!out.is_empty(), "take_output returned an empty buffer");
    let mut rest = &out[..];
    while !rest.is_empty() {
        let (h, n) = FrameHeader::decode(rest)
            .expect("our own frames decode")
            .expect("our own frames are complete");
        assert!(h.fin && h.rsv == 0 && h.opcode.is_control(), "{h:?}");
        assert_eq!(h.mask.is_some(), role == Role::Client, "masking by role");
        let len = h.payload_len as usize;
        assert!(len <= 125 && rest.len() >= n + len, "{h:?}");
        let mut payload = rest[n..n + len].to_vec();
        if let Some(key) = h.mask {
            mask::apply_mask(&mut payload, key, 0);
        }
        if h.opcode == OpCode::Close {
            let parsed = CloseFrame::parse(&payload.clone().into());
            assert!(parsed.is_ok(), "we sent an invalid close: {payload:?}");
        }
        frames.push((h.opcode, payload));
        rest = &rest[n + len..];
    }
    frames
}

// ---------------------------------------------------------------------------
// utf8: Utf8Validator vs std::str::from_utf8.

/// Input: `[chunk plan][bytes]`.
pub fn utf8(data: &[u8]) {
    let mut r = Reader::new(data);
    let sizes = r.plan();
    let input = r.rest();
    let mut v = Utf8Validator::new();
    let mut end = 0;
    for piece in chunks(sizes, input) {
        end += piece.len();
        let std = std::str::from_utf8(&input[..end]);
        // "Invalid" as soon as no continuation can make the prefix valid.
        let dead = matches!(std, Err(e) if e.error_len().is_some());
        let cut = matches!(std, Err(e) if e.error_len().is_none());
        let res = v.feed(piece);
        assert_eq!(res.is_err(), dead, "feed() vs std after {end} bytes");
        if dead {
            return;
        }
        assert_eq!(v.is_incomplete(), cut, "is_incomplete() after {end} bytes");
    }
    let res = v.finish();
    assert_eq!(
        res.is_ok(),
        std::str::from_utf8(input).is_ok(),
        "finish() vs std"
    );
    assert!(!v.is_incomplete());
}

// ---------------------------------------------------------------------------
// command: command::parse on a text frame, and the replies built from it.

/// Input: a text frame's payload (made valid UTF-8 first, as the WebSocket
/// layer guarantees before a command is parsed).
pub fn command(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let frame = Bytes::copy_from_slice(text.as_bytes());
    let within = |b: &Bytes| {
        let (start, end) = (
            frame.as_ptr() as usize,
            frame.as_ptr() as usize + frame.len(),
        );
        let p = b.as_ptr() as usize;
        b.is_empty() || (p >= start && p + b.len() <= end)
    };
    let check_id = |id: &Option<Id>| {
        if let Some(Id(raw)) = id {
            assert!(within(raw), "id is not a slice of the frame");
            if let Some(v) = json_value(raw) {
                assert!(v.is_string() || v.is_number(), "id {v}");
            }
        }
    };
    let check_topic = |t: &str| {
        assert_eq!(topic::validate(t), Ok(()));
        assert!(!t.is_empty() && t.len() <= topic::MAX_TOPIC_LEN);
        assert!(t
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_.:-".contains(&c)));
        assert!(t.split('.').all(|s| !s.is_empty()));
    };
    let id_of = |v: &serde_json::Value, id: &Option<Id>| match id {
        None => assert!(v.get("id").is_none(), "no id, none echoed"),
        Some(Id(raw)) => {
            if let Some(want) = json_value(raw) {
                assert_eq!(v.get("id"), Some(&want), "id echoed");
            }
        }
    };
    match command::parse(&frame) {
        Ok(Command::Subscribe { topic, since, id }) => {
            check_topic(&topic);
            check_id(&id);
            if let Some(v) = reply_json(&reply::subscribed(&topic, "0123456789abcdef", &id)) {
                assert_eq!(
                    (&v["op"], &v["topic"]),
                    (&"subscribed".into(), &topic.as_str().into())
                );
                id_of(&v, &id);
            }
            if let Some(s) = since {
                let first = s.saturating_add(2);
                if let Some(v) = reply_json(&reply::gap(&topic, s, first, &id)) {
                    assert_eq!(
                        (v["since"].as_u64(), v["first_seq"].as_u64()),
                        (Some(s), Some(first))
                    );
                    id_of(&v, &id);
                }
            }
        }
        Ok(Command::Unsubscribe { topic, id }) => {
            check_topic(&topic);
            check_id(&id);
            if let Some(v) = reply_json(&reply::unsubscribed(&topic, &id)) {
                assert_eq!(v["topic"], topic.as_str());
                id_of(&v, &id);
            }
        }
        Ok(Command::Connect { token, id } | Command::Refresh { token, id }) => {
            check_id(&id);
            // The `connected` reply carries the token's `sub` (any text):
            // it must come out as valid JSON with the same string.
            let sub = token.as_deref().unwrap_or("");
            if let Some(v) = reply_json(&reply::connected("connected", Some(sub), Some(7), &id)) {
                assert_eq!(v["sub"], sub);
                assert_eq!(v["expires_in"], 7);
                id_of(&v, &id);
            }
        }
        Ok(Command::Publish { topic, data, id }) => {
            check_topic(&topic);
            check_id(&id);
            assert!(within(&data), "data is not a slice of the frame");
            assert!(command::validate_data(&data), "data is not one JSON value");
            let seq = data.len() as u64 * 0x1_0000_0001;
            let frame = reply::message(&topic, seq, &data);
            let json = reply::message_json(&frame);
            assert!(
                json.ends_with(&[&b",\"data\":"[..], &data, b"}"].concat()),
                "data copied exactly"
            );
            if let Some(v) = reply_json(&frame) {
                assert_eq!(
                    (&v["op"], &v["topic"]),
                    (&"message".into(), &topic.as_str().into())
                );
                assert_eq!(v["seq"].as_u64(), Some(seq));
                assert_eq!(Some(&v["data"]), json_value(&data).as_ref());
            }
            if let Some(v) = reply_json(&reply::published(&topic, seq, &id)) {
                id_of(&v, &id);
            }
        }
        Err(e) => {
            check_id(&e.id);
            assert!(!e.message.is_empty());
            if let Some(v) = reply_json(&reply::error(e.code, &e.message, &e.id)) {
                assert_eq!(
                    (&v["op"], &v["code"]),
                    (&"error".into(), &e.code.as_str().into())
                );
                assert_eq!(v["message"], e.message.as_str());
                id_of(&v, &e.id);
            }
        }
    }
}

/// A reply must be one final, unmasked text frame holding one JSON object,
/// and a client-role WebSocket must accept it as such. Returns the parsed
/// object, or `None` when it nests deeper than `serde_json::Value` parses
/// (128 levels; publish `data` may, and is still checked to be valid JSON).
fn reply_json(frame: &Bytes) -> Option<serde_json::Value> {
    let (h, n) = FrameHeader::decode(frame)
        .expect("valid header")
        .expect("complete header");
    assert!(
        h.fin && h.rsv == 0 && h.mask.is_none() && h.opcode == OpCode::Text,
        "{h:?}"
    );
    assert_eq!(h.payload_len as usize, frame.len() - n, "frame length");
    let mut ws = WebSocket::new(Role::Client, Limits::default());
    let mut buf = BytesMut::from(&frame[..]);
    match ws.poll(&mut buf) {
        Ok(Some(Event::Text(p))) => assert_eq!(&p[..], &frame[n..]),
        other => panic!("client refused our reply: {other:?}"),
    }
    let json = &frame[n..];
    let shown = || String::from_utf8_lossy(json).into_owned();
    let raw: &serde_json::value::RawValue = serde_json::from_slice(json)
        .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {:?}", shown()));
    assert!(
        raw.get().starts_with('{'),
        "reply is not an object: {:?}",
        shown()
    );
    json_value(json)
}

/// Parses JSON already known to be valid (by `RawValue`, as the broker
/// checks it); `None` where `serde_json::Value` is stricter than JSON's
/// grammar: past its recursion limit, numbers no `f64` holds (an `id` of
/// `1e400` is valid), and, unless RINGCAST_FUZZ_STRICT is set, strings with
/// an unpaired UTF-16 surrogate escape such as `"\ude00"`, which the broker
/// passes through as documented in docs/protocol.md.
fn json_value(json: &[u8]) -> Option<serde_json::Value> {
    match serde_json::from_slice(json) {
        Ok(v) => Some(v),
        Err(e) if e.to_string().contains("recursion limit") => None,
        Err(e) if e.to_string().contains("number out of range") => None,
        Err(e) if !strict() && e.to_string().contains("hex escape") => None,
        Err(e) => panic!("invalid JSON ({e}): {:?}", String::from_utf8_lossy(json)),
    }
}

// ---------------------------------------------------------------------------
// mask: every implementation agrees with the scalar reference.

type MaskFn = fn(&mut [u8], [u8; 4], usize);

/// Input: `[key: 4][offset][align][split][bytes]`.
pub fn mask(data: &[u8]) {
    let mut r = Reader::new(data);
    let key = [r.byte(), r.byte(), r.byte(), r.byte()];
    let offset = r.byte() as usize;
    let align = (r.byte() & 31) as usize;
    let split = r.byte() as usize;
    let input = r.rest();

    let mut want = input.to_vec();
    mask::apply_mask_scalar(&mut want, key, offset);
    let impls: [(&str, MaskFn); 5] = [
        ("word", mask::apply_mask_word),
        ("portable", mask::apply_mask_portable),
        ("sse2", mask::apply_mask_sse2),
        ("avx2", mask::apply_mask_avx2),
        ("apply_mask", mask::apply_mask),
    ];
    let mut padded = vec![0u8; align + input.len()];
    for (name, f) in impls {
        // At a chosen misalignment, so the aligned/unaligned split moves.
        let buf = &mut padded[align..];
        buf.copy_from_slice(input);
        f(buf, key, offset);
        assert_eq!(buf, &want[..], "{name} (align {align}, offset {offset})");
        // In two pieces, the second continuing the key phase.
        let s = split.min(input.len());
        buf.copy_from_slice(input);
        let (a, b) = buf.split_at_mut(s);
        f(a, key, offset);
        f(b, key, offset + s);
        assert_eq!(buf, &want[..], "{name} split at {s}");
        // XOR is its own inverse.
        f(buf, key, offset);
        assert_eq!(&buf[..], input, "{name} twice");
    }
}

// ---------------------------------------------------------------------------
// chunked: ChunkedDecoder fed in pieces.

/// Input: `[limit][chunk plan][body bytes]`; the body limit is `limit * 8`
/// bytes (0..=2040).
///
/// Checks: the same outcome whether the input arrives at once or in
/// pieces (data, bytes consumed, done, error); never more data than the
/// limit nor than the sizes announced; a finished body stops exactly at
/// its end (the rest is the next request); errors are 400 or 413 and
/// final; a decoded body encodes and decodes back to itself.
pub fn chunked(data: &[u8]) {
    let mut r = Reader::new(data);
    let limit = r.byte() as usize * 8;
    let sizes = r.plan();
    let input = r.rest();

    let mut d = ChunkedDecoder::new(limit);
    let mut whole = Vec::new();
    let whole_result = d.decode(input, &mut whole);

    let mut p = ChunkedDecoder::new(limit);
    let mut out = Vec::new();
    let mut used = 0;
    let mut result = Ok(0);
    for piece in chunks(sizes, input) {
        result = p.decode(piece, &mut out);
        match result {
            Ok(n) => {
                assert!(n <= piece.len());
                used += n;
                assert!(n == piece.len() || p.is_done(), "stopped early, not done");
            }
            Err(_) => break,
        }
        if p.is_done() {
            break;
        }
    }

    match whole_result {
        Ok(n) => {
            assert!(
                result.is_ok(),
                "pieces failed where one shot did not: {result:?}"
            );
            assert_eq!(out, whole, "data depends on read boundaries");
            assert_eq!(used, n, "consumed bytes depend on read boundaries");
            assert_eq!(p.is_done(), d.is_done());
            assert!(n <= input.len());
            if !d.is_done() {
                assert_eq!(n, input.len(), "not done, yet input left");
            }
            assert!(whole.len() as u64 <= d.body_len());
            assert!(d.body_len() <= limit as u64, "over the limit");
            if d.is_done() {
                assert_eq!(whole.len() as u64, d.body_len());
                // Nothing more is consumed once done.
                assert_eq!(d.decode(b"0\r\n\r\n", &mut Vec::new()), Ok(0));
                // Round trip.
                let mut again = Vec::new();
                chunked::encode(
                    &whole,
                    sizes
                        .iter()
                        .map(|&s| s as usize)
                        .collect::<Vec<_>>()
                        .as_slice(),
                    &mut again,
                );
                let mut e = ChunkedDecoder::new(limit);
                let mut back = Vec::new();
                assert_eq!(e.decode(&again, &mut back), Ok(again.len()));
                assert!(e.is_done());
                assert_eq!(back, whole);
            }
        }
        Err(e) => {
            assert_eq!(result, Err(e), "pieces and one shot disagree on the error");
            assert!(
                matches!(e, HttpError::BadChunk | HttpError::PayloadTooLarge),
                "{e:?}"
            );
            check_http_error(e);
            // Errors are final.
            assert_eq!(d.decode(b"0\r\n\r\n", &mut Vec::new()), Err(e));
            assert!(whole.len() <= limit);
        }
    }
}
