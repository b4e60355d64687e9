//! Verification of signed OIDC tokens (compact JWS) against an issuer's JWKS, and the
//! generic `jwt` node attestor built on it.
//!
//! [`verify_token`] applies, in this order:
//!
//! 1. structure: a compact JWS of at most [`MAX_TOKEN_LEN`](crate::jws::MAX_TOKEN_LEN)
//!    bytes, no `crit` header;
//! 2. algorithm: asymmetric only and in the policy's list (RS/PS 256/384/512, ES256,
//!    ES384, EdDSA); `none` and `HS*` are refused;
//! 3. issuer: `iss` equals the configured issuer exactly (checked before any key is
//!    looked up, so tokens of other issuers never cause a JWKS refresh);
//! 4. key: the JWKS key with the header's `kid` whose type fits the algorithm; without
//!    a `kid`, the JWKS's only key that fits;
//! 5. signature (jsonwebtoken on aws-lc-rs);
//! 6. time: `exp` required and in the future; `nbf` and `iat` not in the future
//!    beyond the leeway (60 s); `iat`, when present, no older than the maximum age;
//!    `exp` no further away than the maximum lifetime (a token valid for days is a
//!    static secret, not a proof of the moment);
//! 7. audience: `aud` (a string, or an array containing it) includes the configured
//!    audience exactly;
//! 8. required claims: each [`ClaimRequirement`] matches.
//!
//! Every refusal is a [`TokenRefusal`] whose text says what is wrong and how to fix it,
//! and whose [`TokenRefusal::reason`] is a stable code for `node_attestation_refused`
//! events. Replay protection is separate ([`crate::replay`]): after a token verifies,
//! the server checks [`VerifiedToken::replay_key`] against its replay cache.

use std::collections::BTreeSet;
use std::time::Duration;

use lanyard_core::{Clock, Selector, SpiffeId, TrustDomain};
use serde_json::{Map, Value};

use crate::claims::{
    ClaimRequirement, ClaimSelector, RequirementFailure, SkippedSelector, selectors_from_claims,
};
use crate::jwks::{Jwks, KeyLookup};
use crate::jws::{Algorithm, TokenHeader, UnverifiedToken};
use crate::presets::Derivation;
use crate::replay::ReplayKey;
use crate::template::{AgentIdTemplate, RenderError};

