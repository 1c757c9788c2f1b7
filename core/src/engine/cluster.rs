//! Cluster mode: a topic's owner keeps a mirror of the stream the backend
//! numbers (see [`crate::mirror`]) instead of numbering it itself.
//!
//! What changes against one node, and only this:
//! - publishes go to the backend, which answers with the seq (or
//!   `unavailable`); the message comes back to every watching node,
//!   the publisher's included, on the topic's one ordered stream;
//! - an owner with subscribers asks the backend to watch the topic and
//!   answers subscribes once it knows the stream ([`Msg::Head`]): the
//!   backend subscribed before it read the stream, so nothing falls between
//!   the head and the live messages, and the mirror merges the two by seq;
//! - the owner takes each seq once and in order; a missing one is fetched
//!   from the stream (and reported as `skipped` to live subscribers if the
//!   stream no longer has it); a new epoch (the backend lost its state)
//!   is passed on to subscribers as a `reset`.
//!
//! The subscriber side (local interest, replay, delivery, slow consumers)
//! is the same code as on one node.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::mirror::Waiter;
use crate::route::Head;
use crate::topic::TopicLog;

impl<R: Route> Engine<R> {
    /// Runs this engine as one shard of a cluster node: publishes and
    /// topic streams go through the backend, reached on the [`Route`] as
    /// shard `placement.shards()` (one past the last shard).
    pub fn with_backend(mut self) -> Self {
        self.backend = Some(self.placement.shards());
        self
    }

    /// Where a publish to `topic` goes: the backend in a cluster, else the
    /// topic's owner shard.
    pub(super) fn publish_target(&self, topic: &str) -> ShardId {
        self.backend.unwrap_or_else(|| self.placement.owner(topic))
    }

    pub(super) fn mirror_subscribe(&mut self, backend: ShardId, topic: Arc<str>, waiter: Waiter) {
        let from = waiter.from;
        if !self.mirrors.topics.contains_key(&topic) {
            let refusal = if self.mirrors.len() >= self.limits.max_topics {
                Some(ErrorCode::Limit)
            } else {
                let watch = Msg::Watch {
                    topic: topic.clone(),
                    owner: self.shard,
                };
                let sent = self.route.try_send(backend, watch);
                sent.is_err().then(|| {
                    self.stats.overloaded += 1;
                    ErrorCode::Overloaded
                })
            };
            if let Some(code) = refusal {
                let msg = Msg::SubAck {
                    topic,
                    token: waiter.token,
                    result: Err(code),
                };
                return self.send_always(from, msg);
            }
            self.mirrors.insert(topic.clone());
            self.stats.topics = self.mirrors.len() as i64;
        }
        let m = self.mirrors.topics.get_mut(&topic).expect("inserted");
        if !m.interested.contains(&from) {
            m.interested.push(from);
        }
        let Some(epoch) = m.epoch.clone() else {
            m.waiting.push(waiter);
            return;
        };
        if waiter.since.is_some_and(|s| s > m.log.last_seq()) {
            // The client saw a later seq than this node has: on one node
            // that means the topic restarted, in a cluster this node may
            // just be behind (the client was on another one). Ask the
            // stream first; the answer settles it.
            m.waiting.push(waiter);
            if !m.fetching {
                m.fetching = true;
                self.stats.cluster_fills += 1;
                let msg = Msg::Fetch {
                    topic,
                    epoch: Some(epoch),
                    after: m.log.last_seq(),
                };
                self.send_always(backend, msg);
            }
            return;
        }
        let snapshot = Snapshot {
            last_seq: m.log.last_seq(),
            epoch,
            replay: waiter.since.map(|s| m.log.replay(s)),
        };
        let msg = Msg::SubAck {
            topic,
            token: waiter.token,
            result: Ok(snapshot),
        };
        self.send_always(from, msg);
    }

    pub(super) fn mirror_unsubscribe(&mut self, backend: ShardId, topic: Arc<str>, from: ShardId) {
        let Some(m) = self.mirrors.topics.get_mut(&topic) else {
            return;
        };
        m.interested.retain(|&d| d != from);
        if m.interested.is_empty() && m.waiting.is_empty() {
            self.drop_mirror(backend, topic);
        }
    }

    /// Forgets a mirror nobody wants any more and tells the backend.
    fn drop_mirror(&mut self, backend: ShardId, topic: Arc<str>) {
        if let Some(m) = self.mirrors.topics.remove(&topic) {
            self.stats.retained_bytes -= m.log.retained().1 as i64;
        }
        self.stats.topics = self.mirrors.len() as i64;
        self.send_always(backend, Msg::Unwatch { topic });
    }

