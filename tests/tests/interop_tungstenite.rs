//! Interoperability with an independent client: tokio-tungstenite talks to
//! the real broker's `/echo` endpoint.
//!
//! tungstenite checks `Sec-WebSocket-Accept` itself, so every successful
//! connect also proves the handshake. Every network step is bounded by
//! [`STEP`] and every test by [`TEST`].

use std::future::Future;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use ringcast_e2e::Broker;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

/// Bound on one connect, send or receive.
const STEP: Duration = Duration::from_secs(10);
/// Bound on one whole test (after the broker has started).
const TEST: Duration = Duration::from_secs(60);

/// The sizes every round trip is tried at: the payload-length encoding
/// boundaries (7-bit, 16-bit, 64-bit) and a large message.
const SIZES: [usize; 8] = [0, 1, 125, 126, 127, 65_535, 65_536, 1 << 20];

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connected client, split so a large message can be sent while its echo
/// is already being read (the broker applies back-pressure, so sending a
/// 1 MiB message without reading could stall on small socket buffers).
struct Client {
    tx: SplitSink<Ws, Message>,
    rx: SplitStream<Ws>,
}

/// Runs `fut` within [`TEST`], failing the test with `what` otherwise.
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(TEST, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within {TEST:?}"))
}

async fn connect(url: &str) -> Client {
    let (ws, resp) = match timeout(STEP, connect_async(url)).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => panic!("connect to {url} failed: {e}"),
        Err(_) => panic!("connect to {url} timed out"),
    };
    assert_eq!(resp.status(), 101, "upgrade status");
    let (tx, rx) = ws.split();
    Client { tx, rx }
}

