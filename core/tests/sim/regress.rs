//! One scenario per engine bug the simulator found, scripted so that it
//! keeps failing the same way if the bug comes back (the random runs would
//! find it again only by luck once the scheduler changes). Each runs the
//! whole checker of `world.rs`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringcast_core::topic::HistoryLimits;
use ringcast_core::{
    AllowAll, Engine, Flow, Grant, Limits, Output, Placement, SlowConsumer, Transport,
};

use crate::world::{Kind, Op, Setup, SimRoute, Since, World};

fn deliver_all(w: &mut World, src: u8, dst: u8) {
    w.apply(&Op::Deliver { src, dst, n: 255 });
}

fn http(w: &mut World, shard: u8, topic: u8, size: u16) {
    w.apply(&Op::HttpPublish {
        shard,
        topic,
        token: true,
        size,
    });
}

/// A subscribe whose owner is the subscriber's own shard is answered within
/// the call: `Flow::Continue`, and no `Resume` (a stray one reached a reader
/// that was not waiting).
#[test]
fn a_subscribe_answered_at_once_owes_no_resume() {
    let mut w = World::new(Setup::simple(1));
    w.apply(&Op::Connect {
        shard: 0,
        kind: Kind::Ws,
        topic: 0,
        since: Since::None,
        resume: None,
    });
    http(&mut w, 0, 0, 5);
    w.apply(&Op::Subscribe {
        client: 0,
        topic: 0,
        since: Since::Zero,
        id: true,
    });
    w.finish();
}

/// A held long-poll with replayed messages collected, then a delivery the
/// mesh dropped: the `skipped` notice went to the front of the answer,
/// ahead of the messages before it. Now the answer stops there.
#[test]
fn a_poll_answer_keeps_seq_order_across_a_mesh_drop() {
    let mut setup = Setup::simple(2);
    setup.queue_cap = Some(1);
    let mut w = World::new(setup);
    let t = w.topic_owned_by(0);
    http(&mut w, 0, t, 5);
    http(&mut w, 0, t, 5);
    w.apply(&Op::Connect {
        shard: 1,
        kind: Kind::Poll,
        topic: t,
        since: Since::None,
        resume: None,
    });
    w.apply(&Op::Poll {
        client: 0,
        topic: t,
    });
    deliver_all(&mut w, 1, 0);
    deliver_all(&mut w, 0, 1); // the replay: 1, 2
    http(&mut w, 0, t, 5); // 3 queued
    http(&mut w, 0, t, 5); // 4 dropped: the queue is full
    deliver_all(&mut w, 0, 1);
    http(&mut w, 0, t, 5); // 5: shard 1 notices 4 is missing
    deliver_all(&mut w, 0, 1);
    w.apply(&Op::PollAnswer { client: 0 });
    assert!(w.engines[0].stats().deliveries_dropped >= 1);
    w.finish();
}

/// Conflation: a topic's newest message waits for room (held); a delivery
/// dropped by the mesh is noticed with the next one. The `skipped` notice
/// was queued at once, overtaking the held message.
#[test]
fn a_skipped_notice_does_not_overtake_a_held_message() {
    let mut setup = Setup::simple(2);
    setup.queue_cap = Some(1);
    setup.limits.slow_consumer = SlowConsumer::Conflate;
    setup.limits.outbox_size = 150;
    let mut w = World::new(setup);
    let t = w.topic_owned_by(0);
    w.apply(&Op::Connect {
        shard: 1,
        kind: Kind::Ws,
        topic: t,
        since: Since::None,
        resume: None,
    });
    w.apply(&Op::Subscribe {
        client: 0,
        topic: t,
        since: Since::None,
        id: true,
    });
    deliver_all(&mut w, 1, 0);
    deliver_all(&mut w, 0, 1);
    // The writer takes nothing: 1 is queued, 2 is held.
    for _ in 0..2 {
        http(&mut w, 0, t, 20);
        deliver_all(&mut w, 0, 1);
    }
    http(&mut w, 0, t, 20); // 3: queued in the mesh
    http(&mut w, 0, t, 20); // 4: dropped
    deliver_all(&mut w, 0, 1); // 3 replaces 2 as the held one
    http(&mut w, 0, t, 20); // 5: 4 is noticed missing
    deliver_all(&mut w, 0, 1);
    assert!(w.engines[1].stats().slow_conflations >= 2);
    assert!(w.engines[0].stats().deliveries_dropped >= 1);
    w.finish();
}

