//! JWK Set documents (RFC 7517) as OIDC issuers publish them at their `jwks_uri`.
//!
//! Each key is read on its own: a key this verifier cannot use (an encryption key,
//! a symmetric `oct` key, an unsupported curve, an RSA key under 2048 bits, bad
//! base64) is set aside in [`Jwks::skipped`] with the reason, and the rest of the set
//! still works. A document that is not a JWK Set at all is an error. jsonwebtoken's
//! own `JwkSet` is not used for parsing because it fails the whole document on one
//! unknown key and does not tie a key's curve to the token's algorithm; signatures
//! are still checked by jsonwebtoken (aws-lc-rs) in [`crate::oidc`].

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::jws::Algorithm;

/// Largest JWKS document accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys read from one document; the rest are skipped.
pub const MAX_JWKS_KEYS: usize = 100;

/// Why a JWKS document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// The document is larger than [`MAX_JWKS_BYTES`].
    #[error(
        "the JWKS document is {len} bytes; at most {MAX_JWKS_BYTES} are accepted (is the jwks_uri or jwks_file right?)"
    )]
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// The document is not a JSON object with a `keys` array.
    #[error(
        "the JWKS document is not a JWK Set ({0}); expected JSON like {{\"keys\": [{{\"kty\": \"RSA\", \"kid\": …}}]}} from the issuer's jwks_uri"
    )]
    NotAJwkSet(String),
}

/// An elliptic curve of a JWK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcCurve {
    /// NIST P-256 (for ES256).
    P256,
    /// NIST P-384 (for ES384).
    P384,
}

/// Public key material of a usable JWK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA modulus and exponent, big-endian bytes.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
    /// An EC point, coordinates big-endian.
    Ec {
        /// The curve.
        curve: EcCurve,
        /// x coordinate.
        x: Vec<u8>,
        /// y coordinate.
        y: Vec<u8>,
    },
    /// An Ed25519 public key (32 bytes).
    Ed25519 {
        /// The key.
        x: Vec<u8>,
    },
}

impl PublicKey {
    /// Whether this key can verify `alg` signatures.
    pub fn fits(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Self::Rsa { .. } => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Self::Ec {
                curve: EcCurve::P256,
                ..
            } => alg == ES256,
            Self::Ec {
                curve: EcCurve::P384,
                ..
            } => alg == ES384,
            Self::Ed25519 { .. } => alg == EdDSA,
        }
    }

    /// A short description for messages, e.g. `RSA 2048-bit` or `EC P-256`.
    pub fn describe(&self) -> String {
        match self {
            Self::Rsa { n, .. } => format!("RSA {}-bit", n.len() * 8),
            Self::Ec {
                curve: EcCurve::P256,
                ..
            } => "EC P-256".to_string(),
            Self::Ec {
                curve: EcCurve::P384,
                ..
            } => "EC P-384".to_string(),
            Self::Ed25519 { .. } => "OKP Ed25519".to_string(),
        }
    }

    pub(crate) fn decoding_key(&self) -> jsonwebtoken::DecodingKey {
        match self {
            Self::Rsa { n, e } => jsonwebtoken::DecodingKey::from_rsa_raw_components(n, e),
            Self::Ec { x, y, .. } => {
                let mut point = Vec::with_capacity(1 + x.len() + y.len());
                point.push(0x04);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                jsonwebtoken::DecodingKey::from_ec_der(&point)
            }
            Self::Ed25519 { x } => jsonwebtoken::DecodingKey::from_ed_der(x),
        }
    }
}

/// A usable signing key of a JWK Set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    /// `kid`, if the key has one.
    pub kid: Option<String>,
    /// `alg`, if the key is restricted to one algorithm (checked to be accepted).
    pub alg: Option<Algorithm>,
    /// The key material.
    pub key: PublicKey,
}

impl Jwk {
    /// Whether this key may verify a token signed with `alg`: the key type fits and,
    /// when the key names an `alg`, it is that one.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.key.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// A key of the document that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// Its `kid`, if it had one.
    pub kid: Option<String>,
    /// Why it is not used.
    pub reason: String,
}

