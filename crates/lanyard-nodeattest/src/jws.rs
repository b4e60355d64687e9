//! Compact JWS decoding without verification: the three base64url parts, the JOSE
//! header and the claims object. [`UnverifiedToken`] is what [`crate::oidc`] verifies;
//! it is also how a server routes a token to the attestor of its issuer before any
//! key is looked up. Nothing read here is trusted until the signature is checked.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::oidc::TokenRefusal;

/// Longest token accepted, checked before any decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The signature algorithms accepted for node attestation tokens: asymmetric only.
/// `none` and the HMAC algorithms (`HS256`…) are never accepted: an HMAC key is a
/// shared secret, and a JWKS that publishes one would let anyone mint tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl Algorithm {
    /// Every accepted algorithm.
    pub const ALL: [Algorithm; 9] = [
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::EdDSA,
    ];

    /// The JOSE name, e.g. `RS256`.
    pub fn name(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }

    /// The algorithm with JOSE name `name`, if it is one we accept.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    pub(crate) fn jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as J;
        match self {
            Self::RS256 => J::RS256,
            Self::RS384 => J::RS384,
            Self::RS512 => J::RS512,
            Self::PS256 => J::PS256,
            Self::PS384 => J::PS384,
            Self::PS512 => J::PS512,
            Self::ES256 => J::ES256,
            Self::ES384 => J::ES384,
            Self::EdDSA => J::EdDSA,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The JOSE header fields that matter for verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    /// The signature algorithm (already checked to be one we accept).
    pub alg: Algorithm,
    /// The key ID, if the header names one.
    pub kid: Option<String>,
    /// The `typ` header, if present (not enforced: issuers differ).
    pub typ: Option<String>,
}

/// A compact JWS split and decoded, signature not yet verified.
#[derive(Debug, Clone, PartialEq)]
pub struct UnverifiedToken {
    header: TokenHeader,
    claims: Map<String, Value>,
    token: String,
    signing_input_len: usize,
}

fn malformed(what: impl Into<String>) -> TokenRefusal {
    TokenRefusal::Malformed(what.into())
}

fn decode_part(part: &str, name: &str) -> Result<Map<String, Value>, TokenRefusal> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|e| {
        malformed(format!(
            "the token's {name} is not base64url without padding ({e})"
        ))
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(malformed(format!(
            "the token's {name} is not a JSON object"
        ))),
        Err(e) => Err(malformed(format!(
            "the token's {name} is not valid JSON ({e})"
        ))),
    }
}