/// Conflation and two resumes in a row, nothing written: the second
/// replay's first frame does not fit (held), its next, smaller one still
/// fit the replay allowance and was queued ahead of it.
#[test]
fn a_replayed_frame_does_not_overtake_a_held_one() {
    let mut setup = Setup::simple(1);
    setup.limits.slow_consumer = SlowConsumer::Conflate;
    setup.limits.outbox_size = 100;
    // The replay allowance is the history bound: 400 bytes in flight.
    setup.limits.history = HistoryLimits {
        max_messages: 100,
        max_bytes: 400,
    };
    let mut w = World::new(setup);
    http(&mut w, 0, 0, 200); // ~265 bytes: fits the allowance
    http(&mut w, 0, 1, 100); // ~165: 265 + 165 does not, nor the bound
    http(&mut w, 0, 1, 1); // ~65: 265 + 65 fits the allowance
    w.apply(&Op::Connect {
        shard: 0,
        kind: Kind::Ws,
        topic: 0,
        since: Since::None,
        resume: None,
    });
    for topic in [0, 1] {
        w.apply(&Op::Subscribe {
            client: 0,
            topic,
            since: Since::Zero,
            id: true,
        });
    }
    assert!(w.engines[0].stats().slow_conflations >= 1);
    w.finish();
}

/// Disconnect policy: a client whose own message does not fit is closed
/// (its queue discarded, the close frame goes first); the `published`
/// reply to the same publish was queued after the discard, so the client
/// read it in place of the replies discarded before it.
#[test]
fn nothing_follows_a_slow_consumer_close() {
    let mut setup = Setup::simple(1);
    setup.limits.outbox_size = 200;
    let mut w = World::new(setup);
    w.apply(&Op::Connect {
        shard: 0,
        kind: Kind::Ws,
        topic: 0,
        since: Since::None,
        resume: None,
    });
    w.apply(&Op::Subscribe {
        client: 0,
        topic: 0,
        since: Since::None,
        id: true,
    });
    for _ in 0..3 {
        w.apply(&Op::Publish {
            client: 0,
            topic: 0,
            id: true,
            size: 100,
        });
    }
    // A resume for another topic while it is being closed: no replay.
    w.apply(&Op::Subscribe {
        client: 0,
        topic: 1,
        since: Since::Zero,
        id: true,
    });
    assert_eq!(w.engines[0].stats().slow_disconnects, 1);
    w.finish();
}

/// The same while a subscribe with `since` waits for its owner: the
/// answer comes after the close, and its replay must not go out.
#[test]
fn a_replay_answered_after_a_slow_close_is_not_sent() {
    let mut setup = Setup::simple(2);
    setup.limits.outbox_size = 200;
    let mut w = World::new(setup);
    let remote = w.topic_owned_by(0);
    let local = w.topic_owned_by(1);
    for _ in 0..3 {
        http(&mut w, 0, remote, 5);
    }
    w.apply(&Op::Connect {
        shard: 1,
        kind: Kind::Ws,
        topic: 0,
        since: Since::None,
        resume: None,
    });
    w.apply(&Op::Subscribe {
        client: 0,
        topic: local,
        since: Since::None,
        id: true,
    });
    w.apply(&Op::Subscribe {
        client: 0,
        topic: remote,
        since: Since::Zero,
        id: true,
    });
    // While the owner's answer is on its way: too much for the outbox.
    for _ in 0..3 {
        http(&mut w, 1, local, 150);
    }
    assert_eq!(w.engines[1].stats().slow_disconnects, 1);
    deliver_all(&mut w, 1, 0);
    deliver_all(&mut w, 0, 1);
    w.finish();
}

// ---------------------------------------------------------------------------
// Driven by hand: what the simulated runtime, which keeps the contract,
// never does.

struct Pair {
    engines: Vec<Engine<SimRoute>>,
    now: Instant,
}

impl Pair {
    fn new(shards: usize) -> Pair {
        let placement = Placement::new(shards, [1, 2, 3, 4]);
        let engines = (0..shards)
            .map(|shard| {
                let route = SimRoute {
                    shard,
                    queues: (0..shards).map(|_| VecDeque::new()).collect(),
                    cap: None,
                    refused: 0,
                };
                Engine::new(
                    shard,
                    placement.clone(),
                    Limits::default(),
                    "e",
                    route,
                    Box::new(AllowAll),
                )
            })
            .collect();
        Pair {
            engines,
            now: Instant::now(),
        }
    }

    /// A topic owned by `shard`.
    fn topic(&self, shard: usize) -> String {
        let p = Placement::new(self.engines.len(), [1, 2, 3, 4]);
        (0..)
            .map(|i| format!("t{i}"))
            .find(|t| p.owner(t) == shard)
            .unwrap()
    }

    fn deliver(&mut self, src: usize, dst: usize) -> Vec<Output> {
        while let Some(m) = self.engines[src].route_mut().queues[dst].pop_front() {
            self.engines[dst].handle(m, self.now);
        }
        self.outputs(dst)
    }

    fn outputs(&mut self, shard: usize) -> Vec<Output> {
        std::iter::from_fn(|| self.engines[shard].poll_output()).collect()
    }

