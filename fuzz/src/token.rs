//! The `token` target: the broker's JWT verification
//! (`broker/src/auth/jwt.rs`, `JwtVerifier::verify`), with an HS256 secret.
//!
//! The broker crate is not a dependency of this one (only the protocol
//! core is: no tokio, no CLI): its verifier is a file that needs nothing of
//! the broker's, so it is included here by path and compiled against the
//! same `ringcast_core`, `jsonwebtoken` and `serde`. Keep it that way: the
//! file may use `ringcast_core`, `jsonwebtoken`, `serde` and `std`, not
//! `crate::`.
//!
//! Input layout: `[mode][leeway][bytes]`, `leeway` in seconds.
//!
//! | mode & 3 | the token |
//! |---|---|
//! | 0 | the bytes themselves (made valid UTF-8), any string at all |
//! | 1 | `{"alg":"HS256","typ":"JWT"}` . the bytes as the claims . signed with the right secret |
//! | 2 | the bytes up to the first `0x00` as the header, the rest as the claims, signed with the right secret |
//! | 3 | as 1, signed with another secret |
//!
//! Mode bit 2 configures `--jwt-issuer` ([`ISSUER`]), bit 3
//! `--jwt-audience` ([`AUDIENCE`]). Modes 1 and 2 get past the signature,
//! so arbitrary claims (and headers) reach the claims logic. The broker's
//! clock is [`NOW`] (the year 2096: past the system clock, so an `exp`
//! near it passes `jsonwebtoken`'s own check and reaches the broker's).
//!
//! Checks: never a panic; a refusal is `Unauthorized` with an
//! "invalid token: ..." reason, one line, that does not show the secret;
//! an accepted token, re-read here independently of the verifier, has
//! three parts, an `HS256` header and an HMAC-SHA256 signature by the
//! right secret, a non-empty string `sub` (the grant's subject, carried as
//! JSON by the `connected` reply), an integer `exp` with
//! `exp + leeway > now` (the grant's `expires_in` is the difference), no
//! `iat` from the future, `nbf` not in the future, the configured `iss`
//! and `aud`, and `subscribe` / `publish` lists of strings that are valid
//! patterns by the grammar (`crate::pattern`), exactly the grant's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use ringcast_core::auth::{Access, Denied, Grant};
use ringcast_core::pattern::Pattern;
use ringcast_core::wire::reply;

#[allow(dead_code, clippy::all)]
#[path = "../../broker/src/auth/jwt.rs"]
mod jwt;

use jwt::{JwtVerifier, KeySource};

use crate::Reader;

/// The verifier's HS256 secret (48 bytes, as the browser test's).
pub const SECRET: &[u8] = b"ringcast fuzz secret: 48 bytes, never in errors!";
/// A secret the verifier does not know (mode 3).
pub const OTHER_SECRET: &[u8] = b"another secret of the same length, 48 bytes, ok.";
/// The broker's clock, in seconds since the Unix epoch.
pub const NOW: u64 = 4_000_000_000;
pub const ISSUER: &str = "https://issuer.example";
pub const AUDIENCE: &str = "ringcast";
/// The header of modes 1 and 3.
pub const HEADER: &[u8] = br#"{"alg":"HS256","typ":"JWT"}"#;

/// `b64(header).b64(claims).b64(HMAC-SHA256(secret, the first two))`.
pub fn sign(header: &[u8], claims: &[u8], secret: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(message.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{message}.{sig}")
}

/// The token of an input (see the module docs) and its verifier settings.
fn decode_input(data: &[u8]) -> (String, u64, Option<&'static str>, Option<&'static str>) {
    let mut r = Reader::new(data);
    let mode = r.byte();
    let leeway = u64::from(r.byte());
    let rest = r.rest();
    let token = match mode & 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => sign(HEADER, rest, SECRET),
        2 => {
            let cut = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            sign(&rest[..cut], rest.get(cut + 1..).unwrap_or(&[]), SECRET)
        }
        _ => sign(HEADER, rest, OTHER_SECRET),
    };
    let issuer = (mode & 4 != 0).then_some(ISSUER);
    let audience = (mode & 8 != 0).then_some(AUDIENCE);
    (token, leeway, issuer, audience)
}

pub fn token(data: &[u8]) {
    let (token, leeway, issuer, audience) = decode_input(data);
    let verifier = JwtVerifier::new(
        KeySource::Secret(SECRET.to_vec()),
        issuer,
        audience,
        Duration::from_secs(leeway),
    )
    .expect("a 48-byte secret is a good key");
    match verifier.verify(&token, NOW) {
        Ok(grant) => accepted(&token, &grant, leeway, issuer, audience),
        Err(Denied::Unauthorized(why)) => {
            assert!(why.starts_with("invalid token"), "reason {why:?}");
            // The reason may quote a bad pattern of a signed token, at any
            // length, but escaped: one line, no control characters (it is
            // logged, and sent in a reply).
            assert!(!why.chars().any(char::is_control), "reason {why:?}");
            let secret = String::from_utf8_lossy(SECRET);
            assert!(!why.contains(&*secret), "the reason shows the secret");
        }
        Err(other) => panic!("a bad token is Unauthorized, not {other:?}"),
    }
}

fn b64_json(part: &str, what: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(part)
        .unwrap_or_else(|e| panic!("accepted token's {what} is not base64url ({e}): {part:?}"))
}

/// The patterns of one right; a token never grants every topic.
fn patterns<'g>(access: &'g Access, what: &str) -> Vec<&'g str> {
    match access {
        Access::All => panic!("a token granted {what} to every topic"),
        Access::Topics(ps) => ps.iter().map(Pattern::as_str).collect(),
    }
}

