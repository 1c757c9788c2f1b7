//! The topics one shard owns: their logs, who is interested in them, and
//! the bounds on what they retain.
//!
//! Memory here is chosen by clients (any client can name a new topic), so
//! every byte has a bound: `max_topics` topics, each with its history
//! bounds, a time-to-live on retained messages, and a per-shard budget of
//! retained bytes. Past the budget the topic published to longest ago
//! loses its history first. Whatever is dropped, a subscriber resuming
//! into it gets a `gap` notice, never silence, and a topic that is dropped
//! and later created again comes back under a new incarnation (so a new
//! epoch: its seqs restart at 1).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use ahash::RandomState;
use bytes::Bytes;

use crate::limits::Limits;
use crate::route::{ShardId, Snapshot};
use crate::stats::Stats;
use crate::topic::TopicLog;
use crate::wire::command::ErrorCode;

#[derive(Debug)]
pub(crate) struct Owned {
    pub log: TopicLog,
    /// The shards with subscribers to it, each once: a publish visits only
    /// these.
    pub interested: Vec<ShardId>,
    /// Its key in [`Owner::by_age`] while it retains anything.
    age: Option<u64>,
    last_publish: Option<Instant>,
    incarnation: u64,
    /// Its epoch, named once (every subscribe carries it).
    epoch: Arc<str>,
}

impl Owned {
    /// Nothing to keep: no shard interested and nothing retained.
    fn idle(&self) -> bool {
        self.interested.is_empty() && self.log.is_empty()
    }
}

#[derive(Debug)]
pub(crate) struct Owner {
    /// The process's epoch: a topic's epoch is this, with its incarnation
    /// after a dot once topics have been dropped.
    base: Arc<str>,
    topics: HashMap<Arc<str>, Owned, RandomState>,
    /// Topics that retain something, by their last publish (a counter, so
    /// the oldest is first): the eviction and expiry order.
    by_age: BTreeMap<u64, Arc<str>>,
    clock: u64,
    retained: usize,
    /// Topics dropped so far: a topic created after a drop is a new
    /// incarnation, whatever its name was before.
    drops: u64,
}

/// The epoch of a topic's `incarnation` in a process whose epoch is
/// `base`.
pub(crate) fn epoch_of(base: &str, incarnation: u64) -> Arc<str> {
    if incarnation == 0 {
        Arc::from(base)
    } else {
        Arc::from(format!("{base}.{incarnation}"))
    }
}

