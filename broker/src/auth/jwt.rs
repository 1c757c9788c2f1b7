//! Connection tokens: JWTs (RFC 7519) verified with a key the operator
//! configured.
//!
//! The algorithm comes from the key, never from the token: an HMAC secret
//! means HS256, an RSA public key RS256, a P-256 key ES256, an Ed25519 key
//! EdDSA, and a token whose header names anything else is refused. That
//! closes the two classic holes: `alg: none`, and an HS256 token "signed"
//! with the public key as its secret. Signature checking is the
//! `jsonwebtoken` crate's (10.3 or later: earlier versions skipped `exp`
//! and `nbf` checks when the claim had the wrong JSON type,
//! CVE-2026-25537); what a token allows is read here.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use ringcast_core::auth::{Access, Denied, Grant};
use ringcast_core::pattern::parse_list;

/// The claims ringcast reads. Unknown claims are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    /// Required; `Option` so that a missing one is reported as such.
    exp: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
}

/// Where the verification key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// HS256 with this secret.
    Secret(Vec<u8>),
    /// RS256, ES256 or EdDSA, by the type of this PEM public key.
    PublicPem(Vec<u8>),
}

pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    leeway: u64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Builds a verifier; the error says what is wrong with the key.
    pub fn new(
        source: KeySource,
        issuer: Option<&str>,
        audience: Option<&str>,
        leeway: Duration,
    ) -> Result<JwtVerifier, String> {
        let (key, alg) = match source {
            KeySource::Secret(secret) => {
                if secret.len() < 32 {
                    return Err(format!(
                        "the HS256 secret is {} bytes; use at least 32 (256 bits) of random data",
                        secret.len()
                    ));
                }
                (DecodingKey::from_secret(&secret), Algorithm::HS256)
            }
            KeySource::PublicPem(pem) => {
                if String::from_utf8_lossy(&pem).contains("PRIVATE KEY") {
                    return Err("this is a private key: give the broker the public key only".into());
                }
                if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                    (k, Algorithm::RS256)
                } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                    (k, Algorithm::ES256)
                } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
                    (k, Algorithm::EdDSA)
                } else {
                    return Err(
                        "not a PEM RSA, EC (P-256) or Ed25519 public key (-----BEGIN PUBLIC KEY-----)"
                            .into(),
                    );
                }
            }
        };
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        Ok(JwtVerifier {
            key,
            validation,
            leeway: leeway.as_secs(),
        })
    }

    /// The algorithm tokens must be signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    /// Verifies `token` at `now` (seconds since the Unix epoch) and turns
    /// its claims into a grant.
    pub fn verify(&self, token: &str, now: u64) -> Result<Grant, Denied> {
        let bad = |why: String| Denied::Unauthorized(why);
        // RFC 7515 4.1.11: a `crit` header names extensions the recipient
        // must understand; ringcast understands none, so it must refuse
        // (jsonwebtoken ignores `crit`).
        if has_crit_header(token) {
            return Err(bad(
                "invalid token: critical header extensions (crit)".into()
            ));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| bad(format!("invalid token: {}", describe(&e))))?;
        let c = data.claims;
        let exp = c
            .exp
            .ok_or_else(|| bad("invalid token: missing exp claim".into()))?;
        // `decode` checked exp against the system clock; `now` is the
        // clock this broker reasons with (the same one, except in tests).
        if exp.saturating_add(self.leeway) <= now {
            return Err(bad("invalid token: expired".into()));
        }
        if c.iat.is_some_and(|iat| iat > now + self.leeway) {
            return Err(bad("invalid token: issued in the future (iat)".into()));
        }
        let sub = c
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("invalid token: no sub claim".into()))?;
        let patterns = |claim: Option<Vec<String>>, name: &str| -> Result<Access, Denied> {
            let list = claim.unwrap_or_default();
            parse_list(list.iter().map(String::as_str))
                .map(|p| Access::Topics(p.into()))
                .map_err(|e| bad(format!("invalid token: bad {name} pattern {e}")))
        };
        Ok(Grant::new(
            Some(Arc::from(sub)),
            patterns(c.subscribe, "subscribe")?,
            patterns(c.publish, "publish")?,
            Some(Duration::from_secs(
                exp.saturating_add(self.leeway).saturating_sub(now),
            )),
        ))
    }
}

/// Whether the token's header carries `crit`.
fn has_crit_header(token: &str) -> bool {
    use base64::Engine;
    let Some(header) = token.split('.').next() else {
        return false;
    };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json)
        .is_ok_and(|h| h.contains_key("crit"))
}

