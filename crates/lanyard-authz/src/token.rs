//! Verification of the tokens the server's token endpoint signs: task
//! (transaction) tokens and exchanged tokens, with the public token key (on the
//! server, and on agents from the key the server syncs to them).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_core::JwtError;
use lanyard_policy::TaskFacts;
use serde_json::{Map, Value};

/// `typ` of exchanged tokens (RFC 9068 JWT access tokens): SPIFFE validators refuse
/// them as JWT-SVIDs, and their key is not in the SPIFFE bundle.
pub const EXCHANGE_TYP: &str = "at+jwt";
/// `typ` of task (transaction) tokens.
pub const TASK_TYP: &str = "txntoken+jwt";

/// Why a token (task token, exchanged token, JWT-SVID) was not accepted. The text
/// completes "the token is not accepted: …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The public key is not usable for verification.
    #[error("the token key {kid} must be an EC P-256 JWK (kty {kty:?}, crv {crv:?})")]
    KeyType {
        kid: String,
        kty: String,
        crv: String,
    },
    #[error("the token key {kid}: {reason}")]
    Key { kid: String, reason: String },
    #[error("not a compact JWT: {0}")]
    NotJwt(String),
    #[error("it was not issued by this server's token endpoint")]
    ForeignKey,
    #[error("its type is {found:?}, expected {expected:?}")]
    Type { found: String, expected: String },
    /// Signature, issuer or a required claim is wrong.
    #[error("it does not verify: {0}")]
    Invalid(String),
    #[error("it expired at {exp} (now {now})")]
    Expired { exp: i64, now: i64 },
    #[error("it was revoked (jti {0})")]
    Revoked(String),
    #[error("it lacks `txn` or `rctx.req_wl`")]
    NotATaskToken,
    /// A JWT-SVID that does not validate.
    #[error("{0}")]
    Svid(#[from] JwtError),
    #[error("the JWT-SVID {0} was revoked")]
    SvidRevoked(String),
    #[error("trust bundles unavailable")]
    BundlesUnavailable,
    /// An agent that has not been sent the server's token key yet.
    #[error("the agent has no token key from the server")]
    NoKey,
}

/// The public half of the token key: verifies task and exchanged tokens.
pub struct TokenVerifier {
    kid: String,
    decoding: jsonwebtoken::DecodingKey,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenVerifier({})", self.kid)
    }
}

