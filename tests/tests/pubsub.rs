//! End-to-end pub/sub: `GET /ws` commands and `POST /publish/{topic}`
//! against the real broker.
//!
//! Every broker runs with `--shards 4`, so the cross-shard paths (topic
//! owner, publisher and subscriber on different shards) run even on a
//! 2-core machine. Which shard a connection lands on is the kernel's choice
//! (SO_REUSEPORT), so cross-shard coverage is statistical: the tests open
//! enough connections that same-shard and cross-shard pairs both occur.
//!
//! Synchronisation is always on an observable event (a reply, a message, a
//! published seq), never a sleep. Every network step is bounded by [`STEP`]
//! and every test by [`TEST`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use ringcast_e2e::{Broker, HttpConn};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Barrier};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

/// Bound on one connect, send or receive.
const STEP: Duration = Duration::from_secs(10);
/// Bound on one whole test (after the broker has started).
const TEST: Duration = Duration::from_secs(60);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A broker with 4 shards and `extra` flags.
fn start(extra: &[&str]) -> Broker {
    let mut args = vec!["--shards", "4"];
    args.extend_from_slice(extra);
    Broker::start(&args)
}

/// Runs `fut` within [`TEST`], failing the test with `what` otherwise.
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(TEST, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within {TEST:?}"))
}

/// Awaits a spawned task, re-raising its panic with its own message.
async fn join<T>(task: tokio::task::JoinHandle<T>) -> T {
    match task.await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task failed: {e}"),
    }
}

/// One server → client message: its text and its parsed JSON.
#[derive(Debug, Clone)]
struct Reply {
    text: String,
    v: Value,
}

impl Reply {
    fn parse(text: String) -> Reply {
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {text}"));
        Reply { text, v }
    }

    fn op(&self) -> &str {
        self.v["op"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"op\" in {}", self.text))
    }

    fn topic(&self) -> &str {
        self.v["topic"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"topic\" in {}", self.text))
    }

    fn num(&self, field: &str) -> u64 {
        self.v[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no integer \"{field}\" in {}", self.text))
    }

    fn seq(&self) -> u64 {
        self.num("seq")
    }

    /// `data` exactly as the server wrote it (not re-serialised).
    fn data(&self) -> String {
        let fields: BTreeMap<String, Box<RawValue>> = serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {}", self.text));
        fields
            .get("data")
            .unwrap_or_else(|| panic!("no \"data\" in {}", self.text))
            .get()
            .to_string()
    }

    /// Asserts `op` and `topic`.
    fn expect(&self, op: &str, topic: &str) -> &Self {
        assert!(
            self.v["op"] == op && self.v["topic"] == topic,
            "expected {op} on {topic}, got {}",
            self.text
        );
        self
    }

    fn expect_id(&self, id: &Value) -> &Self {
        assert_eq!(&self.v["id"], id, "id not echoed in {}", self.text);
        self
    }

    /// Asserts this is message `seq` on `topic` carrying exactly `data`.
    fn expect_message(&self, topic: &str, seq: u64, data: &str) {
        self.expect("message", topic);
        assert_eq!(self.seq(), seq, "wrong seq in {}", self.text);
        assert_eq!(self.data(), data, "data altered in {}", self.text);
    }
}

/// The next text message on `rx` (keep-alive pings are skipped); anything
/// else fails the test.
async fn recv_from(rx: &mut SplitStream<Ws>) -> Reply {
    loop {
        let next = timeout(STEP, rx.next())
            .await
            .expect("nothing from the broker within the step timeout");
        match next {
            Some(Ok(Message::Text(t))) => return Reply::parse(t),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("expected a text message, got {other:?}"),
            Some(Err(e)) => panic!("receive failed: {e}"),
            None => panic!("the broker ended the stream"),
        }
    }
}

/// A connected `/ws` client, split so that sending and receiving can
/// proceed together.
struct Client {
    tx: SplitSink<Ws, Message>,
    rx: SplitStream<Ws>,
}

impl Client {
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

