//! SPIFFE trust bundles: the JWK Set format of the SPIFFE Trust Domain and Bundle
//! specification, and a set of bundles keyed by trust domain.
//!
//! ```json
//! {"keys": [{"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": "…", "y": "…",
//!            "x5c": ["<base64 DER>"]},
//!           {"use": "jwt-svid", "kid": "k1", "kty": "EC", "crv": "P-256", "x": "…", "y": "…"}],
//!  "spiffe_sequence": 7, "spiffe_refresh_hint": 300}
//! ```
//!
//! Parsing is strict about what SPIFFE requires (one `x5c` certificate per X.509
//! authority, a `kid` on every JWT authority, supported key types) and ignores
//! entries whose `use` it does not know, as the specification asks.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::*;
use x509_parser::public_key::PublicKey;

use crate::id::TrustDomain;

/// The `use` value of X.509 authorities.
pub const USE_X509_SVID: &str = "x509-svid";
/// The `use` value of JWT authorities.
pub const USE_JWT_SVID: &str = "jwt-svid";

const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_P521: &str = "1.3.132.0.35";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("the bundle is not valid JSON: {0}; a SPIFFE bundle is a JWK Set: {{\"keys\": [...]}}")]
    Json(String),
    #[error(
        "key #{index} has use {USE_X509_SVID:?} but {count} x5c certificates; exactly one is required"
    )]
    X5cCount { index: usize, count: usize },
    #[error(
        "key #{index}: the x5c certificate is not valid base64 (standard alphabet, with padding): {reason}"
    )]
    X5cBase64 { index: usize, reason: String },
    #[error("key #{index}: the x5c certificate is not a valid DER X.509 certificate: {reason}")]
    X5cCertificate { index: usize, reason: String },
    #[error(
        "key #{index} has use {USE_JWT_SVID:?} but no \"kid\"; every JWT authority needs a key ID"
    )]
    MissingKid { index: usize },
    #[error(
        "key #{index} has key ID {kid:?}, already used by another JWT authority; key IDs must be unique"
    )]
    DuplicateKid { index: usize, kid: String },
    #[error("key #{index} is not a usable public key: {reason}")]
    BadKey { index: usize, reason: String },
    #[error("the certificate is not a valid DER X.509 certificate: {0}")]
    Certificate(String),
    #[error("the public key is not supported: {0}; use EC P-256, P-384, P-521 or RSA")]
    UnsupportedKey(String),
    #[error("a JWT authority needs a non-empty key ID")]
    EmptyKid,
    #[error(
        "no PEM certificate was found; expected one or more \"-----BEGIN CERTIFICATE-----\" blocks"
    )]
    NoPemCertificates,
    #[error("the PEM input is malformed: {0}")]
    Pem(String),
}

/// A public key as JWK members (no private parts: a bundle never carries them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicJwk {
    Ec {
        crv: String,
        /// base64url, no padding
        x: String,
        y: String,
    },
    Rsa {
        /// base64url, no padding
        n: String,
        e: String,
    },
}

