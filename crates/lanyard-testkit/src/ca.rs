//! A real Lanyard CA for tests.

use std::time::Duration;

use lanyard_ca::{CaConfig, CertificateAuthority, KeyAlgorithm, SigningKey, SubjectKey};
use lanyard_core::{Bundle, BundleSet, TrustDomain};

/// A CA for one trust domain (`example.org` by default) with an active signing
/// key as of `now`; the same code the server signs with.
#[derive(Debug)]
pub struct TestCa {
    ca: CertificateAuthority,
    now: i64,
}

/// An X509-SVID minted by [`TestCa::x509_svid`]: the chain (leaf first, DER) and
/// the private key (PKCS#8 DER).
#[derive(Debug, Clone)]
pub struct TestSvid {
    pub chain: Vec<Vec<u8>>,
    pub key_pkcs8: Vec<u8>,
    pub not_after: i64,
    pub serial: String,
}

impl TestCa {
    /// A CA for [`crate::TD`] whose key is active at `now`.
    pub fn new(now: i64) -> Self {
        Self::for_trust_domain(crate::TD, now)
    }

    /// A CA for trust domain `td` whose key is active at `now`.
    pub fn for_trust_domain(td: &str, now: i64) -> Self {
        let td = TrustDomain::new(td).unwrap_or_else(|e| panic!("test trust domain {td:?}: {e}"));
        let mut ca = CertificateAuthority::new(CaConfig::new(td), None, Vec::new())
            .expect("a CA with the default configuration");
        ca.tick(now)
            .expect("the first CA step prepares and activates a key");
        Self { ca, now }
    }

    /// The CA itself.
    pub fn authority(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The trust bundle (X.509 and JWT authorities).
    pub fn bundle(&self) -> Bundle {
        self.ca.bundle().expect("the bundle of an active CA")
    }

    /// The bundle as a set, as TLS verifiers take it.
    pub fn bundle_set(&self) -> BundleSet {
        [self.bundle()].into_iter().collect()
    }

    /// An X509-SVID for `spiffe://TD{path}` with a fresh P-256 key, valid for `ttl`
    /// from the CA's `now`.
    pub fn x509_svid(&self, path: &str, ttl: Duration) -> TestSvid {
        let id = self.id(path);
        let key = SigningKey::generate(KeyAlgorithm::EcP256).expect("a P-256 key");
        let minted = self
            .ca
            .mint_x509_svid(
                &id,
                SubjectKey::PublicKey(&key.public_key_der()),
                Some(ttl),
                &[],
                self.now,
            )
            .unwrap_or_else(|e| panic!("mint an X509-SVID for {id}: {e}"));
        TestSvid {
            chain: minted.chain,
            key_pkcs8: key.pkcs8_der().to_vec(),
            not_after: minted.not_after,
            serial: minted.serial,
        }
    }

    /// A JWT-SVID (compact JWS) for `spiffe://TD{path}` with `audience`.
    pub fn jwt_svid(&self, path: &str, audience: &[&str]) -> String {
        let id = self.id(path);
        let aud: Vec<String> = audience.iter().map(|a| (*a).to_string()).collect();
        self.ca
            .mint_jwt_svid(&id, &aud, None, self.now)
            .unwrap_or_else(|e| panic!("mint a JWT-SVID for {id}: {e}"))
            .token
    }

    fn id(&self, path: &str) -> lanyard_core::SpiffeId {
        lanyard_core::SpiffeId::from_parts(&self.ca.config().trust_domain, path)
            .unwrap_or_else(|e| panic!("test SPIFFE ID path {path:?}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::X509Svid;

    #[test]
    fn the_test_ca_mints_svids_its_bundle_verifies() {
        let ca = TestCa::new(1_000_000);
        let svid = ca.x509_svid("/web", Duration::from_secs(600));
        let parsed = X509Svid::parse(svid.chain.clone()).unwrap();
        assert_eq!(parsed.spiffe_id().to_string(), "spiffe://example.org/web");
        assert_eq!(svid.not_after, 1_000_600);
        assert!(!ca.bundle().x509_authorities().is_empty());
        let jwt = ca.jwt_svid("/web", &["aud"]);
        assert_eq!(jwt.split('.').count(), 3);
    }
}
