//! Subscribing: the local side of interest (a connection asks, the
//! owner answers with a snapshot, the subscription goes live), and
//! unsubscribing.

use std::sync::Arc;

use super::*;

impl<R: Route> Engine<R> {
    /// Subscribes an SSE or long-poll connection (set its transport
    /// first). On a refusal, [`Engine::take_refusal`] says why.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        topic: &str,
        since: Option<u64>,
        now: Instant,
    ) -> Flow {
        let mark = self.out.len();
        self.subscribe_inner(conn, topic.to_string(), since, None);
        self.drain_inbox(now);
        self.flow_after(conn, mark)
    }

    /// Why the last HTTP-transport subscription was refused.
    pub fn take_refusal(&mut self, conn: ConnId) -> Option<ErrorCode> {
        self.session_mut(conn).and_then(|s| s.refused.take())
    }

    /// Refuses a subscription: an `error` reply on `/ws`, a refusal the
    /// HTTP transports read with [`Engine::take_refusal`].
    pub(super) fn refuse(&mut self, conn: ConnId, code: ErrorCode, message: &str, id: &Option<Id>) {
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        if s.transport != Transport::WebSocket {
            s.refused = Some(code);
            return;
        }
        self.reply(conn, reply::error(code, message, id));
    }

    pub(super) fn subscribe_inner(
        &mut self,
        conn: ConnId,
        topic: String,
        since: Option<u64>,
        id: Option<Id>,
    ) {
        let max = self.limits.max_subscriptions;
        let Some(s) = session_in(&self.sessions, conn) else {
            return;
        };
        let refusal = if s.sub(&topic).is_some() {
            Some((
                ErrorCode::BadRequest,
                format!("already subscribed to {topic}"),
            ))
        } else if s.subs.len() >= max {
            Some((
                ErrorCode::Limit,
                format!("at most {max} subscriptions per connection"),
            ))
        } else {
            match self.auth.subscribe(s.grant(), &topic) {
                Ok(()) => None,
                Err(d) => {
                    self.stats.denied += 1;
                    Some(denial(d))
                }
            }
        };
        if let Some((code, msg)) = refusal {
            return self.refuse(conn, code, &msg, &id);
        }
        let key: Arc<str> = match self.local.get_key_value(topic.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(topic),
        };
        let entry = self.local.entry(key.clone()).or_default();
        if entry.live && since.is_none() {
            // This shard already receives the topic: live at once.
            let slot = entry.subs.insert(conn);
            let epoch = entry.epoch.clone();
            self.stats.subscriptions += 1;
            if let Some(s) = self.session_mut(conn) {
                s.add_sub(Sub {
                    topic: key.clone(),
                    state: SubState::Live(slot),
                });
            }
            self.send_subscribed(conn, &key, &id, epoch);
            return;
        }
        entry.requests += 1;
        let token = self.pending.insert(Pending::Sub { conn, id, since });
        if let Some(s) = self.session_mut(conn) {
            s.add_sub(Sub {
                topic: key.clone(),
                state: SubState::Pending(token),
            });
            s.waiting = true;
        }
        let owner = self.placement.owner(&key);
        let msg = Msg::Subscribe {
            topic: key.clone(),
            from: self.shard,
            token,
            since,
        };
        if self.send_bounded(owner, msg).is_err() {
            let Pending::Sub { id, .. } = self.pending.remove(token) else {
                unreachable!("just inserted")
            };
            if let Some(s) = self.session_mut(conn) {
                s.retain_subs(|s| s.topic != key);
                s.waiting = false;
            }
            if let Some(e) = self.local.get_mut(&key) {
                e.requests -= 1;
            }
            self.maybe_release(&key);
            self.stats.overloaded += 1;
            let msg = format!("cannot subscribe to {key} now: the broker is overloaded");
            self.refuse(conn, ErrorCode::Overloaded, &msg, &id);
        }
    }

    pub(super) fn sub_ack(
        &mut self,
        topic: Arc<str>,
        token: usize,
        result: Result<Snapshot, ErrorCode>,
    ) {
        let Some(Pending::Sub { conn, id, since }) = self.pending.try_remove(token) else {
            debug_assert!(false, "a SubAck answers a subscription");
            return;
        };
        // Still wanted? The connection may have gone, or unsubscribed.
        let wanted = self.session(conn).is_some_and(|s| {
            s.sub(&topic)
                .is_some_and(|s| s.state == SubState::Pending(token))
        });
        let Some(entry) = self.local.get_mut(&topic) else {
            debug_assert!(false, "a pending request keeps the entry");
            return;
        };
        entry.requests -= 1;
        if let Ok(snap) = &result {
            if !entry.live {
                entry.live = true;
                entry.last_seq = snap.last_seq;
                entry.epoch = snap.epoch.clone();
            }
        }
        if let Ok(snap) = &result {
            // Deliveries the mesh dropped before this answer: the live
            // subscribers hear of them now (the new one gets the replay).
            self.catch_up(&topic, snap.last_seq);
        }
        match (wanted, result) {
            (true, Ok(snap)) => self.go_live(conn, &topic, id, since, snap),
            (true, Err(code)) => {
                if let Some(s) = self.session_mut(conn) {
                    s.retain_subs(|s| s.topic != topic);
                }
                let msg = match code {
                    ErrorCode::Limit => format!("cannot subscribe to {topic}: too many topics"),
                    ErrorCode::Unavailable => format!(
                        "cannot subscribe to {topic} now: the cluster backend is unavailable"
                    ),
                    ErrorCode::Overloaded => {
                        format!("cannot subscribe to {topic} now: the broker is overloaded")
                    }
                    _ => format!("cannot subscribe to {topic}"),
                };
                self.refuse(conn, code, &msg, &id);
            }
            (false, _) => {}
        }
        // Only the answer the connection waits for settles its wait: a
        // stale one (a poll answered before its subscription went live)
        // resumed the next poll's subscription while it was still pending.
        if let Some(s) = self.session_mut(conn).filter(|_| wanted) {
            if s.waiting && s.parked() == 0 {
                s.waiting = false;
                self.out.push_back(Output::Resume(conn));
            } else if s.waiting {
                // A command handed over while this waited runs now, in turn
                // (it was never run: the connection waited for ever).
                self.settle_owed(conn);
            }
        }
        self.maybe_release(&topic);
    }

    /// A subscriber shard notices seqs it never received (dropped at a
    /// full queue) and tells its live subscribers what they skipped.
    pub(super) fn catch_up(&mut self, topic: &Arc<str>, seq_before: u64) {
        let Some(entry) = self.local.get_mut(&**topic) else {
            return;
        };
        if seq_before <= entry.last_seq {
            return;
        }
        let (from, to) = (entry.last_seq + 1, seq_before);
        entry.last_seq = seq_before;
        let subs: Vec<ConnId> = entry.subs.iter().map(|(_, c)| *c).collect();
        for conn in subs {
            self.notify_skipped(conn, topic, from, to);
        }
    }

    pub(super) fn notify_skipped(&mut self, conn: ConnId, topic: &str, from: u64, to: u64) {
        let poll_cap = self.limits.outbox_size;
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        let notice = match s.transport {
            Transport::Sse => reply::sse_skipped(topic, from, to),
            Transport::Poll => {
                // An answer is one notice, then messages in seq order. The
                // notice goes first only if nothing was collected yet:
                // behind replayed messages (or in place of a `gap`) it
                // would be out of order, or lose the gap. Otherwise the
                // answer ends here; the client polls on from its last seq
                // and the owner's replay (or its `gap`) tells the rest.
                let p = s.poll();
                if p.messages.is_empty() && p.gap.is_none() {
                    p.gap = Some(reply::skipped(topic, from, to));
                } else {
                    p.bytes = p.bytes.max(poll_cap);
                }
                self.out.push_back(Output::PollReady(conn));
                return;
            }
            _ => reply::skipped(topic, from, to),
        };
        // A conflated message of the topic waiting for room was published
        // before these seqs: the notice goes behind it (queued now, it
        // overtook the message and the client saw the seqs out of order).
        if s.outbox.hold_skip(topic, from, to) {
            return;
        }
        // A notice is owed like a reply: past the bound, within the slack.
        self.reply(conn, notice);
    }

    pub(super) fn go_live(
        &mut self,
        conn: ConnId,
        topic: &Arc<str>,
        id: Option<Id>,
        since: Option<u64>,
        snap: Snapshot,
    ) {
        let Some(entry) = self.local.get_mut(&**topic) else {
            return;
        };
        let slot = entry.subs.insert(conn);
        self.stats.subscriptions += 1;
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        if let Some(sub) = s.subs.iter_mut().find(|s| s.topic == *topic) {
            sub.state = SubState::Live(slot);
        }
        if s.slow {
            // Closed by the slow-consumer policy while this waited for the
            // owner: nothing more goes out (it would follow the close).
            return;
        }
        let transport = s.transport;
        self.send_subscribed(conn, topic, &id, snap.epoch);
        let Some(replay) = snap.replay else {
            return;
        };
        if let Some(first) = replay.gap {
            let since = since.unwrap_or(0);
            match transport {
                Transport::Sse => self.reply(conn, reply::sse_gap(topic, since, first)),
                Transport::Poll => {
                    if let Some(s) = self.session_mut(conn) {
                        s.poll().gap = Some(reply::gap(topic, since, first, &None));
                        self.out.push_back(Output::PollReady(conn));
                    }
                }
                _ => self.reply(conn, reply::gap(topic, since, first, &id)),
            }
        }
        let allowance = self.limits.history.max_bytes;
        // Once a replayed frame takes the slow-consumer path, the rest
        // follow it: a later, smaller frame that still fit the replay
        // allowance overtook a conflated (held) one.
        let mut burst = transport == Transport::WebSocket;
        for (seq, frame) in replay.frames {
            if burst {
                let Some(s) = self.session_mut(conn) else {
                    return;
                };
                if s.outbox.push_replay(frame.clone(), allowance).is_ok() {
                    self.stats.delivered += 1;
                    self.wake(conn);
                    continue;
                }
                burst = false;
            }
            let mut sse = None;
            self.deliver_to(conn, topic, seq, &frame, &mut sse);
            if self.session(conn).is_none_or(|s| s.slow) {
                // Closed by the policy: nothing more.
                return;
            }
        }
    }

    /// `subscribed` with the epoch, before any replay: a frame on `/ws`,
    /// an `event: subscribed` on SSE. A long-poll answers with the epoch
    /// as a response header instead ([`Engine::poll_epoch`]).
    pub(super) fn send_subscribed(
        &mut self,
        conn: ConnId,
        topic: &str,
        id: &Option<Id>,
        epoch: Arc<str>,
    ) {
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        match s.transport {
            Transport::Sse => self.reply(conn, reply::sse_subscribed(topic, &epoch)),
            // Its answer names the epoch (`Engine::poll_epoch`).
            Transport::Poll => s.poll().epoch = Some(epoch),
            _ => self.reply(conn, reply::subscribed(topic, &epoch, id)),
        }
    }

    /// Ends a subscription (no reply; idempotent).
    pub(super) fn unsubscribe(&mut self, conn: ConnId, topic: &str) {
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        let Some(i) = s.subs.iter().position(|s| *s.topic == *topic) else {
            return;
        };
        let sub = s.remove_sub(i);
        self.drop_sub(conn, sub);
    }

    /// Ends every subscription of a connection (a poll answered, a
    /// connection closed).
    pub fn unsubscribe_all(&mut self, conn: ConnId, now: Instant) {
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        for sub in std::mem::take(&mut s.subs) {
            self.drop_sub(conn, sub);
        }
        self.drain_inbox(now);
    }

    pub(super) fn drop_sub(&mut self, conn: ConnId, sub: Sub) {
        if let SubState::Live(slot) = sub.state {
            if let Some(entry) = self.local.get_mut(&*sub.topic) {
                if entry.subs.try_remove(slot).is_some() {
                    self.stats.subscriptions -= 1;
                }
            }
            // A conflated message of this topic must not follow
            // `unsubscribed`.
            if let Some(s) = self.session_mut(conn) {
                s.outbox.drop_held(&sub.topic);
            }
        }
        // A pending one is settled when its answer arrives.
        self.maybe_release(&sub.topic);
    }

    /// Tells the owner when the last local subscriber of a topic is gone.
    pub(super) fn maybe_release(&mut self, topic: &Arc<str>) {
        let release = match self.local.get(&**topic) {
            Some(e) if e.subs.is_empty() && e.requests == 0 => {
                let live = e.live;
                self.local.remove(&**topic);
                live
            }
            _ => false,
        };
        if release {
            let owner = self.placement.owner(topic);
            let msg = Msg::Unsubscribe {
                topic: topic.clone(),
                from: self.shard,
            };
            self.send_always(owner, msg);
        }
    }
}
