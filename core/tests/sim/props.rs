//! Property tests: random op sequences against one engine and against a
//! pair of shards, shrunk to a minimal failing sequence by proptest. Every
//! step is checked by the world (`world.rs`): no panic, the contract per
//! client, and the memory-ish bounds: each outbox within its bound plus the
//! slack, the gauges (subscriptions, topics, retained bytes) equal to what
//! the engine holds (`Engine::audit` and, independently, `Engine::inspect`),
//! topics within `max_topics`, retained bytes within the budget.

use proptest::prelude::*;
use proptest::test_runner::Config;

use crate::sched;
use crate::world::{self, Kind, Op, Since, World};

fn since() -> impl Strategy<Value = Since> {
    prop_oneof![
        3 => Just(Since::None),
        3 => Just(Since::Last),
        1 => Just(Since::Zero),
        1 => (0u64..12).prop_map(Since::Value),
        1 => Just(Since::Value(u64::MAX)),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![3 => Just(Kind::Ws), 1 => Just(Kind::Sse), 1 => Just(Kind::Poll)]
}

fn raw() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"not json".to_vec()),
        Just(br#"{"op":"nope","id":"x"}"#.to_vec()),
        Just(br#"{"op":"subscribe","topic":"a..b","id":1.5e3}"#.to_vec()),
        Just(br#"{"op":"publish","topic":"a","id":[1]}"#.to_vec()),
        Just(br#"{"op":"subscribe","topic":"a","since":-1,"id":"s"}"#.to_vec()),
        Just(br#"{"op":"unsubscribe","topic":"a"}"#.to_vec()),
        Just(br#"{"op":"publish","topic":"b.x","data":null}"#.to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let client = any::<u16>();
    let topic = any::<u8>();
    prop_oneof![
        6 => (any::<u8>(), any::<u8>(), 1u8..6).prop_map(|(src, dst, n)| Op::Deliver { src, dst, n }),
        5 => (client, 1u8..8, 0u8..20).prop_map(|(client, max, part)| Op::Write { client, max, part }),
        3 => (client, topic, any::<bool>(), any::<u16>())
            .prop_map(|(client, topic, id, size)| Op::Publish { client, topic, id, size }),
        3 => (client, topic, since(), any::<bool>())
            .prop_map(|(client, topic, since, id)| Op::Subscribe { client, topic, since, id }),
        2 => (client, topic, any::<bool>())
            .prop_map(|(client, topic, id)| Op::Unsubscribe { client, topic, id }),
        1 => (any::<u8>(), topic, any::<bool>(), any::<u16>())
            .prop_map(|(shard, topic, token, size)| Op::HttpPublish { shard, topic, token, size }),
        1 => (any::<u8>(), kind(), topic, since(), proptest::option::of(client))
            .prop_map(|(shard, kind, topic, since, resume)| Op::Connect { shard, kind, topic, since, resume }),
        1 => client.prop_map(|client| Op::Close { client }),
        1 => (client, topic).prop_map(|(client, topic)| Op::Poll { client, topic }),
        1 => client.prop_map(|client| Op::PollAnswer { client }),
        1 => (0u32..3000).prop_map(|ms| Op::Advance { ms }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(shard, early)| Op::Timeout { shard, early }),
        1 => (client, raw()).prop_map(|(client, text)| Op::Raw { client, text }),
    ]
}

/// A few clients first, then the ops, then the end-of-run checks.
fn run(shards: usize, seed: u64, clients: &[(u8, Kind)], ops: &[Op]) {
    world::set_tracing(false);
    let mut w = World::new(sched::setup_for(seed, shards));
    w.inspect_gauges = true;
    for &(shard, kind) in clients {
        w.apply(&Op::Connect {
            shard,
            kind,
            topic: shard,
            since: Since::None,
            resume: None,
        });
    }
    for op in ops {
        w.apply(op);
    }
    w.finish();
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96)
}

proptest! {
    #![proptest_config(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn one_engine(
        seed in any::<u64>(),
        clients in proptest::collection::vec((Just(0u8), kind()), 1..5),
        ops in proptest::collection::vec(op(), 0..250),
    ) {
        run(1, seed, &clients, &ops);
    }

    #[test]
    fn two_shards(
        seed in any::<u64>(),
        clients in proptest::collection::vec((0u8..2, kind()), 1..6),
        ops in proptest::collection::vec(op(), 0..250),
    ) {
        run(2, seed, &clients, &ops);
    }
}
