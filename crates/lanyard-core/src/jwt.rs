//! JWT-SVID parsing and validation (SPIFFE JWT-SVID specification).
//!
//! * compact JWS, three base64url parts, at most [`MAX_TOKEN_LEN`] bytes;
//! * `alg` one of RS/ES/PS 256/384/512 — never `none`, HMAC or EdDSA;
//! * `typ`, when present, `JWT` or `JOSE`; `kid` required; no `crit`;
//! * claims `sub` (a SPIFFE ID with a path), `aud` (string or non-empty array), `exp`;
//! * signature verified with the key named by `kid` in the bundle of the subject's
//!   trust domain, whose type must match `alg`.
//!
//! Signatures are verified with jsonwebtoken's aws-lc-rs backend; claims are checked
//! here against a [`Clock`], never the wall clock directly.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::bundle::{BundleSet, PublicJwk};
use crate::clock::Clock;
use crate::id::{IdError, SpiffeId};

/// Longest token accepted, checked before any decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The algorithms the JWT-SVID specification allows.
pub const ALLOWED_ALGS: [&str; 9] = [
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is {len} bytes long; at most {MAX_TOKEN_LEN} are accepted")]
    TooLong { len: usize },
    #[error(
        "the token has {parts} dot-separated parts; a JWT-SVID is a compact JWS: header.claims.signature"
    )]
    Parts { parts: usize },
    #[error("the token's {part} is not base64url without padding: {reason}")]
    Base64 { part: &'static str, reason: String },
    #[error("the token's {part} is not a JSON object: {reason}")]
    Json { part: &'static str, reason: String },
    #[error("the header has no \"alg\"; JWT-SVIDs are signed with RS/ES/PS 256/384/512")]
    MissingAlg,
    #[error(
        "alg {0:?} is not allowed for JWT-SVIDs; only RS256/384/512, ES256/384/512 and PS256/384/512 are (never none, HMAC or EdDSA)"
    )]
    AlgNotAllowed(String),
    #[error("typ {0:?} is not allowed; a JWT-SVID's typ is \"JWT\" or \"JOSE\" (or absent)")]
    BadTyp(String),
    #[error(
        "the header has no \"kid\"; the signer must name its key so verifiers can find it in the bundle"
    )]
    MissingKid,
    #[error("the header has a \"crit\" member, which JWT-SVID verifiers do not support")]
    Crit,
    #[error("the token has no \"sub\" claim; a JWT-SVID's subject is the workload's SPIFFE ID")]
    MissingSub,
    #[error("the \"sub\" claim is not a valid SPIFFE ID: {0}")]
    BadSub(IdError),
    #[error("the \"sub\" claim {0} names a trust domain, not a workload; it needs a path")]
    RootSub(String),
    #[error("the token has no \"aud\" claim; a JWT-SVID must name its audience")]
    MissingAud,
    #[error(
        "the \"aud\" claim is empty or malformed; it must be a string or a non-empty array of strings"
    )]
    BadAud,
    #[error("the token's audience {actual:?} contains none of the expected {expected:?}")]
    AudienceMismatch {
        actual: Vec<String>,
        expected: Vec<String>,
    },
    #[error("an expected audience is required to validate a JWT-SVID")]
    NoExpectedAudience,
    #[error("the token has no numeric \"exp\" claim; JWT-SVIDs must expire")]
    MissingExp,
    #[error("the \"{0}\" claim must be a number (seconds since the Unix epoch)")]
    BadTime(&'static str),
    #[error("the token expired at {exp} (unix seconds); it is now {now}; fetch a fresh JWT-SVID")]
    Expired { exp: i64, now: i64 },
    #[error("the token is not valid before {nbf} (unix seconds); it is now {now}")]
    NotYetValid { nbf: i64, now: i64 },
    #[error("no trust bundle for trust domain {0:?}; the token cannot be verified")]
    NoBundle(String),
    #[error(
        "key {kid:?} is not in the bundle of {trust_domain:?}; the token was signed by an unknown key"
    )]
    UnknownKid { kid: String, trust_domain: String },
    #[error("alg {alg} does not fit key {kid:?} ({key}); the header lies about the algorithm")]
    KeyMismatch {
        alg: String,
        kid: String,
        key: String,
    },
    #[error("the signature does not verify with key {0:?}; the token was altered or forged")]
    BadSignature(String),
}