/// The claims an accepted token carries, read leniently: each known claim
/// as any JSON value, unknown claims skipped.
#[derive(Deserialize)]
struct Seen {
    sub: Option<Value>,
    exp: Option<Value>,
    iat: Option<Value>,
    nbf: Option<Value>,
    iss: Option<Value>,
    aud: Option<Value>,
    subscribe: Option<Value>,
    publish: Option<Value>,
}

/// A claim that names `want`: the string itself, or a list holding it.
fn names(claim: &Option<Value>, want: &str) -> bool {
    match claim {
        Some(Value::String(s)) => s == want,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(want)),
        _ => false,
    }
}

fn accepted(token: &str, grant: &Grant, leeway: u64, issuer: Option<&str>, audience: Option<&str>) {
    let shown = || format!("token {token:?}");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(
        parts.len(),
        3,
        "accepted token without 3 parts: {}",
        shown()
    );

    // Header: HS256, and nothing else, whatever the header says.
    let header: Value = serde_json::from_slice(&b64_json(parts[0], "header"))
        .unwrap_or_else(|e| panic!("accepted token's header is not JSON ({e}): {}", shown()));
    assert_eq!(
        header.get("alg"),
        Some(&Value::from("HS256")),
        "{}",
        shown()
    );

    // The signature is the right secret's.
    let sig = b64_json(parts[2], "signature");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(&token.as_bytes()[..parts[0].len() + 1 + parts[1].len()]);
    assert!(
        mac.verify_slice(&sig).is_ok(),
        "accepted without the secret's signature: {}",
        shown()
    );

    // What the grant says, on its own.
    let sub = grant
        .subject
        .as_deref()
        .expect("an accepted token has a subject");
    assert!(!sub.is_empty(), "empty subject");
    let expires_in = grant.expires_in.expect("an accepted token expires");
    assert!(
        expires_in > Duration::ZERO,
        "accepted at or past its expiry"
    );
    // The issuer's text reaches a client in the `connected` reply: as JSON.
    let frame = reply::connected("connected", Some(sub), Some(expires_in.as_secs()), &None);
    let json = crate::reply_json(&frame).expect("a flat reply");
    assert_eq!(json.get("sub").and_then(Value::as_str), Some(sub), "{json}");
    assert_eq!(
        json.get("expires_in").and_then(Value::as_u64),
        Some(expires_in.as_secs())
    );
    let subscribe = patterns(&grant.subscribe, "subscribe");
    let publish = patterns(&grant.publish, "publish");
    for p in subscribe.iter().chain(&publish) {
        assert!(crate::pattern::reference_valid(p), "granted pattern {p:?}");
    }
    // An `exp` past what an `Instant` can reach gives an `expires_in` the
    // engine treats as no expiry (core/src/engine/access.rs), not a panic.

    // The claims, read here.
    let json = b64_json(parts[1], "claims");
    let seen: Seen = match serde_json::from_slice(&json) {
        Ok(s) => s,
        // `serde_json::Value` is stricter than skipping an unknown claim:
        // huge numbers, deep nesting and lone surrogate escapes are
        // skipped by the verifier but refused here.
        Err(e)
            if ["out of range", "recursion limit", "surrogate"]
                .iter()
                .any(|m| e.to_string().contains(m)) =>
        {
            return
        }
        Err(e) => panic!("accepted claims are not JSON ({e}): {}", shown()),
    };
    assert_eq!(seen.sub.as_ref().and_then(Value::as_str), Some(sub), "sub");
    let exp = seen
        .exp
        .as_ref()
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("accepted without an integer exp: {}", shown()));
    let left = u128::from(exp) + u128::from(leeway);
    assert!(
        left > u128::from(NOW),
        "exp {exp} + {leeway} is not after {NOW}"
    );
    // The verifier saturates at u64::MAX seconds (no overflow).
    assert_eq!(
        u128::from(expires_in.as_secs()),
        left.min(u128::from(u64::MAX)) - u128::from(NOW),
        "expires_in"
    );
    assert_eq!(expires_in.subsec_nanos(), 0);
    match &seen.iat {
        None | Some(Value::Null) => {}
        Some(v) => {
            let iat = v.as_u64().unwrap_or_else(|| panic!("iat {v}: {}", shown()));
            assert!(iat <= NOW + leeway, "iat {iat} in the future");
        }
    }
    if let Some(v) = seen.nbf.as_ref().filter(|v| !v.is_null()) {
        let nbf = v.as_f64().unwrap_or_else(|| panic!("nbf {v}: {}", shown()));
        let sys = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            nbf <= (sys + leeway) as f64 + 1.0,
            "nbf {nbf} in the future"
        );
    }
    if let Some(iss) = issuer {
        assert!(names(&seen.iss, iss), "iss {:?}: {}", seen.iss, shown());
    }
    if let Some(aud) = audience {
        assert!(names(&seen.aud, aud), "aud {:?}: {}", seen.aud, shown());
    }
    for (claim, granted, what) in [
        (&seen.subscribe, &subscribe, "subscribe"),
        (&seen.publish, &publish, "publish"),
    ] {
        let listed: Vec<&str> = match claim {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .unwrap_or_else(|| panic!("{what} item {v}: {}", shown()))
                })
                .collect(),
            Some(v) => panic!("{what} is {v}: {}", shown()),
        };
        assert_eq!(&listed, granted, "{what}");
    }
}
