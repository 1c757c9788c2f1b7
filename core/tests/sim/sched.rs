//! The seeded scheduler: a scenario (shards, limits, policy, mesh bound,
//! topics) and a few hundred steps, all chosen by one `SmallRng` seed, so a
//! failing seed replays exactly.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use ringcast_core::topic::HistoryLimits;
use ringcast_core::{Limits, SlowConsumer};

use crate::world::{Kind, Op, Setup, Since, World};

const TOPICS: &[&str] = &[
    "a", "b.x", "c:1", "d-2", "e_3.f", "g", "ro.feed", "secret.h",
];

/// A scenario: every bound small enough to be reached in a short run.
/// A scenario from `seed` with a given number of shards (property tests).
pub fn setup_for(seed: u64, shards: usize) -> Setup {
    let mut setup = setup(&mut SmallRng::seed_from_u64(seed));
    setup.shards = shards;
    setup
}

pub fn setup(rng: &mut SmallRng) -> Setup {
    let shards = rng.gen_range(1..=4);
    let n_topics = rng.gen_range(2..=6);
    let mut topics: Vec<String> = TOPICS[..6].iter().map(|s| s.to_string()).collect();
    // Shuffle a little so that different seeds own topics differently.
    for i in (1..topics.len()).rev() {
        let j = rng.gen_range(0..=i);
        topics.swap(i, j);
    }
    topics.truncate(n_topics);
    if rng.gen_bool(0.2) {
        topics.push(TOPICS[6].to_string());
        topics.push(TOPICS[7].to_string());
    }
    let max_data = *[40usize, 120, 400].get(rng.gen_range(0..3)).unwrap();
    let limits = Limits {
        max_topics: if rng.gen_bool(0.6) {
            1000
        } else {
            rng.gen_range(1..=4)
        },
        max_subscriptions: if rng.gen_bool(0.6) {
            1000
        } else {
            rng.gen_range(1..=3)
        },
        history: HistoryLimits {
            max_messages: [0, 1, 3, 8, 100][rng.gen_range(0..5)],
            max_bytes: rng.gen_range(60..2000),
        },
        history_ttl: rng
            .gen_bool(0.5)
            .then(|| Duration::from_millis(rng.gen_range(100..5000))),
        history_budget: if rng.gen_bool(0.5) {
            1 << 30
        } else {
            rng.gen_range(50..3000)
        },
        outbox_size: rng.gen_range(100..4000),
        slow_consumer: if rng.gen_bool(0.5) {
            SlowConsumer::Disconnect
        } else {
            SlowConsumer::Conflate
        },
        max_pending_publishes: [1, 2, 4, 256][rng.gen_range(0..4)],
        ..Limits::default()
    };
    Setup {
        shards,
        limits,
        queue_cap: rng.gen_bool(0.4).then(|| rng.gen_range(1..=5)),
        topics,
        placement_seed: rng.gen(),
        max_data,
        eager_reader: rng.gen_bool(0.15),
        pause_reader: rng.gen_bool(0.8),
    }
}

fn since(rng: &mut SmallRng) -> Since {
    match rng.gen_range(0..10) {
        0..=3 => Since::None,
        4..=7 => Since::Last,
        8 => Since::Zero,
        _ => Since::Value(rng.gen_range(0..12)),
    }
}

fn kind(rng: &mut SmallRng) -> Kind {
    match rng.gen_range(0..6) {
        0..=2 => Kind::Ws,
        3 | 4 => Kind::Sse,
        _ => Kind::Poll,
    }
}