/// Default clock leeway for `iat` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// Default maximum age of a token (from `iat`).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// Default maximum remaining lifetime of a token (`exp` − now).
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(60 * 60);

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Why a token was refused. The text is what the agent is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// The token is not a well-formed signed JWT.
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// The token is larger than accepted.
    #[error(
        "the token is {len} bytes long; at most {} are accepted",
        crate::jws::MAX_TOKEN_LEN
    )]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The token's algorithm is not accepted.
    #[error(
        "the token is signed with alg {0:?}, which is not accepted: node attestation tokens must use an asymmetric algorithm this attestor allows (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA); \"none\" and HMAC (HS256/384/512) are never accepted"
    )]
    UnsupportedAlgorithm(String),
    /// The issuer's JWKS has no key for the token.
    #[error(
        "{}",
        match kid {
            Some(kid) => format!("the issuer's JWKS has no key with kid {kid:?}; if the issuer just rotated its keys the server refreshes the JWKS (at most once per interval), so retry shortly; otherwise the token was not signed by this issuer"),
            None => "the token names no key (no kid) and the issuer's JWKS does not have exactly one key fitting its algorithm; the issuer must set kid in the token header".to_string(),
        }
    )]
    UnknownKey {
        /// The token's `kid`.
        kid: Option<String>,
    },
    /// Keys with the token's `kid` exist, but none fits the token's algorithm.
    #[error(
        "the token is signed with {alg} but the issuer's key {} is {}; the key does not fit the algorithm (a forged header?)",
        kid.as_deref().unwrap_or("(no kid)"),
        keys.join(", ")
    )]
    KeyMismatch {
        /// The token's `kid`.
        kid: Option<String>,
        /// The token's algorithm.
        alg: Algorithm,
        /// The keys found.
        keys: Vec<String>,
    },
    /// The signature does not verify.
    #[error(
        "the token's signature does not verify with the issuer's key {}: the token was altered or was not issued by this issuer",
        kid.as_deref().unwrap_or("(no kid)")
    )]
    BadSignature {
        /// The key tried.
        kid: Option<String>,
    },
    /// A claim the verifier needs is absent.
    #[error("{}", missing_claim_message(.0))]
    MissingClaim(String),
    /// A claim has the wrong JSON type.
    #[error("the token's {claim:?} claim is invalid: {reason}")]
    BadClaim {
        /// The claim.
        claim: String,
        /// What is wrong.
        reason: String,
    },
    /// `exp` has passed.
    #[error(
        "the token expired at {exp} (unix time), {}s ago; get a fresh token from the platform and attest again",
        now - exp
    )]
    Expired {
        /// `exp`.
        exp: i64,
        /// The server's time.
        now: i64,
    },
    /// `nbf` or `iat` is in the future beyond the leeway.
    #[error(
        "the token's {claim} is {at} (unix time), {}s in the future (more than the {leeway}s allowed for clock skew); check the clocks of the issuer and of this server",
        at - now
    )]
    NotYetValid {
        /// `nbf` or `iat`.
        claim: &'static str,
        /// Its value.
        at: i64,
        /// The server's time.
        now: i64,
        /// The leeway, seconds.
        leeway: i64,
    },
    /// `iat` is older than the maximum age.
    #[error(
        "the token was issued {age}s ago, more than the {max_age}s this attestor accepts; request a fresh token right before attesting (or raise the attestor's max token age)"
    )]
    TooOld {
        /// Seconds since `iat`.
        age: i64,
        /// The maximum, seconds.
        max_age: i64,
    },
    /// `exp` is further away than the maximum lifetime.
    #[error(
        "the token is valid for another {remaining}s, more than the {max_lifetime}s this attestor accepts: a long-lived token is a standing secret, not proof of the moment; request a short-lived token (or raise the attestor's max token lifetime)"
    )]
    LivesTooLong {
        /// Seconds until `exp`.
        remaining: i64,
        /// The maximum, seconds.
        max_lifetime: i64,
    },
    /// `iss` is not the configured issuer.
    #[error(
        "the token was issued by {got:?}, but this attestor accepts tokens from {want:?} only; check the attestor's issuer setting or where the agent gets its token"
    )]
    WrongIssuer {
        /// The configured issuer.
        want: String,
        /// The token's issuer.
        got: String,
    },
    /// `aud` does not include the configured audience.
    #[error(
        "the token's audience is {got:?}, but this server expects {want:?}; request the token for audience {want:?} (GitHub: the audience parameter of the ID token request; GitLab: id_tokens aud; Kubernetes: the projected token's audience)"
    )]
    WrongAudience {
        /// The configured audience.
        want: String,
        /// The token's audiences.
        got: Vec<String>,
    },
    /// A required claim has a value the attestor does not allow.
    #[error(
        "the token's {claim:?} claim is {got:?}, but this attestor requires {want}; this workload is not allowed to attest with this attestor"
    )]
    ClaimMismatch {
        /// The claim.
        claim: String,
        /// What is allowed.
        want: String,
        /// The token's values.
        got: Vec<String>,
    },
}

fn missing_claim_message(claim: &str) -> String {
    match claim {
        "exp" => "the token has no \"exp\" claim: a token that never expires is a static secret and is never accepted for node attestation".to_string(),
        "iss" => "the token has no \"iss\" claim, so its issuer cannot be checked".to_string(),
        "aud" => "the token has no \"aud\" claim; request the token for this server's audience".to_string(),
        other => format!(
            "the token has no {other:?} claim, which this attestor requires; check the attestor's required claims and the platform's token settings"
        ),
    }
}