    /// The backend's answer to a watch or a fill.
    pub(super) fn mirror_head(
        &mut self,
        backend: ShardId,
        topic: Arc<str>,
        result: Result<Head, ErrorCode>,
        now: Instant,
    ) {
        let Some(m) = self.mirrors.topics.get_mut(&topic) else {
            // Unwatched since: stale.
            return;
        };
        let was_fetching = std::mem::replace(&mut m.fetching, false);
        let head = match result {
            Ok(head) => head,
            Err(code) if m.epoch.is_none() => {
                // The stream cannot be read: the subscribes waiting for it
                // are refused, and nobody else wants the topic yet.
                let waiting = std::mem::take(&mut m.waiting);
                self.drop_mirror(backend, topic.clone());
                for w in waiting {
                    let msg = Msg::SubAck {
                        topic: topic.clone(),
                        token: w.token,
                        result: Err(code),
                    };
                    self.send_always(w.from, msg);
                }
                return;
            }
            // A fill failed: the backend sends the head again when it is
            // back (it repairs every watched topic). Subscribes that
            // waited for it are answered from what this node has.
            Err(_) => {
                return self.mirror_answer_waiting(&topic);
            }
        };
        let first_sight = m.epoch.is_none();
        let reset = m.epoch.as_ref().is_some_and(|e| *e != head.epoch);
        let covers = match head.after {
            None => true,
            Some(after) => !first_sight && !reset && after <= m.log.last_seq(),
        };
        if !covers {
            // It does not reach back to this mirror's place (or to the
            // start of a stream it does not know): it cannot tell what is
            // gone. Its entries wait; the gap is fetched (in another
            // epoch, from the start).
            if first_sight {
                // The watch's own head is on its way.
                m.fetching = was_fetching;
                return;
            }
            let (max, max_bytes) = (
                self.limits.history.max_messages.max(64),
                self.limits.history.max_bytes,
            );
            if !reset {
                for (seq, data) in head.entries {
                    m.park(seq, head.epoch.clone(), data, max, max_bytes);
                }
            }
            m.fetching = true;
            if !was_fetching {
                self.stats.cluster_fills += 1;
                let msg = Msg::Fetch {
                    topic: topic.clone(),
                    epoch: m.epoch.clone(),
                    after: m.log.last_seq(),
                };
                self.send_always(backend, msg);
            }
            return;
        }
        // The head tells where the stream stands now: parked messages of
        // any other epoch are older than it.
        m.keep_epoch(&head.epoch);
        if first_sight || reset {
            let base = head
                .entries
                .first()
                .map_or(head.last_seq, |&(seq, _)| seq.saturating_sub(1));
            self.stats.retained_bytes -= m.log.retained().1 as i64;
            m.log = TopicLog::starting_at(base);
            m.epoch = Some(head.epoch.clone());
            if reset {
                self.stats.cluster_resets += 1;
                let interested = m.interested.clone();
                for dst in interested {
                    let msg = Msg::Reset {
                        topic: topic.clone(),
                        epoch: head.epoch.clone(),
                        last_seq: base,
                    };
                    self.send_always(dst, msg);
                }
            }
        }
        // Subscribers waiting for the first head are not live anywhere
        // yet: they get all of this in their replay, nothing is forwarded.
        let forward = !first_sight;
        for (seq, data) in head.entries {
            self.mirror_append(&topic, seq, &data, forward, now);
        }
        if let Some(m) = self.mirrors.topics.get_mut(&topic) {
            if head.last_seq > m.log.last_seq() {
                // The stream went further than what it retains (its tail
                // expired): those seqs are gone.
                m.log.skip_to(head.last_seq);
            }
        }
        self.mirror_drain(backend, &topic, forward, now);
        self.mirror_answer_waiting(&topic);
    }

    /// A message the backend numbered.
    pub(super) fn mirror_remote(
        &mut self,
        backend: ShardId,
        topic: Arc<str>,
        epoch: Arc<str>,
        seq: u64,
        data: Bytes,
        now: Instant,
    ) {
        let (max, max_bytes) = (
            self.limits.history.max_messages.max(64),
            self.limits.history.max_bytes,
        );
        let Some(m) = self.mirrors.topics.get_mut(&topic) else {
            return;
        };
        let in_turn =
            m.epoch.as_ref() == Some(&epoch) && !m.fetching && seq <= m.log.last_seq() + 1;
        if !in_turn {
            m.park(seq, epoch, data, max, max_bytes);
            self.mirror_drain(backend, &topic, true, now);
            return;
        }
        if seq <= m.log.last_seq() {
            self.stats.cluster_duplicates += 1;
            return;
        }
        self.mirror_append(&topic, seq, &data, true, now);
    }

    /// Takes parked messages that are now in turn; if some are still
    /// ahead of a missing seq (or of another epoch), asks for a fill.
    fn mirror_drain(&mut self, backend: ShardId, topic: &Arc<str>, forward: bool, now: Instant) {
        loop {
            let Some(m) = self.mirrors.topics.get_mut(topic) else {
                return;
            };
            if m.fetching || m.epoch.is_none() {
                return;
            }
            match m.next_parked() {
                Some((seq, data)) => self.mirror_append(topic, seq, &data, forward, now),
                None if m.ahead.is_empty() => return,
                None => {
                    m.fetching = true;
                    self.stats.cluster_fills += 1;
                    let msg = Msg::Fetch {
                        topic: topic.clone(),
                        epoch: m.epoch.clone(),
                        after: m.log.last_seq(),
                    };
                    return self.send_always(backend, msg);
                }
            }
        }
    }

