//! A peer server for side-by-side measurements (issue 12): the `/ws`
//! pub/sub subset of ringcast's wire contract (docs/protocol.md) on tokio +
//! tokio-tungstenite, written the way a user of those crates would: one
//! single-threaded runtime ("one shard on one core"), a task per connection
//! reading commands and one writing what its channel brings, and per topic
//! a map of subscribers' channels. A published `message` is encoded once;
//! every subscriber's channel gets a clone of the same `Message` (its text
//! is `Bytes`-backed, so a clone is a reference count).
//!
//! ```text
//! tungstenite-peer PORT [--read-buffer BYTES]
//! ```
//!
//! listens on 127.0.0.1:PORT; `GET /ws` is the WebSocket. There is no
//! `/healthz`: tungstenite's handshake refuses a request without upgrade
//! headers before the application sees it, and peeking at every new
//! connection for one would add a system call to each handshake measured.
//! The bench script waits for the port to accept instead. See
//! bench/peers/README.md for the subset of the protocol.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

/// Messages a connection may have queued before it counts as a slow
/// consumer and is closed (1008, as ringcast does), instead of letting its
/// queue grow without bound.
const QUEUE: usize = 4096;

/// A connection as the topics see it: its writer's queue, and how to stop
/// it when it falls behind.
struct Peer {
    tx: mpsc::Sender<Message>,
    slow: Rc<Notify>,
}

#[derive(Default)]
struct Topic {
    /// The last seq assigned (no history is kept).
    seq: u64,
    subs: HashMap<u64, Rc<Peer>>,
}

struct State {
    epoch: String,
    topics: HashMap<String, Topic>,
    next_conn: u64,
}

type Shared = Rc<RefCell<State>>;

#[derive(Deserialize)]
struct Command<'a> {
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: tungstenite-peer PORT [--read-buffer BYTES] (listens on 127.0.0.1:PORT)";
    let port: u16 = args
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| exit(usage));
    // tungstenite allocates this much per connection up front (its default
    // is 128 KiB); its documentation suggests 4 KiB for many connections.
    let mut read_buffer = 4096;
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--read-buffer", Some(n)) => read_buffer = n,
            _ => exit(usage),
        }
    }
    let mut config = WebSocketConfig::default().read_buffer_size(read_buffer);
    // ringcast's --max-message-size and --max-frame-size.
    config.max_message_size = Some(16 << 20);
    config.max_frame_size = Some(16 << 20);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| exit(&format!("cannot listen on 127.0.0.1:{port}: {e}")));
        eprintln!("tungstenite-peer: listening on 127.0.0.1:{port}");
        let state: Shared = Rc::new(RefCell::new(State {
            epoch: format!("{:016x}", random_u64()),
            topics: HashMap::new(),
            next_conn: 0,
        }));
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: keep serving the others.
                    eprintln!("tungstenite-peer: accept: {e}");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            tokio::task::spawn_local(connection(tcp, state.clone(), config));
        }
    });
}

fn exit(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(2)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// `GET /ws` is upgraded; anything else is 404.
#[allow(clippy::result_large_err)]
fn route(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() == "/ws" {
        return Ok(resp);
    }
    let mut r = ErrorResponse::new(Some("not found".into()));
    *r.status_mut() = StatusCode::NOT_FOUND;
    Err(r)
}

async fn connection(tcp: TcpStream, state: Shared, config: WebSocketConfig) {
    let ws = match tokio_tungstenite::accept_hdr_async_with_config(tcp, route, Some(config)).await {
        Ok(ws) => ws,
        Err(_) => return,
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    let slow = Rc::new(Notify::new());
    let peer = Rc::new(Peer {
        tx,
        slow: slow.clone(),
    });
    let conn = {
        let mut st = state.borrow_mut();
        st.next_conn += 1;
        st.next_conn
    };

    // The writer: everything queued for this connection (replies and
    // deliveries, in order), written in batches with one flush each.
    let writer = tokio::task::spawn_local(async move {
        let mut batch = Vec::with_capacity(64);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, 64) => if n == 0 { break },
                _ = slow.notified() => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Policy,
                            reason: "slow consumer".into(),
                        })))
                        .await;
                    return;
                }
            }
            for m in batch.drain(..) {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        // The reader is done: this connection is over.
        let _ = sink.close().await;
    });

    let mut subscribed: Vec<String> = Vec::new();
    while let Some(frame) = stream.next().await {
        let reply = match frame {
            Ok(Message::Text(text)) => command(&state, conn, &peer, &mut subscribed, text.as_str()),
            Ok(Message::Binary(_)) => {
                Some(error("bad_json", "binary messages are not commands", None))
            }
            Ok(Message::Close(_)) | Err(_) => break,
            // Pings are answered by tungstenite itself.
            Ok(_) => None,
        };
        if let Some(r) = reply {
            if !queue(&peer, Message::text(r)) {
                break;
            }
        }
    }

    {
        let mut st = state.borrow_mut();
        for t in &subscribed {
            if let Some(topic) = st.topics.get_mut(t) {
                topic.subs.remove(&conn);
            }
        }
    }
    drop(peer);
    let _ = writer.await;
}

