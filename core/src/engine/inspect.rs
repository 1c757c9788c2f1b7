//! Inspection for the simulator, the property tests and the fuzz target:
//! the engine's bookkeeping checked against what it holds, and a view of
//! it. Walks everything; never on a hot path.

use std::sync::Arc;

use super::*;

impl<R: Route> Engine<R> {
    /// Checks the engine's bookkeeping against what it holds: the gauges in
    /// [`Stats`] (subscriptions, topics, retained bytes), the subscriber
    /// lists against the sessions, the requests in flight, the owner's
    /// limits and eviction order. `Err` says what disagrees. For tests; it
    /// walks everything.
    #[doc(hidden)]
    pub fn audit(&self) -> Result<(), String> {
        if self.backend.is_some() {
            self.audit_mirrors()?;
        } else {
            self.owner.audit(&self.limits, &self.stats)?;
        }
        let mut live = 0;
        let mut requests = 0;
        for (topic, e) in &self.local {
            if e.subs.is_empty() && e.requests == 0 {
                return Err(format!("local {topic}: no subscriber, no request, kept"));
            }
            if !e.live && !e.subs.is_empty() {
                return Err(format!(
                    "local {topic}: subscribers before the owner's answer"
                ));
            }
            requests += e.requests;
            for (slot, &conn) in e.subs.iter() {
                live += 1;
                let ok = self
                    .session(conn)
                    .and_then(|s| s.sub(topic))
                    .is_some_and(|s| s.state == SubState::Live(slot));
                if !ok {
                    return Err(format!(
                        "local {topic}: slot {slot} -> {conn:?} not its sub"
                    ));
                }
            }
        }
        if self.stats.subscriptions != live as i64 {
            return Err(format!(
                "subscriptions gauge {} but {live} live",
                self.stats.subscriptions
            ));
        }
        let subs_pending = self
            .pending
            .iter()
            .filter(|(_, p)| matches!(p, Pending::Sub { .. }))
            .count();
        if subs_pending != requests {
            return Err(format!(
                "{subs_pending} subscribe requests pending, local entries count {requests}"
            ));
        }
        for (idx, s) in self.sessions.iter() {
            let conn = ConnId {
                idx: idx as u32,
                gen: s.gen,
            };
            if s.subs.len() > self.limits.max_subscriptions {
                return Err(format!("{conn:?}: {} subscriptions", s.subs.len()));
            }
            // The reader waits exactly while a subscription waits for its
            // owner or commands wait their turn.
            let pending = s
                .subs
                .iter()
                .any(|x| matches!(x.state, SubState::Pending(_)));
            if s.waiting != (pending || s.parked() != 0) {
                return Err(format!(
                    "{conn:?}: waiting {} with a subscription pending: {pending}, {} parked",
                    s.waiting,
                    s.parked()
                ));
            }
            // An idle connection keeps nothing of its pipeline.
            if s.pipeline_ref().is_some() && s.owed() == 0 && s.parked() == 0 {
                return Err(format!("{conn:?}: keeps an empty pipeline"));
            }
            for (i, sub) in s.subs.iter().enumerate() {
                if s.subs[..i].iter().any(|o| o.topic == sub.topic) {
                    return Err(format!("{conn:?}: {} twice", sub.topic));
                }
                let ok = match sub.state {
                    SubState::Live(slot) => {
                        self.local.get(&sub.topic).and_then(|e| e.subs.get(slot)) == Some(&conn)
                    }
                    SubState::Pending(t) => matches!(
                        self.pending.get(t),
                        Some(Pending::Sub { conn: c, .. }) if *c == conn
                    ),
                };
                if !ok {
                    return Err(format!("{conn:?}: {} {:?} dangling", sub.topic, sub.state));
                }
            }
            for o in s.pipeline_ref().iter().flat_map(|p| &p.owed) {
                if let Some(t) = o.token {
                    let ok = matches!(
                        self.pending.get(t),
                        Some(Pending::WsPub { conn: c, .. }) if *c == conn
                    );
                    if !ok {
                        return Err(format!("{conn:?}: owes a reply to a token it has not"));
                    }
                }
            }
        }
        Ok(())
    }

    /// What this shard holds, for checks across shards (which shards an
    /// owner forwards to against which shards have subscribers).
    #[doc(hidden)]
    pub fn inspect(&self) -> Inspect {
        let mut owned: Vec<OwnedTopic> = self
            .owner
            .topics()
            .map(|(name, t)| OwnedTopic {
                topic: name.clone(),
                last_seq: t.log.last_seq(),
                incarnation: t.incarnation(),
                interested: t.interested.clone(),
                retained: t.log.retained().1,
            })
            .collect();
        owned.sort_by(|a, b| a.topic.cmp(&b.topic));
        let mut local: Vec<LocalTopic> = self
            .local
            .iter()
            .map(|(name, e)| LocalTopic {
                topic: name.clone(),
                live: e.live,
                subscribers: e.subs.len(),
                requests: e.requests,
            })
            .collect();
        local.sort_by(|a, b| a.topic.cmp(&b.topic));
        Inspect {
            owned,
            local,
            sessions: self.sessions.len(),
            pending: self.pending.len(),
        }
    }
}

/// A shard's state, as [`Engine::inspect`] reports it.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct Inspect {
    pub owned: Vec<OwnedTopic>,
    pub local: Vec<LocalTopic>,
    /// Open connections.
    pub sessions: usize,
    /// Requests waiting for an owner's answer.
    pub pending: usize,
}

/// A topic this shard owns.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct OwnedTopic {
    pub topic: Arc<str>,
    pub last_seq: u64,
    pub incarnation: u64,
    pub interested: Vec<ShardId>,
    pub retained: usize,
}

/// A topic this shard has subscribers to (or requests for).
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct LocalTopic {
    pub topic: Arc<str>,
    /// The owner has acknowledged this shard's interest.
    pub live: bool,
    pub subscribers: usize,
    pub requests: usize,
}
