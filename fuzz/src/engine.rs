//! The `engine` target: two shards of `ringcast_core::Engine` and their
//! clients, driven by a sequence of inputs decoded from the fuzzer's bytes,
//! with every invariant of the simulator checked after every step.
//!
//! The world (the shards, the simulated mesh, the clients with the
//! runtime's part, the checker) is the simulator's own,
//! `core/tests/sim/world.rs`, included by path: one checker, driven here by
//! bytes instead of a seeded scheduler. See that file for what is checked
//! (reply order, subscribed-then-replay-then-live with no gap and no
//! duplicate unless noticed, slow-consumer policies, limits, gauges,
//! bounded outboxes, nothing left behind at the end).
//!
//! Input layout: `[cfg][sizes]` then ops, each a tag byte and its operand
//! bytes (missing bytes read as 0, so every input is valid):
//!
//! | tag % 14 | op | operands |
//! |---|---|---|
//! | 0 | deliver | `[src:1 dst:1 n:6]` |
//! | 1 | writer takes or writes | `client, max, part` |
//! | 2 | `/ws` publish | `client, topic, id?, size` |
//! | 3 | `/ws` subscribe | `client, topic, since, id?` |
//! | 4 | `/ws` unsubscribe | `client, topic, id?` |
//! | 5 | HTTP publish | `shard, topic, token?, size` |
//! | 6 | connect | `shard, kind, topic, since, resume` |
//! | 7 | close | `client` |
//! | 8 | long-poll request | `client, topic` |
//! | 9 | long-poll answered | `client` |
//! | 10 | clock | `ms/20` |
//! | 11 | timer | `shard, early?` |
//! | 12 | a templated command | `client, template, topic, field` |
//! | 13 | any text frame | `client, len, bytes` |

use std::time::Duration;

use ringcast_core::topic::HistoryLimits;
use ringcast_core::{Limits, SlowConsumer};

#[allow(dead_code, clippy::all)]
#[path = "../../core/tests/sim/world.rs"]
mod world;

pub use world::{Kind, Op, Setup, Since, World};

const TOPICS: &[&str] = &["a", "b.x", "c:1", "ro.d", "secret.e", "f-g_h"];

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.byte()) | u16::from(self.byte()) << 8
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// `[cfg][sizes]`: cfg bit 0 conflate, bits 1-2 mesh bound (none, 1, 2, 4),
/// bit 3 two topics per shard at most, bit 4 one subscription per
/// connection, bit 5 a TTL, bit 6 a small history budget, bit 7 an eager
/// reader that does not pause for reply room; `sizes`: the outbox bound
/// (low nibble) and history bounds.
fn setup(cfg: u8, sizes: u8) -> Setup {
    let mut s = Setup::simple(2);
    s.topics = TOPICS.iter().map(|t| t.to_string()).collect();
    s.max_data = 300;
    s.queue_cap = match (cfg >> 1) & 3 {
        0 => None,
        1 => Some(1),
        2 => Some(2),
        _ => Some(4),
    };
    // A runtime that hands over a command while told to wait does not
    // pause for reply room either; the others pause as the broker does.
    s.eager_reader = cfg & 0x80 != 0;
    s.pause_reader = !s.eager_reader;
    s.limits = Limits {
        max_topics: if cfg & 8 != 0 { 2 } else { 1000 },
        max_subscriptions: if cfg & 16 != 0 { 1 } else { 1000 },
        history: HistoryLimits {
            max_messages: [0, 2, 5, 100][(sizes >> 4 & 3) as usize],
            max_bytes: 100 + 200 * (sizes >> 6) as usize,
        },
        history_ttl: (cfg & 32 != 0).then(|| Duration::from_millis(1000)),
        history_budget: if cfg & 64 != 0 { 400 } else { 1 << 30 },
        outbox_size: 100 + 150 * (sizes & 15) as usize,
        slow_consumer: if cfg & 1 != 0 {
            SlowConsumer::Conflate
        } else {
            SlowConsumer::Disconnect
        },
        max_pending_publishes: 1 + (sizes & 3) as usize,
        ..Limits::default()
    };
    s
}