/// A parsed JWT-SVID.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSvid {
    token: String,
    alg: String,
    kid: String,
    spiffe_id: SpiffeId,
    audience: Vec<String>,
    expiry: i64,
    issued_at: Option<i64>,
    issuer: Option<String>,
    claims: Map<String, Value>,
}

fn decode_part(part: &'static str, s: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|e| JwtError::Base64 {
        part,
        reason: e.to_string(),
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(JwtError::Json {
            part,
            reason: "not an object".to_string(),
        }),
        Err(e) => Err(JwtError::Json {
            part,
            reason: e.to_string(),
        }),
    }
}

fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(JwtError::BadTime(name)),
    }
}

impl JwtSvid {
    /// Every structural, header and claim check except signature, expiry and audience.
    pub fn parse_insecure(token: &str) -> Result<Self, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::TooLong { len: token.len() });
        }
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return Err(JwtError::Parts { parts: parts.len() });
        }
        let header = decode_part("header", parts[0])?;
        let claims = decode_part("claims", parts[1])?;
        URL_SAFE_NO_PAD
            .decode(parts[2])
            .map_err(|e| JwtError::Base64 {
                part: "signature",
                reason: e.to_string(),
            })?;
        let alg = match header.get("alg") {
            None => return Err(JwtError::MissingAlg),
            Some(Value::String(a)) if ALLOWED_ALGS.contains(&a.as_str()) => a.clone(),
            Some(Value::String(a)) => return Err(JwtError::AlgNotAllowed(a.clone())),
            Some(other) => return Err(JwtError::AlgNotAllowed(other.to_string())),
        };
        match header.get("typ") {
            None => {}
            Some(Value::String(t)) if t == "JWT" || t == "JOSE" => {}
            Some(other) => {
                return Err(JwtError::BadTyp(
                    other
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| other.to_string()),
                ));
            }
        }
        if header.contains_key("crit") {
            return Err(JwtError::Crit);
        }
        let kid = match header.get("kid") {
            Some(Value::String(k)) if !k.is_empty() => k.clone(),
            _ => return Err(JwtError::MissingKid),
        };
        let sub = match claims.get("sub") {
            Some(Value::String(s)) => s,
            _ => return Err(JwtError::MissingSub),
        };
        let spiffe_id = SpiffeId::new(sub).map_err(JwtError::BadSub)?;
        if spiffe_id.is_root() {
            return Err(JwtError::RootSub(spiffe_id.to_string()));
        }
        let audience = match claims.get("aud") {
            None => return Err(JwtError::MissingAud),
            Some(Value::String(a)) if !a.is_empty() => vec![a.clone()],
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|v| match v {
                    Value::String(s) if !s.is_empty() => Ok(s.clone()),
                    _ => Err(JwtError::BadAud),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(JwtError::BadAud),
        };
        let expiry = time_claim(&claims, "exp")?.ok_or(JwtError::MissingExp)?;
        let issued_at = time_claim(&claims, "iat")?;
        time_claim(&claims, "nbf")?;
        let issuer = claims
            .get("iss")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Self {
            token: token.to_string(),
            alg,
            kid,
            spiffe_id,
            audience,
            expiry,
            issued_at,
            issuer,
            claims,
        })
    }

    /// Full validation: structure, audience (one of `expected_audiences` must be in
    /// `aud`), time, key lookup and signature.
    pub fn validate(
        token: &str,
        expected_audiences: &[&str],
        bundles: &BundleSet,
        clock: &dyn Clock,
    ) -> Result<Self, JwtError> {
        let svid = Self::parse_insecure(token)?;
        if expected_audiences.is_empty() {
            return Err(JwtError::NoExpectedAudience);
        }
        if !svid
            .audience
            .iter()
            .any(|a| expected_audiences.contains(&a.as_str()))
        {
            return Err(JwtError::AudienceMismatch {
                actual: svid.audience.clone(),
                expected: expected_audiences.iter().map(|s| s.to_string()).collect(),
            });
        }
        let now = clock.unix_seconds();
        if now >= svid.expiry {
            return Err(JwtError::Expired {
                exp: svid.expiry,
                now,
            });
        }
        if let Some(nbf) = time_claim(&svid.claims, "nbf")?
            && nbf > now
        {
            return Err(JwtError::NotYetValid { nbf, now });
        }
        let td = svid.spiffe_id.trust_domain();
        let bundle = bundles
            .get(td)
            .ok_or_else(|| JwtError::NoBundle(td.to_string()))?;
        let authority = bundle
            .jwt_authority(&svid.kid)
            .ok_or_else(|| JwtError::UnknownKid {
                kid: svid.kid.clone(),
                trust_domain: td.to_string(),
            })?;
        let mismatch = || JwtError::KeyMismatch {
            alg: svid.alg.clone(),
            kid: svid.kid.clone(),
            key: authority.key().describe(),
        };
        let (algorithm, key) = match (svid.alg.as_str(), authority.key()) {
            ("ES256", PublicJwk::Ec { crv, x, y }) if crv == "P-256" => (Algorithm::ES256, (x, y)),
            ("ES384", PublicJwk::Ec { crv, x, y }) if crv == "P-384" => (Algorithm::ES384, (x, y)),
            ("ES512", PublicJwk::Ec { crv, .. }) if crv == "P-521" => {
                // jsonwebtoken has no ES512; verify directly with aws-lc-rs.
                return verify_es512(&svid, authority.key()).map(|()| svid);
            }
            (alg, PublicJwk::Rsa { n, e }) if alg.starts_with("RS") || alg.starts_with("PS") => {
                let a = match alg {
                    "RS256" => Algorithm::RS256,
                    "RS384" => Algorithm::RS384,
                    "RS512" => Algorithm::RS512,
                    "PS256" => Algorithm::PS256,
                    "PS384" => Algorithm::PS384,
                    _ => Algorithm::PS512,
                };
                let dk = DecodingKey::from_rsa_components(n, e).map_err(|_| mismatch())?;
                return verify_with(&svid, &dk, a).map(|()| svid);
            }
            _ => return Err(mismatch()),
        };
        let dk = DecodingKey::from_ec_components(key.0, key.1).map_err(|_| mismatch())?;
        verify_with(&svid, &dk, algorithm)?;
        Ok(svid)
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }
    pub fn audience(&self) -> &[String] {
        &self.audience
    }
    /// `exp`, unix seconds.
    pub fn expiry(&self) -> i64 {
        self.expiry
    }
    pub fn issued_at(&self) -> Option<i64> {
        self.issued_at
    }
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }
    pub fn kid(&self) -> &str {
        &self.kid
    }
    pub fn alg(&self) -> &str {
        &self.alg
    }
    /// Every claim of the token.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }
    pub fn token(&self) -> &str {
        &self.token
    }
}

