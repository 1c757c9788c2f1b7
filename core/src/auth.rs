//! The authorization hook: who may connect, subscribe and publish.
//!
//! The engine asks an [`Authorizer`] at the three points where access is
//! decided, and keeps what admission granted with the connection's
//! session. The broker plugs its policy in here; until it has one,
//! [`AllowAll`] is today's open access.

use std::sync::Arc;

/// What a connection presented when it asked to be admitted.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Credentials {
    /// A bearer token, if the client gave one.
    pub token: Option<String>,
}

/// What admission granted, kept with the session for its later checks.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Grant {
    /// Who the connection is (a token's `sub`), if anyone.
    pub subject: Option<Arc<str>>,
}

/// Why access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denied {
    /// No (valid) credentials.
    Unauthorized,
    /// Valid credentials that do not allow this.
    Forbidden,
}

pub trait Authorizer {
    /// A connection asks to be admitted.
    fn admit(&self, credentials: &Credentials) -> Result<Grant, Denied>;
    /// A connection admitted with `grant` asks to subscribe to `topic`.
    fn subscribe(&self, grant: &Grant, topic: &str) -> Result<(), Denied>;
    /// A connection admitted with `grant` asks to publish to `topic`.
    fn publish(&self, grant: &Grant, topic: &str) -> Result<(), Denied>;
}

/// Open access: everyone is admitted and may do everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn admit(&self, _: &Credentials) -> Result<Grant, Denied> {
        Ok(Grant::default())
    }

    fn subscribe(&self, _: &Grant, _: &str) -> Result<(), Denied> {
        Ok(())
    }

    fn publish(&self, _: &Grant, _: &str) -> Result<(), Denied> {
        Ok(())
    }
}