fn since(b: u8) -> Since {
    match b % 8 {
        0..=2 => Since::None,
        3 | 4 => Since::Last,
        5 => Since::Zero,
        6 => Since::Value(u64::from(b >> 3)),
        _ => Since::Value(u64::MAX - u64::from(b >> 3)),
    }
}

fn kind(b: u8) -> Kind {
    match b % 4 {
        0 | 1 => Kind::Ws,
        2 => Kind::Sse,
        _ => Kind::Poll,
    }
}

/// A command from a template with fuzzer-chosen parts: well-formed and
/// malformed ones, odd ids and `since`s, unknown fields.
fn template(t: u8, topic: &str, f: u8) -> Vec<u8> {
    let id = match f % 6 {
        0 => String::new(),
        1 => format!(r#","id":{f}"#),
        2 => r#","id":"s\"q""#.to_string(),
        3 => r#","id":1e400"#.to_string(),
        4 => r#","id":null"#.to_string(),
        _ => r#","id":-0.5"#.to_string(),
    };
    let text = match t % 10 {
        0 => format!(
            r#"{{"op":"subscribe","topic":"{topic}","since":{}{id}}}"#,
            f / 3
        ),
        1 => format!(r#"{{"op":"subscribe","topic":"{topic}","since":null,"x":[1,{{}}]{id}}}"#),
        2 => format!(r#"{{"op":"unsubscribe","topic":"{topic}"{id}}}"#),
        3 => format!(
            r#"{{"op":"publish","topic":"{topic}","data":[{f},"\u00e9",{{"k":null}}]{id}}}"#
        ),
        4 => format!(
            r#"{{"op":"publish","topic":"{topic}","data":"{}"{id}}}"#,
            "z".repeat(f as usize)
        ),
        5 => format!(r#"{{"op":"subscribe","topic":"{topic}.","since":1{id}}}"#),
        6 => format!(r#"{{"op":"publish","topic":"{topic}"{id}}}"#),
        7 => format!(r#"{{"op":"subscribe","topic":"{topic}","since":-{f}{id}}}"#),
        8 => format!(r#" {{ "topic" : "{topic}" , "op" : "unsubscribe" {id} }} "#),
        _ => format!(r#"{{"op":"{}"{id}}}"#, "x".repeat(f as usize % 70)),
    };
    text.into_bytes()
}

/// Decodes the input into a setup and its ops.
pub fn decode(data: &[u8]) -> (Setup, Vec<Op>) {
    let mut r = Bytes(data);
    let setup = setup(r.byte(), r.byte());
    let mut ops = Vec::new();
    while !r.0.is_empty() {
        let tag = r.byte();
        let op = match tag % 14 {
            0 => {
                let b = r.byte();
                Op::Deliver {
                    src: b & 1,
                    dst: (b >> 1) & 1,
                    n: 1 + (b >> 2),
                }
            }
            1 => Op::Write {
                client: r.byte().into(),
                max: r.byte(),
                part: r.byte() % 32,
            },
            2 => Op::Publish {
                client: r.byte().into(),
                topic: r.byte(),
                id: r.byte() & 1 != 0,
                size: r.u16(),
            },
            3 => Op::Subscribe {
                client: r.byte().into(),
                topic: r.byte(),
                since: since(r.byte()),
                id: r.byte() & 1 == 0,
            },
            4 => Op::Unsubscribe {
                client: r.byte().into(),
                topic: r.byte(),
                id: r.byte() & 1 == 0,
            },
            5 => Op::HttpPublish {
                shard: r.byte(),
                topic: r.byte(),
                token: r.byte() & 1 != 0,
                size: r.u16(),
            },
            6 => {
                let (shard, k, topic, s, resume) =
                    (r.byte(), r.byte(), r.byte(), r.byte(), r.byte());
                Op::Connect {
                    shard,
                    kind: kind(k),
                    topic,
                    since: since(s),
                    resume: (resume & 1 != 0).then_some((resume >> 1).into()),
                }
            }
            7 => Op::Close {
                client: r.byte().into(),
            },
            8 => Op::Poll {
                client: r.byte().into(),
                topic: r.byte(),
            },
            9 => Op::PollAnswer {
                client: r.byte().into(),
            },
            10 => Op::Advance {
                ms: u32::from(r.byte()) * 20,
            },
            11 => {
                let b = r.byte();
                Op::Timeout {
                    shard: b & 1,
                    early: b & 2 != 0,
                }
            }
            12 => {
                let (client, t, topic, f) = (r.byte(), r.byte(), r.byte(), r.byte());
                let topic = TOPICS[topic as usize % TOPICS.len()];
                Op::Raw {
                    client: client.into(),
                    text: template(t, topic, f),
                }
            }
            _ => {
                let client = r.byte().into();
                let n = r.byte() as usize % 64;
                Op::Raw {
                    client,
                    text: r.take(n).to_vec(),
                }
            }
        };
        ops.push(op);
    }
    (setup, ops)
}

/// The inverse of [`decode`] for the ops `decode` can produce (the seed
/// generator writes scenarios with it).
pub fn encode(cfg: u8, sizes: u8, ops: &[Op]) -> Vec<u8> {
    let mut out = vec![cfg, sizes];
    let since_byte = |s: Since| match s {
        Since::None => 0u8,
        Since::Last => 3,
        Since::Zero => 5,
        Since::Value(v) if v < 32 => 6 | (v as u8) << 3,
        Since::Value(v) => 7 | ((u64::MAX - v).min(31) as u8) << 3,
    };
    for op in ops {
        match op {
            Op::Deliver { src, dst, n } => {
                out.extend([0, (src & 1) | (dst & 1) << 1 | (n.max(&1) - 1).min(63) << 2])
            }
            Op::Write { client, max, part } => out.extend([1, *client as u8, *max, *part]),
            Op::Publish {
                client,
                topic,
                id,
                size,
            } => out.extend([
                2,
                *client as u8,
                *topic,
                u8::from(*id),
                *size as u8,
                (*size >> 8) as u8,
            ]),
            Op::Subscribe {
                client,
                topic,
                since,
                id,
            } => out.extend([3, *client as u8, *topic, since_byte(*since), u8::from(!id)]),
            Op::Unsubscribe { client, topic, id } => {
                out.extend([4, *client as u8, *topic, u8::from(!id)])
            }
            Op::HttpPublish {
                shard,
                topic,
                token,
                size,
            } => out.extend([
                5,
                *shard,
                *topic,
                u8::from(*token),
                *size as u8,
                (*size >> 8) as u8,
            ]),
            Op::Connect {
                shard,
                kind,
                topic,
                since,
                resume,
            } => out.extend([
                6,
                *shard,
                match kind {
                    Kind::Ws => 0,
                    Kind::Sse => 2,
                    Kind::Poll => 3,
                },
                *topic,
                since_byte(*since),
                resume.map_or(0, |c| 1 | (c as u8) << 1),
            ]),
            Op::Close { client } => out.extend([7, *client as u8]),
            Op::Poll { client, topic } => out.extend([8, *client as u8, *topic]),
            Op::PollAnswer { client } => out.extend([9, *client as u8]),
            Op::Advance { ms } => out.extend([10, (*ms / 20).min(255) as u8]),
            Op::Timeout { shard, early } => out.extend([11, (shard & 1) | u8::from(*early) << 1]),
            Op::Raw { client, text } => {
                out.extend([13, *client as u8, text.len().min(63) as u8]);
                out.extend_from_slice(&text[..text.len().min(63)]);
            }
        }
    }
    out
}

/// The target: decode, run every op, run the end-of-run checks.
pub fn engine(data: &[u8]) {
    world::set_tracing(false);
    let (setup, ops) = decode(data);
    let mut w = World::new(setup);
    w.inspect_gauges = true;
    for op in &ops {
        w.apply(op);
    }
    w.finish();
}