impl TokenRefusal {
    /// A stable short code for evidence events (`node_attestation_refused`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::TooLong { .. } => "too_long",
            Self::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            Self::UnknownKey { .. } => "unknown_key",
            Self::KeyMismatch { .. } => "key_mismatch",
            Self::BadSignature { .. } => "bad_signature",
            Self::MissingClaim(_) => "missing_claim",
            Self::BadClaim { .. } => "bad_claim",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::TooOld { .. } => "too_old",
            Self::LivesTooLong { .. } => "lifetime_too_long",
            Self::WrongIssuer { .. } => "wrong_issuer",
            Self::WrongAudience { .. } => "wrong_audience",
            Self::ClaimMismatch { .. } => "claim_mismatch",
        }
    }

    /// Whether the evidence itself is unreadable (gRPC `InvalidArgument`) rather than
    /// readable but not proving enough (`PermissionDenied`).
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            Self::Malformed(_) | Self::TooLong { .. } | Self::BadClaim { .. }
        )
    }

    /// Whether a JWKS refresh could change the outcome (the key is unknown). Ask a
    /// [`crate::discovery::JwksRefreshGate`] before refreshing.
    pub fn wants_jwks_refresh(&self) -> bool {
        matches!(self, Self::UnknownKey { .. })
    }
}

/// Why a [`TokenPolicy`] or attestor configuration is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The issuer is empty or has whitespace.
    #[error(
        "the issuer {0:?} is invalid: set it to the exact \"iss\" of the platform's tokens, e.g. https://token.actions.githubusercontent.com"
    )]
    BadIssuer(String),
    /// The audience is empty or has whitespace.
    #[error(
        "the audience {0:?} is invalid: set it to the audience the agent requests its token for, e.g. lanyard-server or the server's URL"
    )]
    BadAudience(String),
    /// No algorithm is allowed.
    #[error(
        "the attestor allows no signature algorithm; list at least one of RS256, PS256, ES256, ES384, EdDSA, …"
    )]
    NoAlgorithms,
    /// The selector kind is not a valid selector type.
    #[error(
        "the selector type {0:?} is invalid: use lowercase letters, digits, '_' and '-', e.g. github"
    )]
    BadKind(String),
}

/// What a token must satisfy. See the module documentation for the order of checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    issuer: String,
    audience: String,
    leeway: i64,
    max_age: i64,
    max_lifetime: i64,
    algorithms: BTreeSet<Algorithm>,
    required: Vec<ClaimRequirement>,
}

