//! Access on a live connection: admission (`connect`, a token on the
//! upgrade or request), a token's lifetime (`refresh`, the `expiring`
//! notice, the close at expiry), and rate limits.
//!
//! The close codes follow the graphql-ws protocol, so that client
//! libraries' reconnect logic can tell them apart: 4400 a bad `connect`,
//! 4401 no valid credentials (or they expired), 4403 forbidden, 4429 too
//! many requests. Refusals that leave the connection usable (a topic the
//! token does not cover, a refresh for another `sub`, one command too
//! many) are per-command errors instead.

use std::time::{Duration, Instant};

use super::{Engine, Output};
use crate::auth::{Credentials, Denied};
use crate::route::Route;
use crate::session::{ConnId, Transport};
use crate::wire::command::{ErrorCode, Id};
use crate::wire::reply;

/// WebSocket close codes for access decisions.
pub const CLOSE_BAD_CONNECT: u16 = 4400;
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
pub const CLOSE_FORBIDDEN: u16 = 4403;
pub const CLOSE_TOO_MANY: u16 = 4429;

/// What a timer of a session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Due {
    /// No credentials yet, and it must present some.
    Token,
    /// Its token expires soon: tell it.
    Notice,
    /// Its token expired.
    Expiry,
}

impl<R: Route> Engine<R> {
    /// A client presented credentials outside a command (a token on the
    /// WebSocket upgrade URL, on an SSE or long-poll request). On success
    /// the session's grant is replaced and its expiry scheduled.
    pub fn admit(
        &mut self,
        conn: ConnId,
        credentials: &Credentials,
        now: Instant,
    ) -> Result<(), Denied> {
        self.clock = Some(now);
        let grant = self.auth.admit(credentials).inspect_err(|_| {
            self.stats.auth_failures += 1;
        })?;
        let expires_in = grant.expires_in;
        let Some(s) = self.session_mut(conn) else {
            return Ok(());
        };
        s.set_grant(grant);
        s.clear_deadlines(false);
        self.schedule_expiry(conn, expires_in, now);
        Ok(())
    }

    /// The connection must present credentials by `deadline` (a
    /// WebSocket under `--auth jwt` where anonymous clients may do
    /// nothing), or be closed with 4401.
    pub fn require_token_by(&mut self, conn: ConnId, deadline: Instant) {
        if let Some(s) = self.session_mut(conn) {
            if !s.grant().is_authenticated() {
                s.access().token_due = Some(deadline);
                self.timers
                    .insert((deadline, conn.idx, conn.gen, Due::Token));
            }
        }
    }

    /// Whether the connection's grant lets it subscribe to `topic` (the
    /// SSE transport asks before its stream begins, to answer with a
    /// status instead of an error event).
    pub fn check_subscribe(
        &mut self,
        conn: ConnId,
        topic: &str,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(s) = self.session(conn) else {
            return Ok(());
        };
        let result = self.auth.subscribe(s.grant(), topic).map_err(|d| match d {
            Denied::Unauthorized(m) => (ErrorCode::Unauthorized, m),
            Denied::Forbidden(m) => (ErrorCode::Forbidden, m),
        });
        if result.is_err() {
            self.stats.denied += 1;
        }
        result
    }

    /// Back to the anonymous grant, with no token deadline or expiry: an
    /// HTTP request without credentials on a connection whose earlier
    /// request had some.
    pub fn reset_grant(&mut self, conn: ConnId) {
        let grant = self.auth.anonymous();
        if let Some(s) = self.session_mut(conn) {
            s.set_grant(grant);
            s.clear_deadlines(true);
        }
    }

    /// Credentials refused at the edge (an HTTP publish's key or token),
    /// counted with the engine's own refusals.
    pub fn count_auth_failure(&mut self) {
        self.stats.auth_failures += 1;
    }

    /// Whether the connection presented valid credentials.
    pub fn is_authenticated(&self, conn: ConnId) -> bool {
        self.session(conn)
            .is_some_and(|s| s.grant().is_authenticated())
    }

    fn schedule_expiry(&mut self, conn: ConnId, expires_in: Option<Duration>, now: Instant) {
        let notice = self.limits.token_expiry_notice;
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        // An expiry no clock can reach (a token with `exp` in the year
        // 500 billion) is no expiry.
        let expires_at = expires_in.and_then(|d| now.checked_add(d));
        if expires_at.is_some() || s.expires_at().is_some() {
            s.access().expires_at = expires_at;
        }
        if let Some(at) = expires_at {
            self.timers.insert((at, conn.idx, conn.gen, Due::Expiry));
            let warn = at.checked_sub(notice).filter(|w| *w > now).unwrap_or(now);
            self.timers.insert((warn, conn.idx, conn.gen, Due::Notice));
        }
    }