    async fn send_msg(&mut self, msg: Message) {
        timeout(STEP, self.tx.send(msg))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    async fn send(&mut self, text: impl Into<String>) {
        self.send_msg(Message::Text(text.into())).await
    }

    /// Queues without flushing (pipelining); see [`Client::flush`].
    async fn feed(&mut self, text: impl Into<String>) {
        timeout(STEP, self.tx.feed(Message::Text(text.into())))
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

    /// The next text message (keep-alive pings are skipped); anything else
    /// fails the test.
    async fn recv(&mut self) -> Reply {
        recv_from(&mut self.rx).await
    }

    /// Subscribes (optionally with `since`) and expects `subscribed` as the
    /// very next message.
    async fn subscribe(&mut self, topic: &str, since: Option<u64>) {
        let since = since.map_or(String::new(), |s| format!(",\"since\":{s}"));
        self.send(format!(
            r#"{{"op":"subscribe","topic":"{topic}"{since},"id":"s:{topic}"}}"#
        ))
        .await;
        self.recv()
            .await
            .expect("subscribed", topic)
            .expect_id(&json!(format!("s:{topic}")));
    }

    /// Publishes with an id and returns the seq from the `published`
    /// reply, which must be the next message (so only on connections that
    /// receive nothing else meanwhile).
    async fn publish(&mut self, topic: &str, data: &str) -> u64 {
        self.send(format!(
            r#"{{"op":"publish","topic":"{topic}","data":{data},"id":"p:{topic}"}}"#
        ))
        .await;
        let r = self.recv().await;
        r.expect("published", topic)
            .expect_id(&json!(format!("p:{topic}")));
        r.seq()
    }

    async fn close(mut self) {
        self.send_msg(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    }
}

/// `POST /publish/{topic}` for every body on one keep-alive connection, on a
/// blocking thread; returns the seqs from the `200 {"seq":N}` replies.
async fn http_publish_all(addr: SocketAddr, topic: String, bodies: Vec<String>) -> Vec<u64> {
    join(tokio::task::spawn_blocking(move || {
        let mut http = HttpConn::connect(addr);
        bodies
            .iter()
            .map(|b| http_seq(&http.post(&format!("/publish/{topic}"), b.as_bytes())))
            .collect()
    }))
    .await
}

/// The seq of a successful HTTP publish.
fn http_seq(resp: &ringcast_e2e::HttpResponse) -> u64 {
    assert_eq!(resp.status, 200, "publish failed: {}", resp.body_text());
    let v = resp.json();
    assert_eq!(
        v.as_object().map(|o| o.len()),
        Some(1),
        "body must be {{\"seq\":N}}: {}",
        resp.body_text()
    );
    v["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq in {}", resp.body_text()))
}

/// A WebSocket publish's `data`: odd whitespace, number formats and escapes
/// that any re-serialisation would change.
fn ws_data(t: usize, n: usize) -> String {
    format!(
        "{{ \"via\" : \"ws\",\t\"t\":{t} ,\"n\":{n},\n \"num\":[1.50e+2, -0.0 ,1E-7 ,\
         12345678901234567890123, 0.1000],\"s\":\"tab\\t \\u00e9 é 😀 \\\"q\\\" \\/\"  }}"
    )
}

/// An HTTP publish's body: an array this time, same spirit.
fn http_data(t: usize, n: usize) -> String {
    format!("[ {{\"via\":\"http\" , \"t\" :{t},\"n\":  {n}}} ,\r\n 3.0E+00 , true,null , \"\\ud83d\\ude00\",{{}} ,[ ] ]")
}

// ---- fan-out --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_subscribers_get_every_message_in_order_from_ws_and_http_publishers() {
    const TOPICS: usize = 50;
    const SUBS_PER_TOPIC: usize = 20;
    /// WebSocket publishers, and as many HTTP publishers: each topic has one
    /// of each, publishing concurrently.
    const PUBLISHERS: usize = 5;
    const PER_PUBLISHER_AND_TOPIC: usize = 20;
    const PER_TOPIC: usize = 2 * PER_PUBLISHER_AND_TOPIC;
    let broker = start(&[]);
    let url = broker.url("/ws");
    let addr = broker.addr;
    let topic = |t: usize| format!("fan.t{t}");
    bounded("fan-out", async {
        // 1,000 subscriptions (20 per topic) on 750 connections: 500 with
        // one topic, 250 with two.
        let total = TOPICS * SUBS_PER_TOPIC;
        let mut plan: Vec<Vec<usize>> = (0..total / 2).map(|s| vec![s % TOPICS]).collect();
        plan.extend(
            (total / 2..total)
                .step_by(2)
                .map(|s| vec![s % TOPICS, (s + 1) % TOPICS]),
        );
        let conns = plan.len();
        let (ready_tx, mut ready_rx) = mpsc::channel::<()>(conns);
        let subscribers: Vec<_> = plan
            .into_iter()
            .enumerate()
            .map(|(i, topics)| {
                let url = url.clone();
                let ready = ready_tx.clone();
                tokio::spawn(async move {
                    let mut c = Client::connect(&url).await;
                    for &t in &topics {
                        c.feed(format!(
                            r#"{{"op":"subscribe","topic":"fan.t{t}","id":{t}}}"#
                        ))
                        .await;
                    }
                    c.flush().await;
                    let mut got: HashMap<String, Vec<String>> = HashMap::new();
                    for _ in &topics {
                        let r = c.recv().await;
                        assert_eq!(r.op(), "subscribed", "conn {i}: {}", r.text);
                        let t = r.topic().to_string();
                        assert_eq!(r.v["id"], json!(t["fan.t".len()..].parse::<u64>().unwrap()));
                        assert!(got.insert(t, Vec::new()).is_none(), "conn {i}: twice");
                    }
                    ready.send(()).await.unwrap();
                    for _ in 0..topics.len() * PER_TOPIC {
                        let r = c.recv().await;
                        assert_eq!(r.op(), "message", "conn {i}: {}", r.text);
                        let seen = got
                            .get_mut(r.topic())
                            .unwrap_or_else(|| panic!("conn {i}: not subscribed: {}", r.text));
                        assert_eq!(
                            r.seq(),
                            seen.len() as u64 + 1,
                            "conn {i}: gap, duplicate or reordering on {}",
                            r.topic()
                        );
                        seen.push(r.data());
                    }
                    c.close().await;
                    got
                })
            })
            .collect();
        drop(ready_tx);
        for _ in 0..conns {
            ready_rx
                .recv()
                .await
                .expect("a subscriber failed before it was subscribed");
        }

        // Everyone is subscribed: publish over WebSocket and HTTP at once.
        let ws_publishers: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let url = url.clone();
                tokio::spawn(async move {
                    let mut c = Client::connect(&url).await;
                    let mine: Vec<usize> = (0..TOPICS).filter(|t| t % PUBLISHERS == p).collect();
                    for n in 0..PER_PUBLISHER_AND_TOPIC {
                        for &t in &mine {
                            let id = t * 1000 + n;
                            c.feed(format!(
                                r#"{{"op":"publish","topic":"fan.t{t}","data":  {} ,"id":{id}}}"#,
                                ws_data(t, n)
                            ))
                            .await;
                        }
                    }
                    c.flush().await;
                    let mut out = Vec::new();
                    for _ in 0..mine.len() * PER_PUBLISHER_AND_TOPIC {
                        let r = c.recv().await;
                        assert_eq!(r.op(), "published", "{}", r.text);
                        let id = r.num("id") as usize;
                        let (t, n) = (id / 1000, id % 1000);
                        assert_eq!(r.topic(), format!("fan.t{t}"));
                        out.push((t, r.seq(), ws_data(t, n)));
                    }
                    out
                })
            })
            .collect();
        let http_publishers: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                tokio::task::spawn_blocking(move || {
                    let mut http = HttpConn::connect(addr);
                    let mine: Vec<usize> = (0..TOPICS).filter(|t| t % PUBLISHERS == p).collect();
                    let mut out = Vec::new();
                    for n in 0..PER_PUBLISHER_AND_TOPIC {
                        for &t in &mine {
                            let body = http_data(t, n);
                            let resp = http.post(&format!("/publish/fan.t{t}"), body.as_bytes());
                            out.push((t, http_seq(&resp), body));
                        }
                    }
                    out
                })
            })
            .collect();
        let mut expected: Vec<Vec<Option<String>>> = vec![vec![None; PER_TOPIC]; TOPICS];
        let mut published = Vec::new();
        for p in ws_publishers {
            published.extend(join(p).await);
        }
        for p in http_publishers {
            published.extend(join(p).await);
        }
        for (t, seq, data) in published {
            assert!(
                (1..=PER_TOPIC as u64).contains(&seq),
                "{}: seq {seq} outside 1..={PER_TOPIC}",
                topic(t)
            );
            let slot = &mut expected[t][seq as usize - 1];
            assert!(slot.is_none(), "{}: seq {seq} assigned twice", topic(t));
            *slot = Some(data);
        }
        let expected: HashMap<String, Vec<String>> = expected
            .into_iter()
            .enumerate()
            .map(|(t, v)| (topic(t), v.into_iter().map(Option::unwrap).collect()))
            .collect();

        let mut deliveries = 0;
        for (i, s) in subscribers.into_iter().enumerate() {
            for (t, got) in join(s).await {
                let want = &expected[&t];
                if let Some(k) = (0..PER_TOPIC).find(|&k| got[k] != want[k]) {
                    panic!(
                        "conn {i}, {t}, seq {}: got data {:?}, published {:?}",
                        k + 1,
                        got[k],
                        want[k]
                    );
                }
                deliveries += got.len();
            }
        }
        assert_eq!(deliveries, TOPICS * SUBS_PER_TOPIC * PER_TOPIC);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publisher_reaches_every_subscriber_across_shards() {
    // 64 connections each subscribe to 4 topics and publish to all of
    // them: 64 x 64 publisher/subscriber pairs per topic, spread over 4
    // shards by the kernel, so same-shard and cross-shard pairs (and
    // owners on a third shard) all occur.
    const CONNS: usize = 64;
    const TOPICS: usize = 4;
    const EACH: usize = 5;
    let broker = start(&[]);
    let url = broker.url("/ws");
    bounded("all pairs", async {
        let barrier = Arc::new(Barrier::new(CONNS));
        let tasks: Vec<_> = (0..CONNS)
            .map(|me| {
                let url = url.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let mut c = Client::connect(&url).await;
                    for t in 0..TOPICS {
                        c.subscribe(&format!("pair.{t}"), None).await;
                    }
                    barrier.wait().await;
                    for k in 0..EACH {
                        for t in 0..TOPICS {
                            c.feed(format!(
                                r#"{{"op":"publish","topic":"pair.{t}","data":{{"from":{me},"k":{k}}}}}"#
                            ))
                            .await;
                        }
                    }
                    c.flush().await;
                    // next[t][from]: the k expected next from that sender.
                    let mut next = vec![vec![0usize; CONNS]; TOPICS];
                    let mut seqs = [0u64; TOPICS];
                    for _ in 0..TOPICS * CONNS * EACH {
                        let r = c.recv().await;
                        assert_eq!(r.op(), "message", "conn {me}: {}", r.text);
                        let t: usize = r.topic()["pair.".len()..].parse().unwrap();
                        seqs[t] += 1;
                        assert_eq!(r.seq(), seqs[t], "conn {me}: gap or reordering on pair.{t}");
                        let from = r.v["data"]["from"].as_u64().unwrap() as usize;
                        let k = r.v["data"]["k"].as_u64().unwrap() as usize;
                        assert_eq!(
                            k, next[t][from],
                            "conn {me}: sender {from}'s messages out of order on pair.{t}"
                        );
                        assert_eq!(r.data(), format!(r#"{{"from":{from},"k":{k}}}"#));
                        next[t][from] += 1;
                    }
                    assert!(next.iter().flatten().all(|&n| n == EACH));
                    c.close().await;
                })
            })
            .collect();
        for t in tasks {
            join(t).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_published_right_after_subscribed_always_arrives() {
    // `subscribed` must mean live on every shard: a publish sent by another
    // connection the moment it arrives must reach the subscriber. 200 fresh
    // topics; subscribers and publishers on whatever shards they landed on.
    const ROUNDS: usize = 200;
    const SUBS: usize = 8;
    const PUBS: usize = 8;
    let broker = start(&[]);
    let url = broker.url("/ws");
    bounded("subscribed is live", async {
        let mut subs = Vec::new();
        for _ in 0..SUBS {
            subs.push(Client::connect(&url).await);
        }
        let mut pubs = Vec::new();
        for _ in 0..PUBS {
            pubs.push(Client::connect(&url).await);
        }
        for i in 0..ROUNDS {
            let topic = format!("live.{i}");
            let a = i % SUBS;
            let b = (a + 1 + (i / SUBS) % (SUBS - 1)) % SUBS;
            let p = (i * 3 + i / PUBS) % PUBS;
            // First subscriber: the subscription goes through the owner.
            subs[a].subscribe(&topic, None).await;
            let d1 = format!("{{\"round\":{i},\"m\":1}}");
            assert_eq!(pubs[p].publish(&topic, &d1).await, 1);
            subs[a].recv().await.expect_message(&topic, 1, &d1);
            // Second subscriber: if it shares a's shard, it is made live
            // locally; either way the next publish must reach both, and
            // the first message (delivered before it subscribed) must not.
            subs[b].subscribe(&topic, None).await;
            let d2 = format!("{{\"round\":{i},\"m\":2}}");
            let q = (p + 1) % PUBS;
            assert_eq!(pubs[q].publish(&topic, &d2).await, 2);
            subs[b].recv().await.expect_message(&topic, 2, &d2);
            subs[a].recv().await.expect_message(&topic, 2, &d2);
        }
    })
    .await;
}

// ---- resume ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_inside_the_window_replays_exactly_then_goes_live() {
    let broker = start(&["--history-messages", "50"]);
    let url = broker.url("/ws");
    bounded("resume inside window", async {
        let topic = "resume.in";
        let data = |seq: u64| format!("{{\"n\" : {seq} , \"x\":[0.50,1e3]}}");
        let mut publisher = Client::connect(&url).await;
        for seq in 1..=30 {
            assert_eq!(publisher.publish(topic, &data(seq)).await, seq);
        }
        let mut clients = Vec::new();
        for since in [0u64, 10, 29, 30] {
            let mut c = Client::connect(&url).await;
            c.subscribe(topic, Some(since)).await;
            // The replay: exactly since+1 ..= 30, no gap notice.
            for seq in since + 1..=30 {
                c.recv().await.expect_message(topic, seq, &data(seq));
            }
            clients.push(c);
        }
        // Then live, with nothing in between.
        for seq in 31..=33 {
            assert_eq!(publisher.publish(topic, &data(seq)).await, seq);
        }
        for c in &mut clients {
            for seq in 31..=33 {
                c.recv().await.expect_message(topic, seq, &data(seq));
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_racing_with_publishes_has_no_gap_and_no_duplicate() {
    // One HTTP publisher publishes 600 messages while 24 clients subscribe
    // with `since` at various points of the stream: each must get exactly
    // since+1 ..= 600, the replay joining the live stream seamlessly.
    const TOTAL: u64 = 600;
    const RESUMERS: u64 = 24;
    let broker = start(&["--history-messages", "1000", "--history-bytes", "1MiB"]);
    let url = broker.url("/ws");
    let addr = broker.addr;
    let topic = "resume.race";
    let data = |seq: u64| format!("{{\"seq_was\":\t{seq}}}");
    bounded("resume racing publishes", async {
        let (progress_tx, progress_rx) = watch::channel(0u64);
        let resumers: Vec<_> = (0..RESUMERS)
            .map(|r| {
                let url = url.clone();
                let mut progress = progress_rx.clone();
                tokio::spawn(async move {
                    let mut c = Client::connect(&url).await;
                    let at = r * TOTAL / RESUMERS;
                    let latest = *timeout(STEP * 3, progress.wait_for(|&p| p >= at))
                        .await
                        .expect("publisher stalled")
                        .expect("publisher gone");
                    let since = latest.saturating_sub(r % 5);
                    c.subscribe(topic, Some(since)).await;
                    for seq in since + 1..=TOTAL {
                        let got = c.recv().await;
                        assert!(
                            got.op() == "message" && got.seq() == seq,
                            "resumer {r} (since {since}): expected seq {seq}, got {}",
                            got.text
                        );
                        got.expect_message(topic, seq, &data(seq));
                    }
                    c.close().await;
                })
            })
            .collect();
        let publisher = tokio::task::spawn_blocking(move || {
            let mut http = HttpConn::connect(addr);
            for seq in 1..=TOTAL {
                let resp = http.post(&format!("/publish/{topic}"), data(seq).as_bytes());
                assert_eq!(http_seq(&resp), seq);
                progress_tx.send_replace(seq);
            }
        });
        join(publisher).await;
        for r in resumers {
            join(r).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_outside_the_window_gets_gap_then_retained_then_live() {
    let broker = start(&["--history-messages", "5"]);
    let url = broker.url("/ws");
    bounded("resume outside window", async {
        let topic = "resume.out";
        let data = |seq: u64| format!("[{seq} , \"m\"]");
        let mut publisher = Client::connect(&url).await;
        for seq in 1..=20 {
            assert_eq!(publisher.publish(topic, &data(seq)).await, seq);
        }
        // Retained: 16..=20. (since, gap expected, first seq replayed)
        let cases: [(u64, bool, u64); 6] = [
            (0, true, 16),
            (3, true, 16),
            (14, true, 16),
            (15, false, 16),
            (20, false, 21),
            // Ahead of the topic: reported as a gap too (documented), then
            // everything retained.
            (100, true, 16),
        ];
        let mut clients = Vec::new();
        for (since, gap, first) in cases {
            let mut c = Client::connect(&url).await;
            let id = json!(format!("s:{topic}"));
            c.subscribe(topic, Some(since)).await;
            if gap {
                let g = c.recv().await;
                g.expect("gap", topic).expect_id(&id);
                assert_eq!(
                    (g.num("since"), g.num("first_seq")),
                    (since, 16),
                    "{}",
                    g.text
                );
            }
            for seq in first..=20 {
                c.recv().await.expect_message(topic, seq, &data(seq));
            }
            clients.push(c);
        }
        assert_eq!(publisher.publish(topic, &data(21)).await, 21);
        for c in &mut clients {
            c.recv().await.expect_message(topic, 21, &data(21));
        }
    })
    .await;
}

// ---- unsubscribe and clean-up -----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery_and_resubscribe_works() {
    // 8 leavers and 8 stayers on one topic: on some shards the leavers are
    // the last local subscribers, on others not.
    let broker = start(&[]);
    let url = broker.url("/ws");
    let topic = "unsub.t";
    bounded("unsubscribe", async {
        let mut leavers = Vec::new();
        let mut stayers = Vec::new();
        for i in 0..16 {
            let mut c = Client::connect(&url).await;
            c.subscribe(topic, None).await;
            if i % 2 == 0 {
                leavers.push(c);
            } else {
                stayers.push(c);
            }
        }
        let mut publisher = Client::connect(&url).await;
        assert_eq!(publisher.publish(topic, "\"one\"").await, 1);
        for c in leavers.iter_mut().chain(stayers.iter_mut()) {
            c.recv().await.expect_message(topic, 1, "\"one\"");
        }
        for (i, c) in leavers.iter_mut().enumerate() {
            c.send(format!(
                r#"{{"op":"unsubscribe","topic":"{topic}","id":{i}}}"#
            ))
            .await;
            c.recv()
                .await
                .expect("unsubscribed", topic)
                .expect_id(&json!(i));
        }
        // Published after `unsubscribed`: only the stayers get it.
        assert_eq!(publisher.publish(topic, "\"two\"").await, 2);
        for c in &mut stayers {
            c.recv().await.expect_message(topic, 2, "\"two\"");
        }
        // Resubscribing works, and the first thing a leaver sees after
        // `subscribed` is seq 3: seq 2 never reached it.
        for c in &mut leavers {
            c.subscribe(topic, None).await;
        }
        assert_eq!(publisher.publish(topic, "\"three\"").await, 3);
        for c in leavers.iter_mut().chain(stayers.iter_mut()) {
            c.recv().await.expect_message(topic, 3, "\"three\"");
        }
        // Unsubscribing from a topic one is not subscribed to is fine.
        let c = &mut leavers[0];
        c.send(r#"{"op":"unsubscribe","topic":"never.subscribed","id":"u"}"#)
            .await;
        c.recv()
            .await
            .expect("unsubscribed", "never.subscribed")
            .expect_id(&json!("u"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_subscribe_then_unsubscribe_gets_both_replies_in_order() {
    // A `subscribe` immediately followed by an `unsubscribe` (before the
    // subscription went live): each command gets its reply, `subscribed`
    // before `unsubscribed`, and afterwards nothing is delivered.
    let broker = start(&[]);
    let url = broker.url("/ws");
    bounded("subscribe + unsubscribe", async {
        let mut publisher = Client::connect(&url).await;
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(Client::connect(&url).await);
        }
        for i in 0..40 {
            let topic = format!("flip.{i}");
            let c = &mut clients[i % 4];
            c.feed(format!(r#"{{"op":"subscribe","topic":"{topic}","id":1}}"#))
                .await;
            c.feed(format!(
                r#"{{"op":"unsubscribe","topic":"{topic}","id":2}}"#
            ))
            .await;
            // A third command whose reply marks the end of the first two's.
            c.feed(r#"{"op":"unsubscribe","topic":"marker","id":3}"#)
                .await;
            c.flush().await;
            let mut replies = Vec::new();
            loop {
                let r = c.recv().await;
                let done = r.v["id"] == json!(3);
                replies.push(format!("{}:{}", r.op(), r.v["id"]));
                if done {
                    break;
                }
            }
            assert_eq!(
                replies,
                ["subscribed:1", "unsubscribed:2", "unsubscribed:3"],
                "{topic}: replies to subscribe(1), unsubscribe(2), unsubscribe(3)"
            );
            // Not subscribed: a publish does not reach it; a fresh
            // subscription then sees seq 2 first.
            assert_eq!(publisher.publish(&topic, "1").await, 1);
            c.subscribe(&topic, None).await;
            assert_eq!(publisher.publish(&topic, "2").await, 2);
            c.recv().await.expect_message(&topic, 2, "2");
        }
    })
    .await;
}

/// Replies come in command order, whoever answers: a `publish` with an id
/// is answered by its topic's owner shard (often another one), an
/// `unsubscribe` by the client's own shard at once. Pipelined pairs of the
/// two, over many topics, must still be answered in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publish_and_unsubscribe_replies_come_in_command_order() {
    const PAIRS: usize = 300;
    let broker = start(&[]);
    let url = broker.url("/ws");
    bounded("reply order", async {
        let mut c = Client::connect(&url).await;
        let mut sent = Vec::new();
        for n in 0..PAIRS {
            c.feed(format!(
                r#"{{"op":"publish","topic":"order.t{n}","data":{n},"id":"p {n}"}}"#
            ))
            .await;
            c.feed(format!(
                r#"{{"op":"unsubscribe","topic":"x.{n}","id":"u {n}"}}"#
            ))
            .await;
            sent.push(format!("p {n}"));
            sent.push(format!("u {n}"));
        }
        c.flush().await;
        for (i, want) in sent.iter().enumerate() {
            let r = c.recv().await;
            assert_eq!(
                r.v["id"], **want,
                "reply {i} answers the wrong command (replies out of order): {}",
                r.text
            );
            let n = i / 2;
            if i % 2 == 0 {
                r.expect("published", &format!("order.t{n}"));
                assert_eq!(r.seq(), 1, "{}", r.text);
            } else {
                r.expect("unsubscribed", &format!("x.{n}"));
            }
        }
    })
    .await;
}

/// A client that pipelines thousands of commands while it reads their
/// replies is never taken for one that does not read: the old broker
/// counted every reply since its queue was last empty (which it never was)
/// and cut such a client off after 64 KiB of replies, with no close frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pipelining_while_it_reads_gets_every_reply() {
    const N: usize = 5_000;
    let broker = Broker::start(&["--shards", "1"]);
    let url = broker.url("/ws");
    bounded("pipelined flood", async {
        let Client { mut tx, mut rx } = Client::connect(&url).await;
        let sender = tokio::spawn(async move {
            for i in 0..N {
                let cmd = format!(
                    r#"{{"op":"publish","topic":"flood.{}","data":{i},"id":"r:{i}"}}"#,
                    i % 64
                );
                tx.feed(Message::Text(cmd)).await.expect("send");
            }
            tx.flush().await.expect("flush");
            tx
        });
        for i in 0..N {
            let r = recv_from(&mut rx).await;
            assert_eq!(r.v["id"], format!("r:{i}"), "reply {i}: {}", r.text);
            r.expect("published", &format!("flood.{}", i % 64));
        }
        drop(join(sender).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_subscribers_are_cleaned_up() {
    // 500 connections subscribe and go away: half after `subscribed`, half
    // while their subscription may still be pending; some with a close
    // handshake, some by dropping the TCP connection. The broker must keep
    // working and a fresh subscriber must get only live messages.
    const CHURN: usize = 500;
    const TOPICS: usize = 10;
    let broker = start(&[]);
    let url = broker.url("/ws");
    let addr = broker.addr;
    bounded("disconnect clean-up", async {
        let mut publisher = Client::connect(&url).await;
        for t in 0..TOPICS {
            for seq in 1..=3 {
                assert_eq!(publisher.publish(&format!("churn.{t}"), "{}").await, seq);
            }
        }
        let tasks: Vec<_> = (0..CHURN)
            .map(|i| {
                let url = url.clone();
                tokio::spawn(async move {
                    let mut c = Client::connect(&url).await;
                    let topics = [i % TOPICS, (i * 7 + 3) % TOPICS];
                    for t in topics {
                        c.feed(format!(r#"{{"op":"subscribe","topic":"churn.{t}"}}"#))
                            .await;
                    }
                    c.flush().await;
                    // (Two different topics: 6i + 3 is never 0 mod 10.)
                    if i % 2 == 0 {
                        for _ in topics {
                            let r = c.recv().await;
                            assert_eq!(r.op(), "subscribed", "{}", r.text);
                        }
                    }
                    if i % 4 < 2 {
                        c.close().await;
                    }
                    // Dropped here either way.
                })
            })
            .collect();
        for t in tasks {
            join(t).await;
        }
        // Publishing to every topic still works.
        for t in 0..TOPICS {
            assert_eq!(publisher.publish(&format!("churn.{t}"), "{}").await, 4);
        }
        let mut fresh = Vec::new();
        for i in 0..2 * TOPICS {
            let mut c = Client::connect(&url).await;
            c.subscribe(&format!("churn.{}", i % TOPICS), None).await;
            fresh.push(c);
        }
        for t in 0..TOPICS {
            let d = format!("{{\"live\":{t}}}");
            assert_eq!(publisher.publish(&format!("churn.{t}"), &d).await, 5);
        }
        for (i, c) in fresh.iter_mut().enumerate() {
            let t = i % TOPICS;
            c.recv()
                .await
                .expect_message(&format!("churn.{t}"), 5, &format!("{{\"live\":{t}}}"));
        }
        let health = ringcast_e2e::http_exchange(
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        // The churned connections left nothing behind: only the fresh
        // subscriptions remain.
        let want = 2 * TOPICS as i64;
        ringcast_e2e::wait_until("only the live subscriptions remain", || {
            ringcast_e2e::metric_sum(addr, "ringcast_subscriptions", "") == want
        });
    })
    .await;
}

// ---- HTTP publish -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_replies_seq_and_serves_many_on_one_keep_alive_connection() {
    const N: u64 = 100;
    let broker = start(&[]);
    let url = broker.url("/ws");
    let addr = broker.addr;
    let topic = "http.ka";
    let body = |n: u64| format!("{{\"n\": {n},\n\t\"price\" : 187.310 ,\"e\":-1.0E-0}}");
    bounded("http keep-alive", async {
        let mut sub = Client::connect(&url).await;
        sub.subscribe(topic, None).await;
        let seqs = http_publish_all(addr, topic.to_string(), (1..=N).map(body).collect()).await;
        assert_eq!(seqs, (1..=N).collect::<Vec<_>>(), "seqs on one connection");
        for seq in 1..=N {
            sub.recv().await.expect_message(topic, seq, &body(seq));
        }
        // The response itself.
        let resp = join(tokio::task::spawn_blocking(move || {
            let mut http = HttpConn::connect(addr);
            let r = http.post("/publish/http.ka", b"\"last\"");
            // `Connection: close` is honoured after a successful publish.
            http.send_raw(
                b"POST /publish/http.ka HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
            );
            let closing = http.read_response().expect("response before close");
            http.expect_eof();
            (r, closing)
        }))
        .await;
        let (r, closing) = resp;
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), json!({ "seq": N + 1 }));
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "{:?}",
            r.headers
        );
        assert_eq!(closing.status, 200);
        assert_eq!(closing.json(), json!({ "seq": N + 2 }));
        sub.recv().await.expect_message(topic, N + 1, "\"last\"");
        sub.recv().await.expect_message(topic, N + 2, "{}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_errors_400_411_413_405() {
    let broker = start(&["--max-message-size", "1KiB", "--max-frame-size", "1KiB"]);
    let url = broker.url("/ws");
    let addr = broker.addr;
    bounded("http publish errors", async {
        let mut sub = Client::connect(&url).await;
        sub.subscribe("http.err", None).await;
        join(tokio::task::spawn_blocking(move || {
            // 400 with a JSON error body: invalid JSON bodies...
            for bad in [&b"{\"a\":"[..], b"not json", b"1 2", b"", b"{\"a\":1}}"] {
                let mut http = HttpConn::connect(addr);
                let r = http.post("/publish/http.err", bad);
                assert_eq!(r.status, 400, "body {:?}", String::from_utf8_lossy(bad));
                let v = r.json();
                assert_eq!(
                    (v["op"].as_str(), v["code"].as_str()),
                    (Some("error"), Some("bad_json")),
                    "{v}"
                );
                assert!(v["message"].is_string(), "{v}");
            }
            // ... and invalid topics.
            let long = "a".repeat(256);
            for topic in ["bad*topic", "a..b", "", ".a", "%C3%A9", long.as_str()] {
                let mut http = HttpConn::connect(addr);
                let r = http.post(&format!("/publish/{topic}"), b"{}");
                assert_eq!(r.status, 400, "topic {topic:?}");
                let v = r.json();
                assert_eq!(
                    (v["op"].as_str(), v["code"].as_str()),
                    (Some("error"), Some("bad_topic")),
                    "{v}"
                );
            }
            // 411 without Content-Length or a chunked body (chunked bodies
            // are accepted: tests/http_hardening.rs).
            let mut http = HttpConn::connect(addr);
            http.send_raw(b"POST /publish/http.err HTTP/1.1\r\nHost: x\r\n\r\n");
            let r = http.read_response().expect("a 411 response");
            assert_eq!(r.status, 411, "{}", r.body_text());
            http.expect_eof();
            // 413 over --max-message-size; exactly the limit is fine.
            let at_limit = format!("\"{}\"", "x".repeat(1022));
            let mut http = HttpConn::connect(addr);
            assert_eq!(
                http_seq(&http.post("/publish/http.err", at_limit.as_bytes())),
                1
            );
            let over = format!("\"{}\"", "x".repeat(1023));
            let r = http.post("/publish/http.err", over.as_bytes());
            assert_eq!(r.status, 413, "{}", r.body_text());
            http.expect_eof();
            // 405 for anything but POST.
            for method in ["GET", "PUT", "DELETE"] {
                let mut http = HttpConn::connect(addr);
                http.send_raw(
                    format!("{method} /publish/x HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
                );
                let r = http.read_response().expect("a 405 response");
                assert_eq!(r.status, 405, "{method}: {}", r.body_text());
                http.expect_eof();
            }
            // None of that consumed a seq.
            let mut http = HttpConn::connect(addr);
            assert_eq!(http_seq(&http.post("/publish/http.err", b"2")), 2);
        }))
        .await;
        sub.recv()
            .await
            .expect_message("http.err", 1, &format!("\"{}\"", "x".repeat(1022)));
        sub.recv().await.expect_message("http.err", 2, "2");
    })
    .await;
}

// ---- malformed commands -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_commands_get_error_replies_and_the_connection_stays_open() {
    let broker = start(&["--max-subscriptions", "3"]);
    let url = broker.url("/ws");
    bounded("malformed commands", async {
        let long = "a".repeat(256);
        // (command, code, echoed id)
        let cases: Vec<(String, &str, Option<Value>)> = vec![
            ("not json".into(), "bad_json", None),
            (r#"{"op":"subscribe","topic":"t""#.into(), "bad_json", None),
            (
                r#"{"op":"subscribe","topic":"t","id":1"#.into(),
                "bad_json",
                None,
            ),
            ("[1,2]".into(), "bad_json", None),
            ("42".into(), "bad_json", None),
            (r#""subscribe""#.into(), "bad_json", None),
            ("null".into(), "bad_json", None),
            ("".into(), "bad_json", None),
            ("{}".into(), "bad_request", None),
            (
                r#"{"topic":"t","id":1}"#.into(),
                "bad_request",
                Some(json!(1)),
            ),
            (
                r#"{"op":5,"id":"x"}"#.into(),
                "bad_request",
                Some(json!("x")),
            ),
            (
                r#"{"op":null,"id":2}"#.into(),
                "bad_request",
                Some(json!(2)),
            ),
            (
                r#"{"op":"dance","id":3}"#.into(),
                "unknown_op",
                Some(json!(3)),
            ),
            (
                r#"{"op":"Subscribe","topic":"t","id":1.5e3}"#.into(),
                "unknown_op",
                Some(json!(1.5e3)),
            ),
            (
                r#"{"op":"subscribe","id":4}"#.into(),
                "bad_request",
                Some(json!(4)),
            ),
            (
                r#"{"op":"unsubscribe","id":4}"#.into(),
                "bad_request",
                Some(json!(4)),
            ),
            (
                r#"{"op":"publish","data":1,"id":4}"#.into(),
                "bad_request",
                Some(json!(4)),
            ),
            (
                r#"{"op":"subscribe","topic":7,"id":5}"#.into(),
                "bad_request",
                Some(json!(5)),
            ),
            (
                r#"{"op":"subscribe","topic":["t"],"id":5}"#.into(),
                "bad_request",
                Some(json!(5)),
            ),
            (
                r#"{"op":"subscribe","topic":"a b","id":6}"#.into(),
                "bad_topic",
                Some(json!(6)),
            ),
            (
                r#"{"op":"subscribe","topic":"a/b","id":6}"#.into(),
                "bad_topic",
                Some(json!(6)),
            ),
            (
                r#"{"op":"subscribe","topic":"é","id":6}"#.into(),
                "bad_topic",
                Some(json!(6)),
            ),
            (
                r#"{"op":"subscribe","topic":"a\"b","id":6}"#.into(),
                "bad_topic",
                Some(json!(6)),
            ),
            (
                r#"{"op":"subscribe","topic":"","id":6}"#.into(),
                "bad_topic",
                Some(json!(6)),
            ),
            (
                r#"{"op":"subscribe","topic":"a..b","id":6}"#.into(),
                "bad_topic",
                Some(json!(6)),
            ),
            (
                format!(r#"{{"op":"subscribe","topic":"{long}","id":6}}"#),
                "bad_topic",
                Some(json!(6)),
            ),
            (
                r#"{"op":"unsubscribe","topic":"a b","id":7}"#.into(),
                "bad_topic",
                Some(json!(7)),
            ),
            (
                r#"{"op":"publish","topic":"a b","data":1,"id":7}"#.into(),
                "bad_topic",
                Some(json!(7)),
            ),
            (
                r#"{"op":"subscribe","topic":"t","since":-1,"id":8}"#.into(),
                "bad_request",
                Some(json!(8)),
            ),
            (
                r#"{"op":"subscribe","topic":"t","since":"4","id":8}"#.into(),
                "bad_request",
                Some(json!(8)),
            ),
            (
                r#"{"op":"subscribe","topic":"t","since":1.5,"id":8}"#.into(),
                "bad_request",
                Some(json!(8)),
            ),
            (
                r#"{"op":"publish","topic":"t","id":9}"#.into(),
                "bad_request",
                Some(json!(9)),
            ),
            (
                r#"{"op":"publish","topic":"t","data":1,"id":{}}"#.into(),
                "bad_request",
                None,
            ),
            (
                r#"{"op":"subscribe","topic":"t","id":{"a":1}}"#.into(),
                "bad_request",
                None,
            ),
            (
                r#"{"op":"subscribe","topic":"t","id":[1]}"#.into(),
                "bad_request",
                None,
            ),
            (
                r#"{"op":"subscribe","topic":"t","id":true}"#.into(),
                "bad_request",
                None,
            ),
        ];
        let mut c = Client::connect(&url).await;
        for (cmd, code, id) in &cases {
            c.send(cmd.clone()).await;
            let r = c.recv().await;
            assert_eq!(r.op(), "error", "{cmd} -> {}", r.text);
            assert_eq!(r.v["code"], json!(code), "{cmd} -> {}", r.text);
            assert!(r.v["message"].is_string(), "{cmd} -> {}", r.text);
            match id {
                Some(id) => assert_eq!(&r.v["id"], id, "{cmd} -> {}", r.text),
                None => assert!(r.v.get("id").is_none(), "{cmd} -> {}", r.text),
            }
        }
        // A binary frame on /ws.
        c.send_msg(Message::Binary(
            br#"{"op":"subscribe","topic":"t"}"#.to_vec(),
        ))
        .await;
        let r = c.recv().await;
        assert_eq!(
            (r.op(), &r.v["code"]),
            ("error", &json!("bad_json")),
            "{}",
            r.text
        );

        // Still open: subscriptions work, up to --max-subscriptions.
        c.subscribe("ok.a", None).await;
        c.send(r#"{"op":"subscribe","topic":"ok.a","id":"dup"}"#)
            .await;
        let r = c.recv().await;
        assert_eq!(
            (r.op(), &r.v["code"]),
            ("error", &json!("bad_request")),
            "{}",
            r.text
        );
        r.expect_id(&json!("dup"));
        c.subscribe("ok.b", None).await;
        c.subscribe("ok.c", None).await;
        c.send(r#"{"op":"subscribe","topic":"ok.d","id":14}"#).await;
        let r = c.recv().await;
        assert_eq!(
            (r.op(), &r.v["code"]),
            ("error", &json!("limit")),
            "{}",
            r.text
        );
        r.expect_id(&json!(14));
        // Unknown fields are ignored; freeing a slot makes room again.
        c.send(r#"{"op":"unsubscribe","topic":"ok.c","id":15,"future":{"x":[1]}}"#)
            .await;
        c.recv()
            .await
            .expect("unsubscribed", "ok.c")
            .expect_id(&json!(15));
        c.subscribe("ok.d", None).await;
        let mut publisher = Client::connect(&url).await;
        assert_eq!(publisher.publish("ok.d", "{\"still\":\"open\"}").await, 1);
        c.recv()
            .await
            .expect_message("ok.d", 1, "{\"still\":\"open\"}");
        // The limit counts subscriptions per connection, not per broker.
        let mut other = Client::connect(&url).await;
        for t in ["ok.a", "ok.b", "ok.c"] {
            other.subscribe(t, None).await;
        }
    })
    .await;
}