impl Owner {
    pub fn new(base: Arc<str>) -> Self {
        Owner {
            base,
            topics: HashMap::default(),
            by_age: BTreeMap::new(),
            clock: 0,
            retained: 0,
            drops: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    fn entry<'a>(
        topics: &'a mut HashMap<Arc<str>, Owned, RandomState>,
        (base, drops): (&str, u64),
        topic: &Arc<str>,
        limits: &Limits,
    ) -> Result<&'a mut Owned, ErrorCode> {
        let full = topics.len() >= limits.max_topics;
        match topics.entry(topic.clone()) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(_) if full => Err(ErrorCode::Limit),
            Entry::Vacant(e) => Ok(e.insert(Owned {
                log: TopicLog::new(),
                interested: Vec::new(),
                age: None,
                last_publish: None,
                incarnation: drops,
                epoch: epoch_of(base, drops),
            })),
        }
    }

    /// Assigns the next seq of `topic` and encodes its frame; returns them
    /// with the shards to forward it to.
    pub fn publish(
        &mut self,
        topic: &Arc<str>,
        data: &[u8],
        limits: &Limits,
        now: Instant,
        stats: &mut Stats,
    ) -> Result<(u64, Bytes, Vec<ShardId>), ErrorCode> {
        let t = Self::entry(&mut self.topics, (&self.base, self.drops), topic, limits)?;
        let before = t.log.retained().1;
        if let Some(ttl) = limits.history_ttl {
            t.log.expire(now, ttl);
        }
        let (seq, frame) = t.log.publish(topic, data, limits.history, now);
        t.last_publish = Some(now);
        let after = t.log.retained().1;
        let interested = t.interested.clone();
        self.clock += 1;
        let old_age = std::mem::replace(&mut t.age, (!t.log.is_empty()).then_some(self.clock));
        let new_age = t.age;
        self.retained = self.retained + after - before;
        if let Some(a) = old_age {
            self.by_age.remove(&a);
        }
        if let Some(a) = new_age {
            self.by_age.insert(a, topic.clone());
        }
        self.enforce_budget(limits, stats);
        self.forget_if_idle(topic);
        self.gauges(stats);
        Ok((seq, frame, interested))
    }

    /// Registers `from`'s interest and answers with the replay after
    /// `since`.
    pub fn subscribe(
        &mut self,
        topic: &Arc<str>,
        from: ShardId,
        since: Option<u64>,
        limits: &Limits,
        now: Instant,
        stats: &mut Stats,
    ) -> Result<Snapshot, ErrorCode> {
        let t = Self::entry(&mut self.topics, (&self.base, self.drops), topic, limits)?;
        let before = t.log.retained().1;
        if let Some(ttl) = limits.history_ttl {
            t.log.expire(now, ttl);
        }
        let after = t.log.retained().1;
        if !t.interested.contains(&from) {
            t.interested.push(from);
        }
        let snapshot = Snapshot {
            last_seq: t.log.last_seq(),
            epoch: t.epoch.clone(),
            replay: since.map(|s| t.log.replay(s)),
        };
        let emptied = if t.log.is_empty() { t.age.take() } else { None };
        if let Some(a) = emptied {
            self.by_age.remove(&a);
        }
        self.retained -= before - after;
        self.gauges(stats);
        Ok(snapshot)
    }

    pub fn unsubscribe(&mut self, topic: &str, from: ShardId, stats: &mut Stats) {
        if let Some(t) = self.topics.get_mut(topic) {
            t.interested.retain(|&d| d != from);
        }
        self.forget_if_idle(topic);
        self.gauges(stats);
    }

    fn forget_if_idle(&mut self, topic: &str) {
        if self.topics.get(topic).is_some_and(Owned::idle) {
            self.topics.remove(topic);
            self.drops += 1;
        }
    }

    /// Drops the history of `topic` (the oldest by last publish).
    fn drop_history(&mut self, age: u64) {
        let Some(topic) = self.by_age.remove(&age) else {
            return;
        };
        if let Some(t) = self.topics.get_mut(&topic) {
            t.age = None;
            self.retained -= t.log.clear();
        }
        self.forget_if_idle(&topic);
    }

    fn enforce_budget(&mut self, limits: &Limits, stats: &mut Stats) {
        while self.retained > limits.history_budget {
            let Some((&age, _)) = self.by_age.first_key_value() else {
                break;
            };
            self.drop_history(age);
            stats.history_evicted += 1;
        }
    }

    /// Drops the history of every topic not published to within the TTL.
    pub fn expire(&mut self, now: Instant, limits: &Limits, stats: &mut Stats) {
        let Some(ttl) = limits.history_ttl else {
            return;
        };
        while let Some((&age, topic)) = self.by_age.first_key_value() {
            let last = self.topics.get(topic).and_then(|t| t.last_publish);
            if last.is_some_and(|at| now.saturating_duration_since(at) < ttl) {
                break;
            }
            self.drop_history(age);
            stats.history_expired += 1;
        }
        self.gauges(stats);
    }

    /// When [`Owner::expire`] next has something to do.
    pub fn next_expiry(&self, limits: &Limits) -> Option<Instant> {
        let ttl = limits.history_ttl?;
        let (_, topic) = self.by_age.first_key_value()?;
        Some(self.topics.get(topic)?.last_publish? + ttl)
    }

    fn gauges(&self, stats: &mut Stats) {
        stats.topics = self.topics.len() as i64;
        stats.retained_bytes = self.retained as i64;
    }

    #[cfg(test)]
    pub fn retained(&self) -> usize {
        self.retained
    }

    /// The topics owned, for [`crate::Engine::inspect`].
    pub fn topics(&self) -> impl Iterator<Item = (&Arc<str>, &Owned)> {
        self.topics.iter()
    }

    /// Checks the owner's bookkeeping against what it holds (see
    /// [`crate::Engine::audit`]).
    pub fn audit(&self, limits: &Limits, stats: &Stats) -> Result<(), String> {
        if self.topics.len() > limits.max_topics {
            return Err(format!(
                "{} topics owned, max_topics is {}",
                self.topics.len(),
                limits.max_topics
            ));
        }
        if stats.topics != self.topics.len() as i64 {
            return Err(format!(
                "topics gauge {} but {} owned",
                stats.topics,
                self.topics.len()
            ));
        }
        let held: usize = self.topics.values().map(|t| t.log.retained().1).sum();
        if held != self.retained || stats.retained_bytes != held as i64 {
            return Err(format!(
                "retained: {held} bytes held, counted {}, gauge {}",
                self.retained, stats.retained_bytes
            ));
        }
        if held > limits.history_budget {
            return Err(format!(
                "{held} bytes retained, budget {}",
                limits.history_budget
            ));
        }
        for (name, t) in &self.topics {
            if t.idle() {
                return Err(format!("{name}: idle but kept"));
            }
            let mut seen = t.interested.clone();
            seen.sort_unstable();
            seen.dedup();
            if seen.len() != t.interested.len() {
                return Err(format!("{name}: interested {:?}", t.interested));
            }
            match t.age {
                Some(a) if self.by_age.get(&a) != Some(name) => {
                    return Err(format!("{name}: age {a} not in by_age"));
                }
                Some(_) if t.log.is_empty() => {
                    return Err(format!("{name}: aged but retains nothing"));
                }
                None if !t.log.is_empty() => {
                    return Err(format!("{name}: retains without an age"));
                }
                _ => {}
            }
        }
        for (a, name) in &self.by_age {
            if self.topics.get(name).and_then(|t| t.age) != Some(*a) {
                return Err(format!("by_age {a} -> {name}: stale"));
            }
        }
        Ok(())
    }
}

