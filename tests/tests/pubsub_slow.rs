//! Slow consumers, end to end: a subscriber that stops reading under
//! `--slow-consumer disconnect` and under `--slow-consumer conflate`.
//!
//! The slow client is a raw WebSocket over a TCP socket whose receive
//! buffer was made small before connecting, so the broker's queue for it
//! fills after a few KiB instead of after the kernel's autotuned megabytes.
//! The well-behaved subscribers read on their own threads; the publisher
//! paces itself on *their* progress (never more than one outbox's worth
//! ahead of them), so they are never slow themselves and every message
//! must reach them. No sleeps: every wait is for an observable event,
//! bounded by the harness's read timeout or [`STEP`].

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use ringcast_e2e::{rss_bytes, tcp_with_rcvbuf, Broker, HttpConn, RawWs};
use ringcast_proto::frame::OpCode;
use serde_json::Value;

/// Bound on waiting for another thread's progress.
const STEP: Duration = Duration::from_secs(10);
/// Receive buffer of the slow client's socket.
const SLOW_RCVBUF: usize = 4096;

/// One text frame from the broker, parsed.
#[derive(Debug)]
struct Reply {
    text: String,
    v: Value,
}

impl Reply {
    fn op(&self) -> &str {
        self.v["op"].as_str().unwrap_or("")
    }

    fn topic(&self) -> &str {
        self.v["topic"].as_str().unwrap_or("")
    }

    fn num(&self, field: &str) -> u64 {
        self.v[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no integer \"{field}\" in {}", self.text))
    }

    /// `data` exactly as the broker wrote it.
    fn data(&self) -> String {
        let fields: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
            serde_json::from_str(&self.text).expect("a JSON object");
        fields.get("data").expect("a data field").get().to_string()
    }
}

/// What the broker sent next.
#[derive(Debug)]
enum Event {
    Text(Reply),
    Close(Option<u16>, String),
    Eof,
}

fn send(ws: &mut RawWs, text: &str) {
    ws.send_frame(true, OpCode::Text, text.as_bytes());
}

/// The next text or close frame; pings are answered and skipped.
fn next_event(ws: &mut RawWs) -> Event {
    loop {
        match ws.read_frame() {
            None => return Event::Eof,
            Some((fin, OpCode::Text, p)) => {
                assert!(fin, "the broker fragments nothing");
                let text = String::from_utf8(p).expect("UTF-8 text frame");
                let v = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("invalid JSON ({e}): {text}"));
                return Event::Text(Reply { text, v });
            }
            Some((_, OpCode::Close, p)) => {
                let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                let reason = String::from_utf8_lossy(p.get(2..).unwrap_or(&[])).into_owned();
                return Event::Close(code, reason);
            }
            Some((_, OpCode::Ping, p)) => ws.send_frame(true, OpCode::Pong, &p),
            Some((_, OpCode::Pong, _)) => {}
            Some((_, op, _)) => panic!("unexpected {op:?} frame"),
        }
    }
}

