//! The broker's access policy, plugged into the engine's authorization
//! hook: `--auth none` (open access) or `--auth jwt` (connection tokens),
//! plus API keys for `POST /publish`. See `docs/security.md`.

pub mod jwt;
pub mod keys;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use ringcast_core::auth::{Access, Authorizer, Credentials, Denied, Grant};

use self::jwt::JwtVerifier;
use self::keys::ApiKeys;

/// `--auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Open access: anyone may subscribe and publish.
    None,
    /// Clients present a JWT; only what it allows is allowed.
    Jwt,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Jwt => "jwt",
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug)]
pub struct Policy {
    mode: AuthMode,
    jwt: Option<JwtVerifier>,
    /// What a client without a token may subscribe to under `--auth jwt`.
    anonymous: Access,
    keys_file: Option<PathBuf>,
    keys: RwLock<Arc<ApiKeys>>,
}

impl Policy {
    pub fn new(
        mode: AuthMode,
        jwt: Option<JwtVerifier>,
        anonymous: Access,
        keys_file: Option<PathBuf>,
    ) -> Result<Policy, String> {
        if mode == AuthMode::Jwt && jwt.is_none() {
            return Err(
                "--auth jwt needs a key: --jwt-secret-file or --jwt-public-key-file".into(),
            );
        }
        let keys = match &keys_file {
            Some(path) => load_keys(path)?,
            None => ApiKeys::default(),
        };
        Ok(Policy {
            mode,
            jwt,
            anonymous,
            keys_file,
            keys: RwLock::new(Arc::new(keys)),
        })
    }

    /// Open access (the tests' and the benches' default).
    pub fn open() -> Policy {
        Policy {
            mode: AuthMode::None,
            jwt: None,
            anonymous: Access::All,
            keys_file: None,
            keys: RwLock::new(Arc::default()),
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Whether a client without a token may subscribe to anything.
    pub fn anonymous_may_subscribe(&self) -> bool {
        match &self.anonymous {
            Access::All => true,
            Access::Topics(p) => !p.is_empty(),
        }
    }

    /// Whether a client must present credentials to publish over HTTP.
    pub fn requires_auth(&self) -> bool {
        self.mode == AuthMode::Jwt || !self.keys().is_empty()
    }

    fn keys(&self) -> Arc<ApiKeys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads `--api-keys-file` again (SIGHUP). On an error the keys in
    /// use stay.
    pub fn reload_keys(&self) -> Result<usize, String> {
        let Some(path) = &self.keys_file else {
            return Ok(0);
        };
        let keys = load_keys(path)?;
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        Ok(n)
    }

    /// The grant of a `POST /publish` with this bearer credential: an API
    /// key, or (under `--auth jwt`) a token. Without one: open access
    /// under `--auth none` with no keys configured, refused otherwise.
    pub fn http_publisher(&self, bearer: Option<&str>) -> Result<Grant, Denied> {
        if let Some(b) = bearer {
            if let Some(k) = self.keys().find(b.as_bytes()) {
                return Ok(k.grant());
            }
            return match &self.jwt {
                Some(_) => self.admit(&Credentials::token(b)),
                None => Err(Denied::Unauthorized("unknown API key".into())),
            };
        }
        if self.requires_auth() {
            return Err(Denied::Unauthorized(
                "an API key or a token is needed to publish".into(),
            ));
        }
        Ok(Grant::open())
    }
}

fn load_keys(path: &PathBuf) -> Result<ApiKeys, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--api-keys-file {}: {e}", path.display()))?;
    ApiKeys::parse(&text).map_err(|e| format!("--api-keys-file {}: {e}", path.display()))
}

impl Authorizer for Policy {
    fn admit(&self, credentials: &Credentials) -> Result<Grant, Denied> {
        match (self.mode, &self.jwt, &credentials.token) {
            (AuthMode::None, _, _) => Ok(Grant::open()),
            (AuthMode::Jwt, Some(v), Some(token)) => v.verify(token, unix_now()),
            (AuthMode::Jwt, _, _) => Err(Denied::Unauthorized("a token is needed".into())),
        }
    }

    fn anonymous(&self) -> Grant {
        match self.mode {
            AuthMode::None => Grant::open(),
            AuthMode::Jwt => Grant::anonymous(self.anonymous.clone()),
        }
    }
}

/// The policy as the engine holds it (one per shard, shared).
#[derive(Debug, Clone)]
pub struct SharedPolicy(pub Arc<Policy>);

impl Authorizer for SharedPolicy {
    fn admit(&self, credentials: &Credentials) -> Result<Grant, Denied> {
        self.0.admit(credentials)
    }

    fn anonymous(&self) -> Grant {
        self.0.anonymous()
    }
}