/// A parsed JWK Set: its usable signing keys, and the keys set aside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jwks {
    keys: Vec<Jwk>,
    skipped: Vec<SkippedKey>,
}

/// What looking a key up for a token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLookup<'a> {
    /// The key to verify with.
    Found(&'a Jwk),
    /// No key with this `kid` (or, without a `kid`, not exactly one candidate).
    Unknown,
    /// Keys with this `kid` exist but none fits the algorithm (their descriptions).
    Mismatch(Vec<String>),
}

fn b64_field(m: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    match m.get(name) {
        Some(Value::String(s)) => URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|e| format!("\"{name}\" is not base64url ({e})")),
        Some(_) => Err(format!("\"{name}\" is not a string")),
        None => Err(format!("\"{name}\" is missing")),
    }
}

fn strip_leading_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|&&b| b == 0).count();
    v.drain(..zeros);
    v
}

fn parse_key(m: &Map<String, Value>) -> Result<Jwk, String> {
    let kid = m.get("kid").and_then(Value::as_str).map(str::to_string);
    if let Some(u) = m.get("use") {
        match u.as_str() {
            Some("sig") => {}
            Some(other) => return Err(format!("\"use\" is {other:?}, not \"sig\"")),
            None => return Err("\"use\" is not a string".to_string()),
        }
    }
    if let Some(ops) = m.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
        if !verifies {
            return Err("\"key_ops\" does not include \"verify\"".to_string());
        }
    }
    let alg = match m.get("alg") {
        None | Some(Value::Null) => None,
        Some(Value::String(a)) => Some(
            Algorithm::from_name(a)
                .ok_or_else(|| format!("\"alg\" {a:?} is not an accepted signature algorithm"))?,
        ),
        Some(_) => return Err("\"alg\" is not a string".to_string()),
    };
    let kty = m
        .get("kty")
        .and_then(Value::as_str)
        .ok_or("\"kty\" is missing")?;
    let key = match kty {
        "RSA" => {
            let n = strip_leading_zeros(b64_field(m, "n")?);
            let e = strip_leading_zeros(b64_field(m, "e")?);
            if n.len() < 256 {
                return Err(format!(
                    "the RSA key is {}-bit; at least 2048 bits are required",
                    n.len() * 8
                ));
            }
            if n.len() > 1024 {
                return Err("the RSA key is larger than 8192 bits".to_string());
            }
            if e.is_empty() || e.len() > 8 {
                return Err("the RSA exponent is invalid".to_string());
            }
            PublicKey::Rsa { n, e }
        }
        "EC" => {
            let (curve, len) = match m.get("crv").and_then(Value::as_str) {
                Some("P-256") => (EcCurve::P256, 32),
                Some("P-384") => (EcCurve::P384, 48),
                Some(c) => return Err(format!("the curve {c:?} is not supported")),
                None => return Err("\"crv\" is missing".to_string()),
            };
            let x = b64_field(m, "x")?;
            let y = b64_field(m, "y")?;
            if x.len() != len || y.len() != len {
                return Err(format!(
                    "the EC coordinates must be {len} bytes each for this curve"
                ));
            }
            PublicKey::Ec { curve, x, y }
        }
        "OKP" => {
            match m.get("crv").and_then(Value::as_str) {
                Some("Ed25519") => {}
                Some(c) => return Err(format!("the curve {c:?} is not supported")),
                None => return Err("\"crv\" is missing".to_string()),
            }
            let x = b64_field(m, "x")?;
            if x.len() != 32 {
                return Err("an Ed25519 key is 32 bytes".to_string());
            }
            PublicKey::Ed25519 { x }
        }
        "oct" => {
            return Err(
                "symmetric (oct) keys are never used: HMAC-signed tokens are not accepted"
                    .to_string(),
            );
        }
        other => return Err(format!("key type {other:?} is not supported")),
    };
    let jwk = Jwk { kid, alg, key };
    if let Some(a) = jwk.alg
        && !jwk.key.fits(a)
    {
        return Err(format!(
            "\"alg\" {a} does not fit the {} key",
            jwk.key.describe()
        ));
    }
    Ok(jwk)
}