    /// `{"op":"connect","token":...}`.
    pub(super) fn connect_command(&mut self, conn: ConnId, token: Option<String>, id: Option<Id>) {
        let now = self.now();
        let Some(s) = self.session(conn) else {
            return;
        };
        if s.grant().is_authenticated() {
            return self.close_with(conn, CLOSE_BAD_CONNECT, "already connected");
        }
        let Some(token) = token else {
            return self.close_with(conn, CLOSE_BAD_CONNECT, "connect needs a token string");
        };
        match self.admit(conn, &Credentials::token(token), now) {
            Ok(()) => self.send_connected(conn, "connected", id, now),
            Err(_) => self.close_with(conn, CLOSE_UNAUTHORIZED, "invalid token"),
        }
    }

    /// `{"op":"refresh","token":...}`: a new token for the same `sub`.
    pub(super) fn refresh_command(&mut self, conn: ConnId, token: Option<String>, id: Option<Id>) {
        let now = self.now();
        let Some(s) = self.session(conn) else {
            return;
        };
        let Some(subject) = s.grant().subject.clone() else {
            let msg = "refresh needs a connection that connected with a token";
            return self.reply(conn, reply::error(ErrorCode::BadRequest, msg, &id));
        };
        let Some(token) = token else {
            let msg = "refresh needs a token string";
            return self.reply(conn, reply::error(ErrorCode::BadRequest, msg, &id));
        };
        match self.auth.admit(&Credentials::token(token)) {
            Err(_) => {
                self.stats.auth_failures += 1;
                self.close_with(conn, CLOSE_UNAUTHORIZED, "invalid token")
            }
            Ok(g) if g.subject.as_deref() != Some(&*subject) => {
                // The old token stays in force until it expires.
                let msg = "a refresh must be for the same sub";
                self.reply(conn, reply::error(ErrorCode::Forbidden, msg, &id));
            }
            Ok(g) => {
                let expires_in = g.expires_in;
                if let Some(s) = self.session_mut(conn) {
                    s.set_grant(g);
                }
                self.schedule_expiry(conn, expires_in, now);
                self.send_connected(conn, "refreshed", id, now);
            }
        }
    }

    fn send_connected(&mut self, conn: ConnId, op: &str, id: Option<Id>, now: Instant) {
        let Some(s) = self.session(conn) else {
            return;
        };
        let left = s
            .expires_at()
            .map(|at| at.saturating_duration_since(now).as_secs());
        let frame = reply::connected(op, s.grant().subject.as_deref(), left, &id);
        self.reply(conn, frame);
    }

    /// Closes a WebSocket with an access close code (an SSE stream ends).
    pub(super) fn close_with(&mut self, conn: ConnId, code: u16, reason: &'static str) {
        if let Some(s) = self.session_mut(conn) {
            if s.slow {
                return;
            }
            // Nothing may follow the close: deliveries skip it from now on.
            s.slow = true;
            if let Some(p) = s.pipeline_mut() {
                p.parked.clear();
            }
            s.tidy_pipeline();
            self.out.push_back(Output::Close { conn, code, reason });
        }
    }

