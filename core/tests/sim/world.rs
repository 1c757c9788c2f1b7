//! The simulated broker: shards of [`Engine`] joined by a simulated mesh,
//! clients of every transport with the runtime's part played as the broker
//! plays it, a virtual clock, and a checker that holds what every client
//! reads against the protocol contract (`docs/protocol.md`).
//!
//! Everything is driven by [`Op`]s through [`World::apply`]: the seeded
//! scheduler (`sched.rs`), the property tests and the fuzz target (which
//! includes this file by path) only choose them. A broken invariant panics
//! with the last events of the trace in the message.
//!
//! What the checker holds, per client and topic:
//! - replies come in command order (matched by `id`), each of the kind its
//!   command calls for, and every command is answered (unless the
//!   connection is being closed);
//! - nothing of a topic before its `subscribed` or after its
//!   `unsubscribed`; `gap` only right after `subscribed`, for the `since`
//!   that was asked;
//! - seqs grow by exactly 1, except across a `gap`/`skipped` notice whose
//!   range is exactly what is missing; `skipped` only where the policy or
//!   the mesh allows it;
//! - one seq of one topic incarnation is one message (the same data for
//!   every reader), one published message has one seq, and the publisher's
//!   `published` seq is the one its subscribers read;
//! - a message published after a client read `subscribed` reaches it (or is
//!   noticed), and every live subscriber ends at the topic's last seq;
//! - nothing after a slow-consumer close but what the runtime sends (the
//!   close frame), nothing after the end of a stream;
//! - no lost wake-up, no reader left waiting, bounded outboxes and held
//!   polls, the gauges equal to what is held, and nothing left behind once
//!   every client is gone.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringcast_core::outbox::{State, CONTROL_SLACK};
use ringcast_core::wire::client::{self, Incoming};
use ringcast_core::wire::command::{self, Command};
use ringcast_core::wire::reply;
use ringcast_core::{
    Authorizer, ConnId, Credentials, Denied, Engine, Flow, Grant, Limits, Msg, Output, Placement,
    Route, ShardId, SlowConsumer, Transport,
};
use ringcast_proto::close::{CloseCode, CloseFrame};
use ringcast_proto::frame::{encode_frame, FrameHeader, OpCode};
use serde_json::value::RawValue;

// ---------------------------------------------------------------------------
// The trace: the last events, kept per thread so that a panic anywhere (the
// engine's own assertions included) can be reported with it.

/// Events kept, and shown in a failure's message (`SIM_TRACE_FILE=path`
/// writes all that are kept).
const TRACE_KEEP: usize = 100_000;
const TRACE_LEN: usize = 300;

thread_local! {
    static TRACE: RefCell<VecDeque<String>> = const { RefCell::new(VecDeque::new()) };
    static TRACING: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Whether events are recorded (a run is deterministic: the drivers run
/// fast without, and replay a failing run with it).
pub fn set_tracing(on: bool) {
    TRACING.with(|t| t.set(on));
}

pub fn tracing() -> bool {
    TRACING.with(|t| t.get())
}

/// Records an event: `trace!("...", args)` formats only when tracing.
macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            trace(format!($($arg)*));
        }
    };
}

fn trace(line: String) {
    TRACE.with(|t| {
        let mut t = t.borrow_mut();
        if t.len() == TRACE_KEEP {
            t.pop_front();
        }
        t.push_back(line);
    });
}

/// The last events (oldest first), and forgets them.
pub fn take_trace() -> String {
    TRACE.with(|t| {
        let t: Vec<String> = t.borrow_mut().drain(..).collect();
        if let (Ok(path), false) = (std::env::var("SIM_TRACE_FILE"), t.is_empty()) {
            let _ = std::fs::write(path, t.join("\n"));
        }
        t[t.len().saturating_sub(TRACE_LEN)..].join("\n")
    })
}

/// A broken invariant: panics with the trace.
fn fail(msg: String) -> ! {
    trace(format!("!! {msg}"));
    panic!(
        "invariant broken: {msg}\n--- trace (last {TRACE_LEN} events) ---\n{}",
        take_trace()
    );
}

fn short(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() > 160 {
        let mut end = 160;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s.into_owned()
    }
}

// ---------------------------------------------------------------------------
// The mesh.

/// One shard's side of the mesh: a FIFO per destination, bounded for
/// `try_send` when `cap` is set.
pub struct SimRoute {
    pub shard: ShardId,
    pub queues: Vec<VecDeque<Msg>>,
    pub cap: Option<usize>,
    /// Messages `try_send` refused.
    pub refused: u64,
}

impl Route for SimRoute {
    fn try_send(&mut self, dst: ShardId, msg: Msg) -> Result<(), Msg> {
        assert_ne!(
            dst, self.shard,
            "the engine sent itself a message by the route"
        );
        if self.cap.is_some_and(|c| self.queues[dst].len() >= c) {
            self.refused += 1;
            trace!(
                "  route {}->{dst} full: refused {}",
                self.shard,
                msg_name(&msg)
            );
            return Err(msg);
        }
        self.queues[dst].push_back(msg);
        Ok(())
    }

    fn send(&mut self, dst: ShardId, msg: Msg) {
        assert_ne!(
            dst, self.shard,
            "the engine sent itself a message by the route"
        );
        self.queues[dst].push_back(msg);
    }
}

fn msg_name(m: &Msg) -> String {
    match m {
        Msg::Publish { topic, .. } => format!("Publish({topic})"),
        Msg::Subscribe {
            topic,
            token,
            since,
            ..
        } => format!("Subscribe({topic}, t{token}, since {since:?})"),
        Msg::Unsubscribe { topic, .. } => format!("Unsubscribe({topic})"),
        Msg::Deliver { topic, seq, .. } => format!("Deliver({topic} #{seq})"),
        Msg::SubAck {
            topic,
            token,
            result,
        } => format!(
            "SubAck({topic}, t{token}, {:?})",
            result.as_ref().map(|s| (s.last_seq, s.epoch.to_string()))
        ),
        Msg::PubAck { token, result } => format!("PubAck(t{token}, {result:?})"),
        Msg::PubRefused { topic, code, .. } => format!("PubRefused({topic}, {code:?})"),
        _ => "?".to_string(),
    }
}

/// Subscribing to `secret.*` and publishing (on `/ws`) to `ro.*` are denied.
pub struct SimAuth;

/// `Denied::Forbidden` is being reworked (a unit variant becomes one with
/// its message): this builds one from either shape, so the simulator
/// compiles against both. Once the new shape is in, it is
/// `Denied::Forbidden(why)`.
trait Forbid {
    fn with(self, why: String) -> Denied;
}

impl Forbid for Denied {
    fn with(self, _: String) -> Denied {
        self
    }
}

impl<F: FnOnce(String) -> Denied> Forbid for F {
    fn with(self, why: String) -> Denied {
        self(why)
    }
}

fn forbidden(what: &str, topic: &str) -> Denied {
    Denied::Forbidden.with(format!("not allowed to {what} {topic}"))
}

impl Authorizer for SimAuth {
    fn admit(&self, _: &Credentials) -> Result<Grant, Denied> {
        Ok(Grant::default())
    }

    fn subscribe(&self, _: &Grant, topic: &str) -> Result<(), Denied> {
        if topic.starts_with("secret.") {
            Err(forbidden("subscribe to", topic))
        } else {
            Ok(())
        }
    }

