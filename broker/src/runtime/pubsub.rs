//! Pub/sub on one shard: the topics it owns and the subscribers it serves.
//!
//! Every topic has one owner shard (a stable hash of its name). The owner
//! assigns `seq`, keeps the retained history, encodes each `message` frame
//! once, and forwards that same `Bytes` to every shard that told it it has
//! subscribers ("interest"). Each shard then pushes it to its local
//! subscribers' outboxes: no per-subscriber copy or JSON work, no lock on
//! the delivery path.
//!
//! Ordering is what makes `subscribed` honest and `since` gap-free. All of
//! a topic's traffic from its owner to a shard travels on one FIFO (the
//! mesh preserves per-sender order), and a subscription that needs the
//! owner (first on this shard, or with `since`) waits for the owner's
//! acknowledgement on that same FIFO. The ack is a snapshot: it carries the
//! retained messages after `since`, and every later message comes after it.
//! So the client gets `subscribed`, then the replay, then live messages:
//! no gap, no duplicate. Until the ack, a pending subscriber receives
//! nothing, and its connection's reader handles no further command, so the
//! replies to one connection's commands come in the order of the commands.
//!
//! Messages to this shard itself skip the mesh and are handled in place,
//! through a local queue so a handler never re-enters another.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Instant;

use ahash::RandomState;
use bytes::Bytes;
use slab::Slab;
use tokio::sync::oneshot;

use super::conn::{Conn, Transport};
use super::mesh::Mesh;
use super::Shared;
use crate::config::{Config, SlowConsumer};
use crate::metrics::ShardMetrics;
use crate::outbox::{PushError, Pushed};
use ringcast_core::topic::{Replay, TopicLog};
use ringcast_core::wire::command::{self, Command, ErrorCode, Id};
use ringcast_core::wire::reply;
use ringcast_proto::close::CloseCode;

/// Fixed seeds: every shard must agree on a topic's owner.
const OWNER_SEEDS: [u64; 4] = [0x5ca1_ab1e, 0x0dd_ba11, 0xdead_beef, 0xc0ff_ee00];

/// What shards tell each other.
#[derive(Debug)]
pub enum Msg {
    /// To the owner: assign a seq and fan out.
    Publish {
        topic: Arc<str>,
        data: Bytes,
        from: usize,
        token: usize,
    },
    /// To the owner: `from` has (or will have) a subscriber.
    Subscribe {
        topic: Arc<str>,
        from: usize,
        token: usize,
        since: Option<u64>,
    },
    /// To the owner: `from` has no subscriber left.
    Unsubscribe { topic: Arc<str>, from: usize },
    /// From the owner: a message for this shard's subscribers.
    Deliver {
        topic: Arc<str>,
        seq: u64,
        frame: Bytes,
    },
    /// From the owner: the subscription is live; what to replay first.
    SubAck {
        topic: Arc<str>,
        token: usize,
        result: Result<Option<Replay>, ErrorCode>,
    },
    /// From the owner: the seq a publish got.
    PubAck {
        token: usize,
        result: Result<u64, ErrorCode>,
    },
}

/// One of a connection's subscriptions.
#[derive(Debug)]
pub struct Sub {
    pub topic: Arc<str>,
    pub state: SubState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    /// Waiting for the owner's ack (the token).
    Pending(usize),
    /// Receiving; the key in the topic's local subscriber slab.
    Live(usize),
}

/// A topic as seen by a shard with subscribers to it.
#[derive(Default)]
struct Local {
    /// The owner has acknowledged this shard's interest.
    live: bool,
    /// Subscribe requests in flight to the owner.
    requests: usize,
    subs: Slab<Rc<Conn>>,
}

/// A topic as seen by its owner.
struct Owned {
    log: TopicLog,
    /// The shards with subscribers to it, each once: a publish visits only
    /// these.
    interested: Vec<usize>,
}

enum Pending {
    Sub {
        conn: Weak<Conn>,
        id: Option<Id>,
        since: Option<u64>,
        /// Tells the connection's reader the command is answered.
        done: oneshot::Sender<()>,
    },
    WsPub {
        conn: Weak<Conn>,
        topic: Arc<str>,
        id: Option<Id>,
    },
    HttpPub(oneshot::Sender<Result<u64, ErrorCode>>),
}

pub struct PubSub {
    id: usize,
    shards: usize,
    hasher: RandomState,
    mesh: Rc<Mesh<Msg>>,
    config: Arc<Config>,
    owned: RefCell<HashMap<Arc<str>, Owned, RandomState>>,
    local: RefCell<HashMap<Arc<str>, Local, RandomState>>,
    pending: RefCell<Slab<Pending>>,
    queue: RefCell<VecDeque<Msg>>,
    draining: Cell<bool>,
    shared: Arc<Shared>,
}