impl PublicJwk {
    /// From a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, BundleError> {
        let (_, spki) = SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| BundleError::UnsupportedKey(format!("not a SubjectPublicKeyInfo: {e}")))?;
        Self::from_spki(&spki)
    }

    pub(crate) fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, BundleError> {
        match spki.parsed() {
            Ok(PublicKey::EC(point)) => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                let (crv, size) = match curve.as_str() {
                    OID_P256 => ("P-256", 32),
                    OID_P384 => ("P-384", 48),
                    OID_P521 => ("P-521", 66),
                    other => {
                        return Err(BundleError::UnsupportedKey(format!("EC curve {other}")));
                    }
                };
                let data = point.data();
                if data.len() != 1 + 2 * size || data.first() != Some(&0x04) {
                    return Err(BundleError::UnsupportedKey(
                        "EC point is not in uncompressed form".to_string(),
                    ));
                }
                Ok(Self::Ec {
                    crv: crv.to_string(),
                    x: URL_SAFE_NO_PAD.encode(&data[1..=size]),
                    y: URL_SAFE_NO_PAD.encode(&data[1 + size..]),
                })
            }
            Ok(PublicKey::RSA(rsa)) => Ok(Self::Rsa {
                n: URL_SAFE_NO_PAD.encode(strip_zeros(rsa.modulus)),
                e: URL_SAFE_NO_PAD.encode(strip_zeros(rsa.exponent)),
            }),
            Ok(_) => Err(BundleError::UnsupportedKey(format!(
                "algorithm {}",
                spki.algorithm.algorithm.to_id_string()
            ))),
            Err(e) => Err(BundleError::UnsupportedKey(e.to_string())),
        }
    }

    /// Key type name as in JWK `kty`.
    pub fn kty(&self) -> &'static str {
        match self {
            Self::Ec { .. } => "EC",
            Self::Rsa { .. } => "RSA",
        }
    }

    /// Short description, e.g. `EC P-256` or `RSA 2048`.
    pub fn describe(&self) -> String {
        match self {
            Self::Ec { crv, .. } => format!("EC {crv}"),
            Self::Rsa { n, .. } => {
                let bits = URL_SAFE_NO_PAD.decode(n).map(|b| b.len() * 8).unwrap_or(0);
                format!("RSA {bits}")
            }
        }
    }

    fn from_raw(raw: &RawJwk, index: usize) -> Result<Self, BundleError> {
        let bad = |reason: String| BundleError::BadKey { index, reason };
        let check_b64 = |name: &str, v: &Option<String>| -> Result<String, BundleError> {
            let v = v
                .as_ref()
                .ok_or_else(|| bad(format!("missing \"{name}\"")))?;
            URL_SAFE_NO_PAD
                .decode(v)
                .map_err(|e| bad(format!("\"{name}\" is not base64url without padding: {e}")))?;
            Ok(v.clone())
        };
        match raw.kty.as_deref() {
            Some("EC") => {
                let crv = raw
                    .crv
                    .clone()
                    .ok_or_else(|| bad("EC key without \"crv\"".to_string()))?;
                let size = match crv.as_str() {
                    "P-256" => 32,
                    "P-384" => 48,
                    "P-521" => 66,
                    other => {
                        return Err(bad(format!(
                            "unsupported curve {other:?}; use P-256, P-384 or P-521"
                        )));
                    }
                };
                let x = check_b64("x", &raw.x)?;
                let y = check_b64("y", &raw.y)?;
                for (name, v) in [("x", &x), ("y", &y)] {
                    let len = URL_SAFE_NO_PAD.decode(v).map(|b| b.len()).unwrap_or(0);
                    if len != size {
                        return Err(bad(format!(
                            "\"{name}\" is {len} bytes; {crv} coordinates are {size} bytes"
                        )));
                    }
                }
                Ok(Self::Ec { crv, x, y })
            }
            Some("RSA") => Ok(Self::Rsa {
                n: check_b64("n", &raw.n)?,
                e: check_b64("e", &raw.e)?,
            }),
            Some(other) => Err(bad(format!(
                "unsupported key type {other:?}; SPIFFE authorities are \"EC\" or \"RSA\""
            ))),
            None => Err(bad("missing \"kty\"".to_string())),
        }
    }

    fn write_raw(&self, raw: &mut RawJwk) {
        match self {
            Self::Ec { crv, x, y } => {
                raw.kty = Some("EC".to_string());
                raw.crv = Some(crv.clone());
                raw.x = Some(x.clone());
                raw.y = Some(y.clone());
            }
            Self::Rsa { n, e } => {
                raw.kty = Some("RSA".to_string());
                raw.n = Some(n.clone());
                raw.e = Some(e.clone());
            }
        }
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|&x| x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    &b[start..]
}

/// One X.509 authority (a root CA certificate, DER).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Authority {
    der: Vec<u8>,
}