/// Queues `m` for a connection; false if it is gone or too slow (its queue
/// is full: its writer sends close 1008 and stops).
fn queue(peer: &Peer, m: Message) -> bool {
    match peer.tx.try_send(m) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            peer.slow.notify_one();
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// Handles one command; returns the reply to send, if any.
fn command(
    state: &Shared,
    conn: u64,
    peer: &Rc<Peer>,
    subscribed: &mut Vec<String>,
    text: &str,
) -> Option<String> {
    let cmd: Command = match serde_json::from_str(text) {
        Ok(c) => c,
        Err(e) if e.is_data() => return Some(error("bad_request", &e.to_string(), None)),
        Err(e) => return Some(error("bad_json", &e.to_string(), None)),
    };
    let id = cmd.id.map(RawValue::get);
    let Some(op) = cmd.op.as_deref() else {
        return Some(error("bad_request", "missing string field `op`", id));
    };
    if !matches!(op, "subscribe" | "unsubscribe" | "publish") {
        return Some(error("unknown_op", "unknown op", id));
    }
    let Some(topic) = cmd.topic.as_deref() else {
        return Some(error("bad_request", "missing string field `topic`", id));
    };
    if let Err(why) = validate_topic(topic) {
        return Some(error("bad_topic", why, id));
    }
    let mut st = state.borrow_mut();
    match op {
        "subscribe" => {
            let t = st.topics.entry(topic.to_string()).or_default();
            if t.subs.insert(conn, peer.clone()).is_none() {
                subscribed.push(topic.to_string());
            }
            Some(with_id(
                format!(
                    r#"{{"op":"subscribed","topic":"{topic}","epoch":"{}""#,
                    st.epoch
                ),
                id,
            ))
        }
        "unsubscribe" => {
            if let Some(t) = st.topics.get_mut(topic) {
                t.subs.remove(&conn);
            }
            subscribed.retain(|t| t != topic);
            Some(with_id(
                format!(r#"{{"op":"unsubscribed","topic":"{topic}""#),
                id,
            ))
        }
        _ => {
            let Some(data) = cmd.data else {
                return Some(error("bad_request", "missing field `data`", id));
            };
            let t = st.topics.entry(topic.to_string()).or_default();
            t.seq += 1;
            let seq = t.seq;
            // Encoded once; each subscriber gets a clone of the same bytes.
            let msg = Message::text(format!(
                r#"{{"op":"message","topic":"{topic}","seq":{seq},"data":{}}}"#,
                data.get()
            ));
            let mut slow = Vec::new();
            for (&c, sub) in &t.subs {
                if !queue(sub, msg.clone()) {
                    slow.push(c);
                }
            }
            for c in slow {
                t.subs.remove(&c);
            }
            id.map(|id| format!(r#"{{"op":"published","topic":"{topic}","seq":{seq},"id":{id}}}"#))
        }
    }
}

fn with_id(mut head: String, id: Option<&str>) -> String {
    if let Some(id) = id {
        head.push_str(r#","id":"#);
        head.push_str(id);
    }
    head.push('}');
    head
}

fn error(code: &str, message: &str, id: Option<&str>) -> String {
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"\"".into());
    with_id(
        format!(r#"{{"op":"error","code":"{code}","message":{message}"#),
        id,
    )
}

/// ringcast's topic rules: `[A-Za-z0-9_.:-]`, 1 to 255 bytes, no empty
/// dot-separated segment. Such a name needs no JSON escaping.
fn validate_topic(t: &str) -> Result<(), &'static str> {
    if t.is_empty() {
        return Err("topic is empty");
    }
    if t.len() > 255 {
        return Err("topic is longer than 255 bytes");
    }
    if !t
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-'))
    {
        return Err("topic may only contain A-Z a-z 0-9 _ . : -");
    }
    if t.split('.').any(str::is_empty) {
        return Err("topic has an empty dot-separated segment");
    }
    Ok(())
}