    fn queued(&mut self, shard: usize, conn: ringcast_core::ConnId) -> Vec<String> {
        let mut out = Vec::new();
        self.engines[shard].take_batch(conn, &mut out, 1000);
        let n = out.iter().map(Bytes::len).sum();
        self.engines[shard].written(conn, n);
        out.iter()
            .map(|f| {
                String::from_utf8_lossy(&ringcast_core::wire::reply::message_json(f)).into_owned()
            })
            .collect()
    }
}

/// A command handed over while a subscribe waits for its owner runs in
/// turn (as `Engine::command` documents); it was parked and never run,
/// and the connection waited for ever.
#[test]
fn a_command_handed_over_while_waiting_runs_in_turn() {
    let mut p = Pair::new(2);
    let t = p.topic(0);
    let conn = p.engines[1].open(Grant::default());
    p.engines[1].set_transport(conn, Transport::WebSocket);
    let sub = Bytes::from(format!(r#"{{"op":"subscribe","topic":"{t}","id":1}}"#));
    assert_eq!(p.engines[1].command(conn, &sub, p.now), Flow::Wait);
    let unsub = Bytes::from(format!(r#"{{"op":"unsubscribe","topic":"{t}","id":2}}"#));
    assert_eq!(p.engines[1].command(conn, &unsub, p.now), Flow::Wait);
    p.deliver(1, 0);
    let out = p.deliver(0, 1);
    assert!(out.contains(&Output::Resume(conn)), "{out:?}");
    assert!(!p.engines[1].is_waiting(conn));
    let replies = p.queued(1, conn);
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(replies[0].contains(r#""op":"subscribed""#) && replies[0].contains(r#""id":1"#));
    assert!(replies[1].contains(r#""op":"unsubscribed""#) && replies[1].contains(r#""id":2"#));
    p.engines[1].audit().unwrap();
}

/// A long-poll answered (timeout) before its subscription went live, then
/// the next poll on the same connection: the first owner's answer, now
/// stale, resumed the second poll while its subscription was pending.
#[test]
fn a_stale_answer_does_not_resume_the_next_poll() {
    let mut p = Pair::new(2);
    let t = p.topic(0);
    let conn = p.engines[1].open(Grant::default());
    let now = p.now;
    for _ in 0..2 {
        p.engines[1].set_transport(conn, Transport::Poll);
        assert_eq!(p.engines[1].subscribe(conn, &t, Some(0), now), Flow::Wait);
        let (gap, frames) = p.engines[1].take_poll(conn, now);
        assert!(gap.is_none() && frames.is_empty());
        assert!(!p.engines[1].is_waiting(conn), "answered: not waiting");
        p.outputs(1);
    }
    // The second poll waits again.
    p.engines[1].set_transport(conn, Transport::Poll);
    assert_eq!(p.engines[1].subscribe(conn, &t, Some(0), now), Flow::Wait);
    p.engines[1]
        .publish(
            &t,
            Bytes::from_static(b"1"),
            None,
            now + Duration::from_millis(1),
        )
        .unwrap();
    p.deliver(1, 0);
    // Three answers: two stale, then the live one's.
    let out = p.deliver(0, 1);
    let resumes = out.iter().filter(|o| **o == Output::Resume(conn)).count();
    assert_eq!(resumes, 1, "{out:?}");
    assert!(p.engines[1].poll_ready(conn));
    p.engines[1].audit().unwrap();
}

/// A command parked behind a publish's owed reply, then one more handed
/// over anyway: the second was dropped (one parking slot), so it never got
/// its reply. Both run in turn once the reply is out.
#[test]
fn a_command_handed_over_behind_a_parked_one_is_not_lost() {
    let mut p = Pair::new(2);
    let t = p.topic(0);
    let conn = p.engines[1].open(Grant::default());
    p.engines[1].set_transport(conn, Transport::WebSocket);
    let cmd = |s: String| Bytes::from(s);
    let publish = cmd(format!(
        r#"{{"op":"publish","topic":"{t}","data":1,"id":1}}"#
    ));
    assert_eq!(p.engines[1].command(conn, &publish, p.now), Flow::Continue);
    for id in [2, 3] {
        let unsub = cmd(format!(r#"{{"op":"unsubscribe","topic":"{t}","id":{id}}}"#));
        assert_eq!(p.engines[1].command(conn, &unsub, p.now), Flow::Wait);
    }
    p.deliver(1, 0);
    let out = p.deliver(0, 1);
    assert_eq!(
        out.iter().filter(|o| **o == Output::Resume(conn)).count(),
        1,
        "{out:?}"
    );
    let replies = p.queued(1, conn);
    let ids: Vec<&str> = replies
        .iter()
        .map(|r| &r[r.rfind("\"id\":").unwrap() + 5..r.len() - 1])
        .collect();
    assert_eq!(ids, ["1", "2", "3"], "{replies:?}");
    assert!(!p.engines[1].is_waiting(conn));
    p.engines[1].audit().unwrap();
}