impl X509Authority {
    /// Checks that the bytes are a DER certificate with a supported public key.
    pub fn from_der(der: Vec<u8>) -> Result<Self, BundleError> {
        let (_, cert) =
            X509Certificate::from_der(&der).map_err(|e| BundleError::Certificate(e.to_string()))?;
        PublicJwk::from_spki(cert.public_key())?;
        Ok(Self { der })
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The certificate's public key as JWK members.
    pub fn public_jwk(&self) -> Result<PublicJwk, BundleError> {
        let (_, cert) = X509Certificate::from_der(&self.der)
            .map_err(|e| BundleError::Certificate(e.to_string()))?;
        PublicJwk::from_spki(cert.public_key())
    }
}

/// One JWT authority: a public key and its key ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthority {
    kid: String,
    key: PublicJwk,
}

impl JwtAuthority {
    pub fn new(kid: &str, key: PublicJwk) -> Result<Self, BundleError> {
        if kid.is_empty() {
            return Err(BundleError::EmptyKid);
        }
        Ok(Self {
            kid: kid.to_string(),
            key,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn key(&self) -> &PublicJwk {
        &self.key
    }
}

/// The JSON shape of one JWK; every member optional so that errors can name what is
/// missing instead of failing deserialization wholesale.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RawJwk {
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    use_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kty: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x5c: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RawBundle {
    keys: Vec<RawJwk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<i64>,
}

/// The trust bundle of one trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    trust_domain: TrustDomain,
    x509_authorities: Vec<X509Authority>,
    jwt_authorities: BTreeMap<String, JwtAuthority>,
    sequence: Option<u64>,
    refresh_hint: Option<i64>,
    ignored_keys: usize,
}

impl Bundle {
    /// An empty bundle for a trust domain.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: BTreeMap::new(),
            sequence: None,
            refresh_hint: None,
            ignored_keys: 0,
        }
    }

    /// Parse a SPIFFE bundle document (JWK Set) for `trust_domain`.
    pub fn parse(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, BundleError> {
        let raw: RawBundle =
            serde_json::from_slice(json).map_err(|e| BundleError::Json(e.to_string()))?;
        let mut bundle = Self::new(trust_domain);
        bundle.sequence = raw.spiffe_sequence;
        bundle.refresh_hint = raw.spiffe_refresh_hint;
        for (index, key) in raw.keys.iter().enumerate() {
            match key.use_.as_deref() {
                Some(USE_X509_SVID) => {
                    let x5c = key.x5c.as_deref().unwrap_or_default();
                    if x5c.len() != 1 {
                        return Err(BundleError::X5cCount {
                            index,
                            count: x5c.len(),
                        });
                    }
                    let der = STANDARD
                        .decode(&x5c[0])
                        .map_err(|e| BundleError::X5cBase64 {
                            index,
                            reason: e.to_string(),
                        })?;
                    let authority =
                        X509Authority::from_der(der).map_err(|e| BundleError::X5cCertificate {
                            index,
                            reason: e.to_string(),
                        })?;
                    bundle.x509_authorities.push(authority);
                }
                Some(USE_JWT_SVID) => {
                    let kid = match key.kid.as_deref() {
                        Some(k) if !k.is_empty() => k.to_string(),
                        _ => return Err(BundleError::MissingKid { index }),
                    };
                    let jwk = PublicJwk::from_raw(key, index)?;
                    if bundle.jwt_authorities.contains_key(&kid) {
                        return Err(BundleError::DuplicateKid { index, kid });
                    }
                    bundle
                        .jwt_authorities
                        .insert(kid.clone(), JwtAuthority { kid, key: jwk });
                }
                // Unknown or missing `use`: ignored, as the specification asks.
                _ => bundle.ignored_keys += 1,
            }
        }
        Ok(bundle)
    }

    /// A bundle holding the X.509 authorities of a PEM document (`CERTIFICATE` blocks).
    pub fn from_pem(trust_domain: TrustDomain, pem_text: &[u8]) -> Result<Self, BundleError> {
        let mut b = Self::new(trust_domain);
        for der in pem_certificates(pem_text)? {
            b.add_x509_authority(X509Authority::from_der(der)?);
        }
        Ok(b)
    }

    /// Parse a bundle file's content: SPIFFE bundle JSON (starts with `{`), else PEM
    /// CA certificates.
    pub fn parse_json_or_pem(trust_domain: TrustDomain, bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            Self::parse(trust_domain, bytes)
        } else {
            Self::from_pem(trust_domain, bytes)
        }
    }