/// A short reason a client may see (never the key material).
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "expired".into(),
        K::ImmatureSignature => "not valid yet (nbf)".into(),
        K::InvalidSignature => "bad signature".into(),
        K::InvalidAlgorithm | K::InvalidAlgorithmName => "algorithm not accepted".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::MissingRequiredClaim(c) => format!("missing {c} claim"),
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => "malformed".into(),
        _ => "rejected".into(),
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn hs(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(
            KeySource::Secret(SECRET.to_vec()),
            None,
            None,
            Duration::from_secs(5),
        )
        .unwrap()
    }

    #[test]
    fn a_good_token_grants_its_patterns_until_exp() {
        let t =
            hs(json!({"sub":"alice","exp":NOW+60,"subscribe":["ticker.*"],"publish":["chat.>"]}));
        let g = verifier().verify(&t, NOW).unwrap();
        assert_eq!(g.subject.as_deref(), Some("alice"));
        assert!(g.subscribe.allows("ticker.A") && !g.subscribe.allows("ticker.a.b"));
        assert!(g.publish.allows("chat.x.y") && !g.publish.allows("ticker.A"));
        assert_eq!(g.expires_in, Some(Duration::from_secs(65)));
    }

    #[test]
    fn what_must_be_refused_is() {
        let v = verifier();
        let refuse = |t: &str, why: &str| {
            let e = v.verify(t, NOW).unwrap_err();
            assert!(
                matches!(&e, Denied::Unauthorized(m) if m.contains(why)),
                "{why}: {e:?}"
            );
        };
        refuse(&hs(json!({"sub":"a"})), "exp");
        refuse(&hs(json!({"sub":"a","exp":NOW-10})), "expired");
        refuse(&hs(json!({"sub":"a","exp":NOW+60,"nbf":NOW+60})), "nbf");
        refuse(&hs(json!({"sub":"a","exp":NOW+60,"iat":NOW+60})), "iat");
        refuse(&hs(json!({"exp":NOW+60})), "sub");
        refuse(
            &hs(json!({"sub":"a","exp":NOW+60,"subscribe":["a..b"]})),
            "pattern",
        );
        // CVE-2026-25537: a string nbf must not skip the check.
        refuse(&hs(json!({"sub":"a","exp":NOW+60,"nbf":"99999999999"})), "");
        refuse(&hs(json!({"sub":"a","exp":"never"})), "");
        // Signed with another secret.
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub":"a","exp":NOW+60}),
            &EncodingKey::from_secret(b"another secret, also 32 bytes lo"),
        )
        .unwrap();
        refuse(&other, "signature");
        // alg: none, with and without a signature part.
        let b64 = |v: &serde_json::Value| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let payload = b64(&json!({"sub":"a","exp":NOW+60}));
        let none = b64(&json!({"alg":"none","typ":"JWT"}));
        refuse(&format!("{none}.{payload}."), "");
        refuse(&format!("{none}.{payload}"), "");
        refuse("not a token", "malformed");
        // A critical extension ringcast does not know.
        let mut h = Header::new(Algorithm::HS256);
        h.extras.insert("crit".into(), "exp".into());
        let crit = encode(
            &h,
            &json!({"sub":"a","exp":NOW+60}),
            &EncodingKey::from_secret(SECRET),
        );
        refuse(&crit.unwrap(), "crit");
    }

    #[test]
    fn weak_secrets_and_private_keys_are_refused_at_start() {
        let e = JwtVerifier::new(
            KeySource::Secret(b"short".to_vec()),
            None,
            None,
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(e.contains("32"), "{e}");
        let e = JwtVerifier::new(
            KeySource::PublicPem(b"-----BEGIN PRIVATE KEY-----\n".to_vec()),
            None,
            None,
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(e.contains("public key only"), "{e}");
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let v = JwtVerifier::new(
            KeySource::Secret(SECRET.to_vec()),
            Some("https://issuer.example"),
            Some("ringcast"),
            Duration::from_secs(5),
        )
        .unwrap();
        let ok =
            hs(json!({"sub":"a","exp":NOW+60,"iss":"https://issuer.example","aud":"ringcast"}));
        assert!(v.verify(&ok, NOW).is_ok());
        for bad in [
            json!({"sub":"a","exp":NOW+60,"iss":"https://issuer.example","aud":"other"}),
            json!({"sub":"a","exp":NOW+60,"iss":"https://evil.example","aud":"ringcast"}),
            json!({"sub":"a","exp":NOW+60,"aud":"ringcast"}),
            json!({"sub":"a","exp":NOW+60,"iss":"https://issuer.example"}),
        ] {
            assert!(v.verify(&hs(bad.clone()), NOW).is_err(), "{bad}");
        }
    }
}