impl Jwks {
    /// Parse a JWK Set document.
    pub fn parse(bytes: &[u8]) -> Result<Self, JwksError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge { len: bytes.len() });
        }
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| JwksError::NotAJwkSet(e.to_string()))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| JwksError::NotAJwkSet("there is no \"keys\" array".to_string()))?;
        let mut out = Self::default();
        for (i, k) in keys.iter().enumerate() {
            let Some(m) = k.as_object() else {
                out.skipped.push(SkippedKey {
                    kid: None,
                    reason: "the entry is not a JSON object".to_string(),
                });
                continue;
            };
            let kid = m.get("kid").and_then(Value::as_str).map(str::to_string);
            if i >= MAX_JWKS_KEYS {
                out.skipped.push(SkippedKey {
                    kid,
                    reason: format!("only the first {MAX_JWKS_KEYS} keys are read"),
                });
                continue;
            }
            match parse_key(m) {
                Ok(jwk) => out.keys.push(jwk),
                Err(reason) => out.skipped.push(SkippedKey { kid, reason }),
            }
        }
        Ok(out)
    }

    /// A set of the given keys (for tests and for keys configured inline).
    pub fn from_keys(keys: Vec<Jwk>) -> Self {
        Self {
            keys,
            skipped: Vec::new(),
        }
    }

    /// The usable keys.
    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    /// The keys set aside, with reasons (for the log).
    pub fn skipped(&self) -> &[SkippedKey] {
        &self.skipped
    }

    /// Whether a key with `kid` is in the set.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The key to verify a token with header `kid` and `alg`. With a `kid`, the key
    /// with that `kid` that allows `alg`. Without one, the only key that allows `alg`
    /// (none or several is [`KeyLookup::Unknown`]: guessing would be unsafe).
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> KeyLookup<'_> {
        match kid {
            Some(kid) => {
                let named: Vec<&Jwk> = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if named.is_empty() {
                    return KeyLookup::Unknown;
                }
                match named.iter().find(|k| k.allows(alg)) {
                    Some(k) => KeyLookup::Found(k),
                    None => KeyLookup::Mismatch(named.iter().map(|k| k.key.describe()).collect()),
                }
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.allows(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => KeyLookup::Found(k),
                    _ => KeyLookup::Unknown,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn b64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    fn rsa(kid: &str) -> Value {
        let mut n = vec![0xC5u8; 256];
        n.insert(0, 0);
        json!({"kty":"RSA","kid":kid,"use":"sig","alg":"RS256","n":b64(&n),"e":"AQAB"})
    }

    fn ec(kid: &str, crv: &str, len: usize) -> Value {
        json!({"kty":"EC","kid":kid,"crv":crv,"x":b64(&vec![1;len]),"y":b64(&vec![2;len])})
    }

    #[test]
    fn reads_usable_keys_and_sets_aside_the_rest() {
        let doc = json!({"keys":[
            rsa("r1"),
            ec("e1", "P-256", 32),
            ec("e2", "P-384", 48),
            {"kty":"OKP","crv":"Ed25519","kid":"o1","x":b64(&[9;32])},
            {"kty":"oct","kid":"h1","k":"c2VjcmV0"},
            {"kty":"RSA","kid":"small","n":b64(&[0xC5;128]),"e":"AQAB"},
            {"kty":"RSA","kid":"enc","use":"enc","n":b64(&[0xC5;256]),"e":"AQAB"},
            {"kty":"EC","kid":"p521","crv":"P-521","x":"AA","y":"AA"},
            {"kty":"EC","kid":"short","crv":"P-256","x":b64(&[1;31]),"y":b64(&[2;32])},
            {"kty":"RSA","kid":"badalg","alg":"ES256","n":b64(&[0xC5;256]),"e":"AQAB"},
            {"kty":"RSA","kid":"hs","alg":"HS256","n":b64(&[0xC5;256]),"e":"AQAB"},
            {"kty":"RSA","kid":"nov","key_ops":["encrypt"],"n":b64(&[0xC5;256]),"e":"AQAB"},
            {"kty":"OKP","crv":"Ed448","kid":"ed448","x":"AA"},
            {"kty":"XYZ","kid":"x"},
            {"kid":"nokty"},
            "not an object"
        ]});
        let j = Jwks::parse(doc.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = j.keys().iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["r1", "e1", "e2", "o1"]);
        assert_eq!(j.skipped().len(), 12);
        let reason = |kid: &str| {
            j.skipped()
                .iter()
                .find(|s| s.kid.as_deref() == Some(kid))
                .unwrap()
                .reason
                .clone()
        };
        assert!(reason("h1").contains("HMAC"));
        assert!(reason("small").contains("1024-bit"));
        assert!(reason("enc").contains("\"enc\""));
        assert!(reason("badalg").contains("does not fit"));
        assert!(reason("hs").contains("HS256"));
        // Leading zero of the modulus is not counted.
        assert_eq!(j.keys()[0].key.describe(), "RSA 2048-bit");
        assert!(j.has_kid("e1") && !j.has_kid("h1"));
    }

    #[test]
    fn documents_that_are_not_jwk_sets_are_errors() {
        for bad in [&b"not json"[..], b"[]", b"{}", br#"{"keys":{}}"#] {
            assert!(matches!(Jwks::parse(bad), Err(JwksError::NotAJwkSet(_))));
        }
        let big = vec![b' '; MAX_JWKS_BYTES + 1];
        assert!(matches!(Jwks::parse(&big), Err(JwksError::TooLarge { .. })));
        assert!(Jwks::parse(br#"{"keys":[]}"#).unwrap().keys().is_empty());
    }

    #[test]
    fn lookup_by_kid_and_algorithm() {
        let doc = json!({"keys":[rsa("r1"), ec("e1","P-256",32), ec("shared","P-256",32), rsa("shared")]});
        let j = Jwks::parse(doc.to_string().as_bytes()).unwrap();
        assert!(
            matches!(j.find(Some("r1"), Algorithm::RS256), KeyLookup::Found(k) if k.kid.as_deref() == Some("r1"))
        );
        // r1 is restricted to RS256 by its alg.
        assert_eq!(
            j.find(Some("r1"), Algorithm::PS256),
            KeyLookup::Mismatch(vec!["RSA 2048-bit".into()])
        );
        assert_eq!(
            j.find(Some("e1"), Algorithm::ES384),
            KeyLookup::Mismatch(vec!["EC P-256".into()])
        );
        assert_eq!(j.find(Some("nope"), Algorithm::RS256), KeyLookup::Unknown);
        // Same kid on two keys: the one fitting the algorithm.
        assert!(
            matches!(j.find(Some("shared"), Algorithm::RS256), KeyLookup::Found(k) if matches!(k.key, PublicKey::Rsa{..}))
        );
        assert!(
            matches!(j.find(Some("shared"), Algorithm::ES256), KeyLookup::Found(k) if matches!(k.key, PublicKey::Ec{..}))
        );
    }

    #[test]
    fn without_kid_only_a_single_candidate_is_used() {
        let one = Jwks::parse(
            json!({"keys":[rsa("r1"), ec("e1","P-256",32)]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert!(
            matches!(one.find(None, Algorithm::ES256), KeyLookup::Found(k) if k.kid.as_deref() == Some("e1"))
        );
        assert_eq!(one.find(None, Algorithm::EdDSA), KeyLookup::Unknown);
        let two = Jwks::parse(
            json!({"keys":[ec("a","P-256",32), ec("b","P-256",32)]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(two.find(None, Algorithm::ES256), KeyLookup::Unknown);
    }

    #[test]
    fn at_most_max_keys_are_read() {
        let keys: Vec<Value> = (0..MAX_JWKS_KEYS + 5)
            .map(|i| ec(&format!("k{i}"), "P-256", 32))
            .collect();
        let j = Jwks::parse(json!({ "keys": keys }).to_string().as_bytes()).unwrap();
        assert_eq!(j.keys().len(), MAX_JWKS_KEYS);
        assert_eq!(j.skipped().len(), 5);
    }
}