impl PubSub {
    pub fn new(id: usize, mesh: Rc<Mesh<Msg>>, config: Arc<Config>, shared: Arc<Shared>) -> Self {
        PubSub {
            id,
            shards: config.shards,
            hasher: RandomState::with_seeds(
                OWNER_SEEDS[0],
                OWNER_SEEDS[1],
                OWNER_SEEDS[2],
                OWNER_SEEDS[3],
            ),
            mesh,
            config,
            owned: RefCell::default(),
            local: RefCell::default(),
            pending: RefCell::new(Slab::new()),
            queue: RefCell::new(VecDeque::new()),
            draining: Cell::new(false),
            shared,
        }
    }

    /// This shard's metrics block.
    fn m(&self) -> &ShardMetrics {
        &self.shared.metrics()[self.id]
    }

    /// The shard that owns `topic`.
    pub fn owner(&self, topic: &str) -> usize {
        (self.hasher.hash_one(topic) % self.shards as u64) as usize
    }

    fn route(&self, dst: usize, msg: Msg) {
        if dst != self.id {
            return self.mesh.send(dst, msg);
        }
        self.handle(msg);
    }

    /// Handles a message from another shard or this one, after the handler
    /// running now (if any) returns: a handler never re-enters another,
    /// whichever way its message came.
    pub fn handle(&self, msg: Msg) {
        self.queue.borrow_mut().push_back(msg);
        if self.draining.replace(true) {
            return;
        }
        loop {
            let next = self.queue.borrow_mut().pop_front();
            match next {
                Some(m) => self.dispatch(m),
                None => break,
            }
        }
        self.draining.set(false);
    }

    fn dispatch(&self, msg: Msg) {
        match msg {
            Msg::Publish {
                topic,
                data,
                from,
                token,
            } => self.owner_publish(topic, data, from, token),
            Msg::Subscribe {
                topic,
                from,
                token,
                since,
            } => self.owner_subscribe(topic, from, token, since),
            Msg::Unsubscribe { topic, from } => self.owner_unsubscribe(&topic, from),
            Msg::Deliver { topic, seq, frame } => self.deliver_local(&topic, seq, &frame),
            Msg::SubAck {
                topic,
                token,
                result,
            } => self.sub_ack(topic, token, result),
            Msg::PubAck { token, result } => self.pub_ack(token, result),
        }
    }

    // ---- owner side -------------------------------------------------------

