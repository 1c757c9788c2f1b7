//! The authorization hook: who may connect, subscribe and publish.
//!
//! Admission is the [`Authorizer`]'s: it turns what a client presented
//! (a token) into a [`Grant`], or refuses. What a grant allows is then
//! checked here, by the engine, on every subscribe and publish, against the
//! topic patterns the grant carries ([`crate::pattern`]). The broker plugs
//! its policy in (JWT verification, API keys); [`AllowAll`] is open access.

use std::sync::Arc;
use std::time::Duration;

use crate::pattern::{any_matches, Pattern};

/// What a connection presented when it asked to be admitted.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Credentials {
    /// A bearer token, if the client gave one.
    pub token: Option<String>,
}

impl Credentials {
    pub fn token(token: impl Into<String>) -> Self {
        Credentials {
            token: Some(token.into()),
        }
    }
}

/// Which topics one right (subscribe, publish) covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every topic (open access, an unrestricted API key).
    All,
    /// The topics matching any of these; none listed, none allowed.
    Topics(Arc<[Pattern]>),
}

impl Access {
    pub fn none() -> Access {
        Access::Topics(Arc::from([]))
    }

    pub fn allows(&self, topic: &str) -> bool {
        match self {
            Access::All => true,
            Access::Topics(p) => any_matches(p, topic),
        }
    }
}

/// What admission granted, kept with the session for its later checks.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Grant {
    /// Who the connection is (a token's `sub`), if anyone: `None` for an
    /// anonymous client.
    pub subject: Option<Arc<str>>,
    pub subscribe: Access,
    pub publish: Access,
    /// How long the credentials stay valid from admission (a token's
    /// `exp`), if they expire. A duration, not a date: the engine has no
    /// clock, and the runtime that verified the token turns its `exp` into
    /// this.
    pub expires_in: Option<Duration>,
}

impl Default for Grant {
    /// Open access.
    fn default() -> Self {
        Grant::open()
    }
}

impl Grant {
    /// Open access: everything allowed, for ever.
    pub fn open() -> Grant {
        Grant {
            subject: None,
            subscribe: Access::All,
            publish: Access::All,
            expires_in: None,
        }
    }

    /// An anonymous client that may subscribe to `subscribe` only.
    pub fn anonymous(subscribe: Access) -> Grant {
        Grant {
            subject: None,
            subscribe,
            publish: Access::none(),
            expires_in: None,
        }
    }

    /// An authenticated client.
    pub fn new(
        subject: Option<Arc<str>>,
        subscribe: Access,
        publish: Access,
        expires_in: Option<Duration>,
    ) -> Grant {
        Grant {
            subject,
            subscribe,
            publish,
            expires_in,
        }
    }

    /// Whether the grant came from credentials (a token, a key).
    pub fn is_authenticated(&self) -> bool {
        self.subject.is_some()
    }

    /// Whether this is [`Grant::open`] (every field: a field added to
    /// `Grant` must be compared here too).
    pub(crate) fn is_open(&self) -> bool {
        let Grant {
            subject,
            subscribe,
            publish,
            expires_in,
        } = self;
        subject.is_none()
            && *subscribe == Access::All
            && *publish == Access::All
            && expires_in.is_none()
    }
}

/// [`Grant::open`], for a session to point at instead of holding a copy.
pub(crate) static OPEN: Grant = Grant {
    subject: None,
    subscribe: Access::All,
    publish: Access::All,
    expires_in: None,
};

/// Why access was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denied {
    /// No credentials, or credentials that are not valid (bad signature,
    /// expired, not yet valid, wrong issuer or audience). The text says
    /// which, for the client and the log.
    Unauthorized(String),
    /// Valid credentials that do not allow this.
    Forbidden(String),
}

pub trait Authorizer {
    /// A client presents credentials (at connect, or to refresh them).
    fn admit(&self, credentials: &Credentials) -> Result<Grant, Denied>;

    /// What a client without credentials gets. Open access by default.
    fn anonymous(&self) -> Grant {
        Grant::open()
    }

    /// Whether a client admitted with `grant` may subscribe to `topic`.
    fn subscribe(&self, grant: &Grant, topic: &str) -> Result<(), Denied> {
        check(grant, &grant.subscribe, "subscribe to", topic)
    }

    /// Whether a client admitted with `grant` may publish to `topic`.
    fn publish(&self, grant: &Grant, topic: &str) -> Result<(), Denied> {
        check(grant, &grant.publish, "publish to", topic)
    }
}

fn check(grant: &Grant, access: &Access, what: &str, topic: &str) -> Result<(), Denied> {
    if access.allows(topic) {
        return Ok(());
    }
    Err(if grant.is_authenticated() {
        Denied::Forbidden(format!("not allowed to {what} {topic}"))
    } else {
        Denied::Unauthorized(format!("a token is needed to {what} {topic}"))
    })
}

/// Open access: everyone is admitted and may do everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn admit(&self, _: &Credentials) -> Result<Grant, Denied> {
        Ok(Grant::open())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::parse_list;

    #[test]
    fn grants_allow_what_their_patterns_match() {
        let g = Grant::new(
            Some(Arc::from("alice")),
            Access::Topics(parse_list(["ticker.*"]).unwrap().into()),
            Access::none(),
            None,
        );
        assert!(AllowAll.subscribe(&g, "ticker.AAPL").is_ok());
        assert!(matches!(
            AllowAll.subscribe(&g, "ticker.a.b"),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            AllowAll.publish(&g, "ticker.AAPL"),
            Err(Denied::Forbidden(_))
        ));
        let anon = Grant::anonymous(Access::Topics(parse_list(["demo.>"]).unwrap().into()));
        assert!(AllowAll.subscribe(&anon, "demo.ticker").is_ok());
        assert!(matches!(
            AllowAll.subscribe(&anon, "private.x"),
            Err(Denied::Unauthorized(_))
        ));
        assert!(AllowAll.publish(&Grant::open(), "x").is_ok());
    }
}