    /// Serialize to the SPIFFE bundle JSON document.
    pub fn to_json(&self) -> Result<String, BundleError> {
        let mut keys = Vec::new();
        for a in &self.x509_authorities {
            let mut raw = RawJwk {
                use_: Some(USE_X509_SVID.to_string()),
                x5c: Some(vec![STANDARD.encode(&a.der)]),
                ..RawJwk::default()
            };
            a.public_jwk()?.write_raw(&mut raw);
            keys.push(raw);
        }
        for a in self.jwt_authorities.values() {
            let mut raw = RawJwk {
                use_: Some(USE_JWT_SVID.to_string()),
                kid: Some(a.kid.clone()),
                ..RawJwk::default()
            };
            a.key.write_raw(&mut raw);
            keys.push(raw);
        }
        let raw = RawBundle {
            keys,
            spiffe_sequence: self.sequence,
            spiffe_refresh_hint: self.refresh_hint,
        };
        serde_json::to_string_pretty(&raw).map_err(|e| BundleError::Json(e.to_string()))
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn x509_authorities(&self) -> &[X509Authority] {
        &self.x509_authorities
    }

    pub fn jwt_authorities(&self) -> impl Iterator<Item = &JwtAuthority> {
        self.jwt_authorities.values()
    }

    pub fn jwt_authority(&self, kid: &str) -> Option<&JwtAuthority> {
        self.jwt_authorities.get(kid)
    }

    pub fn sequence(&self) -> Option<u64> {
        self.sequence
    }

    pub fn refresh_hint(&self) -> Option<i64> {
        self.refresh_hint
    }

    /// How many keys of the parsed document had an unknown `use` and were skipped.
    pub fn ignored_keys(&self) -> usize {
        self.ignored_keys
    }

    pub fn set_sequence(&mut self, seq: u64) {
        self.sequence = Some(seq);
    }

    pub fn set_refresh_hint(&mut self, seconds: i64) {
        self.refresh_hint = Some(seconds);
    }

    /// Add an X.509 authority (no-op if the same certificate is already present).
    pub fn add_x509_authority(&mut self, authority: X509Authority) {
        if !self.x509_authorities.contains(&authority) {
            self.x509_authorities.push(authority);
        }
    }

    /// Add or replace a JWT authority by key ID.
    pub fn add_jwt_authority(&mut self, authority: JwtAuthority) {
        self.jwt_authorities
            .insert(authority.kid.clone(), authority);
    }

    pub fn remove_jwt_authority(&mut self, kid: &str) -> Option<JwtAuthority> {
        self.jwt_authorities.remove(kid)
    }

    pub fn remove_x509_authority(&mut self, der: &[u8]) -> bool {
        let before = self.x509_authorities.len();
        self.x509_authorities.retain(|a| a.der != der);
        before != self.x509_authorities.len()
    }

    /// Concatenated DER of all X.509 authorities (the Workload API bundle encoding).
    pub fn x509_authorities_der(&self) -> Vec<u8> {
        self.x509_authorities
            .iter()
            .flat_map(|a| a.der.iter().copied())
            .collect()
    }

    /// The X.509 authorities as PEM.
    pub fn x509_authorities_pem(&self) -> String {
        self.x509_authorities
            .iter()
            .map(|a| ::pem::encode(&::pem::Pem::new("CERTIFICATE", a.der.clone())))
            .collect()
    }
}

/// Parse every `CERTIFICATE` block of a PEM document into DER.
pub fn pem_certificates(input: &[u8]) -> Result<Vec<Vec<u8>>, BundleError> {
    let blocks = ::pem::parse_many(input).map_err(|e| BundleError::Pem(e.to_string()))?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .collect();
    if certs.is_empty() {
        return Err(BundleError::NoPemCertificates);
    }
    Ok(certs)
}

/// Bundles of several trust domains (ours and federated ones), keyed by trust domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleSet {
    bundles: BTreeMap<TrustDomain, Bundle>,
}