fn next_text(ws: &mut RawWs) -> Reply {
    match next_event(ws) {
        Event::Text(r) => r,
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Subscribes and expects `subscribed` as the next frame.
fn subscribe(ws: &mut RawWs, topic: &str, since: Option<u64>) {
    let since = since.map_or(String::new(), |s| format!(",\"since\":{s}"));
    send(
        ws,
        &format!(r#"{{"op":"subscribe","topic":"{topic}"{since},"id":"{topic}"}}"#),
    );
    let r = next_text(ws);
    assert!(
        r.op() == "subscribed" && r.topic() == topic && r.v["id"] == topic,
        "expected subscribed to {topic}, got {}",
        r.text
    );
}

/// A JSON value of exactly `size` bytes that carries `n`.
fn payload(n: u64, size: usize) -> String {
    let head = format!("{{\"n\":{n},\"pad\":\"");
    let pad = size - head.len() - 2;
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// A well-behaved subscriber on its own thread: reads `topics` messages
/// until each topic reached its final seq (`expect[t]`), asserting every
/// seq in order with its exact data, and reports its running total.
struct Reader {
    progress: mpsc::Receiver<u64>,
    seen: u64,
    handle: Option<JoinHandle<()>>,
}

impl Reader {
    /// `data(topic_index, seq)` is the exact data expected for `seq`.
    fn spawn(
        mut ws: RawWs,
        topics: Vec<String>,
        last: u64,
        data: fn(usize, u64) -> String,
    ) -> Reader {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            let mut seqs = vec![0u64; topics.len()];
            let mut total = 0;
            while seqs.iter().any(|&s| s < last) {
                let r = next_text(&mut ws);
                assert_eq!(r.op(), "message", "a reader got {}", r.text);
                let t = topics
                    .iter()
                    .position(|t| t == r.topic())
                    .unwrap_or_else(|| panic!("not subscribed: {}", r.text));
                seqs[t] += 1;
                assert_eq!(
                    r.num("seq"),
                    seqs[t],
                    "a reader saw a gap: {}",
                    &r.text[..80]
                );
                assert!(
                    r.data() == data(t, seqs[t]),
                    "data altered at seq {}",
                    seqs[t]
                );
                total += 1;
                let _ = tx.send(total);
            }
        });
        Reader {
            progress: rx,
            seen: 0,
            handle: Some(handle),
        }
    }

    /// Waits until this reader has received `total` messages.
    fn wait_for(&mut self, total: u64) {
        while self.seen < total {
            match self.progress.recv_timeout(STEP) {
                Ok(n) => self.seen = n,
                Err(e) => {
                    if let Some(h) = self.handle.take() {
                        if h.is_finished() {
                            if let Err(p) = h.join() {
                                std::panic::resume_unwind(p);
                            }
                        }
                    }
                    panic!("reader stuck at {} of {total} messages: {e}", self.seen);
                }
            }
        }
    }

    fn join(mut self) {
        if let Some(h) = self.handle.take() {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
    }
}

/// The most a socket's send buffer can grow to (`tcp_wmem` max).
fn max_send_buffer() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

// ---- disconnect -------------------------------------------------------------

#[test]
fn slow_consumer_gets_close_1008_while_the_others_get_every_message() {
    const SIZE: usize = 4096;
    // On loopback the kernel gives the broker's socket a send buffer of up
    // to `tcp_wmem` max (4 MiB by default) before its outbox fills at all:
    // publish well past that.
    let total = ((2 * max_send_buffer() + (2 << 20)) / SIZE as u64).max(2000);
    const AFTER: u64 = 100;
    /// Messages per batch: 16 KiB. A frame stays counted against a reader's
    /// 64 KiB outbox until the broker has processed its write completion,
    /// which under CPU contention can come after the reader already read
    /// it and released the next batch: up to two batches may be counted at
    /// once, and both must fit with room to spare.
    const BATCH: u64 = 4;
    let history_messages = (total + AFTER).to_string();
    let history_bytes = ((total + AFTER) * (SIZE as u64 + 128)).to_string();
    let broker = Broker::start(&[
        "--shards",
        "4",
        "--slow-consumer",
        "disconnect",
        "--outbox-size",
        "64KiB",
        // Time enough to read what was queued before the close frame.
        "--close-timeout",
        "60s",
        // Enough history that the slow client can resume without a gap.
        "--history-messages",
        &history_messages,
        "--history-bytes",
        &history_bytes,
    ]);
    let topic = "slow.t";
    let data = |_: usize, seq: u64| payload(seq, SIZE);

    let mut slow = RawWs::handshake(tcp_with_rcvbuf(broker.addr, SLOW_RCVBUF), "/ws");
    subscribe(&mut slow, topic, None);
    let mut readers: Vec<Reader> = (0..6)
        .map(|_| {
            let mut ws = RawWs::connect(broker.addr, "/ws");
            subscribe(&mut ws, topic, None);
            Reader::spawn(ws, vec![topic.to_string()], total + AFTER, data)
        })
        .collect();

    // Publish over WebSocket, paced on the readers (not on the slow one).
    let mut publisher = RawWs::connect(broker.addr, "/ws");
    let mut published = 0;
    let mut publish_until = |upto: u64, readers: &mut Vec<Reader>| {
        while published < upto {
            let end = (published + BATCH).min(upto);
            for seq in published + 1..=end {
                send(
                    &mut publisher,
                    &format!(
                        r#"{{"op":"publish","topic":"{topic}","data":{}}}"#,
                        payload(seq, SIZE)
                    ),
                );
            }
            published = end;
            for r in readers.iter_mut() {
                r.wait_for(published);
            }
        }
    };
    publish_until(total, &mut readers);

    // The slow client: everything queued for it arrives in order, then the
    // close frame.
    let mut last = 0;
    let (code, reason) = loop {
        match next_event(&mut slow) {
            Event::Text(r) => {
                assert_eq!(r.op(), "message", "slow client got {}", r.text);
                last += 1;
                assert_eq!(r.num("seq"), last, "slow client saw a gap before its close");
                assert!(r.data() == payload(last, SIZE), "data altered at {last}");
            }
            Event::Close(code, reason) => break (code, reason),
            Event::Eof => panic!("slow client: connection ended without a close frame"),
        }
    };
    assert_eq!(
        (code, reason.as_str()),
        (Some(1008), "slow consumer"),
        "after {last} messages"
    );
    assert!(
        last < total,
        "the slow client was cut off only after every message ({last})"
    );
    slow.send_frame(true, OpCode::Close, &1008u16.to_be_bytes());
    slow.expect_eof();

    // The others go on receiving, after the disconnect too.
    publish_until(total + AFTER, &mut readers);
    for r in readers {
        r.join();
    }

    // The slow client resumes with `since` and gets exactly what it missed.
    // A replay larger than the outbox disconnects it again after what fit,
    // so it may take several rounds; each must make progress and never see
    // a gap.
    while last < total + AFTER {
        let mut ws = RawWs::connect(broker.addr, "/ws");
        subscribe(&mut ws, topic, Some(last));
        let before = last;
        loop {
            match next_event(&mut ws) {
                Event::Text(r) => {
                    assert_eq!(r.op(), "message", "resume got {}", r.text);
                    last += 1;
                    assert_eq!(r.num("seq"), last, "resume since {before}: gap");
                    assert!(r.data() == payload(last, SIZE), "data altered at {last}");
                    if last == total + AFTER {
                        break;
                    }
                }
                Event::Close(code, reason) => {
                    assert_eq!((code, reason.as_str()), (Some(1008), "slow consumer"));
                    break;
                }
                Event::Eof => panic!("resume: connection ended without a close frame"),
            }
        }
        assert!(last > before, "resume since {before} delivered nothing");
    }
}

// ---- conflate -----------------------------------------------------------------

/// Checks a conflated stream on one topic: seqs increase, every jump is
/// announced by a `skipped` notice that covers exactly the missing seqs.
#[derive(Default)]
struct ConflatedTopic {
    last: u64,
    /// A `skipped` notice seen, not yet followed by its message: (from, to).
    pending_skip: Option<(u64, u64)>,
    skips: u64,
    messages: u64,
}

impl ConflatedTopic {
    fn on_message(&mut self, topic: &str, seq: u64) {
        match self.pending_skip.take() {
            Some((_, to)) => assert_eq!(
                seq,
                to + 1,
                "{topic}: message after skipped(..={to}) is not the next seq"
            ),
            None => assert_eq!(
                seq,
                self.last + 1,
                "{topic}: seq jumped from {} without a skipped notice",
                self.last
            ),
        }
        self.last = seq;
        self.messages += 1;
    }

    fn on_skipped(&mut self, topic: &str, r: &Reply) {
        assert!(
            self.pending_skip.is_none(),
            "{topic}: two skipped notices in a row"
        );
        let (from, to, count) = (r.num("from"), r.num("to"), r.num("count"));
        assert_eq!(
            from,
            self.last + 1,
            "{topic}: skipped must start after {}: {}",
            self.last,
            r.text
        );
        assert!(to >= from, "{topic}: empty skip {}", r.text);
        assert_eq!(count, to - from + 1, "{topic}: count {}", r.text);
        self.pending_skip = Some((from, to));
        self.skips += 1;
    }
}

#[test]
fn conflated_slow_consumer_sees_skipped_notices_newest_message_and_bounded_memory() {
    const SMALL: usize = 1024;
    const BIG: usize = 64 * 1024;
    /// Per small topic.
    const SMALL_COUNT: u64 = 1000;
    /// 128 MiB through a topic only the slow client subscribes to.
    const BIG_COUNT: u64 = 2048;
    const BATCH: u64 = 16;
    const RSS_SLACK: u64 = 64 << 20;
    let broker = Broker::start(&[
        "--shards",
        "4",
        "--slow-consumer",
        "conflate",
        "--outbox-size",
        "64KiB",
    ]);
    let small = ["conf.a", "conf.b"];
    let big = "conf.big";
    let data = |t: usize, seq: u64| payload(seq * 10 + t as u64, SMALL);

    let mut slow = RawWs::handshake(tcp_with_rcvbuf(broker.addr, SLOW_RCVBUF), "/ws");
    for t in small.iter().chain([&big]) {
        subscribe(&mut slow, t, None);
    }
    let mut readers: Vec<Reader> = (0..2)
        .map(|_| {
            let mut ws = RawWs::connect(broker.addr, "/ws");
            for t in small {
                subscribe(&mut ws, t, None);
            }
            let topics = small.iter().map(|t| t.to_string()).collect();
            Reader::spawn(ws, topics, SMALL_COUNT, data)
        })
        .collect();

    // Phase 1: the small topics, interleaved, paced on the readers.
    let mut publisher = RawWs::connect(broker.addr, "/ws");
    let mut sent = 0;
    for seq in 1..=SMALL_COUNT {
        for (t, topic) in small.iter().enumerate() {
            send(
                &mut publisher,
                &format!(
                    r#"{{"op":"publish","topic":"{topic}","data":{}}}"#,
                    data(t, seq)
                ),
            );
            sent += 1;
        }
        if sent % BATCH == 0 || seq == SMALL_COUNT {
            for r in readers.iter_mut() {
                r.wait_for(sent);
            }
        }
    }
    for r in readers {
        r.join();
    }

    // Phase 2: 128 MiB to the big topic while the slow client still does
    // not read; the broker's memory must not follow.
    let rss_before = rss_bytes(broker.pid());
    let mut rss_max = rss_before;
    let mut http = HttpConn::connect(broker.addr);
    for seq in 1..=BIG_COUNT {
        let resp = http.post(&format!("/publish/{big}"), payload(seq, BIG).as_bytes());
        assert_eq!(resp.status, 200, "{}", resp.body_text());
        assert_eq!(resp.json()["seq"], seq);
        if seq % 128 == 0 {
            rss_max = rss_max.max(rss_bytes(broker.pid()));
        }
    }
    let rss_after = rss_bytes(broker.pid());
    rss_max = rss_max.max(rss_after);
    assert!(
        rss_max < rss_before + RSS_SLACK,
        "broker RSS grew from {} MiB to {} MiB while a conflated client did not read",
        rss_before >> 20,
        rss_max >> 20
    );

    // The slow client resumes reading: per topic, seqs increase and every
    // jump is announced; the last message is the newest published.
    let names = [small[0], small[1], big];
    let mut newest = [SMALL_COUNT, SMALL_COUNT, BIG_COUNT];
    let mut state: [ConflatedTopic; 3] = Default::default();
    let expected = |t: usize, seq: u64| {
        if t < 2 {
            data(t, seq)
        } else {
            payload(seq, BIG)
        }
    };
    let mut drain = |newest: [u64; 3], state: &mut [ConflatedTopic; 3]| {
        while (0..3).any(|t| state[t].last < newest[t]) {
            let r = match next_event(&mut slow) {
                Event::Text(r) => r,
                other => panic!("the conflated client must not be disconnected: {other:?}"),
            };
            let short = &r.text[..r.text.len().min(200)];
            let t = names
                .iter()
                .position(|n| *n == r.topic())
                .unwrap_or_else(|| panic!("unexpected {short}"));
            match r.op() {
                "message" => {
                    let seq = r.num("seq");
                    state[t].on_message(names[t], seq);
                    assert!(
                        r.data() == expected(t, seq),
                        "{}: data altered at seq {seq}",
                        names[t]
                    );
                }
                "skipped" => state[t].on_skipped(names[t], &r),
                other => panic!("unexpected op {other}: {short}"),
            }
        }
        for t in 0..3 {
            assert!(
                state[t].pending_skip.is_none(),
                "{}: skipped notice without its message",
                names[t]
            );
            assert_eq!(
                state[t].last, newest[t],
                "{}: last message is not the newest",
                names[t]
            );
        }
    };
    drain(newest, &mut state);
    assert!(
        state[2].skips > 0 && state[2].messages < BIG_COUNT,
        "{big}: nothing conflated, the test proved nothing"
    );

    // Phase 3: more rounds of "publish far more than the socket holds, then
    // catch up", now on all three topics interleaved (the readers are gone):
    // each round must conflate again and end on the newest messages.
    const ROUNDS: usize = 3;
    // Each round: twice what the broker's socket can hold, plus a margin.
    let per_round = (2 * max_send_buffer() + (2 << 20)) / BIG as u64;
    for round in 0..ROUNDS {
        let skips_before: u64 = state.iter().map(|s| s.skips).sum();
        for _ in 0..per_round {
            for t in [2, 0, 1] {
                let seq = newest[t] + 1;
                let resp = http.post(
                    &format!("/publish/{}", names[t]),
                    expected(t, seq).as_bytes(),
                );
                assert_eq!(resp.status, 200, "{}", resp.body_text());
                assert_eq!(resp.json()["seq"], seq);
                newest[t] = seq;
            }
        }
        drain(newest, &mut state);
        let skips: u64 = state.iter().map(|s| s.skips).sum();
        assert!(skips > skips_before, "round {round}: nothing conflated");
    }

    // Still connected, and nothing else was queued: the next frame is the
    // reply to a new command.
    send(
        &mut slow,
        r#"{"op":"unsubscribe","topic":"conf.a","id":"bye"}"#,
    );
    let r = next_text(&mut slow);
    assert!(
        r.op() == "unsubscribed" && r.v["id"] == "bye",
        "expected unsubscribed, got {}",
        &r.text[..r.text.len().min(200)]
    );
}

#[test]
fn conflated_messages_do_not_arrive_after_unsubscribed() {
    // A conflated client unsubscribes while a message of that topic is
    // still held back for it: after `unsubscribed`, nothing more of that
    // topic may arrive (no `skipped`, no `message`).
    const BIG: usize = 64 * 1024;
    let broker = Broker::start(&[
        "--shards",
        "4",
        "--slow-consumer",
        "conflate",
        "--outbox-size",
        "64KiB",
    ]);
    let (big, marker) = ("cu.big", "cu.marker");
    let mut slow = RawWs::handshake(tcp_with_rcvbuf(broker.addr, SLOW_RCVBUF), "/ws");
    subscribe(&mut slow, big, None);
    subscribe(&mut slow, marker, None);
    // Far more than the socket buffers hold: the newest ones are held.
    let count = (2 * max_send_buffer() + (2 << 20)) / BIG as u64;
    let mut http = HttpConn::connect(broker.addr);
    for seq in 1..=count {
        let resp = http.post(&format!("/publish/{big}"), payload(seq, BIG).as_bytes());
        assert_eq!(resp.status, 200, "{}", resp.body_text());
    }
    send(
        &mut slow,
        &format!(r#"{{"op":"unsubscribe","topic":"{big}","id":"u"}}"#),
    );

    let mut unsubscribed = false;
    let mut after = Vec::new();
    let mut big_seen = ConflatedTopic::default();
    let mut read_until_marker = |slow: &mut RawWs, seq: u64| loop {
        let r = next_text(slow);
        let short = r.text[..r.text.len().min(120)].to_string();
        match (r.op(), r.topic()) {
            ("unsubscribed", t) if t == big => {
                assert!(!unsubscribed, "two unsubscribed replies");
                assert_eq!(r.v["id"], "u");
                unsubscribed = true;
            }
            ("message", t) if t == marker => {
                assert_eq!(r.num("seq"), seq, "marker");
                return;
            }
            (_, t) if t == big && unsubscribed => after.push(short),
            ("message", t) if t == big => big_seen.on_message(big, r.num("seq")),
            ("skipped", t) if t == big => big_seen.on_skipped(big, &r),
            _ => panic!("unexpected {short}"),
        }
    };
    // The first marker follows everything queued before it; once it is
    // read the queue has drained, so anything still held back has been
    // released, and the second marker comes after it.
    for seq in 1..=2 {
        let resp = http.post(&format!("/publish/{marker}"), b"\"mark\"");
        assert_eq!(resp.status, 200, "{}", resp.body_text());
        read_until_marker(&mut slow, seq);
    }
    assert!(unsubscribed, "no reply to unsubscribe");
    assert!(
        big_seen.last < count,
        "the newest {big} message arrived before `unsubscribed`: nothing was held back, \
         the test proved nothing"
    );
    assert!(
        after.is_empty(),
        "{} frame(s) of {big} after `unsubscribed` (messages before it: {}), first: {}",
        after.len(),
        big_seen.messages,
        after[0]
    );
}