fn plain(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl TokenPolicy {
    /// A policy for tokens from `issuer` for `audience`, with the defaults: 60 s
    /// leeway, 10 min maximum age, 1 h maximum lifetime, every accepted algorithm, no
    /// required claims.
    pub fn new(issuer: &str, audience: &str) -> Result<Self, PolicyError> {
        if !plain(issuer) {
            return Err(PolicyError::BadIssuer(issuer.to_string()));
        }
        if !plain(audience) {
            return Err(PolicyError::BadAudience(audience.to_string()));
        }
        Ok(Self {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            leeway: secs(DEFAULT_LEEWAY),
            max_age: secs(DEFAULT_MAX_AGE),
            max_lifetime: secs(DEFAULT_MAX_LIFETIME),
            algorithms: Algorithm::ALL.into_iter().collect(),
            required: Vec::new(),
        })
    }

    /// Set the clock leeway applied to `nbf`, `iat` and the age and lifetime bounds.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = secs(leeway);
        self
    }

    /// Set the maximum age of a token, measured from `iat`.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = secs(max_age);
        self
    }

    /// Set the maximum remaining lifetime (`exp` − now).
    pub fn with_max_lifetime(mut self, max_lifetime: Duration) -> Self {
        self.max_lifetime = secs(max_lifetime);
        self
    }

    /// Allow only these algorithms (each already asymmetric).
    pub fn with_algorithms(mut self, algs: &[Algorithm]) -> Result<Self, PolicyError> {
        if algs.is_empty() {
            return Err(PolicyError::NoAlgorithms);
        }
        self.algorithms = algs.iter().copied().collect();
        Ok(self)
    }

    /// Add a required claim.
    pub fn require(mut self, r: ClaimRequirement) -> Self {
        self.required.push(r);
        self
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The configured audience.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The leeway, seconds.
    pub fn leeway_secs(&self) -> i64 {
        self.leeway
    }

    /// The maximum age, seconds.
    pub fn max_age_secs(&self) -> i64 {
        self.max_age
    }

    /// The maximum remaining lifetime, seconds.
    pub fn max_lifetime_secs(&self) -> i64 {
        self.max_lifetime
    }

    /// The allowed algorithms.
    pub fn algorithms(&self) -> impl Iterator<Item = Algorithm> + '_ {
        self.algorithms.iter().copied()
    }

    /// The required claims.
    pub fn requirements(&self) -> &[ClaimRequirement] {
        &self.required
    }

    /// Check the issuer of claims (before the signature, so a foreign token is
    /// refused without looking up keys).
    pub fn check_issuer(&self, claims: &Map<String, Value>) -> Result<(), TokenRefusal> {
        match claims.get("iss") {
            None => Err(TokenRefusal::MissingClaim("iss".to_string())),
            Some(Value::String(got)) if got == &self.issuer => Ok(()),
            Some(Value::String(got)) => Err(TokenRefusal::WrongIssuer {
                want: self.issuer.clone(),
                got: got.clone(),
            }),
            Some(_) => Err(TokenRefusal::BadClaim {
                claim: "iss".to_string(),
                reason: "it is not a string".to_string(),
            }),
        }
    }

    /// Check everything but the signature: issuer, time, audience and required claims.
    /// Used after the signature verified, and on its own where another party vouched
    /// for the token (a Kubernetes TokenReview).
    pub fn check_claims(
        &self,
        claims: &Map<String, Value>,
        now: i64,
    ) -> Result<TokenTimes, TokenRefusal> {
        self.check_issuer(claims)?;
        let exp = time_claim(claims, "exp")?.ok_or(TokenRefusal::MissingClaim("exp".into()))?;
        let nbf = time_claim(claims, "nbf")?;
        let iat = time_claim(claims, "iat")?;
        if now >= exp {
            return Err(TokenRefusal::Expired { exp, now });
        }
        for (claim, at) in [("nbf", nbf), ("iat", iat)] {
            if let Some(at) = at
                && at > now.saturating_add(self.leeway)
            {
                return Err(TokenRefusal::NotYetValid {
                    claim,
                    at,
                    now,
                    leeway: self.leeway,
                });
            }
        }
        if let Some(iat) = iat {
            let age = now.saturating_sub(iat);
            if age > self.max_age.saturating_add(self.leeway) {
                return Err(TokenRefusal::TooOld {
                    age,
                    max_age: self.max_age,
                });
            }
        }
        let remaining = exp.saturating_sub(now);
        if remaining > self.max_lifetime.saturating_add(self.leeway) {
            return Err(TokenRefusal::LivesTooLong {
                remaining,
                max_lifetime: self.max_lifetime,
            });
        }
        let audience = audience(claims)?;
        if !audience.iter().any(|a| a == &self.audience) {
            return Err(TokenRefusal::WrongAudience {
                want: self.audience.clone(),
                got: audience,
            });
        }
        for r in &self.required {
            match r.check(claims) {
                Ok(()) => {}
                Err(RequirementFailure::Missing) => {
                    return Err(TokenRefusal::MissingClaim(r.claim().to_string()));
                }
                Err(RequirementFailure::Mismatch(got)) => {
                    return Err(TokenRefusal::ClaimMismatch {
                        claim: r.claim().to_string(),
                        want: r.describe(),
                        got,
                    });
                }
            }
        }
        Ok(TokenTimes {
            expires_at: exp,
            issued_at: iat,
            not_before: nbf,
            audience,
        })
    }
}

/// The time and audience claims of a checked token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenTimes {
    /// `exp`, unix seconds.
    pub expires_at: i64,
    /// `iat`, if present.
    pub issued_at: Option<i64>,
    /// `nbf`, if present.
    pub not_before: Option<i64>,
    /// `aud`, as a list.
    pub audience: Vec<String>,
}

/// A NumericDate claim, floored to whole seconds.
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, TokenRefusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                return Ok(Some(i));
            }
            match n.as_f64() {
                Some(f) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f.floor() as i64)),
                _ => Err(TokenRefusal::BadClaim {
                    claim: name.to_string(),
                    reason: "it is not a time in seconds since 1970".to_string(),
                }),
            }
        }
        Some(_) => Err(TokenRefusal::BadClaim {
            claim: name.to_string(),
            reason: "it is not a number (seconds since 1970)".to_string(),
        }),
    }
}