    /// Appends `seq` (after the mirror's last) and, with `forward`, sends
    /// it to the shards with subscribers. Seqs jumped over are gone: the
    /// subscriber shards notice the jump and say `skipped`.
    fn mirror_append(
        &mut self,
        topic: &Arc<str>,
        seq: u64,
        data: &[u8],
        forward: bool,
        now: Instant,
    ) {
        let limits = self.limits.history;
        let ttl = self.limits.history_ttl;
        let Some(m) = self.mirrors.topics.get_mut(topic) else {
            return;
        };
        if seq <= m.log.last_seq() {
            return;
        }
        let before = m.log.retained().1;
        if let Some(ttl) = ttl {
            m.log.expire(now, ttl);
        }
        let frame = m.log.append(seq, topic, data, limits, now);
        self.stats.retained_bytes += m.log.retained().1 as i64 - before as i64;
        if !forward {
            return;
        }
        self.stats.published += 1;
        // Lent out for the forwarding (no copy of the list per message):
        // sending never re-enters the engine, so the mirror is still there.
        let interested = std::mem::take(&mut m.interested);
        self.forward(topic, seq, &frame, &interested);
        if let Some(m) = self.mirrors.topics.get_mut(topic) {
            m.interested = interested;
        }
    }

    fn mirror_answer_waiting(&mut self, topic: &Arc<str>) {
        let Some(m) = self.mirrors.topics.get_mut(topic) else {
            return;
        };
        let Some(epoch) = m.epoch.clone() else {
            return;
        };
        let last = m.log.last_seq();
        let fetching = m.fetching;
        // One that resumes past this node's place waits while a read of the
        // stream is on its way (see `mirror_subscribe`).
        let (waiting, answer): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut m.waiting)
            .into_iter()
            .partition(|w| fetching && w.since.is_some_and(|s| s > last));
        m.waiting = waiting;
        let answers: Vec<(ShardId, usize, Snapshot)> = answer
            .into_iter()
            .map(|w| {
                let snap = Snapshot {
                    last_seq: m.log.last_seq(),
                    epoch: epoch.clone(),
                    replay: w.since.map(|s| m.log.replay(s)),
                };
                (w.from, w.token, snap)
            })
            .collect();
        for (from, token, snap) in answers {
            let msg = Msg::SubAck {
                topic: topic.clone(),
                token,
                result: Ok(snap),
            };
            self.send_always(from, msg);
        }
    }

    /// Checks the mirrors against the gauges and the limits (see
    /// [`Engine::audit`]).
    pub(super) fn audit_mirrors(&self) -> Result<(), String> {
        let (topics, retained) = (self.mirrors.len(), self.mirrors.retained());
        if topics > self.limits.max_topics {
            return Err(format!(
                "{topics} mirrors, max_topics {}",
                self.limits.max_topics
            ));
        }
        if self.stats.topics != topics as i64 || self.stats.retained_bytes != retained as i64 {
            return Err(format!(
                "gauges: topics {} retained {}, mirrors hold {topics} and {retained}",
                self.stats.topics, self.stats.retained_bytes
            ));
        }
        for (name, m) in &self.mirrors.topics {
            if m.interested.is_empty() && m.waiting.is_empty() {
                return Err(format!("mirror {name}: nobody interested, kept"));
            }
            if m.epoch.is_none() && !m.log.is_empty() {
                return Err(format!("mirror {name}: retains before its stream is known"));
            }
        }
        Ok(())
    }

    /// On a subscriber shard: the topic's stream started again under a
    /// new epoch. Its live subscribers are told (`reset`); a held poll
    /// answers with what it has (its epoch header names the old stream),
    /// and the next poll learns the new epoch.
    pub(super) fn local_reset(&mut self, topic: &Arc<str>, epoch: Arc<str>, last_seq: u64) {
        let poll_cap = self.limits.outbox_size;
        let Some(entry) = self.local.get_mut(&**topic) else {
            return;
        };
        if !entry.live {
            // Its snapshot, still on the way, names the new epoch.
            return;
        }
        entry.epoch = epoch.clone();
        entry.last_seq = last_seq;
        let subs: Vec<ConnId> = entry.subs.iter().map(|(_, c)| *c).collect();
        for conn in subs {
            let Some(s) = self.session_mut(conn) else {
                continue;
            };
            // A conflated message of the old stream must not follow.
            s.outbox.drop_held(topic);
            let notice = match s.transport {
                Transport::Sse => reply::sse_reset(topic, &epoch, last_seq),
                Transport::Poll => {
                    let p = s.poll();
                    p.bytes = p.bytes.max(poll_cap);
                    self.out.push_back(Output::PollReady(conn));
                    continue;
                }
                _ => reply::reset(topic, &epoch, last_seq),
            };
            self.reply(conn, notice);
        }
    }
}