/// One step, weighted: mesh deliveries and writers most, client commands
/// next, the rest now and then.
pub fn op(rng: &mut SmallRng, w: &World) -> Op {
    let clients = w.clients.len().max(1);
    let client = rng.gen_range(0..clients) as u16;
    let topic = rng.gen_range(0..w.setup.topics.len()) as u8;
    let shards = w.setup.shards as u8;
    match rng.gen_range(0..100) {
        0..=29 => Op::Deliver {
            src: rng.gen_range(0..shards),
            dst: rng.gen_range(0..shards),
            n: if rng.gen_bool(0.7) {
                1
            } else {
                rng.gen_range(2..8)
            },
        },
        30..=52 => {
            // Slow clients (speed 0) write rarely: their outbox fills.
            let speed = w.clients.get(client as usize).map_or(2, |c| c.speed);
            let p = [0.08, 0.5, 1.0][speed as usize];
            if rng.gen_bool(p) {
                Op::Write {
                    client,
                    max: rng.gen_range(1..6),
                    part: if rng.gen_bool(0.7) {
                        0
                    } else {
                        rng.gen_range(1..30)
                    },
                }
            } else {
                Op::Advance { ms: 1 }
            }
        }
        53..=62 => Op::Publish {
            client,
            topic,
            id: rng.gen_bool(0.7),
            size: rng.gen(),
        },
        63..=71 => Op::Subscribe {
            client,
            topic,
            since: since(rng),
            id: rng.gen_bool(0.9),
        },
        72..=76 => Op::Unsubscribe {
            client,
            topic,
            id: rng.gen_bool(0.9),
        },
        77..=80 => Op::HttpPublish {
            shard: rng.gen_range(0..shards),
            topic,
            token: rng.gen_bool(0.5),
            size: rng.gen(),
        },
        81..=85 => {
            if rng.gen_bool(0.5) {
                Op::Poll { client, topic }
            } else {
                Op::PollAnswer { client }
            }
        }
        86..=88 => Op::Connect {
            shard: rng.gen_range(0..shards),
            kind: kind(rng),
            topic,
            since: since(rng),
            resume: rng.gen_bool(0.5).then_some(client),
        },
        89 => Op::Close { client },
        90..=93 => Op::Advance {
            ms: rng.gen_range(1..800),
        },
        94..=96 => Op::Timeout {
            shard: rng.gen_range(0..shards),
            early: rng.gen_bool(0.2),
        },
        _ => Op::Raw {
            client,
            text: match rng.gen_range(0..5) {
                0 => b"not json".to_vec(),
                1 => format!(r#"{{"op":"nope","id":"r{}"}}"#, rng.gen::<u16>()).into_bytes(),
                2 => br#"{"op":"subscribe","topic":"a..b","id":7}"#.to_vec(),
                3 => br#"{"op":"publish","topic":"a"}"#.to_vec(),
                _ => format!(
                    r#"{{"op":"unsubscribe","topic":"{}"}}"#,
                    w.setup.topics[topic as usize]
                )
                .into_bytes(),
            },
        },
    }
}

/// One whole run of `seed`: a scenario, a few clients, `steps` steps, the
/// end-of-run checks. Returns a one-line summary.
pub fn run(seed: u64, steps: usize) -> String {
    let mut rng = SmallRng::seed_from_u64(seed);
    let setup = setup(&mut rng);
    let mut w = World::new(setup);
    for _ in 0..rng.gen_range(1..=6) {
        let op = Op::Connect {
            shard: rng.gen_range(0..w.setup.shards as u8),
            kind: kind(&mut rng),
            topic: rng.gen_range(0..w.setup.topics.len() as u8),
            since: Since::None,
            resume: None,
        };
        w.apply(&op);
    }
    for _ in 0..steps {
        let op = op(&mut rng, &w);
        w.apply(&op);
    }
    w.finish();
    TOTALS.with(|t| t.borrow_mut().add(&w));
    let mut errors: Vec<(String, u64)> = w.errors.iter().map(|(k, v)| (k.clone(), *v)).collect();
    errors.sort();
    format!(
        "{} msgs, {} notices, {} slow closes, errors {errors:?}",
        w.messages, w.notices, w.slow_closes
    )
}

/// Counts over many runs, to see that the scenarios reach every path.
#[derive(Debug, Default)]
pub struct Totals {
    pub runs: u64,
    pub messages: u64,
    pub notices: u64,
    pub slow_closes: u64,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub conflations: u64,
    pub dropped: u64,
    pub evicted: u64,
    pub expired: u64,
}

impl Totals {
    pub fn add(&mut self, w: &World) {
        self.runs += 1;
        self.messages += w.messages;
        self.notices += w.notices;
        self.slow_closes += w.slow_closes;
        for (k, v) in &w.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for e in &w.engines {
            let s = e.stats();
            self.conflations += s.slow_conflations;
            self.dropped += s.deliveries_dropped;
            self.evicted += s.history_evicted;
            self.expired += s.history_expired;
        }
    }
}

thread_local! {
    pub static TOTALS: std::cell::RefCell<Totals> = std::cell::RefCell::new(Totals::default());
}