fn audience(claims: &Map<String, Value>) -> Result<Vec<String>, TokenRefusal> {
    let bad = || TokenRefusal::BadClaim {
        claim: "aud".to_string(),
        reason: "it is neither a string nor an array of strings".to_string(),
    };
    match claims.get("aud") {
        None => Err(TokenRefusal::MissingClaim("aud".to_string())),
        Some(Value::String(a)) => Ok(vec![a.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// A token whose signature, issuer, times, audience and required claims verified.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    header: TokenHeader,
    claims: Map<String, Value>,
    times: TokenTimes,
    token: String,
}

impl VerifiedToken {
    /// The JOSE header.
    pub fn header(&self) -> &TokenHeader {
        &self.header
    }

    /// Every claim.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// `iss`.
    pub fn issuer(&self) -> &str {
        self.claims.get("iss").and_then(Value::as_str).unwrap_or("")
    }

    /// `sub`, if a string.
    pub fn subject(&self) -> Option<&str> {
        self.claims.get("sub").and_then(Value::as_str)
    }

    /// `jti`, if a string.
    pub fn jti(&self) -> Option<&str> {
        self.claims.get("jti").and_then(Value::as_str)
    }

    /// `aud` as a list.
    pub fn audience(&self) -> &[String] {
        &self.times.audience
    }

    /// `exp`, unix seconds.
    pub fn expires_at(&self) -> i64 {
        self.times.expires_at
    }

    /// `iat`, if present.
    pub fn issued_at(&self) -> Option<i64> {
        self.times.issued_at
    }

    /// The token text.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The key under which the replay cache remembers this token: issuer and `jti`,
    /// or the token's hash without a `jti`. Remember it until [`Self::expires_at`].
    pub fn replay_key(&self) -> ReplayKey {
        ReplayKey::for_token(self.issuer(), self.jti(), &self.token)
    }
}

/// Verify `token` against `policy` with the keys of `jwks`, at the clock's time.
pub fn verify_token(
    token: &str,
    policy: &TokenPolicy,
    jwks: &Jwks,
    clock: &dyn Clock,
) -> Result<VerifiedToken, TokenRefusal> {
    verify_parsed(
        UnverifiedToken::parse(token)?,
        policy,
        jwks,
        clock.unix_seconds(),
    )
}

/// [`verify_token`] for a token already parsed (e.g. to route it by issuer), at `now`.
pub fn verify_parsed(
    token: UnverifiedToken,
    policy: &TokenPolicy,
    jwks: &Jwks,
    now: i64,
) -> Result<VerifiedToken, TokenRefusal> {
    let header = token.header().clone();
    if !policy.algorithms.contains(&header.alg) {
        return Err(TokenRefusal::UnsupportedAlgorithm(header.alg.to_string()));
    }
    policy.check_issuer(token.claims())?;
    let key = match jwks.find(header.kid.as_deref(), header.alg) {
        KeyLookup::Found(k) => k,
        KeyLookup::Unknown => {
            return Err(TokenRefusal::UnknownKey {
                kid: header.kid.clone(),
            });
        }
        KeyLookup::Mismatch(keys) => {
            return Err(TokenRefusal::KeyMismatch {
                kid: header.kid.clone(),
                alg: header.alg,
                keys,
            });
        }
    };
    let verified = jsonwebtoken::crypto::verify(
        token.signature_b64(),
        token.signing_input().as_bytes(),
        &key.key.decoding_key(),
        header.alg.jsonwebtoken(),
    );
    if !matches!(verified, Ok(true)) {
        return Err(TokenRefusal::BadSignature {
            kid: key.kid.clone().or(header.kid.clone()),
        });
    }
    let times = policy.check_claims(token.claims(), now)?;
    Ok(VerifiedToken {
        header,
        claims: token.claims().clone(),
        times,
        token: token.token().to_string(),
    })
}

/// Why the `jwt` attestor refused a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtAttestError {
    /// The token did not verify.
    #[error(transparent)]
    Token(#[from] TokenRefusal),
    /// The agent ID could not be made from the token's claims.
    #[error(transparent)]
    AgentId(#[from] RenderError),
}

impl JwtAttestError {
    /// A stable short code for evidence events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Token(t) => t.reason(),
            Self::AgentId(r) => r.reason(),
        }
    }

    /// See [`TokenRefusal::wants_jwks_refresh`].
    pub fn wants_jwks_refresh(&self) -> bool {
        matches!(self, Self::Token(t) if t.wants_jwks_refresh())
    }

    /// See [`TokenRefusal::is_malformed`].
    pub fn is_malformed(&self) -> bool {
        matches!(self, Self::Token(t) if t.is_malformed())
    }
}

/// The generic `jwt` node attestor: a token policy, the claims that become selectors
/// (under one selector type, e.g. `github`), and the agent ID template. Presets for
/// GitHub Actions, GitLab CI, GCP and Azure are in [`crate::presets`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAttestor {
    kind: String,
    policy: TokenPolicy,
    selectors: Vec<ClaimSelector>,
    template: AgentIdTemplate,
    derivations: Vec<Derivation>,
}

/// A node the `jwt` attestor admitted.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtAttestation {
    /// The agent ID from the template.
    pub agent_id: SpiffeId,
    /// The selectors made from claims, sorted.
    pub selectors: Vec<Selector>,
    /// Claim values that could not become selectors (for the log).
    pub skipped: Vec<SkippedSelector>,
    /// The verified token (its replay key and expiry feed the replay cache).
    pub token: VerifiedToken,
}