impl TokenVerifier {
    /// From a public JWK (EC P-256, as the server's token key publishes it).
    pub fn from_jwk(kid: &str, jwk: &Value) -> Result<Self, TokenError> {
        let member = |k: &str| jwk.get(k).and_then(Value::as_str).unwrap_or_default();
        if member("kty") != "EC" || member("crv") != "P-256" {
            return Err(TokenError::KeyType {
                kid: kid.to_string(),
                kty: member("kty").to_string(),
                crv: member("crv").to_string(),
            });
        }
        let decoding = jsonwebtoken::DecodingKey::from_ec_components(member("x"), member("y"))
            .map_err(|e| TokenError::Key {
                kid: kid.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            kid: kid.to_string(),
            decoding,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Verify a token this key signed: signature, `typ`, `iss`, `exp`. Returns the
    /// claims.
    pub fn verify(
        &self,
        token: &str,
        typ: &str,
        issuer: &str,
        now: i64,
    ) -> Result<Map<String, Value>, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::NotJwt(e.to_string()))?;
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(TokenError::ForeignKey);
        }
        if header.typ.as_deref() != Some(typ) {
            return Err(TokenError::Type {
                found: header.typ.unwrap_or_default(),
                expected: typ.to_string(),
            });
        }
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.validate_aud = false;
        v.validate_exp = false;
        v.required_spec_claims = ["exp", "iss", "sub"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.set_issuer(&[issuer]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, &v)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let exp = data.claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        if now >= exp {
            return Err(TokenError::Expired { exp, now });
        }
        Ok(data.claims)
    }
}

/// Verify a task token with `key` (ES256, `typ` txntoken+jwt, `iss`, `exp`, its
/// `jti` not `revoked`) and read what policy sees of it.
pub fn verify_task(
    key: &TokenVerifier,
    issuer: &str,
    token: &str,
    now: i64,
    revoked: &dyn Fn(&str) -> bool,
) -> Result<TaskFacts, TokenError> {
    let c = key.verify(token, TASK_TYP, issuer, now)?;
    task_facts(&c, revoked)
}

/// What policy sees of verified task-token claims.
fn task_facts(
    c: &Map<String, Value>,
    revoked: &dyn Fn(&str) -> bool,
) -> Result<TaskFacts, TokenError> {
    let s = |k: &str| {
        c.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    if revoked(&s("jti")) {
        return Err(TokenError::Revoked(s("jti")));
    }
    let agent = c
        .get("rctx")
        .and_then(|r| r.get("req_wl"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let tctx = c.get("tctx");
    let tools: Vec<String> = tctx
        .and_then(|t| t.get("tools"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let purpose = tctx
        .and_then(|t| t.get("purpose"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let sub = s("sub");
    if agent.is_empty() || s("txn").is_empty() {
        return Err(TokenError::NotATaskToken);
    }
    Ok(TaskFacts {
        txn: s("txn"),
        purpose,
        tools,
        acting_for: if sub == agent { String::new() } else { sub },
        agent,
    })
}

/// base64url of a SHA-256 (for token hashes in evidence: never the token itself).
pub fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD
        .encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_ca::{KeyAlgorithm, SigningKey};
    use lanyard_core::PublicJwk;
    use serde_json::json;

    const ISS: &str = "https://example.org";

    fn key() -> (SigningKey, TokenVerifier) {
        let k = SigningKey::generate(KeyAlgorithm::EcP256).unwrap();
        let PublicJwk::Ec { x, y, .. } = PublicJwk::from_spki_der(&k.public_key_der()).unwrap()
        else {
            panic!("not EC")
        };
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
        (k, TokenVerifier::from_jwk("k1", &jwk).unwrap())
    }

    fn sign(k: &SigningKey, kid: &str, typ: &str, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": kid, "typ": typ});
        lanyard_ca::sign_compact(k, &header, claims).unwrap()
    }

    fn task_claims() -> Value {
        json!({"iss": ISS, "sub": "spiffe://example.org/person-proxy", "exp": 2000,
               "jti": "j1", "txn": "t1",
               "rctx": {"req_wl": "spiffe://example.org/agent"},
               "tctx": {"purpose": "triage", "tools": ["search", "read"]}})
    }

    #[test]
    fn a_task_token_gives_its_facts() {
        let (k, v) = key();
        let t = sign(&k, "k1", TASK_TYP, &task_claims());
        let f = verify_task(&v, ISS, &t, 1000, &|_| false).unwrap();
        assert_eq!(f.txn, "t1");
        assert_eq!(f.agent, "spiffe://example.org/agent");
        assert_eq!(f.acting_for, "spiffe://example.org/person-proxy");
        assert_eq!(f.tools, ["search", "read"]);
        assert_eq!(f.purpose, "triage");
    }

    #[test]
    fn wrong_tokens_are_refused_with_the_reason() {
        let (k, v) = key();
        let good = task_claims();
        let cases: Vec<(String, i64, TokenError)> = vec![
            (
                sign(&k, "other", TASK_TYP, &good),
                1000,
                TokenError::ForeignKey,
            ),
            (
                sign(&k, "k1", EXCHANGE_TYP, &good),
                1000,
                TokenError::Type {
                    found: EXCHANGE_TYP.into(),
                    expected: TASK_TYP.into(),
                },
            ),
            (
                sign(&k, "k1", TASK_TYP, &good),
                2000,
                TokenError::Expired {
                    exp: 2000,
                    now: 2000,
                },
            ),
            ("not-a-jwt".into(), 1000, TokenError::NotJwt(String::new())),
        ];
        for (token, now, want) in cases {
            let got = verify_task(&v, ISS, &token, now, &|_| false).unwrap_err();
            match (&got, &want) {
                (TokenError::NotJwt(_), TokenError::NotJwt(_)) => {}
                _ => assert_eq!(got, want),
            }
        }
        let t = sign(&k, "k1", TASK_TYP, &good);
        assert!(matches!(
            verify_task(&v, "https://evil.example", &t, 1000, &|_| false),
            Err(TokenError::Invalid(_))
        ));
        assert_eq!(
            verify_task(&v, ISS, &t, 1000, &|j| j == "j1").unwrap_err(),
            TokenError::Revoked("j1".into())
        );
        let mut no_txn = good.clone();
        no_txn["txn"] = json!("");
        let t = sign(&k, "k1", TASK_TYP, &no_txn);
        assert_eq!(
            verify_task(&v, ISS, &t, 1000, &|_| false).unwrap_err(),
            TokenError::NotATaskToken
        );
        // Another key under the same kid does not verify.
        let (k2, _) = key();
        let t = sign(&k2, "k1", TASK_TYP, &good);
        assert!(matches!(
            verify_task(&v, ISS, &t, 1000, &|_| false),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn only_p256_keys_verify_tokens() {
        let e = TokenVerifier::from_jwk("k", &json!({"kty": "RSA", "n": "x", "e": "AQAB"}))
            .unwrap_err();
        assert!(e.to_string().contains("EC P-256"), "{e}");
    }

    #[test]
    fn token_hashes_are_base64url_sha256() {
        assert_eq!(
            token_hash("abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
    }
}