impl Client {
    async fn send(&mut self, msg: Message) {
        timeout(STEP, self.tx.send(msg))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// Queues a message without flushing (for pipelining).
    async fn feed(&mut self, msg: Message) {
        timeout(STEP, self.tx.feed(msg))
            .await
            .expect("feed timed out")
            .expect("feed failed");
    }

    async fn flush(&mut self) {
        timeout(STEP, self.tx.flush())
            .await
            .expect("flush timed out")
            .expect("flush failed");
    }

    /// The next message other than a keep-alive ping from the broker
    /// (tungstenite answers those itself). `None`: the stream ended.
    async fn recv(&mut self) -> Option<Message> {
        loop {
            let next = timeout(STEP, self.rx.next())
                .await
                .expect("no message from the broker within the step timeout");
            match next {
                None => return None,
                Some(Ok(Message::Ping(_))) => continue,
                Some(Ok(m)) => return Some(m),
                Some(Err(e)) => panic!("receive failed: {e}"),
            }
        }
    }

    async fn recv_some(&mut self) -> Message {
        self.recv()
            .await
            .expect("the broker ended the stream unexpectedly")
    }

    /// Sends `msg` and reads its echo concurrently.
    async fn round_trip(&mut self, msg: Message) -> Message {
        let Client { tx, rx } = self;
        let send = async {
            timeout(STEP, tx.send(msg))
                .await
                .expect("send timed out")
                .expect("send failed");
        };
        let recv = async {
            loop {
                match timeout(STEP, rx.next()).await.expect("echo timed out") {
                    Some(Ok(Message::Ping(_))) => continue,
                    Some(Ok(m)) => return m,
                    Some(Err(e)) => panic!("receive failed: {e}"),
                    None => panic!("stream ended before the echo"),
                }
            }
        };
        tokio::join!(send, recv).1
    }

    fn into_inner(self) -> Ws {
        self.tx.reunite(self.rx).expect("halves of one stream")
    }
}

/// Valid UTF-8 of exactly `n` bytes mixing 1-, 2-, 3- and 4-byte characters.
fn text_of_len(n: usize) -> String {
    let mut s = String::with_capacity(n);
    for c in "aé€𝄞z".chars().cycle() {
        if s.len() + c.len_utf8() > n {
            break;
        }
        s.push(c);
    }
    while s.len() < n {
        s.push('x');
    }
    s
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Short description of a message for assertion failures (no 1 MiB dumps).
fn describe(m: &Message) -> String {
    match m {
        Message::Text(t) => format!("Text({} bytes)", t.len()),
        Message::Binary(b) => format!("Binary({} bytes)", b.len()),
        other => format!("{other:?}"),
    }
}

fn assert_echo(sent: &Message, got: &Message) {
    assert!(
        sent == got,
        "echo differs: sent {}, got {}",
        describe(sent),
        describe(got)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_round_trips_at_boundary_sizes() {
    let broker = Broker::start(&["--shards", "2"]);
    bounded("text round trips", async {
        let mut c = connect(&broker.url("/echo")).await;
        for n in SIZES {
            let msg = Message::Text(text_of_len(n));
            let got = c.round_trip(msg.clone()).await;
            assert_echo(&msg, &got);
        }
        let msg = Message::Text("héllo wörld — 你好 🌍".to_string());
        assert_echo(&msg, &c.round_trip(msg.clone()).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_round_trips_at_boundary_sizes() {
    let broker = Broker::start(&["--shards", "2"]);
    bounded("binary round trips", async {
        let mut c = connect(&broker.url("/echo")).await;
        for (i, n) in SIZES.into_iter().enumerate() {
            let msg = Message::Binary(random_bytes(n, i as u64));
            let got = c.round_trip(msg.clone()).await;
            assert_echo(&msg, &got);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_messages_echo_in_order() {
    let broker = Broker::start(&["--shards", "2"]);
    bounded("pipelined echo", async {
        let mut c = connect(&broker.url("/echo")).await;
        let msgs: Vec<Message> = (0..200u32)
            .map(|i| {
                if i % 2 == 0 {
                    Message::Text(format!("msg {i} {}", "é".repeat(i as usize)))
                } else {
                    Message::Binary(random_bytes(i as usize * 37, u64::from(i)))
                }
            })
            .collect();
        // All 200 go out before a single echo is read (~370 KiB in total,
        // within loopback socket buffers and the broker's outbox).
        for m in &msgs {
            c.feed(m.clone()).await;
        }
        c.flush().await;
        for (i, m) in msgs.iter().enumerate() {
            let got = c.recv_some().await;
            assert!(
                &got == m,
                "echo #{i} out of order or altered: sent {}, got {}",
                describe(m),
                describe(&got)
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_message_echoes_as_one_frame_message() {
    let broker = Broker::start(&["--shards", "1"]);
    bounded("fragmented echo", async {
        let mut c = connect(&broker.url("/echo")).await;
        // "frag" + "mented" + " ✓" as three raw frames, with a ping in the
        // middle (control frames may be interleaved with fragments).
        let parts: [&[u8]; 3] = [b"frag", b"mented", " ✓".as_bytes()];
        c.feed(Message::Frame(Frame::message(
            parts[0].to_vec(),
            OpCode::Data(Data::Text),
            false,
        )))
        .await;
        c.feed(Message::Ping(b"mid".to_vec())).await;
        c.feed(Message::Frame(Frame::message(
            parts[1].to_vec(),
            OpCode::Data(Data::Continue),
            false,
        )))
        .await;
        c.feed(Message::Frame(Frame::message(
            parts[2].to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )))
        .await;
        c.flush().await;
        assert_eq!(c.recv_some().await, Message::Pong(b"mid".to_vec()));
        assert_eq!(c.recv_some().await, Message::Text("fragmented ✓".into()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_answered_with_same_payload() {
    let broker = Broker::start(&["--shards", "1"]);
    bounded("ping/pong", async {
        let mut c = connect(&broker.url("/echo")).await;
        for payload in [Vec::new(), b"p".to_vec(), random_bytes(125, 7)] {
            c.send(Message::Ping(payload.clone())).await;
            assert_eq!(c.recv_some().await, Message::Pong(payload));
        }
        // Still echoing afterwards.
        let msg = Message::Text("after pings".into());
        assert_echo(&msg, &c.round_trip(msg.clone()).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_handshake_completes_and_stream_ends() {
    let broker = Broker::start(&["--shards", "1"]);
    bounded("close handshake", async {
        let mut c = connect(&broker.url("/echo")).await;
        let msg = Message::Text("before close".into());
        assert_echo(&msg, &c.round_trip(msg.clone()).await);

        c.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await;
        match c.recv().await {
            Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Normal, "{f:?}"),
            other => panic!("expected the broker's close reply, got {other:?}"),
        }
        // A tungstenite client reports the end of the stream only once the
        // server has closed the TCP connection (RFC 6455 section 7.1.1).
        assert!(c.recv().await.is_none(), "stream must end after the close");

        // And the socket underneath is at EOF.
        let mut ws = c.into_inner();
        let MaybeTlsStream::Plain(tcp) = ws.get_mut() else {
            panic!("plain TCP expected");
        };
        let mut buf = [0u8; 64];
        let n = timeout(STEP, tcp.read(&mut buf))
            .await
            .expect("broker did not close the TCP connection")
            .unwrap_or(0);
        assert_eq!(n, 0, "bytes after the close handshake");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections_each_get_their_own_echoes() {
    const CONNS: usize = 200;
    const PER_CONN: usize = 10;
    let broker = Broker::start(&["--shards", "2"]);
    let url = broker.url("/echo");
    bounded("concurrent echo", async {
        // Connect everyone first so all 200 are open at once.
        let mut clients = Vec::with_capacity(CONNS);
        for _ in 0..CONNS {
            clients.push(connect(&url).await);
        }
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(id, mut c)| {
                tokio::spawn(async move {
                    for j in 0..PER_CONN {
                        let msg = if j % 2 == 0 {
                            Message::Text(format!("conn {id} msg {j}"))
                        } else {
                            let mut b = random_bytes(64 + j * 100, (id * PER_CONN + j) as u64);
                            b[..8].copy_from_slice(&(id as u64).to_be_bytes());
                            Message::Binary(b)
                        };
                        let got = c.round_trip(msg.clone()).await;
                        assert!(
                            got == msg,
                            "conn {id} msg {j}: got {} instead of its own echo",
                            describe(&got)
                        );
                    }
                    c.send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    })))
                    .await;
                    match c.recv().await {
                        Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Normal),
                        other => panic!("conn {id}: expected close reply, got {other:?}"),
                    }
                    assert!(c.recv().await.is_none(), "conn {id}: stream must end");
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("connection task panicked");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_gets_close_1009() {
    let broker = Broker::start(&[
        "--shards",
        "1",
        "--max-frame-size",
        "1KiB",
        "--max-message-size",
        "1KiB",
    ]);
    bounded("close 1009", async {
        let mut c = connect(&broker.url("/echo")).await;
        let ok = Message::Binary(random_bytes(1024, 1));
        assert_echo(&ok, &c.round_trip(ok.clone()).await);

        c.send(Message::Binary(random_bytes(1025, 2))).await;
        match c.recv().await {
            Some(Message::Close(Some(f))) => {
                assert_eq!(f.code, CloseCode::Size, "{f:?}");
                assert_eq!(u16::from(f.code), 1009);
            }
            other => panic!("expected close 1009, got {other:?}"),
        }
        // tungstenite replies to the close; the broker then ends the TCP
        // connection and the stream finishes.
        assert!(c.recv().await.is_none(), "stream must end after close 1009");
    })
    .await;
}