impl JwtAttestation {
    /// See [`VerifiedToken::replay_key`].
    pub fn replay_key(&self) -> ReplayKey {
        self.token.replay_key()
    }

    /// `exp` of the token, until which the replay cache must remember it.
    pub fn expires_at(&self) -> i64 {
        self.token.expires_at()
    }
}

impl JwtAttestor {
    /// An attestor whose selectors have type `kind`.
    pub fn new(
        kind: &str,
        policy: TokenPolicy,
        selectors: Vec<ClaimSelector>,
        template: AgentIdTemplate,
    ) -> Result<Self, PolicyError> {
        Selector::from_parts(kind, "x").map_err(|_| PolicyError::BadKind(kind.to_string()))?;
        Ok(Self {
            kind: kind.to_string(),
            policy,
            selectors,
            template,
            derivations: Vec::new(),
        })
    }

    /// Add selectors derived from claims by a fixed rule (used by presets).
    pub fn with_derivation(mut self, d: Derivation) -> Self {
        self.derivations.push(d);
        self
    }

    /// The selector type.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The token policy.
    pub fn policy(&self) -> &TokenPolicy {
        &self.policy
    }

    /// Replace the token policy (e.g. to add required claims to a preset).
    pub fn with_policy(mut self, policy: TokenPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The claim-to-selector mapping.
    pub fn selector_mapping(&self) -> &[ClaimSelector] {
        &self.selectors
    }

    /// The agent ID template.
    pub fn template(&self) -> &AgentIdTemplate {
        &self.template
    }

    /// Verify `token` and say which node it proves: agent ID in `td`, selectors.
    /// The caller then checks [`JwtAttestation::replay_key`] against its replay cache.
    pub fn attest(
        &self,
        token: &str,
        jwks: &Jwks,
        td: &TrustDomain,
        clock: &dyn Clock,
    ) -> Result<JwtAttestation, JwtAttestError> {
        let verified = verify_token(token, &self.policy, jwks, clock)?;
        self.admit(verified, td)
    }

    /// The agent ID and selectors for an already verified token.
    pub fn admit(
        &self,
        token: VerifiedToken,
        td: &TrustDomain,
    ) -> Result<JwtAttestation, JwtAttestError> {
        let agent_id = self.template.render(td, token.claims())?;
        let mut made = selectors_from_claims(&self.kind, &self.selectors, token.claims());
        for d in &self.derivations {
            made.selectors
                .extend(d.selectors(&self.kind, token.claims()));
        }
        made.selectors.sort();
        made.selectors.dedup();
        Ok(JwtAttestation {
            agent_id,
            selectors: made.selectors,
            skipped: made.skipped,
            token,
        })
    }
}

#[cfg(test)]
#[path = "oidc_tests.rs"]
mod tests;