    fn publish(&self, _: &Grant, topic: &str) -> Result<(), Denied> {
        if topic.starts_with("ro.") {
            Err(forbidden("publish to", topic))
        } else {
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// Inputs.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ws,
    Sse,
    Poll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Live from now on.
    None,
    /// Resume from the last seq this client (or the one it resumes) read.
    Last,
    Zero,
    Value(u64),
}

/// One step of the simulation. Indices are taken modulo what exists (so any
/// sequence is valid); an op that does not apply is a no-op.
#[derive(Debug, Clone)]
pub enum Op {
    /// A new client on `shard`. SSE subscribes to `topic` at once; with
    /// `resume`, it takes over that client's positions (a reconnect).
    Connect {
        shard: u8,
        kind: Kind,
        topic: u8,
        since: Since,
        resume: Option<u16>,
    },
    Subscribe {
        client: u16,
        topic: u8,
        since: Since,
        id: bool,
    },
    Unsubscribe {
        client: u16,
        topic: u8,
        id: bool,
    },
    Publish {
        client: u16,
        topic: u8,
        id: bool,
        size: u16,
    },
    /// Any text frame, as a command.
    Raw {
        client: u16,
        text: Vec<u8>,
    },
    HttpPublish {
        shard: u8,
        topic: u8,
        token: bool,
        size: u16,
    },
    /// The client goes away.
    Close {
        client: u16,
    },
    /// A long-poll client sends its next request (if none is held).
    Poll {
        client: u16,
        topic: u8,
    },
    /// A held long-poll is answered (its message arrived or its timeout).
    PollAnswer {
        client: u16,
    },
    /// The client's writer takes a batch of up to `max` buffers (if it is
    /// awake and holds none), or writes `part` of what it holds (0: all).
    Write {
        client: u16,
        max: u8,
        part: u8,
    },
    /// Up to `n` messages from shard `src` to shard `dst`.
    Deliver {
        src: u8,
        dst: u8,
        n: u8,
    },
    Advance {
        ms: u32,
    },
    /// The shard's timer fires (`early`: before it is due).
    Timeout {
        shard: u8,
        early: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Setup {
    pub shards: usize,
    pub limits: Limits,
    /// Bound of each mesh queue (per sender and receiver) for `try_send`.
    pub queue_cap: Option<usize>,
    pub topics: Vec<String>,
    pub placement_seed: [u64; 4],
    /// Largest `data` the scheduler publishes (bounds the outbox check).
    pub max_data: usize,
    /// The runtime hands over one more command while the engine says wait
    /// (the engine documents that it runs in turn).
    pub eager_reader: bool,
    /// The reader pauses while the outbox cannot take a command's reply
    /// (`Outbox::can_take_command`), as the broker's does; without, a peer
    /// that does not read its replies is dropped.
    pub pause_reader: bool,
}

impl Setup {
    pub fn simple(shards: usize) -> Setup {
        Setup {
            shards,
            limits: Limits::default(),
            queue_cap: None,
            topics: (0..16).map(|i| format!("t{i}")).collect(),
            placement_seed: [1, 2, 3, 4],
            max_data: 400,
            eager_reader: false,
            pause_reader: true,
        }
    }
}

// ---------------------------------------------------------------------------
// What the checker remembers.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// No answer yet.
    Pending,
    /// An id-less `/ws` publish: no answer unless it fails.
    Quiet,
    Seq(u64),
    Refused(String),
}

#[derive(Debug)]
struct PubRec {
    topic: String,
    /// When the engine took it (the command was handed over, or the HTTP
    /// publish made).
    step: Option<u64>,
    outcome: Outcome,
    /// The (epoch, seq) a reader saw it under.
    seen: Option<(String, u64)>,
    client: Option<usize>,
}

/// One subscription, from the client's reading of `subscribed`.
#[derive(Debug)]
struct SubRec {
    client: usize,
    topic: String,
    epoch: String,
    start: u64,
    /// When it ended (unsubscribe handed over, close, slow close).
    end: Option<u64>,
    first: Option<u64>,
    last: Option<u64>,
}

/// A command waiting for its reply.
#[derive(Debug)]
struct Expect {
    /// The raw `id` (None: the command had none, or it could not be read).
    id: Option<Vec<u8>>,
    what: Want,
}

#[derive(Debug)]
enum Want {
    Subscribe { topic: String, since: Option<u64> },
    Unsubscribe { topic: String },
    Publish { topic: String, uid: Option<usize> },
    Error { code: &'static str },
}

/// A client's view of one topic.
#[derive(Debug, Clone)]
struct View {
    rec: usize,
    epoch: String,
    /// The last seq read (or covered by a notice); None: nothing yet.
    pos: Option<u64>,
    /// Nothing read since `subscribed`: a `gap` may come.
    fresh: bool,
    since: Option<u64>,
    id: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PollState {
    Idle,
    /// The subscribe waits for the owner (Resume).
    Waiting {
        topic: String,
        since: u64,
    },
    Held {
        topic: String,
        since: u64,
    },
}

pub struct Client {
    pub kind: Kind,
    pub shard: usize,
    pub conn: ConnId,
    /// The engine has the session (close not yet called).
    pub open: bool,
    /// The socket is gone: nothing more is read or written.
    pub cut: bool,
    /// SlowClose or Drop received: the connection is being closed.
    pub closing: bool,
    // The runtime's reader (WebSocket): frames sent, not yet handed over.
    unsent: VecDeque<Bytes>,
    waiting: bool,
    /// One command was handed over while waiting (eager reader).
    handed_early: bool,
    // The writer.
    awake: bool,
    holding: VecDeque<Bytes>,
    pub speed: u8,
    // What the client has read.
    rx: BytesMut,
    got_close: bool,
    eof: bool,
    // The checker.
    expected: VecDeque<Expect>,
    idless: usize,
    views: HashMap<String, View>,
    /// Per topic, the (epoch, seq) to resume from.
    pub memory: HashMap<String, (String, u64)>,
    // SSE: its one topic and the since it asked for.
    sse: Option<(String, Option<u64>)>,
    sse_subscribed: bool,
    // Long-polling.
    poll: PollState,
    poll_ready: bool,
}

impl Client {
    pub fn is_live(&self) -> bool {
        self.open && !self.cut && !self.closing
    }

    pub fn subscribed_topics(&self) -> Vec<String> {
        self.views.keys().cloned().collect()
    }

    pub fn poll_idle(&self) -> bool {
        self.poll == PollState::Idle
    }
}

// ---------------------------------------------------------------------------
// The world.

pub struct World {
    pub setup: Setup,
    base: Instant,
    pub elapsed: Duration,
    pub step: u64,
    pub engines: Vec<Engine<SimRoute>>,
    pub clients: Vec<Client>,
    pubs: Vec<PubRec>,
    subs: Vec<SubRec>,
    /// (topic, epoch, seq) -> data.
    seen: HashMap<(String, String, u64), Bytes>,
    tokens: HashMap<u64, usize>,
    next_id: u64,
    next_token: u64,
    /// Whether `skipped` may appear without a mesh drop (conflation).
    conflate: bool,
    /// Some notices (and refusals) are only possible with a bounded mesh.
    bounded: bool,
    /// Errors seen, by code (a sanity count for the drivers).
    pub errors: HashMap<String, u64>,
    pub notices: u64,
    pub messages: u64,
    pub slow_closes: u64,
    /// Also check the gauges through `Engine::inspect` after every step.
    pub inspect_gauges: bool,
}

const EPOCH: &str = "e5a1";

impl World {
    pub fn new(setup: Setup) -> World {
        assert!((1..=8).contains(&setup.shards));
        let placement = Placement::new(setup.shards, setup.placement_seed);
        let engines = (0..setup.shards)
            .map(|shard| {
                let route = SimRoute {
                    shard,
                    queues: (0..setup.shards).map(|_| VecDeque::new()).collect(),
                    cap: setup.queue_cap,
                    refused: 0,
                };
                Engine::new(
                    shard,
                    placement.clone(),
                    setup.limits.clone(),
                    EPOCH,
                    route,
                    Box::new(SimAuth),
                )
            })
            .collect();
        TRACE.with(|t| t.borrow_mut().clear());
        trace!("setup {setup:?}");
        World {
            conflate: setup.limits.slow_consumer == SlowConsumer::Conflate,
            bounded: setup.queue_cap.is_some(),
            setup,
            base: Instant::now(),
            elapsed: Duration::ZERO,
            step: 0,
            engines,
            clients: Vec::new(),
            pubs: Vec::new(),
            subs: Vec::new(),
            seen: HashMap::new(),
            tokens: HashMap::new(),
            next_id: 1,
            next_token: 1,
            errors: HashMap::new(),
            notices: 0,
            messages: 0,
            slow_closes: 0,
            inspect_gauges: false,
        }
    }

    pub fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    fn topic(&self, i: u8) -> String {
        self.setup.topics[i as usize % self.setup.topics.len()].clone()
    }

    fn client_index(&self, i: u16) -> Option<usize> {
        (!self.clients.is_empty()).then(|| i as usize % self.clients.len())
    }

    /// The index (into `setup.topics`) of a topic that `shard` owns.
    pub fn topic_owned_by(&self, shard: usize) -> u8 {
        let i = self
            .setup
            .topics
            .iter()
            .position(|t| self.owner_of(t) == shard)
            .expect("a topic for every shard: add names to the setup");
        i as u8
    }

    fn owner_of(&self, topic: &str) -> ShardId {
        Placement::new(self.setup.shards, self.setup.placement_seed).owner(topic)
    }

    /// Data that names its publish: `{"u":N,"p":"xx..."}`.
    fn new_pub(&mut self, topic: &str, client: Option<usize>, size: u16) -> (usize, Bytes) {
        let uid = self.pubs.len();
        self.pubs.push(PubRec {
            topic: topic.to_string(),
            step: None,
            outcome: Outcome::Pending,
            seen: None,
            client,
        });
        let pad = (size as usize) % (self.setup.max_data.max(16) - 15);
        let data = format!("{{\"u\":{uid},\"p\":\"{}\"}}", "x".repeat(pad));
        (uid, Bytes::from(data))
    }

    // ---- applying ops -------------------------------------------------------

    pub fn apply(&mut self, op: &Op) {
        self.step += 1;
        match *op {
            Op::Connect {
                shard,
                kind,
                topic,
                since,
                resume,
            } => {
                let shard = shard as usize % self.setup.shards;
                let topic = self.topic(topic);
                let memory = resume
                    .and_then(|r| self.client_index(r))
                    .map(|r| self.clients[r].memory.clone())
                    .unwrap_or_default();
                self.connect(shard, kind, memory, Some((topic, since)));
            }
            Op::Subscribe {
                client,
                topic,
                since,
                id,
            } => {
                let Some(c) = self.client_index(client) else {
                    return;
                };
                let topic = self.topic(topic);
                let since = self.since_for(c, &topic, since);
                let mut cmd = format!(r#"{{"op":"subscribe","topic":"{topic}""#);
                if let Some(s) = since {
                    cmd += &format!(r#","since":{s}"#);
                }
                self.send_command(c, cmd, id);
            }
            Op::Unsubscribe { client, topic, id } => {
                let Some(c) = self.client_index(client) else {
                    return;
                };
                let topic = self.topic(topic);
                self.send_command(c, format!(r#"{{"op":"unsubscribe","topic":"{topic}""#), id);
            }
            Op::Publish {
                client,
                topic,
                id,
                size,
            } => {
                let Some(c) = self.client_index(client) else {
                    return;
                };
                if self.clients[c].kind != Kind::Ws {
                    return;
                }
                let topic = self.topic(topic);
                let (_, data) = self.new_pub(&topic, Some(c), size);
                let cmd = format!(
                    r#"{{"op":"publish","topic":"{topic}","data":{}"#,
                    std::str::from_utf8(&data).unwrap()
                );
                self.send_command(c, cmd, id);
            }
            Op::Raw { client, ref text } => {
                let Some(c) = self.client_index(client) else {
                    return;
                };
                let text = String::from_utf8_lossy(text).into_owned();
                self.send_raw(c, Bytes::from(text));
            }
            Op::HttpPublish {
                shard,
                topic,
                token,
                size,
            } => {
                let shard = shard as usize % self.setup.shards;
                let topic = self.topic(topic);
                self.http_publish(shard, &topic, token, size);
            }
            Op::Close { client } => {
                if let Some(c) = self.client_index(client) {
                    self.client_close(c, "client goes away");
                }
            }
            Op::Poll { client, topic } => {
                if let Some(c) = self.client_index(client) {
                    let topic = self.topic(topic);
                    self.poll_start(c, &topic);
                }
            }
            Op::PollAnswer { client } => {
                if let Some(c) = self.client_index(client) {
                    self.poll_answer(c, "timeout");
                }
            }
            Op::Write { client, max, part } => {
                if let Some(c) = self.client_index(client) {
                    self.write(c, max as usize, part as usize);
                }
            }
            Op::Deliver { src, dst, n } => {
                let src = src as usize % self.setup.shards;
                let dst = dst as usize % self.setup.shards;
                for _ in 0..n.max(1) {
                    if !self.deliver(src, dst) {
                        break;
                    }
                }
            }
            Op::Advance { ms } => {
                self.elapsed += Duration::from_millis(ms as u64);
                trace!("{} clock +{ms}ms = {:?}", self.step, self.elapsed);
            }
            Op::Timeout { shard, early } => {
                let shard = shard as usize % self.setup.shards;
                self.timeout(shard, early);
            }
        }
        self.run_outputs();
        self.check_step();
    }

    fn since_for(&self, c: usize, topic: &str, since: Since) -> Option<u64> {
        match since {
            Since::None => None,
            Since::Zero => Some(0),
            Since::Value(v) => Some(v),
            Since::Last => Some(self.clients[c].memory.get(topic).map_or(0, |m| m.1)),
        }
    }

    /// Opens a client; SSE subscribes at once to `sub`'s topic.
    pub fn connect(
        &mut self,
        shard: usize,
        kind: Kind,
        memory: HashMap<String, (String, u64)>,
        sub: Option<(String, Since)>,
    ) -> usize {
        let conn = self.engines[shard].open(Grant::default());
        let transport = match kind {
            Kind::Ws => Transport::WebSocket,
            Kind::Sse => Transport::Sse,
            Kind::Poll => Transport::Plain,
        };
        self.engines[shard].set_transport(conn, transport);
        let c = self.clients.len();
        self.clients.push(Client {
            kind,
            shard,
            conn,
            open: true,
            cut: false,
            closing: false,
            unsent: VecDeque::new(),
            waiting: false,
            handed_early: false,
            awake: false,
            holding: VecDeque::new(),
            speed: (c % 3) as u8,
            rx: BytesMut::new(),
            got_close: false,
            eof: false,
            expected: VecDeque::new(),
            idless: 0,
            views: HashMap::new(),
            memory,
            sse: None,
            sse_subscribed: false,
            poll: PollState::Idle,
            poll_ready: false,
        });
        trace!(
            "{} connect c{c} {kind:?} on shard {shard} ({conn:?})",
            self.step
        );
        if kind == Kind::Sse {
            let (topic, since) = sub.unwrap_or_else(|| (self.topic(0), Since::None));
            let since = self.since_for(c, &topic, since);
            self.clients[c].sse = Some((topic.clone(), since));
            trace!("{} c{c} GET /sse/{topic}?since={since:?}", self.step);
            let now = self.now();
            let flow = self.engines[shard].subscribe(conn, &topic, since, now);
            if flow == Flow::Wait {
                self.clients[c].waiting = true;
            } else {
                self.http_subscribed(c);
            }
        }
        c
    }

    /// A `/ws` command built by the simulator, with a fresh `id` if asked.
    fn send_command(&mut self, c: usize, mut cmd: String, id: bool) {
        if id {
            cmd += &format!(r#","id":{}"#, self.next_id);
            self.next_id += 1;
        }
        cmd.push('}');
        self.send_raw(c, Bytes::from(cmd));
    }

    /// A text frame from a `/ws` client: what the broker will make of it is
    /// what its own parser says, so that is the reply expected.
    fn send_raw(&mut self, c: usize, frame: Bytes) {
        let cl = &self.clients[c];
        if cl.kind != Kind::Ws || cl.cut || cl.closing {
            return;
        }
        // What the engine's own parser makes of it (with its depth bound).
        let depth = self.setup.limits.max_json_depth;
        let want = match command::parse_limited(&frame, depth) {
            Ok(Command::Subscribe { topic, since, id }) => Some(Expect {
                id: id.map(|i| i.0.to_vec()),
                what: Want::Subscribe { topic, since },
            }),
            Ok(Command::Unsubscribe { topic, id }) => Some(Expect {
                id: id.map(|i| i.0.to_vec()),
                what: Want::Unsubscribe { topic },
            }),
            Ok(Command::Publish { topic, data, id }) => {
                let uid = uid_of(&data);
                if uid.is_some_and(|u| u >= self.pubs.len() || self.pubs[u].topic != topic) {
                    // Made-up data that looks like ours (fuzzing): it
                    // would confuse the ledger. Not sent.
                    return;
                }
                if uid.is_none() && data.starts_with(b"{\"u\"") {
                    return;
                }
                match id {
                    Some(id) => Some(Expect {
                        id: Some(id.0.to_vec()),
                        what: Want::Publish { topic, uid },
                    }),
                    None => {
                        if let Some(u) = uid {
                            self.pubs[u].outcome = Outcome::Quiet;
                        }
                        self.clients[c].idless += 1;
                        None
                    }
                }
            }
            Err(e) => Some(Expect {
                id: e.id.map(|i| i.0.to_vec()),
                what: Want::Error {
                    code: e.code.as_str(),
                },
            }),
            // A command this checker does not model (one added to the
            // protocol since): not sent.
            #[allow(unreachable_patterns)]
            Ok(_) => return,
        };
        trace!("{} c{c} sends {}", self.step, short(&frame));
        let cl = &mut self.clients[c];
        cl.expected.extend(want);
        cl.unsent.push_back(frame);
        self.pump(c);
    }

    /// The runtime's reader: hands commands over while the engine lets it.
    fn pump(&mut self, c: usize) {
        loop {
            let eager = self.setup.eager_reader;
            let cl = &mut self.clients[c];
            if cl.cut || !cl.open || cl.unsent.is_empty() {
                return;
            }
            let (shard, conn) = (cl.shard, cl.conn);
            if self.setup.pause_reader
                && !self.engines[shard]
                    .outbox(conn)
                    .is_none_or(|o| o.can_take_command())
            {
                // Paused until the writer makes room (see `write`).
                return;
            }
            let cl = &mut self.clients[c];
            if cl.waiting {
                if !eager || cl.handed_early {
                    return;
                }
                cl.handed_early = true;
            }
            let Some(frame) = cl.unsent.pop_front() else {
                return;
            };
            // The ledger: when the engine took each publish, and when an
            // unsubscribe ended what the client had.
            match command::parse(&frame) {
                Ok(Command::Publish { data, .. }) => {
                    if let Some(u) = uid_of(&data) {
                        self.pubs[u].step = Some(self.step);
                    }
                }
                Ok(Command::Unsubscribe { topic, .. }) => {
                    if let Some(v) = self.clients[c].views.get(&topic) {
                        let rec = v.rec;
                        self.subs[rec].end.get_or_insert(self.step);
                    }
                }
                _ => {}
            }
            let now = self.now();
            let flow = self.engines[shard].command(conn, &frame, now);
            trace!("{} c{c} command {} -> {flow:?}", self.step, short(&frame));
            if flow == Flow::Wait {
                self.clients[c].waiting = true;
            }
            self.run_outputs();
            if self.clients[c].handed_early && self.clients[c].waiting {
                // The one command handed over early waits inside the engine.
                return;
            }
        }
    }

    fn http_publish(&mut self, shard: usize, topic: &str, token: bool, size: u16) -> usize {
        let (uid, data) = self.new_pub(topic, None, size);
        let tok = token.then(|| {
            let t = self.next_token;
            self.next_token += 1;
            self.tokens.insert(t, uid);
            t
        });
        self.pubs[uid].step = Some(self.step);
        if !token {
            self.pubs[uid].outcome = Outcome::Quiet;
        }
        let now = self.now();
        let r = self.engines[shard].publish(topic, data, tok, now);
        trace!(
            "{} POST /publish/{topic} on shard {shard} (u{uid}, token {tok:?}) -> {r:?}",
            self.step
        );
        if let Err(code) = r {
            if !self.bounded {
                fail(format!(
                    "HTTP publish refused {code:?} with an unbounded mesh"
                ));
            }
            self.pubs[uid].outcome = Outcome::Refused(code.as_str().to_string());
            if let Some(t) = tok {
                self.tokens.remove(&t);
            }
        }
        self.run_outputs();
        uid
    }

    fn client_close(&mut self, c: usize, why: &str) {
        let cl = &mut self.clients[c];
        if !cl.open {
            return;
        }
        cl.open = false;
        cl.cut = true;
        cl.holding.clear();
        cl.waiting = false;
        let (shard, conn) = (cl.shard, cl.conn);
        for v in cl.views.values() {
            self.subs[v.rec].end.get_or_insert(self.step);
        }
        trace!("{} c{c} closed ({why})", self.step);
        let now = self.now();
        self.engines[shard].close(conn, now);
        self.run_outputs();
    }

    fn deliver(&mut self, src: usize, dst: usize) -> bool {
        let Some(msg) = self.engines[src].route_mut().queues[dst].pop_front() else {
            return false;
        };
        trace!("{} mesh {src}->{dst} {}", self.step, msg_name(&msg));
        if let Msg::PubAck { .. } | Msg::PubRefused { .. } = &msg {
            // Nothing to note: the replies say it.
        }
        let now = self.now();
        self.engines[dst].handle(msg, now);
        self.run_outputs();
        true
    }

    fn timeout(&mut self, shard: usize, early: bool) {
        let now = self.now();
        let due = self.engines[shard].poll_timeout();
        if early || due.is_some_and(|d| d <= now) {
            trace!(
                "{} shard {shard} timeout (due {:?})",
                self.step,
                due.map(|d| d - self.base)
            );
            self.engines[shard].handle_timeout(now);
            if let Some(next) = self.engines[shard].poll_timeout() {
                if next <= now {
                    fail(format!(
                        "shard {shard}: after handle_timeout the next timeout {:?} is not after now {:?}",
                        next - self.base,
                        self.elapsed
                    ));
                }
            }
        }
    }

    // ---- the writer ------------------------------------------------------------

    fn write(&mut self, c: usize, max: usize, part: usize) {
        let cl = &mut self.clients[c];
        if cl.cut || !cl.open {
            return;
        }
        let (shard, conn) = (cl.shard, cl.conn);
        if !cl.holding.is_empty() {
            let total: usize = cl.holding.iter().map(Bytes::len).sum();
            let n = if part == 0 {
                total
            } else {
                (part * 7).min(total)
            };
            // The first n bytes reach the client.
            let mut left = n;
            while left > 0 {
                let b = cl.holding.front_mut().unwrap();
                if b.len() <= left {
                    left -= b.len();
                    let b = cl.holding.pop_front().unwrap();
                    cl.rx.extend_from_slice(&b);
                } else {
                    let head = b.split_to(left);
                    cl.rx.extend_from_slice(&head);
                    left = 0;
                }
            }
            trace!("{} c{c} writer wrote {n} of {total}", self.step);
            self.engines[shard].written(conn, n);
            self.run_outputs();
            self.read(c);
            // Room for replies again: a paused reader goes on.
            self.pump(c);
            return;
        }
        if !cl.awake {
            return;
        }
        let mut batch = Vec::new();
        let state = self.engines[shard].take_batch(conn, &mut batch, max.max(1));
        let cl = &mut self.clients[c];
        if batch.is_empty() {
            match state {
                State::Open => {
                    cl.awake = false;
                }
                State::Finishing => {
                    // Everything written: half-close. The client reads the
                    // end of the stream; the runtime then closes.
                    trace!("{} c{c} writer finished: end of stream", self.step);
                    cl.eof = true;
                    self.client_close(c, "stream finished");
                }
                State::Closed => {
                    cl.awake = false;
                    cl.cut = true;
                }
            }
        } else {
            trace!(
                "{} c{c} writer took {} buffers ({} bytes)",
                self.step,
                batch.len(),
                batch.iter().map(Bytes::len).sum::<usize>()
            );
            cl.holding.extend(batch);
        }
    }

    // ---- outputs (the runtime's part) -------------------------------------------

    fn client_of(&self, shard: usize, conn: ConnId) -> Option<usize> {
        // Newest first: a reused slot belongs to the newest client.
        (0..self.clients.len()).rev().find(|&c| {
            let cl = &self.clients[c];
            cl.shard == shard && cl.conn == conn && cl.open
        })
    }

    fn run_outputs(&mut self) {
        loop {
            let mut any = false;
            for shard in 0..self.engines.len() {
                while let Some(out) = self.engines[shard].poll_output() {
                    any = true;
                    self.output(shard, out);
                }
            }
            if !any {
                return;
            }
        }
    }

    fn output(&mut self, shard: usize, out: Output) {
        trace!("{}   shard {shard} output {out:?}", self.step);
        let conn = match &out {
            Output::Published { token, result } => {
                let Some(uid) = self.tokens.remove(token) else {
                    fail(format!("Published for unknown token {token}"));
                };
                self.pubs[uid].outcome = match result {
                    Ok(seq) => Outcome::Seq(*seq),
                    Err(code) => {
                        self.check_refusal(code.as_str(), None);
                        Outcome::Refused(code.as_str().to_string())
                    }
                };
                self.check_published(uid);
                return;
            }
            Output::Wake(c)
            | Output::Resume(c)
            | Output::Drop(c)
            | Output::SlowClose(c)
            | Output::PollReady(c) => *c,
            Output::Close { conn, .. } => *conn,
        };
        let Some(c) = self.client_of(shard, conn) else {
            // For a connection already closed: nothing to do.
            return;
        };
        match out {
            // Access control is open and unlimited here.
            Output::Close { code, reason, .. } => fail(format!(
                "c{c}: access close {code} {reason} under open access"
            )),
            Output::Wake(_) => self.clients[c].awake = true,
            Output::Resume(_) => {
                let cl = &mut self.clients[c];
                let was = std::mem::replace(&mut cl.waiting, false);
                cl.handed_early = false;
                match cl.kind {
                    Kind::Ws => {
                        if !was {
                            fail(format!("c{c}: Resume for a reader that was not waiting"));
                        }
                        self.pump(c);
                    }
                    Kind::Sse => {
                        if was && !self.clients[c].sse_subscribed {
                            self.http_subscribed(c);
                        }
                    }
                    Kind::Poll => {
                        if let PollState::Waiting { topic, since } = cl.poll.clone() {
                            cl.poll = PollState::Held { topic, since };
                            self.poll_subscribed(c);
                        }
                    }
                }
            }
            Output::Drop(_) => {
                let cl = &mut self.clients[c];
                cl.closing = true;
                for v in cl.views.values() {
                    self.subs[v.rec].end.get_or_insert(self.step);
                }
                self.client_close(c, "dropped: does not read its replies");
            }
            Output::SlowClose(_) => {
                self.slow_closes += 1;
                let cl = &mut self.clients[c];
                if cl.closing {
                    fail(format!("c{c}: SlowClose twice"));
                }
                if self.conflate && cl.kind != Kind::Poll {
                    fail(format!("c{c}: SlowClose under the conflate policy"));
                }
                cl.closing = true;
                for v in cl.views.values() {
                    self.subs[v.rec].end.get_or_insert(self.step);
                }
                if cl.kind == Kind::Ws {
                    // The runtime's close frame, ahead of nothing: the
                    // queue was discarded.
                    let mut f = BytesMut::new();
                    encode_frame(
                        &mut f,
                        true,
                        OpCode::Close,
                        None,
                        &CloseFrame::payload(CloseCode::POLICY, "slow consumer"),
                    );
                    let (shard, conn) = (cl.shard, cl.conn);
                    let ob = self.engines[shard].outbox(conn).expect("open");
                    if ob.push_control(f.freeze()).is_err() {
                        self.client_close(c, "close frame does not fit");
                        return;
                    }
                    if ob.take_wake() {
                        self.clients[c].awake = true;
                    }
                }
            }
            Output::PollReady(_) => {
                let cl = &mut self.clients[c];
                if cl.kind != Kind::Poll {
                    fail(format!("c{c}: PollReady for a {:?} client", cl.kind));
                }
                cl.poll_ready = true;
            }
            Output::Published { .. } => unreachable!(),
        }
    }

    /// An SSE subscription is settled: refused (an error response) or
    /// streaming.
    fn http_subscribed(&mut self, c: usize) {
        let (shard, conn) = (self.clients[c].shard, self.clients[c].conn);
        if let Some(code) = self.engines[shard].take_refusal(conn) {
            trace!("{} c{c} SSE refused: {code:?}", self.step);
            let topic = self.clients[c].sse.clone().unwrap().0;
            self.check_http_refusal(code.as_str(), &topic);
            self.client_close(c, "SSE refused");
            return;
        }
        self.clients[c].sse_subscribed = true;
    }

    // ---- long-polling ---------------------------------------------------------------

    fn poll_start(&mut self, c: usize, topic: &str) {
        let cl = &self.clients[c];
        if cl.kind != Kind::Poll || cl.cut || !cl.open || cl.poll != PollState::Idle {
            return;
        }
        let since = cl.memory.get(topic).map_or(0, |m| m.1);
        let (shard, conn) = (cl.shard, cl.conn);
        trace!("{} c{c} GET /poll/{topic}?since={since}", self.step);
        self.engines[shard].set_transport(conn, Transport::Poll);
        let now = self.now();
        let flow = self.engines[shard].subscribe(conn, topic, Some(since), now);
        let cl = &mut self.clients[c];
        cl.poll_ready = false;
        if flow == Flow::Wait {
            cl.waiting = true;
            cl.poll = PollState::Waiting {
                topic: topic.to_string(),
                since,
            };
        } else {
            cl.poll = PollState::Held {
                topic: topic.to_string(),
                since,
            };
            self.poll_subscribed(c);
        }
        self.run_outputs();
    }

    /// The poll's subscription is settled: refused, answered at once, or
    /// held.
    fn poll_subscribed(&mut self, c: usize) {
        let (shard, conn) = (self.clients[c].shard, self.clients[c].conn);
        if let Some(code) = self.engines[shard].take_refusal(conn) {
            trace!("{} c{c} poll refused: {code:?}", self.step);
            if let PollState::Waiting { topic, .. } | PollState::Held { topic, .. } =
                self.clients[c].poll.clone()
            {
                self.check_http_refusal(code.as_str(), &topic);
            }
            let now = self.now();
            self.engines[shard].take_poll(conn, now);
            self.clients[c].poll = PollState::Idle;
            return;
        }
        if self.engines[shard].poll_ready(conn) {
            self.clients[c].poll_ready = true;
        }
    }

    /// Answers a held poll (or one still waiting: its timeout came first).
    fn poll_answer(&mut self, c: usize, why: &str) {
        let cl = &self.clients[c];
        if cl.cut || !cl.open {
            return;
        }
        let (topic, since) = match &cl.poll {
            PollState::Idle => return,
            PollState::Waiting { topic, since } | PollState::Held { topic, since } => {
                (topic.clone(), *since)
            }
        };
        let (shard, conn) = (cl.shard, cl.conn);
        let now = self.now();
        let ready = self.engines[shard].poll_ready(conn);
        // As the broker does: the epoch first (the answer ends the
        // subscription). None: the poll ended before it went live, and the
        // broker answers 503 with nothing in it.
        let epoch = self.engines[shard].poll_epoch(conn);
        let (gap, frames) = self.engines[shard].take_poll(conn, now);
        if epoch.is_none() && (gap.is_some() || !frames.is_empty()) {
            fail(format!(
                "c{c}: a poll with no live subscription collected messages"
            ));
        }
        let epoch = epoch.unwrap_or_default();
        let cap = self.setup.limits.outbox_size;
        let collected: usize = frames.iter().map(Bytes::len).sum();
        let biggest = frames.iter().map(Bytes::len).max().unwrap_or(0);
        if collected > cap + biggest {
            fail(format!(
                "c{c}: a held poll collected {collected} bytes, cap {cap}"
            ));
        }
        let body = reply::poll_body(gap, &frames, cap);
        trace!(
            "{} c{c} poll answered ({why}, ready {ready}) epoch {epoch}: {}",
            self.step,
            short(&body)
        );
        let cl = &mut self.clients[c];
        cl.poll = PollState::Idle;
        cl.waiting = false;
        cl.poll_ready = false;
        self.run_outputs();
        self.check_poll_body(c, &topic, since, &epoch, &body);
    }

    fn check_poll_body(&mut self, c: usize, topic: &str, since: u64, epoch: &str, body: &Bytes) {
        let items: Vec<Box<RawValue>> = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => fail(format!("c{c}: poll body not a JSON array ({e})")),
        };
        if items.is_empty() {
            return;
        }
        let known = self.clients[c].memory.get(topic).cloned();
        let mut pos = since;
        for (i, item) in items.iter().enumerate() {
            let json = item.get().as_bytes();
            match client::parse(json) {
                Ok(Incoming::Gap {
                    topic: t,
                    since: s,
                    first_seq,
                }) => {
                    if i != 0 || t != topic || s != since {
                        fail(format!(
                            "c{c}: poll since {since}: gap {} at {i}",
                            short(json)
                        ));
                    }
                    pos = first_seq.saturating_sub(1);
                    self.notices += 1;
                }
                Ok(Incoming::Skipped { topic: t, from, to }) => {
                    if i != 0 || t != topic || Some(from) != pos.checked_add(1) || to < from {
                        fail(format!(
                            "c{c}: poll since {since} at {pos}: {} at {i}",
                            short(json)
                        ));
                    }
                    if !self.bounded {
                        fail(format!("c{c}: poll got skipped with an unbounded mesh"));
                    }
                    pos = to;
                    self.notices += 1;
                }
                Ok(Incoming::Message {
                    topic: t,
                    seq,
                    data,
                }) => {
                    if t != topic || Some(seq) != pos.checked_add(1) {
                        fail(format!(
                            "c{c}: poll since {since}: expected {topic} #{} got {}",
                            pos.wrapping_add(1),
                            short(json)
                        ));
                    }
                    pos = seq;
                    self.observe(c, topic, epoch, seq, data);
                }
                other => fail(format!("c{c}: in a poll answer: {other:?}")),
            }
        }
        // A client whose `since` came from another epoch starts over.
        let next = match known {
            Some((e, s)) if e != epoch && s != 0 => (epoch.to_string(), 0),
            _ => (epoch.to_string(), pos),
        };
        self.clients[c].memory.insert(topic.to_string(), next);
    }

    // ---- the client reads ---------------------------------------------------------------

    fn read(&mut self, c: usize) {
        match self.clients[c].kind {
            Kind::Ws => self.read_ws(c),
            Kind::Sse => self.read_sse(c),
            Kind::Poll => {
                if !self.clients[c].rx.is_empty() {
                    let rx = self.clients[c].rx.split();
                    fail(format!(
                        "c{c}: bytes on a long-poll connection: {}",
                        short(&rx)
                    ));
                }
            }
        }
    }

    fn read_ws(&mut self, c: usize) {
        loop {
            let cl = &mut self.clients[c];
            if cl.rx.is_empty() {
                return;
            }
            let (h, n) = match FrameHeader::decode(&cl.rx) {
                Ok(Some(x)) => x,
                Ok(None) => return,
                Err(e) => fail(format!("c{c}: bad frame from the server: {e:?}")),
            };
            let len = h.payload_len as usize;
            if cl.rx.len() < n + len {
                return;
            }
            let frame = cl.rx.split_to(n + len).freeze();
            let payload = frame.slice(n..);
            if h.mask.is_some() || !h.fin {
                fail(format!("c{c}: server frame {h:?}"));
            }
            if self.clients[c].got_close {
                fail(format!(
                    "c{c}: a frame after the close frame: {:?} {}",
                    h.opcode,
                    short(&payload)
                ));
            }
            match h.opcode {
                OpCode::Text => self.on_json(c, &payload),
                OpCode::Close => {
                    trace!("{} c{c} reads close {:?}", self.step, short(&payload));
                    if !self.clients[c].closing {
                        fail(format!("c{c}: a close frame the runtime did not send"));
                    }
                    self.clients[c].got_close = true;
                }
                op => fail(format!("c{c}: unexpected {op:?} frame")),
            }
        }
    }

    fn read_sse(&mut self, c: usize) {
        loop {
            let cl = &mut self.clients[c];
            let Some(end) = cl.rx.windows(2).position(|w| w == b"\n\n") else {
                return;
            };
            let event = cl.rx.split_to(end + 2).freeze();
            let text = match std::str::from_utf8(&event) {
                Ok(t) => t.to_string(),
                Err(_) => fail(format!("c{c}: SSE event not UTF-8")),
            };
            let mut name = None;
            let mut id = None;
            let mut data = None;
            for line in text.trim_end_matches('\n').split('\n') {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse::<u64>().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v.to_string());
                } else if !line.starts_with(':') {
                    fail(format!("c{c}: SSE line {line:?}"));
                }
            }
            let Some(data) = data else {
                fail(format!("c{c}: SSE event without data: {text:?}"));
            };
            let json = data.into_bytes();
            trace!("{} c{c} reads {}", self.step, short(&json));
            let parsed = client::parse(&json);
            let ok = match (&name, &parsed) {
                (None, Ok(Incoming::Message { seq, .. })) => id == Some(*seq),
                (Some(n), Ok(Incoming::Subscribed { .. })) => n == "subscribed" && id.is_none(),
                (Some(n), Ok(Incoming::Gap { .. })) => n == "gap" && id.is_none(),
                (Some(n), Ok(Incoming::Skipped { .. })) => n == "skipped" && id.is_none(),
                _ => false,
            };
            if !ok {
                fail(format!("c{c}: SSE event {text:?}"));
            }
            if let Ok(Incoming::Subscribed { topic }) = parsed {
                let Some((want, since)) = self.clients[c].sse.clone() else {
                    unreachable!()
                };
                if topic != want || self.clients[c].views.contains_key(&topic) {
                    fail(format!("c{c}: SSE subscribed to {topic} (asked {want})"));
                }
                let epoch = epoch_of(&json).unwrap_or_default();
                self.went_live(c, &topic, epoch, since, None);
            } else {
                self.on_stream(c, &json, None);
            }
        }
    }

    fn on_json(&mut self, c: usize, json: &Bytes) {
        let parsed = match client::parse(json) {
            Ok(p) => p,
            Err(e) => fail(format!("c{c}: unparseable: {e}")),
        };
        let id = id_of(json);
        trace!("{} c{c} reads {}", self.step, short(json));
        match parsed {
            Incoming::Subscribed { .. }
            | Incoming::Unsubscribed { .. }
            | Incoming::Published { .. }
            | Incoming::Error { .. } => self.on_reply(c, json, parsed, id),
            Incoming::Message { .. } | Incoming::Skipped { .. } | Incoming::Gap { .. } => {
                self.on_stream(c, json, id)
            }
            Incoming::Other { op } => fail(format!("c{c}: unknown op {op}")),
        }
    }

    fn on_reply(&mut self, c: usize, json: &Bytes, parsed: Incoming<'_>, id: Option<Vec<u8>>) {
        // An id-less publish's refusal may come at any time (documented).
        if let Incoming::Error { code, message } = &parsed {
            *self.errors.entry(code.clone()).or_default() += 1;
            let denied = message.starts_with("not allowed to publish to ro.");
            if id.is_none() && (message.starts_with("cannot publish to") || denied) {
                let cl = &mut self.clients[c];
                if cl.idless > 0 {
                    cl.idless -= 1;
                    if !denied {
                        self.check_refusal(code, Some(message));
                    }
                    return;
                }
            }
        }
        let Some(front) = self.clients[c].expected.pop_front() else {
            fail(format!("c{c}: a reply to no command: {}", short(json)));
        };
        if front.id != id {
            fail(format!(
                "c{c}: reply out of command order: expected the reply to {front:?}, got {}",
                short(json)
            ));
        }
        let live = self.clients[c].views.len();
        let max_subs = self.setup.limits.max_subscriptions;
        match (front.what, parsed) {
            (Want::Subscribe { topic, since }, Incoming::Subscribed { topic: t }) => {
                if t != topic {
                    fail(format!("c{c}: subscribed to {t}, asked {topic}"));
                }
                if self.clients[c].views.contains_key(&topic) {
                    fail(format!("c{c}: subscribed twice to {topic}"));
                }
                if live >= max_subs {
                    fail(format!(
                        "c{c}: subscribed past max_subscriptions {max_subs}"
                    ));
                }
                let epoch = epoch_of(json).unwrap_or_default();
                self.went_live(c, &topic, epoch, since, id);
            }
            (Want::Subscribe { topic, .. }, Incoming::Error { code, message }) => {
                let subscribed = self.clients[c].views.contains_key(&topic);
                let ok = match code.as_str() {
                    "bad_request" => subscribed && message.starts_with("already subscribed"),
                    "limit" if message.starts_with("at most") => !subscribed && live >= max_subs,
                    "limit" => {
                        !subscribed && live < max_subs && message.contains("too many topics")
                    }
                    "overloaded" => !subscribed && live < max_subs && self.bounded,
                    "forbidden" => !subscribed && live < max_subs && topic.starts_with("secret."),
                    _ => false,
                };
                if !ok {
                    fail(format!(
                        "c{c}: subscribe {topic} (subscribed {subscribed}, {live} live): {code} {message}"
                    ));
                }
            }
            (Want::Unsubscribe { topic }, Incoming::Unsubscribed { topic: t }) => {
                if t != topic {
                    fail(format!("c{c}: unsubscribed from {t}, asked {topic}"));
                }
                if let Some(v) = self.clients[c].views.remove(&topic) {
                    self.subs[v.rec].end.get_or_insert(self.step);
                }
            }
            (Want::Publish { topic, uid }, Incoming::Published { topic: t, seq }) => {
                if t != topic || seq == 0 {
                    fail(format!("c{c}: published {t} #{seq}, asked {topic}"));
                }
                if let Some(u) = uid {
                    self.pubs[u].outcome = Outcome::Seq(seq);
                    self.check_published(u);
                }
            }
            (Want::Publish { topic, uid }, Incoming::Error { code, message }) => {
                let ok = match code.as_str() {
                    "forbidden" => topic.starts_with("ro."),
                    _ => self.refusal_ok(&code, Some(&message)),
                };
                if !ok {
                    fail(format!("c{c}: publish {topic}: {code} {message}"));
                }
                if let Some(u) = uid {
                    self.pubs[u].outcome = Outcome::Refused(code);
                }
            }
            (Want::Error { code }, Incoming::Error { code: got, .. }) => {
                if got != code {
                    fail(format!("c{c}: error {got}, expected {code}"));
                }
            }
            (want, got) => fail(format!("c{c}: expected the reply to {want:?}, got {got:?}")),
        }
    }

    fn refusal_ok(&self, code: &str, message: Option<&str>) -> bool {
        match code {
            "limit" => message.is_none_or(|m| m.contains("too many topics")),
            "overloaded" => self.bounded,
            _ => false,
        }
    }

    fn check_refusal(&self, code: &str, message: Option<&str>) {
        if !self.refusal_ok(code, message) {
            fail(format!("refused: {code} {message:?}"));
        }
    }

    /// Why an SSE or long-poll subscription may be refused.
    fn check_http_refusal(&self, code: &str, topic: &str) {
        let ok = match code {
            "forbidden" => topic.starts_with("secret."),
            _ => self.refusal_ok(code, None),
        };
        if !ok {
            fail(format!("{topic}: subscription refused: {code}"));
        }
    }

    fn went_live(
        &mut self,
        c: usize,
        topic: &str,
        epoch: String,
        since: Option<u64>,
        id: Option<Vec<u8>>,
    ) {
        let rec = self.subs.len();
        self.subs.push(SubRec {
            client: c,
            topic: topic.to_string(),
            epoch: epoch.clone(),
            start: self.step,
            end: None,
            first: None,
            last: None,
        });
        self.clients[c].views.insert(
            topic.to_string(),
            View {
                rec,
                epoch: epoch.clone(),
                pos: since,
                fresh: true,
                since,
                id,
            },
        );
        let pos = since.unwrap_or(0);
        self.clients[c]
            .memory
            .entry(topic.to_string())
            .and_modify(|m| {
                if m.0 != epoch {
                    *m = (epoch.clone(), pos)
                }
            })
            .or_insert((epoch, pos));
    }

    /// A message or notice on a subscription (WebSocket or SSE).
    fn on_stream(&mut self, c: usize, json: &[u8], id: Option<Vec<u8>>) {
        let parsed = match client::parse(json) {
            Ok(p) => p,
            Err(e) => fail(format!("c{c}: unparseable: {e}")),
        };
        let topic = match &parsed {
            Incoming::Message { topic, .. } => topic.to_string(),
            Incoming::Skipped { topic, .. } | Incoming::Gap { topic, .. } => topic.clone(),
            _ => unreachable!(),
        };
        let Some(mut v) = self.clients[c].views.get(&topic).cloned() else {
            fail(format!(
                "c{c}: {} while not subscribed to {topic}",
                short(json)
            ));
        };
        let next = v.pos.map(|p| p.checked_add(1));
        match parsed {
            Incoming::Message { seq, data, .. } => {
                if let Some(n) = next {
                    if n != Some(seq) {
                        fail(format!(
                            "c{c}: {topic}: expected #{:?}, got #{seq} (no notice)",
                            n
                        ));
                    }
                }
                let rec = &mut self.subs[v.rec];
                rec.first.get_or_insert(seq);
                rec.last = Some(seq);
                v.pos = Some(seq);
                let data = Bytes::copy_from_slice(data);
                self.observe(c, &topic, &v.epoch.clone(), seq, &data);
            }
            Incoming::Skipped { from, to, .. } => {
                if !(self.conflate || self.bounded) {
                    fail(format!("c{c}: skipped without conflation or mesh drops"));
                }
                if to < from || next.is_some_and(|n| n != Some(from)) {
                    fail(format!(
                        "c{c}: {topic} at {:?}: skipped {from}..={to}",
                        v.pos
                    ));
                }
                let rec = &mut self.subs[v.rec];
                rec.first.get_or_insert(from);
                rec.last = Some(to);
                v.pos = Some(to);
                self.notices += 1;
            }
            Incoming::Gap {
                since, first_seq, ..
            } => {
                if !v.fresh || v.since != Some(since) {
                    fail(format!(
                        "c{c}: {topic}: gap since {since} (asked {:?}, fresh {})",
                        v.since, v.fresh
                    ));
                }
                if self.clients[c].kind == Kind::Ws && id != v.id {
                    fail(format!(
                        "c{c}: {topic}: gap with id {id:?}, subscribe had {:?}",
                        v.id
                    ));
                }
                if first_seq == 0 || first_seq == since.wrapping_add(1) {
                    fail(format!("c{c}: {topic}: a gap of nothing: {}", short(json)));
                }
                v.pos = Some(first_seq - 1);
                self.notices += 1;
            }
            _ => unreachable!(),
        }
        v.fresh = false;
        if let Some(p) = v.pos {
            self.clients[c]
                .memory
                .insert(topic.clone(), (v.epoch.clone(), p));
        }
        self.clients[c].views.insert(topic, v);
    }

    /// One message read by client `c`: the same seq is the same message for
    /// every reader; one publish has one seq.
    fn observe(&mut self, c: usize, topic: &str, epoch: &str, seq: u64, data: &[u8]) {
        self.messages += 1;
        let key = (topic.to_string(), epoch.to_string(), seq);
        match self.seen.get(&key) {
            Some(d) if d[..] != *data => fail(format!(
                "c{c}: {topic} ({epoch}) #{seq} is {} but another reader read {}",
                short(data),
                short(d)
            )),
            Some(_) => {}
            None => {
                self.seen.insert(key, Bytes::copy_from_slice(data));
            }
        }
        let Some(u) = uid_of(data) else {
            return;
        };
        let p = &mut self.pubs[u];
        if p.topic != topic {
            fail(format!("c{c}: u{u} of {} read on {topic}", p.topic));
        }
        match &p.seen {
            Some((e, s)) if (e.as_str(), *s) != (epoch, seq) => fail(format!(
                "c{c}: u{u} read as {topic} ({epoch}) #{seq}, before as ({e}) #{s}"
            )),
            Some(_) => {}
            None => p.seen = Some((epoch.to_string(), seq)),
        }
        self.check_published(u);
    }

    fn check_published(&self, u: usize) {
        let p = &self.pubs[u];
        match (&p.outcome, &p.seen) {
            (Outcome::Seq(s), Some((e, seen))) if s != seen => fail(format!(
                "u{u} on {}: published as #{s}, read as ({e}) #{seen}",
                p.topic
            )),
            (Outcome::Refused(code), Some((e, seen))) => fail(format!(
                "u{u} on {}: refused ({code}) but read as ({e}) #{seen}",
                p.topic
            )),
            _ => {}
        }
    }

    // ---- per-step checks ----------------------------------------------------------------

    fn check_step(&mut self) {
        let limits = &self.setup.limits;
        for (shard, e) in self.engines.iter().enumerate() {
            if let Err(msg) = e.audit() {
                fail(format!("shard {shard}: audit: {msg}"));
            }
            if self.inspect_gauges {
                // The gauges against what the public view says is held.
                let i = e.inspect();
                let st = e.stats();
                let subs: usize = i.local.iter().map(|l| l.subscribers).sum();
                let retained: usize = i.owned.iter().map(|o| o.retained).sum();
                if st.subscriptions != subs as i64
                    || st.topics != i.owned.len() as i64
                    || st.retained_bytes != retained as i64
                {
                    fail(format!(
                        "shard {shard}: gauges {st:?}, held: {subs} subscriptions, {} topics, {retained} bytes",
                        i.owned.len()
                    ));
                }
                let open = self
                    .clients
                    .iter()
                    .filter(|c| c.shard == shard && c.open)
                    .count();
                if i.sessions != open {
                    fail(format!(
                        "shard {shard}: {} sessions, {open} open clients",
                        i.sessions
                    ));
                }
            }
            let st = e.stats();
            if st.topics as usize > limits.max_topics
                || st.retained_bytes as usize > limits.history_budget
                || st.subscriptions < 0
            {
                fail(format!("shard {shard}: stats {st:?}"));
            }
        }
        let max_frame = self.setup.max_data + 400;
        let bound = limits.outbox_size
            + limits.history.max_bytes
            + CONTROL_SLACK
            + (limits.max_subscriptions.min(64) + 2) * (max_frame + 200);
        for c in 0..self.clients.len() {
            let cl = &self.clients[c];
            if !cl.open {
                continue;
            }
            let (shard, conn, kind, waiting) = (cl.shard, cl.conn, cl.kind, cl.waiting);
            let closing = cl.closing;
            let e = &mut self.engines[shard];
            let engine_waiting = e.is_waiting(conn);
            let Some(ob) = e.outbox(conn) else {
                fail(format!("c{c}: open but the engine has no session"));
            };
            if ob.queued_bytes() > bound {
                fail(format!(
                    "c{c}: {} bytes queued, bound {bound}",
                    ob.queued_bytes()
                ));
            }
            if ob.held_topics() > limits.max_subscriptions {
                fail(format!("c{c}: {} topics held", ob.held_topics()));
            }
            if kind == Kind::Ws && !closing && waiting != engine_waiting {
                fail(format!(
                    "c{c}: the reader waits: {waiting}, the engine says {engine_waiting}"
                ));
            }
        }
    }

    // ---- the end -------------------------------------------------------------------------

    /// Runs everything in flight to its end: the mesh, the writers, the
    /// answered polls. Returns the number of steps taken.
    pub fn quiesce(&mut self) -> usize {
        let mut steps = 0;
        loop {
            let mut progress = false;
            for src in 0..self.setup.shards {
                for dst in 0..self.setup.shards {
                    while self.deliver(src, dst) {
                        progress = true;
                        steps += 1;
                    }
                }
            }
            for c in 0..self.clients.len() {
                let cl = &self.clients[c];
                if cl.cut || !cl.open {
                    continue;
                }
                if !cl.holding.is_empty() || cl.awake {
                    self.write(c, 64, 0);
                    progress = true;
                    steps += 1;
                }
                let cl = &self.clients[c];
                if cl.got_close && cl.open {
                    // The client answers the close; the runtime closes.
                    self.client_close(c, "close handshake done");
                    progress = true;
                }
                let cl = &self.clients[c];
                if cl.kind == Kind::Poll && cl.poll_ready && !cl.poll_idle() && cl.open {
                    self.poll_answer(c, "ready");
                    progress = true;
                }
            }
            self.run_outputs();
            if !progress {
                break;
            }
            if steps > 1_000_000 {
                fail("no quiescence".into());
            }
        }
        self.check_step();
        steps
    }

    /// The end of a run: settle, publish a marker to every topic someone
    /// follows, settle, check that everyone got everything, close every
    /// client and check that nothing is left behind.
    pub fn finish(&mut self) {
        trace!("{} == finish", self.step);
        self.quiesce();
        // Held polls time out.
        for c in 0..self.clients.len() {
            self.poll_answer(c, "final timeout");
        }
        self.quiesce();
        // No lost wake-up: an idle writer has nothing to write.
        for c in 0..self.clients.len() {
            let cl = &self.clients[c];
            if !cl.open || cl.cut {
                continue;
            }
            let (shard, conn, awake) = (cl.shard, cl.conn, cl.awake);
            let ob = self.engines[shard].outbox(conn).expect("open");
            if !awake && !ob.is_empty() && ob.state() == State::Open {
                fail(format!(
                    "c{c}: the writer sleeps, the outbox is not empty: lost wake-up"
                ));
            }
        }
        // Every command answered, no reader left waiting.
        for c in 0..self.clients.len() {
            let cl = &self.clients[c];
            if cl.kind != Kind::Ws || !cl.is_live() {
                continue;
            }
            if cl.waiting || !cl.unsent.is_empty() {
                fail(format!(
                    "c{c}: the reader is stuck (waiting {}, {} commands unread)",
                    cl.waiting,
                    cl.unsent.len()
                ));
            }
            if let Some(e) = cl.expected.front() {
                fail(format!("c{c}: never answered: {e:?}"));
            }
        }
        // A marker on every followed topic: every subscriber must end at
        // the owner's last seq (the mesh may have dropped deliveries, whose
        // notice comes with the next one).
        let mut followed: Vec<String> = self
            .clients
            .iter()
            .filter(|c| c.is_live())
            .flat_map(|c| c.views.keys().cloned())
            .collect();
        followed.sort();
        followed.dedup();
        for t in &followed {
            let shard = self.owner_of(t);
            self.step += 1;
            self.http_publish(shard, t, true, 3);
            // Each on an empty mesh: a marker must not be dropped.
            self.quiesce();
        }
        self.quiesce();
        for c in 0..self.clients.len() {
            if self.clients[c].kind == Kind::Poll && self.clients[c].is_live() {
                let topics: Vec<String> = self.clients[c].memory.keys().cloned().collect();
                for t in topics {
                    self.poll_start(c, &t);
                    self.quiesce();
                    self.poll_answer(c, "final");
                }
            }
        }
        self.quiesce();
        self.check_tails();
        self.check_starts();
        // Everyone leaves.
        for c in 0..self.clients.len() {
            self.client_close(c, "the end");
        }
        self.quiesce();
        for (shard, e) in self.engines.iter().enumerate() {
            let i = e.inspect();
            let st = e.stats();
            if i.sessions != 0 || i.pending != 0 || !i.local.is_empty() || st.subscriptions != 0 {
                fail(format!(
                    "shard {shard}: left behind: {} sessions, {} pending, local {:?}, {} subscriptions",
                    i.sessions, i.pending, i.local, st.subscriptions
                ));
            }
            for o in &i.owned {
                if !o.interested.is_empty() {
                    fail(format!(
                        "shard {shard}: {} still forwards to {:?}",
                        o.topic, o.interested
                    ));
                }
                if o.retained == 0 {
                    fail(format!("shard {shard}: {} kept with nothing", o.topic));
                }
            }
        }
        // After the TTL nothing is retained and no topic is kept.
        if let Some(ttl) = self.setup.limits.history_ttl {
            self.elapsed += ttl + Duration::from_secs(1);
            for shard in 0..self.setup.shards {
                self.timeout(shard, false);
                let e = &self.engines[shard];
                if e.stats().topics != 0 || e.stats().retained_bytes != 0 {
                    fail(format!(
                        "shard {shard}: after the TTL: {:?} {:?}",
                        e.stats(),
                        e.inspect().owned
                    ));
                }
                if e.poll_timeout().is_some() {
                    fail(format!("shard {shard}: a timer with nothing to expire"));
                }
            }
        }
        self.check_step();
    }

    /// Interest at rest: an owner forwards a topic to exactly the shards
    /// that have it live.
    pub fn check_interest(&self) {
        for (shard, e) in self.engines.iter().enumerate() {
            for o in e.inspect().owned {
                for s in 0..self.setup.shards {
                    let live = self.engines[s]
                        .inspect()
                        .local
                        .iter()
                        .any(|l| l.topic == o.topic && l.live);
                    if live != o.interested.contains(&s) {
                        fail(format!(
                            "shard {shard} owns {} with interest {:?}; shard {s} live: {live}",
                            o.topic, o.interested
                        ));
                    }
                }
            }
        }
    }

    fn check_tails(&self) {
        self.check_interest();
        for (c, cl) in self.clients.iter().enumerate() {
            if !cl.is_live() {
                continue;
            }
            for (topic, v) in &cl.views {
                let owner = self.owner_of(topic);
                let e = &self.engines[owner];
                let Some(o) = e.inspect().owned.into_iter().find(|o| &*o.topic == topic) else {
                    fail(format!(
                        "c{c}: live on {topic}, which its owner does not have"
                    ));
                };
                if e.epoch(o.incarnation) != v.epoch {
                    fail(format!(
                        "c{c}: live on {topic} ({}) but the owner has incarnation {}",
                        v.epoch, o.incarnation
                    ));
                }
                if v.pos.unwrap_or(0) != o.last_seq {
                    fail(format!(
                        "c{c}: {topic} ends at {:?}, the owner's last seq is {}",
                        v.pos, o.last_seq
                    ));
                }
            }
        }
    }

    /// A message published after the client read `subscribed` (and before
    /// the subscription ended) is at or after the first seq it read.
    fn check_starts(&self) {
        for (r, rec) in self.subs.iter().enumerate() {
            let Some(first) = rec.first else {
                continue;
            };
            for (u, p) in self.pubs.iter().enumerate() {
                let Some(step) = p.step else {
                    continue;
                };
                if p.topic != rec.topic || step <= rec.start {
                    continue;
                }
                // Its seq in this subscription's incarnation: read under its
                // epoch, or published while the subscription lived on to
                // the end (a topic keeps its incarnation while it has a
                // subscriber). Published after the client read `subscribed`,
                // it cannot come before the first seq the client read.
                let seq = match (&p.outcome, &p.seen) {
                    (_, Some((e, s))) if *e == rec.epoch => *s,
                    (Outcome::Seq(s), None) if rec.end.is_none() => *s,
                    _ => continue,
                };
                if seq < first {
                    fail(format!(
                        "sub {r} (c{} on {}, from step {}): u{u} published at step {step} as #{seq}, but the first read was #{first}",
                        rec.client, rec.topic, rec.start
                    ));
                }
            }
        }
    }
}

/// The publish a message's data names, if it is ours.
fn uid_of(data: &[u8]) -> Option<usize> {
    let rest = data.strip_prefix(b"{\"u\":")?;
    let (n, _) = client::leading_u64(rest)?;
    usize::try_from(n).ok()
}

fn fields(json: &[u8]) -> HashMap<String, Box<RawValue>> {
    serde_json::from_slice(json).unwrap_or_default()
}

fn id_of(json: &[u8]) -> Option<Vec<u8>> {
    fields(json).get("id").map(|r| r.get().as_bytes().to_vec())
}

fn epoch_of(json: &[u8]) -> Option<String> {
    fields(json)
        .get("epoch")
        .and_then(|r| serde_json::from_str(r.get()).ok())
}

/// For the drivers: a shared handle, when they need one.
pub type Shared<T> = Arc<T>;