    /// The owner's entry for `topic`, created unless this shard already
    /// owns `--max-topics` topics.
    fn owned_entry<'a>(
        &self,
        owned: &'a mut HashMap<Arc<str>, Owned, RandomState>,
        topic: &Arc<str>,
    ) -> Result<&'a mut Owned, ErrorCode> {
        let full = owned.len() >= self.config.max_topics;
        match owned.entry(topic.clone()) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(_) if full => Err(ErrorCode::Limit),
            Entry::Vacant(e) => Ok(e.insert(Owned::new())),
        }
    }

    fn owner_publish(&self, topic: Arc<str>, data: Bytes, from: usize, token: usize) {
        let mut owned = self.owned.borrow_mut();
        let published = self.owned_entry(&mut owned, &topic).map(|t| {
            let (seq, frame) = t.log.publish(&topic, &data, self.config.history_limits());
            // Remote shards first (mesh.send touches no pub/sub state).
            for &dst in t.interested.iter().filter(|&&d| d != self.id) {
                self.mesh.send(
                    dst,
                    Msg::Deliver {
                        topic: topic.clone(),
                        seq,
                        frame: frame.clone(),
                    },
                );
            }
            (seq, frame, t.interested.contains(&self.id), t.idle())
        });
        if let Ok((_, _, _, true)) = published {
            owned.remove(&*topic);
        }
        self.m().topics.set(owned.len() as i64);
        drop(owned);
        let ack = published.map(|(seq, frame, here, _)| {
            self.m().published.inc();
            if here {
                self.deliver_local(&topic, seq, &frame);
            }
            seq
        });
        self.route(from, Msg::PubAck { token, result: ack });
    }

    fn owner_subscribe(&self, topic: Arc<str>, from: usize, token: usize, since: Option<u64>) {
        let mut owned = self.owned.borrow_mut();
        let result = self.owned_entry(&mut owned, &topic).map(|t| {
            if !t.interested.contains(&from) {
                t.interested.push(from);
            }
            since.map(|s| t.log.replay(s))
        });
        self.m().topics.set(owned.len() as i64);
        drop(owned);
        self.route(
            from,
            Msg::SubAck {
                topic,
                token,
                result,
            },
        );
    }

    fn owner_unsubscribe(&self, topic: &str, from: usize) {
        let mut owned = self.owned.borrow_mut();
        if let Some(t) = owned.get_mut(topic) {
            t.interested.retain(|&d| d != from);
            if t.idle() {
                owned.remove(topic);
            }
        }
        self.m().topics.set(owned.len() as i64);
    }

    // ---- subscriber side --------------------------------------------------

    /// A text frame from a `/ws` client. When the reply must wait for the
    /// topic's owner, returns a receiver that fires once it is queued; the
    /// reader waits for it before the next command, so one connection's
    /// replies come in the order of its commands.
    pub fn command(&self, conn: &Rc<Conn>, payload: &Bytes) -> Option<oneshot::Receiver<()>> {
        match command::parse(payload) {
            Ok(Command::Subscribe { topic, since, id }) => {
                return self.subscribe(conn, topic, since, id)
            }
            Ok(Command::Unsubscribe { topic, id }) => self.unsubscribe(conn, &topic, id),
            Ok(Command::Publish { topic, data, id }) => self.publish_ws(conn, topic, data, id),
            Err(e) => conn.send_reply(reply::error(e.code, &e.message, &e.id)),
        }
        None
    }

    fn subscribe(
        &self,
        conn: &Rc<Conn>,
        topic: String,
        since: Option<u64>,
        id: Option<Id>,
    ) -> Option<oneshot::Receiver<()>> {
        let refusal = {
            let subs = conn.subs.borrow();
            if subs.iter().any(|s| *s.topic == *topic) {
                Some((
                    ErrorCode::BadRequest,
                    format!("already subscribed to {topic}"),
                ))
            } else if subs.len() >= self.config.max_subscriptions {
                let max = self.config.max_subscriptions;
                Some((
                    ErrorCode::Limit,
                    format!("at most {max} subscriptions per connection"),
                ))
            } else {
                None
            }
        };
        if let Some((code, msg)) = refusal {
            conn.send_reply(reply::error(code, &msg, &id));
            return None;
        }
        let mut local = self.local.borrow_mut();
        let key: Arc<str> = match local.get_key_value(topic.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(topic),
        };
        let entry = local.entry(key.clone()).or_default();
        if entry.live && since.is_none() {
            // This shard already receives the topic: live at once.
            let slot = entry.subs.insert(conn.clone());
            self.m().subscriptions.inc();
            drop(local);
            conn.subs.borrow_mut().push(Sub {
                topic: key.clone(),
                state: SubState::Live(slot),
            });
            self.send_subscribed(conn, &key, &id);
            return None;
        }
        entry.requests += 1;
        drop(local);
        let (done, answered) = oneshot::channel();
        let token = self.pending.borrow_mut().insert(Pending::Sub {
            conn: Rc::downgrade(conn),
            id,
            since,
            done,
        });
        conn.subs.borrow_mut().push(Sub {
            topic: key.clone(),
            state: SubState::Pending(token),
        });
        let owner = self.owner(&key);
        self.route(
            owner,
            Msg::Subscribe {
                topic: key,
                from: self.id,
                token,
                since,
            },
        );
        Some(answered)
    }

    fn sub_ack(&self, topic: Arc<str>, token: usize, result: Result<Option<Replay>, ErrorCode>) {
        let Pending::Sub {
            conn,
            id,
            since,
            done,
        } = self.pending.borrow_mut().remove(token)
        else {
            unreachable!("sub_ack token is a subscription")
        };
        // The reader waits on this; released however this ends.
        let _answered = Answered(Some(done));
        // Still wanted? The connection may have gone meanwhile.
        let conn = conn.upgrade().filter(|c| {
            c.subs
                .borrow()
                .iter()
                .any(|s| *s.topic == *topic && s.state == SubState::Pending(token))
        });
        let mut local = self.local.borrow_mut();
        let entry = local
            .get_mut(&*topic)
            .expect("a pending request keeps the entry");
        entry.requests -= 1;
        match (conn, result) {
            (Some(conn), Ok(replay)) => {
                entry.live = true;
                let slot = entry.subs.insert(conn.clone());
                self.m().subscriptions.inc();
                drop(local);
                set_state(&conn, &topic, SubState::Live(slot));
                let transport = conn.transport.get();
                self.send_subscribed(&conn, &topic, &id);
                if let Some(Replay { gap, frames }) = replay {
                    if let Some(first) = gap {
                        let since = since.unwrap_or(0);
                        match transport {
                            Transport::WebSocket => {
                                conn.send_reply(reply::gap(&topic, since, first, &id))
                            }
                            Transport::Sse => conn.send_reply(reply::sse_gap(&topic, since, first)),
                            Transport::Poll => {
                                *conn.poll_gap.borrow_mut() =
                                    Some(reply::gap(&topic, since, first, &None))
                            }
                        }
                    }
                    let allowance = self.config.history_bytes;
                    for (seq, frame) in frames {
                        if transport == Transport::WebSocket
                            && conn.outbox.push_replay(frame.clone(), allowance).is_ok()
                        {
                            self.m().delivered.inc();
                            continue;
                        }
                        self.deliver_to(&conn, &topic, seq, &frame, &mut None);
                    }
                }
            }
            (Some(conn), Err(code)) => {
                drop(local);
                conn.subs.borrow_mut().retain(|s| *s.topic != *topic);
                if conn.transport.get() == Transport::WebSocket {
                    let msg = format!("cannot subscribe to {topic}: too many topics");
                    conn.send_reply(reply::error(code, &msg, &id));
                } else {
                    conn.refused.set(Some(code));
                }
            }
            (None, result) => {
                entry.live |= result.is_ok();
                drop(local);
            }
        }
        self.maybe_release(&topic);
    }

    /// `subscribed` with the epoch, before any replay: a frame on `/ws`, an
    /// `event: subscribed` on SSE. A long-poll gets the epoch as a response
    /// header instead.
    fn send_subscribed(&self, conn: &Conn, topic: &str, id: &Option<Id>) {
        let epoch = self.shared.epoch();
        match conn.transport.get() {
            Transport::WebSocket => conn.send_reply(reply::subscribed(topic, epoch, id)),
            Transport::Sse => conn.send_reply(reply::sse_subscribed(topic, epoch)),
            Transport::Poll => {}
        }
    }

    fn unsubscribe(&self, conn: &Rc<Conn>, topic: &str, id: Option<Id>) {
        let removed = {
            let mut subs = conn.subs.borrow_mut();
            subs.iter()
                .position(|s| *s.topic == *topic)
                .map(|i| subs.swap_remove(i))
        };
        // Never pending here: the reader waited for the subscription's ack.
        if let Some(sub) = removed {
            self.drop_sub(conn, sub);
        }
        // Idempotent: unsubscribing from a topic one is not subscribed to
        // is not an error.
        conn.send_reply(reply::unsubscribed(topic, &id));
    }

    fn drop_sub(&self, conn: &Conn, sub: Sub) {
        if let SubState::Live(slot) = sub.state {
            if let Some(entry) = self.local.borrow_mut().get_mut(&*sub.topic) {
                if entry.subs.try_remove(slot).is_some() {
                    self.m().subscriptions.dec();
                }
            }
            // A conflated message of this topic must not follow `unsubscribed`.
            conn.outbox.drop_held(&sub.topic);
        }
        // A pending one is settled when its ack arrives.
        self.maybe_release(&sub.topic);
    }

    /// Tells the owner when the last local subscriber of a topic is gone.
    fn maybe_release(&self, topic: &Arc<str>) {
        let release = {
            let mut local = self.local.borrow_mut();
            match local.get(&**topic) {
                Some(e) if e.subs.is_empty() && e.requests == 0 => {
                    let live = e.live;
                    local.remove(&**topic);
                    live
                }
                _ => false,
            }
        };
        if release {
            let owner = self.owner(topic);
            self.route(
                owner,
                Msg::Unsubscribe {
                    topic: topic.clone(),
                    from: self.id,
                },
            );
        }
    }

    /// Cleans up a closed `/ws` connection.
    pub fn disconnect(&self, conn: &Rc<Conn>) {
        let subs = std::mem::take(&mut *conn.subs.borrow_mut());
        for sub in subs {
            self.drop_sub(conn, sub);
        }
    }

    fn publish_ws(&self, conn: &Rc<Conn>, topic: String, data: Bytes, id: Option<Id>) {
        let topic: Arc<str> = Arc::from(topic);
        let token = self.pending.borrow_mut().insert(Pending::WsPub {
            conn: Rc::downgrade(conn),
            topic: topic.clone(),
            id,
        });
        self.send_publish(topic, data, token);
    }

    /// `POST /publish/{topic}`: the receiver yields the seq (or the error).
    pub fn publish_http(
        &self,
        topic: &str,
        data: Bytes,
    ) -> oneshot::Receiver<Result<u64, ErrorCode>> {
        let (tx, rx) = oneshot::channel();
        let token = self.pending.borrow_mut().insert(Pending::HttpPub(tx));
        self.send_publish(Arc::from(topic), data, token);
        rx
    }

    fn send_publish(&self, topic: Arc<str>, data: Bytes, token: usize) {
        let owner = self.owner(&topic);
        self.route(
            owner,
            Msg::Publish {
                topic,
                data,
                from: self.id,
                token,
            },
        );
    }

    fn pub_ack(&self, token: usize, result: Result<u64, ErrorCode>) {
        let pending = self.pending.borrow_mut().remove(token);
        match pending {
            Pending::WsPub { conn, topic, id } => {
                let Some(conn) = conn.upgrade() else { return };
                match result {
                    Ok(seq) if id.is_some() => conn.send_reply(reply::published(&topic, seq, &id)),
                    Ok(_) => {}
                    Err(code) => {
                        let msg = format!("cannot publish to {topic}: too many topics");
                        conn.send_reply(reply::error(code, &msg, &id));
                    }
                }
            }
            Pending::HttpPub(tx) => {
                let _ = tx.send(result);
            }
            Pending::Sub { .. } => unreachable!("pub_ack token is a publish"),
        }
    }

    // ---- delivery -----------------------------------------------------------

    fn deliver_local(&self, topic: &Arc<str>, seq: u64, frame: &Bytes) {
        let local = self.local.borrow();
        let Some(entry) = local.get(&**topic) else {
            return;
        };
        if !entry.live {
            return;
        }
        // The SSE form is built at most once per message on this shard.
        let mut sse = None;
        for (_, conn) in entry.subs.iter() {
            self.deliver_to(conn, topic, seq, frame, &mut sse);
        }
    }

    /// One subscriber: the same `Bytes` queued (or, for SSE, the same SSE
    /// event, built once); the slow-consumer policy if it does not fit.
    fn deliver_to(
        &self,
        conn: &Rc<Conn>,
        topic: &Arc<str>,
        seq: u64,
        frame: &Bytes,
        sse: &mut Option<Bytes>,
    ) {
        if conn.slow.get() {
            return;
        }
        let bytes = match conn.transport.get() {
            Transport::WebSocket => frame.clone(),
            Transport::Sse => sse
                .get_or_insert_with(|| reply::sse_event(seq, frame))
                .clone(),
            Transport::Poll => {
                // A held long-poll: collect, wake the request.
                conn.poll.borrow_mut().push(frame.clone());
                conn.poll_ready.notify_one();
                self.m().delivered.inc();
                return;
            }
        };
        let conflate = self.config.slow_consumer == SlowConsumer::Conflate;
        match conn.outbox.push_message(topic, seq, bytes, conflate) {
            Ok(Pushed::Queued) => self.m().delivered.inc(),
            Ok(Pushed::Held) => self.m().slow_conflations.inc(),
            Err(PushError::Closed) => {}
            Err(PushError::Full) => {
                conn.slow.set(true);
                self.m().slow_disconnects.inc();
                tracing::debug!(shard = self.id, "slow consumer disconnected");
                let deadline = Instant::now() + self.config.close_timeout;
                if conn.transport.get() == Transport::WebSocket {
                    // The close goes first: behind a full queue the client
                    // could not read it in time and would see a bare EOF.
                    conn.outbox.discard_queued();
                    conn.start_close(CloseCode::POLICY, "slow consumer", deadline);
                } else {
                    // SSE has no close frame: what is queued is flushed,
                    // then the stream ends.
                    conn.outbox.finish();
                    conn.deadline.set(Some(deadline));
                }
            }
        }
    }

    /// Subscribes an HTTP transport (SSE or long-poll) connection; the
    /// receiver fires once the owner answered.
    pub fn subscribe_http(
        &self,
        conn: &Rc<Conn>,
        topic: &str,
        since: Option<u64>,
    ) -> Option<oneshot::Receiver<()>> {
        self.subscribe(conn, topic.to_string(), since, None)
    }
}

/// Releases the waiting reader when dropped, after the replies are queued.
struct Answered(Option<oneshot::Sender<()>>);

impl Drop for Answered {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

fn set_state(conn: &Conn, topic: &str, state: SubState) {
    if let Some(s) = conn
        .subs
        .borrow_mut()
        .iter_mut()
        .find(|s| *s.topic == *topic)
    {
        s.state = state;
    }
}

impl Owned {
    fn new() -> Self {
        Owned {
            log: TopicLog::new(),
            interested: Vec::new(),
        }
    }

    /// Nothing to keep: no shard interested and nothing retained.
    fn idle(&self) -> bool {
        self.interested.is_empty() && self.log.is_empty()
    }
}
