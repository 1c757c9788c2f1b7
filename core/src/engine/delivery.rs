//! Delivery on a subscriber's shard: one message to every local
//! subscriber of its topic, each by its transport, and the slow-consumer
//! policy when one does not keep up.

use std::sync::Arc;

use bytes::Bytes;

use super::*;

impl<R: Route> Engine<R> {
    pub(super) fn deliver_local(&mut self, topic: &Arc<str>, seq: u64, frame: &Bytes) {
        let Some(entry) = self.local.get(&**topic) else {
            return;
        };
        if !entry.live || seq <= entry.last_seq {
            return;
        }
        if seq > entry.last_seq + 1 {
            self.catch_up(topic, seq - 1);
        }
        let Some(entry) = self.local.get_mut(&**topic) else {
            return;
        };
        entry.last_seq = seq;
        // Borrowed apart from the sessions: no copy of the subscriber list.
        let subs = std::mem::take(&mut entry.subs);
        // The SSE form is built at most once per message on this shard.
        let mut sse = None;
        for (_, &conn) in subs.iter() {
            self.deliver_to(conn, topic, seq, frame, &mut sse);
        }
        if let Some(entry) = self.local.get_mut(&**topic) {
            entry.subs = subs;
        }
    }

    /// One subscriber: the same `Bytes` queued (or, for SSE, the same SSE
    /// event, built once); the slow-consumer policy if it does not fit.
    pub(super) fn deliver_to(
        &mut self,
        conn: ConnId,
        topic: &Arc<str>,
        seq: u64,
        frame: &Bytes,
        sse: &mut Option<Bytes>,
    ) {
        let conflate = self.limits.slow_consumer == SlowConsumer::Conflate;
        let poll_cap = self.limits.outbox_size;
        let Some(s) = self.sessions.get_mut(conn.idx as usize) else {
            return;
        };
        if s.gen != conn.gen || s.slow {
            return;
        }
        let bytes = match s.transport {
            Transport::Sse => sse
                .get_or_insert_with(|| reply::sse_event(seq, frame))
                .clone(),
            Transport::Poll => {
                // A held long-poll collects what its answer can carry; the
                // client polls on from the last seq for the rest.
                let p = s.poll();
                if p.bytes < poll_cap {
                    p.bytes += frame.len();
                    p.messages.push(frame.clone());
                    self.stats.delivered += 1;
                    self.out.push_back(Output::PollReady(conn));
                }
                return;
            }
            _ => frame.clone(),
        };
        match s.outbox.push_message(topic, seq, bytes, conflate) {
            Ok(Pushed::Queued) => {
                self.stats.delivered += 1;
                if s.outbox.take_wake() {
                    self.out.push_back(Output::Wake(conn));
                }
            }
            Ok(Pushed::Held) => self.stats.slow_conflations += 1,
            Err(PushError::Closed) => {}
            Err(PushError::Full) => {
                s.slow = true;
                self.stats.slow_disconnects += 1;
                if s.transport == Transport::WebSocket {
                    // The close goes first: behind a full queue the client
                    // could not read it in time and would see a bare EOF.
                    s.outbox.discard_queued();
                } else {
                    // SSE has no close frame: what is queued is flushed,
                    // then the stream ends.
                    s.outbox.finish();
                }
                s.outbox.take_wake();
                self.out.push_back(Output::SlowClose(conn));
                self.out.push_back(Output::Wake(conn));
            }
        }
    }
}