impl Owned {
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::topic::HistoryLimits;

    fn limits() -> Limits {
        Limits {
            history: HistoryLimits {
                max_messages: 10,
                max_bytes: 10_000,
            },
            history_ttl: Some(Duration::from_secs(60)),
            ..Limits::default()
        }
    }

    fn t(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn the_budget_evicts_the_topic_published_to_longest_ago() {
        let mut o = Owner::new(Arc::from("e"));
        let mut stats = Stats::default();
        let now = Instant::now();
        let one = crate::wire::reply::message("a", 1, b"1").len();
        let limits = Limits {
            history_budget: 3 * one,
            ..limits()
        };
        for name in ["a", "b", "c"] {
            o.publish(&t(name), b"1", &limits, now, &mut stats).unwrap();
        }
        assert_eq!(o.retained(), 3 * one);
        o.publish(&t("a"), b"1", &limits, now, &mut stats).unwrap();
        // "b" is now the oldest: it went, "a" and "c" stay.
        assert_eq!(stats.history_evicted, 1);
        assert!(o.retained() <= 3 * one);
        assert!(!o.topics.contains_key("b"), "no interest, no history: gone");
        // A subscriber resuming "a" from 0 still gets everything retained.
        let s = o
            .subscribe(&t("a"), 1, Some(0), &limits, now, &mut stats)
            .unwrap();
        assert_eq!(s.replay.unwrap().frames.len(), 2);
        // "b" comes back as a new incarnation at seq 1.
        let s = o
            .subscribe(&t("b"), 1, Some(1), &limits, now, &mut stats)
            .unwrap();
        assert_eq!((s.last_seq, &*s.epoch), (0, "e.1"));
        assert_eq!(s.replay.unwrap().gap, Some(1), "since 1 is ahead: a gap");
    }

    #[test]
    fn the_ttl_expires_history_and_frees_idle_topics() {
        let mut o = Owner::new(Arc::from("e"));
        let mut stats = Stats::default();
        let t0 = Instant::now();
        let limits = limits();
        o.publish(&t("a"), b"1", &limits, t0, &mut stats).unwrap();
        o.publish(
            &t("b"),
            b"1",
            &limits,
            t0 + Duration::from_secs(30),
            &mut stats,
        )
        .unwrap();
        o.subscribe(&t("b"), 0, None, &limits, t0, &mut stats)
            .unwrap();
        assert_eq!(o.next_expiry(&limits), Some(t0 + Duration::from_secs(60)));
        o.expire(t0 + Duration::from_secs(59), &limits, &mut stats);
        assert_eq!(o.len(), 2);
        o.expire(t0 + Duration::from_secs(90), &limits, &mut stats);
        assert_eq!(stats.history_expired, 2);
        assert_eq!(o.retained(), 0);
        // "a" had no interest: forgotten. "b" keeps its seq for its
        // subscriber, and a resume from before reports the gap.
        assert_eq!(o.len(), 1);
        let s = o
            .subscribe(&t("b"), 0, Some(0), &limits, t0, &mut stats)
            .unwrap();
        assert_eq!((s.last_seq, s.replay.unwrap().gap), (1, Some(2)));
        assert_eq!(o.next_expiry(&limits), None);
        assert_eq!(stats.topics, 1);
    }

    #[test]
    fn max_topics_refuses_new_topics_only() {
        let mut o = Owner::new(Arc::from("e"));
        let mut stats = Stats::default();
        let now = Instant::now();
        let limits = Limits {
            max_topics: 1,
            ..limits()
        };
        o.publish(&t("a"), b"1", &limits, now, &mut stats).unwrap();
        assert_eq!(
            o.publish(&t("b"), b"1", &limits, now, &mut stats).err(),
            Some(ErrorCode::Limit)
        );
        assert!(o.publish(&t("a"), b"1", &limits, now, &mut stats).is_ok());
    }
}