impl BundleSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Insert or replace the bundle of its trust domain.
    pub fn insert(&mut self, bundle: Bundle) {
        self.bundles.insert(bundle.trust_domain.clone(), bundle);
    }

    pub fn get(&self, td: &TrustDomain) -> Option<&Bundle> {
        self.bundles.get(td)
    }

    pub fn remove(&mut self, td: &TrustDomain) -> Option<Bundle> {
        self.bundles.remove(td)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Bundle> {
        self.bundles.values()
    }

    pub fn len(&self) -> usize {
        self.bundles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }
}

impl FromIterator<Bundle> for BundleSet {
    fn from_iter<I: IntoIterator<Item = Bundle>>(iter: I) -> Self {
        let mut set = Self::new();
        for b in iter {
            set.insert(b);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    };

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap_or_else(|e| panic!("{e}"))
    }

    fn ca_der() -> (Vec<u8>, KeyPair) {
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap_or_default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://example.org"
                .try_into()
                .unwrap_or_else(|_| panic!()),
        )];
        let cert = p.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
        (cert.der().to_vec(), key)
    }

    fn sample() -> Bundle {
        let (der, key) = ca_der();
        let mut b = Bundle::new(td());
        b.add_x509_authority(X509Authority::from_der(der).unwrap_or_else(|e| panic!("{e}")));
        let jwk = PublicJwk::from_spki_der(&key.subject_public_key_info())
            .unwrap_or_else(|e| panic!("{e}"));
        b.add_jwt_authority(JwtAuthority::new("k1", jwk).unwrap_or_else(|e| panic!("{e}")));
        b.set_sequence(3);
        b.set_refresh_hint(300);
        b
    }

    fn parse(json: &str) -> Result<Bundle, BundleError> {
        Bundle::parse(td(), json.as_bytes())
    }

    #[test]
    fn build_serialize_parse_round_trip() {
        let b = sample();
        let json = b.to_json().unwrap_or_else(|e| panic!("{e}"));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(v["spiffe_sequence"], 3);
        assert_eq!(v["spiffe_refresh_hint"], 300);
        assert_eq!(v["keys"][0]["use"], "x509-svid");
        assert_eq!(v["keys"][0]["kty"], "EC");
        assert_eq!(v["keys"][0]["crv"], "P-256");
        assert_eq!(v["keys"][0]["x5c"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["keys"][1]["use"], "jwt-svid");
        assert_eq!(v["keys"][1]["kid"], "k1");
        let back = parse(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, b);
        assert_eq!(back.jwt_authority("k1").map(|a| a.key().kty()), Some("EC"));
        assert_eq!(back.x509_authorities_der(), b.x509_authorities()[0].der());
        assert!(
            back.x509_authorities_pem()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        let pem_back = pem_certificates(back.x509_authorities_pem().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pem_back[0], b.x509_authorities()[0].der());
    }

    #[test]
    fn rsa_jwt_authority() {
        let json = r#"{"keys":[{"use":"jwt-svid","kid":"r","kty":"RSA","n":"AQAB","e":"AQAB"}]}"#;
        let b = parse(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.jwt_authority("r").map(|a| a.key().kty()), Some("RSA"));
        assert_eq!(b.sequence(), None);
    }

    #[test]
    fn unknown_use_is_ignored() {
        let json = r#"{"keys":[{"use":"enc","kty":"oct","k":"AA"},{"kty":"EC"}]}"#;
        let b = parse(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.ignored_keys(), 2);
        assert!(b.x509_authorities().is_empty());
    }

    #[test]
    fn invalid_bundles() {
        use BundleError::*;
        let x = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        type Case = (String, fn(&BundleError) -> bool);
        let cases: Vec<Case> = vec![
            ("not json".into(), |e| matches!(e, Json(_))),
            ("{}".into(), |e| matches!(e, Json(_))),
            (r#"{"keys":{}}"#.into(), |e| matches!(e, Json(_))),
            (r#"{"keys":[],"spiffe_sequence":-1}"#.into(), |e| matches!(e, Json(_))),
            (r#"{"keys":[{"use":"x509-svid"}]}"#.into(), |e| matches!(e, X5cCount { index: 0, count: 0 })),
            (r#"{"keys":[{"use":"x509-svid","x5c":["AA==","AA=="]}]}"#.into(), |e| matches!(e, X5cCount { count: 2, .. })),
            (r#"{"keys":[{"use":"x509-svid","x5c":["!!!"]}]}"#.into(), |e| matches!(e, X5cBase64 { .. })),
            (r#"{"keys":[{"use":"x509-svid","x5c":["AAAA"]}]}"#.into(), |e| matches!(e, X5cCertificate { .. })),
            (r#"{"keys":[{"use":"jwt-svid","kty":"EC","crv":"P-256"}]}"#.into(), |e| matches!(e, MissingKid { index: 0 })),
            (r#"{"keys":[{"use":"jwt-svid","kid":"","kty":"EC"}]}"#.into(), |e| matches!(e, MissingKid { .. })),
            (r#"{"keys":[{"use":"jwt-svid","kid":"a","kty":"oct","k":"AA"}]}"#.into(), |e| matches!(e, BadKey { .. })),
            (r#"{"keys":[{"use":"jwt-svid","kid":"a"}]}"#.into(), |e| matches!(e, BadKey { .. })),
            (r#"{"keys":[{"use":"jwt-svid","kid":"a","kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#.into(), |e| matches!(e, BadKey { .. })),
            (r#"{"keys":[{"use":"jwt-svid","kid":"a","kty":"EC","crv":"secp256k1","x":"AA","y":"AA"}]}"#.into(), |e| matches!(e, BadKey { .. })),
            (r#"{"keys":[{"use":"jwt-svid","kid":"a","kty":"EC","crv":"P-256","y":"AA"}]}"#.into(), |e| matches!(e, BadKey { .. })),
            (r#"{"keys":[{"use":"jwt-svid","kid":"a","kty":"RSA","n":"A=A","e":"AQAB"}]}"#.into(), |e| matches!(e, BadKey { .. })),
            (
                format!(r#"{{"keys":[{{"use":"jwt-svid","kid":"a","kty":"EC","crv":"P-256","x":"{x}","y":"{x}"}},{{"use":"jwt-svid","kid":"a","kty":"EC","crv":"P-256","x":"{x}","y":"{x}"}}]}}"#),
                |e| matches!(e, DuplicateKid { index: 1, .. }),
            ),
        ];
        for (json, ok) in cases {
            let e = parse(&json)
                .err()
                .unwrap_or_else(|| panic!("accepted {json}"));
            assert!(ok(&e), "{json} gave {e:?}");
            assert!(e.to_string().len() > 20);
        }
    }

    #[test]
    fn bundle_set_keyed_by_trust_domain() {
        let mut set = BundleSet::new();
        set.insert(sample());
        let other = TrustDomain::new("other.org").unwrap_or_else(|e| panic!("{e}"));
        set.insert(Bundle::new(other.clone()));
        assert_eq!(set.len(), 2);
        assert!(set.get(&td()).is_some_and(|b| b.sequence() == Some(3)));
        let mut replacement = Bundle::new(td());
        replacement.set_sequence(4);
        set.insert(replacement);
        assert_eq!(set.len(), 2);
        assert_eq!(set.get(&td()).and_then(Bundle::sequence), Some(4));
        assert!(set.remove(&other).is_some());
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn authority_management() {
        let mut b = sample();
        let der = b.x509_authorities()[0].der().to_vec();
        b.add_x509_authority(
            X509Authority::from_der(der.clone()).unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(b.x509_authorities().len(), 1, "duplicates are not added");
        assert!(b.remove_x509_authority(&der));
        assert!(b.remove_jwt_authority("k1").is_some());
        assert!(
            JwtAuthority::new(
                "",
                PublicJwk::Rsa {
                    n: "AQAB".into(),
                    e: "AQAB".into()
                }
            )
            .is_err()
        );
        assert!(X509Authority::from_der(b"junk".to_vec()).is_err());
        assert!(matches!(
            pem_certificates(b"nothing"),
            Err(BundleError::NoPemCertificates)
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }
    }
}