    /// Runs the session timers that are due.
    pub(super) fn run_timers(&mut self, now: Instant) {
        while let Some(&(at, idx, gen, due)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let conn = ConnId { idx, gen };
            let Some(s) = self.session(conn) else {
                continue;
            };
            // A timer stands only while the session still has that
            // deadline (a refresh or an admission replaces it).
            match due {
                Due::Token if s.token_due() == Some(at) && !s.grant().is_authenticated() => {
                    self.stats.auth_failures += 1;
                    self.close_with(conn, CLOSE_UNAUTHORIZED, "no token");
                }
                Due::Expiry if s.expires_at() == Some(at) => match s.transport {
                    // A live stream ends with its token.
                    Transport::WebSocket | Transport::Sse => {
                        self.close_with(conn, CLOSE_UNAUTHORIZED, "token expired")
                    }
                    // Plain HTTP between requests, or a poll: nothing is
                    // streaming; the next request needs credentials of its
                    // own anyway.
                    Transport::Plain | Transport::Poll => self.reset_grant(conn),
                },
                // Only a WebSocket can be told (and can refresh).
                Due::Notice if s.transport == Transport::WebSocket => {
                    if let Some(exp) = s.expires_at().filter(|e| *e > now) {
                        if exp.saturating_duration_since(at) <= self.limits.token_expiry_notice {
                            let left = exp.saturating_duration_since(now).as_secs();
                            self.reply(conn, reply::expiring(left));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// The next session timer.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|t| t.0)
    }

    /// Takes a token from the connection's command bucket. Refused: the
    /// command gets `rate_limited` (in turn, with its `id`); refused
    /// `rate_strikes` times in a row, the connection is closed with 4429.
    pub(super) fn take_command_token(&mut self, conn: ConnId, payload: &bytes::Bytes) -> bool {
        let (rate, strikes) = (self.limits.command_rate, self.limits.rate_strikes);
        let now = self.now();
        let Some(s) = self.session_mut(conn) else {
            return false;
        };
        if !rate.is_limited() {
            // Unlimited (the limits never change): no bucket to keep.
            return true;
        }
        let a = s.access();
        if a.bucket.take(rate, now) {
            a.strikes = 0;
            return true;
        }
        a.strikes += 1;
        let out = a.strikes >= strikes;
        self.stats.rate_limited += 1;
        if out {
            self.close_with(conn, CLOSE_TOO_MANY, "too many commands");
        } else {
            let id =
                crate::wire::command::parse(payload).map_or_else(|e| e.id, |c| c.id().cloned());
            let msg = format!("too many commands: at most {} per second", rate.per_second);
            self.reply_in_order(conn, reply::error(ErrorCode::RateLimited, &msg, &id));
        }
        false
    }

    /// Takes a token from `subject`'s publish bucket; `Err` holds the
    /// seconds until the next one.
    pub(super) fn take_publish_token(&mut self, subject: Option<&str>) -> Result<(), f64> {
        let rate = self.limits.publish_rate;
        let (Some(subject), true) = (subject, rate.is_limited()) else {
            return Ok(());
        };
        let now = self.now();
        let bucket = match self.publish_buckets.get_mut(subject) {
            Some(b) => b,
            None => self.publish_buckets.entry(subject.into()).or_default(),
        };
        if bucket.take(rate, now) {
            return Ok(());
        }
        self.stats.rate_limited += 1;
        Err(bucket.wait(rate))
    }

    /// Forgets publish buckets that are full again: memory stays bounded
    /// by the subjects active in the last burst window.
    pub(super) fn forget_idle_buckets(&mut self, now: Instant) {
        let rate = self.limits.publish_rate;
        self.publish_buckets.retain(|_, b| !b.is_full(rate, now));
    }
}

/// The close code for a refusal of credentials.
pub fn close_code(d: &Denied) -> u16 {
    match d {
        Denied::Unauthorized(_) => CLOSE_UNAUTHORIZED,
        Denied::Forbidden(_) => CLOSE_FORBIDDEN,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::auth::{Access, Authorizer, Credentials, Denied, Grant};
    use crate::route::{Msg, Placement, Route, ShardId};
    use crate::{Engine, Limits, Output, Transport};

    struct Alone;
    impl Route for Alone {
        fn try_send(&mut self, _: ShardId, msg: Msg) -> Result<(), Msg> {
            Err(msg)
        }
        fn send(&mut self, _: ShardId, _: Msg) {}
    }

    /// Admits any token, for `expires_in` taken from its text.
    struct Lifetime;
    impl Authorizer for Lifetime {
        fn admit(&self, c: &Credentials) -> Result<Grant, Denied> {
            let secs: u64 = c
                .token
                .as_deref()
                .unwrap_or("")
                .parse()
                .map_err(|_| Denied::Unauthorized("bad".into()))?;
            Ok(Grant::new(
                Some(Arc::from("s")),
                Access::All,
                Access::All,
                Some(Duration::from_secs(secs)),
            ))
        }
    }

    fn engine() -> Engine<Alone> {
        Engine::new(
            0,
            Placement::new(1, [1, 2, 3, 4]),
            Limits {
                token_expiry_notice: Duration::from_secs(10),
                ..Limits::default()
            },
            "e",
            Alone,
            Box::new(Lifetime),
        )
    }

    #[test]
    fn the_notice_then_the_close_and_nothing_for_an_unreachable_expiry() {
        let t0 = Instant::now();
        let mut e = engine();
        let c = e.open(Grant::anonymous(Access::none()));
        e.set_transport(c, Transport::WebSocket);
        e.admit(c, &Credentials::token("60"), t0).unwrap();
        assert_eq!(e.poll_timeout(), Some(t0 + Duration::from_secs(50)));
        e.handle_timeout(t0 + Duration::from_secs(50));
        let mut frames = Vec::new();
        e.take_batch(c, &mut frames, 8);
        let text = String::from_utf8_lossy(&frames[0]).into_owned();
        assert!(
            text.contains(r#"{"op":"expiring","expires_in":10}"#),
            "{text}"
        );
        while e.poll_output().is_some() {}
        e.handle_timeout(t0 + Duration::from_secs(60));
        let out: Vec<_> = std::iter::from_fn(|| e.poll_output()).collect();
        assert!(out.contains(&Output::Close {
            conn: c,
            code: super::CLOSE_UNAUTHORIZED,
            reason: "token expired"
        }));
        // An expiry past what an Instant can hold is no expiry, not a panic.
        let d = e.open(Grant::anonymous(Access::none()));
        e.admit(d, &Credentials::token(u64::MAX.to_string()), t0)
            .unwrap();
        assert!(e.is_authenticated(d));
    }
}