impl UnverifiedToken {
    /// Split and decode `token` (`header.claims.signature`). Refuses anything that is
    /// not a compact JWS, a header without an accepted `alg`, and headers with `crit`
    /// (no JWS extension is understood here, so none may be required).
    pub fn parse(token: &str) -> Result<Self, TokenRefusal> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenRefusal::TooLong { len: token.len() });
        }
        if token.is_empty() {
            return Err(malformed(
                "the token is empty; pass the signed JWT the platform issued",
            ));
        }
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return Err(malformed(format!(
                "the token has {} dot-separated parts; a signed JWT (compact JWS) has three: header.claims.signature{}",
                parts.len(),
                if parts.len() == 5 {
                    " (five parts is an encrypted JWE, which is not accepted)"
                } else {
                    ""
                }
            )));
        }
        let header = decode_part(parts[0], "header")?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => a.clone(),
            Some(_) => return Err(malformed("the token header's \"alg\" is not a string")),
            None => return Err(malformed("the token header has no \"alg\"")),
        };
        let alg = Algorithm::from_name(&alg).ok_or(TokenRefusal::UnsupportedAlgorithm(alg))?;
        if header.contains_key("crit") {
            return Err(malformed(
                "the token header has \"crit\" (critical JWS extensions), which this verifier does not support",
            ));
        }
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(malformed("the token header's \"kid\" is not a string")),
        };
        let typ = header
            .get("typ")
            .and_then(Value::as_str)
            .map(str::to_string);
        let claims = decode_part(parts[1], "claims")?;
        if parts[2].is_empty() {
            return Err(malformed(
                "the token has an empty signature; it is not signed",
            ));
        }
        URL_SAFE_NO_PAD.decode(parts[2]).map_err(|e| {
            malformed(format!(
                "the token's signature is not base64url without padding ({e})"
            ))
        })?;
        Ok(Self {
            header: TokenHeader { alg, kid, typ },
            claims,
            token: token.to_string(),
            signing_input_len: parts[0].len() + 1 + parts[1].len(),
        })
    }

    /// The decoded header.
    pub fn header(&self) -> &TokenHeader {
        &self.header
    }

    /// The claims, unverified.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// The `iss` claim, unverified (for routing to the attestor of that issuer).
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// The token text as given (trimmed).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// `header.claims`, the bytes the signature covers.
    pub fn signing_input(&self) -> &str {
        &self.token[..self.signing_input_len]
    }

    /// The signature part, base64url.
    pub fn signature_b64(&self) -> &str {
        &self.token[self.signing_input_len + 1..]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn tok(h: &str, c: &str, s: &str) -> String {
        format!("{}.{}.{}", b64(h), b64(c), s)
    }

    #[test]
    fn parses_a_compact_jws() {
        let t = tok(
            r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#,
            r#"{"iss":"https://i","n":1}"#,
            "c2ln",
        );
        let u = UnverifiedToken::parse(&format!(" {t}\n")).unwrap();
        assert_eq!(u.header().alg, Algorithm::RS256);
        assert_eq!(u.header().kid.as_deref(), Some("k1"));
        assert_eq!(u.header().typ.as_deref(), Some("JWT"));
        assert_eq!(u.issuer(), Some("https://i"));
        assert_eq!(u.token(), t);
        assert_eq!(format!("{}.{}", u.signing_input(), u.signature_b64()), t);
    }

    #[test]
    fn refuses_none_hmac_and_unknown_algorithms() {
        for alg in ["none", "HS256", "HS512", "ES512", "RSA-OAEP", ""] {
            let t = tok(&format!(r#"{{"alg":"{alg}"}}"#), "{}", "c2ln");
            assert_eq!(
                UnverifiedToken::parse(&t),
                Err(TokenRefusal::UnsupportedAlgorithm(alg.to_string()))
            );
        }
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(a.name()), Some(a));
        }
    }

    #[test]
    fn refuses_malformed_tokens() {
        let cases = [
            String::new(),
            "a.b".to_string(),
            "a.b.c.d.e".to_string(),
            tok("not json", "{}", "c2ln"),
            tok("[1]", "{}", "c2ln"),
            tok(r#"{"alg":5}"#, "{}", "c2ln"),
            tok(r#"{"typ":"JWT"}"#, "{}", "c2ln"),
            tok(r#"{"alg":"RS256","crit":["b64"]}"#, "{}", "c2ln"),
            tok(r#"{"alg":"RS256","kid":7}"#, "{}", "c2ln"),
            tok(r#"{"alg":"RS256"}"#, "[]", "c2ln"),
            tok(r#"{"alg":"RS256"}"#, "{}", ""),
            tok(r#"{"alg":"RS256"}"#, "{}", "c2ln="),
            format!("{}.%%%.c2ln", b64(r#"{"alg":"RS256"}"#)),
        ];
        for c in cases {
            let e = UnverifiedToken::parse(&c).unwrap_err();
            assert!(matches!(e, TokenRefusal::Malformed(_)), "{c}: {e:?}");
            assert_eq!(e.reason(), "malformed");
        }
        let jwe = UnverifiedToken::parse("a.b.c.d.e").unwrap_err().to_string();
        assert!(jwe.contains("JWE"), "{jwe}");
    }

    #[test]
    fn refuses_oversized_tokens_before_decoding() {
        let big = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            UnverifiedToken::parse(&big),
            Err(TokenRefusal::TooLong {
                len: MAX_TOKEN_LEN + 1
            })
        );
    }
}