fn split_signing_input(token: &str) -> Option<(&str, &str)> {
    let dot = token.rfind('.')?;
    Some((&token[..dot], &token[dot + 1..]))
}

fn verify_with(svid: &JwtSvid, key: &DecodingKey, alg: Algorithm) -> Result<(), JwtError> {
    let (input, sig) =
        split_signing_input(&svid.token).ok_or_else(|| JwtError::BadSignature(svid.kid.clone()))?;
    match jsonwebtoken::crypto::verify(sig, input.as_bytes(), key, alg) {
        Ok(true) => Ok(()),
        _ => Err(JwtError::BadSignature(svid.kid.clone())),
    }
}

fn verify_es512(svid: &JwtSvid, key: &PublicJwk) -> Result<(), JwtError> {
    use aws_lc_rs::signature::{ECDSA_P521_SHA512_FIXED, UnparsedPublicKey};
    let PublicJwk::Ec { x, y, .. } = key else {
        return Err(JwtError::BadSignature(svid.kid.clone()));
    };
    let bad = || JwtError::BadSignature(svid.kid.clone());
    let mut point = vec![0x04];
    point.extend(URL_SAFE_NO_PAD.decode(x).map_err(|_| bad())?);
    point.extend(URL_SAFE_NO_PAD.decode(y).map_err(|_| bad())?);
    let (input, sig) = split_signing_input(&svid.token).ok_or_else(bad)?;
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| bad())?;
    UnparsedPublicKey::new(&ECDSA_P521_SHA512_FIXED, point)
        .verify(input.as_bytes(), &sig)
        .map_err(|_| bad())
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
