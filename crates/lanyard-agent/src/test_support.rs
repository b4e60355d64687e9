//! Helpers for the agent's unit tests: a CA that signs X509-SVIDs the way the server
//! does (from the agent's CSRs, with the Authority Key Identifier the agent reads as
//! the SVID's authority), and entries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lanyard_core::bundle::X509Authority;
use lanyard_core::{Bundle, Selector, SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::state::CachedEntry;

/// The tests' "now" (unix seconds).
pub const NOW: i64 = 1_800_000_000;

pub fn trust_domain() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn set_validity(p: &mut CertificateParams, not_before: i64, not_after: i64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    p.not_before = epoch + Duration::from_secs(u64::try_from(not_before).unwrap());
    p.not_after = epoch + Duration::from_secs(u64::try_from(not_after).unwrap());
}

fn leaf_params(p: &mut CertificateParams, spiffe_id: &str, not_before: i64, not_after: i64) {
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
    p.use_authority_key_identifier_extension = true;
    set_validity(p, not_before, not_after);
}

/// A CA of `example.org`.
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI("spiffe://example.org".try_into().unwrap())];
        set_validity(&mut params, NOW - 86_400, NOW + 365 * 86_400);
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Self { params, key, der }
    }

    /// Its Subject Key Identifier: the authority the agent records for what it signs.
    pub fn key_id(&self) -> String {
        lanyard_core::x509::subject_key_id(&self.der).unwrap()
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// An X509-SVID (leaf DER) for `spiffe_id` over the key of `csr` (DER PKCS#10).
    pub fn sign_csr(
        &self,
        csr: &[u8],
        spiffe_id: &str,
        not_before: i64,
        not_after: i64,
    ) -> Vec<u8> {
        let mut req = CertificateSigningRequestParams::from_der(&csr.into()).unwrap();
        leaf_params(&mut req.params, spiffe_id, not_before, not_after);
        req.signed_by(&self.issuer()).unwrap().der().to_vec()
    }

    /// An X509-SVID with a fresh key: (leaf DER, key PKCS#8).
    pub fn leaf(&self, spiffe_id: &str, not_before: i64, not_after: i64) -> (Vec<u8>, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        leaf_params(&mut params, spiffe_id, not_before, not_after);
        let der = params
            .signed_by(&key, &self.issuer())
            .unwrap()
            .der()
            .to_vec();
        (der, key.serialize_der())
    }

    /// The bundle of `example.org` with this CA as its X.509 authority.
    pub fn bundle(&self) -> Bundle {
        let mut b = Bundle::new(trust_domain());
        b.add_x509_authority(X509Authority::from_der(self.der.clone()).unwrap());
        b
    }
}

/// Entry `id` for `spiffe://example.org/{id}`, matching workloads with all of
/// `selectors`.
pub fn entry(id: &str, selectors: &[&str], revision: i64) -> CachedEntry {
    CachedEntry {
        id: id.into(),
        spiffe_id: SpiffeId::new(&format!("spiffe://example.org/{id}")).unwrap(),
        selectors: selectors
            .iter()
            .map(|s| Selector::new(s).unwrap())
            .collect(),
        hint: String::new(),
        x509_ttl: 0,
        jwt_ttl: 0,
        expires_at: 0,
        revision,
        owner: String::new(),
        environment: String::new(),
    }
}

/// base64url without padding (JWT encoding).
pub fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// An ES256 JWT signing key.
pub struct JwtKey {
    key: aws_lc_rs::signature::EcdsaKeyPair,
    pub kid: String,
}

impl JwtKey {
    pub fn new(kid: &str) -> Self {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
        Self {
            key,
            kid: kid.into(),
        }
    }

    /// Its public key, for a bundle.
    pub fn authority(&self) -> lanyard_core::bundle::JwtAuthority {
        use aws_lc_rs::signature::KeyPair;
        let point = self.key.public_key().as_ref();
        let jwk = lanyard_core::bundle::PublicJwk::Ec {
            crv: "P-256".into(),
            x: b64url(&point[1..=32]),
            y: b64url(&point[33..]),
        };
        lanyard_core::bundle::JwtAuthority::new(&self.kid, jwk).unwrap()
    }

    /// A signed token with these claims.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64url(&serde_json::to_vec(&header).unwrap()),
            b64url(&serde_json::to_vec(claims).unwrap())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = self.key.sign(&rng, input.as_bytes()).unwrap();
        format!("{input}.{}", b64url(sig.as_ref()))
    }
}
