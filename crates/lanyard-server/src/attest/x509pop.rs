//! `x509pop`: the node holds a certificate issued by a CA the server is configured
//! to trust (`x509pop.ca_bundle`) and proves possession of its key by signing a
//! fresh nonce. The agent ID is derived from the leaf's SHA-256 fingerprint.

use std::sync::Arc;

use lanyard_core::{BundleSet, Clock, PublicJwk, Selector, SpiffeId, TrustDomain};

use super::{AttestError, AttestedNode, Challenger, NodeAttestor, NodeEvidence};
use crate::node::sha256_hex;

pub const NAME: &str = "x509pop";

/// How to turn x509pop on, for the refusal when it is off.
pub const HOW_TO_ENABLE: &str =
    "x509pop attestation is not enabled on this server; set x509pop.ca_bundle in the server config";

/// The placeholder trust domain under which x509pop CA certificates are kept.
pub fn x509pop_trust_domain() -> Result<TrustDomain, lanyard_core::IdError> {
    TrustDomain::new(NAME)
}

/// Why an x509pop proof of possession was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PopError {
    #[error("bad public key: {0}")]
    Key(String),
    #[error("unsupported key {0}")]
    Unsupported(String),
    #[error("the challenge signature does not verify")]
    Signature,
}

/// Check the node's signature of `nonce` with the certificate's public key.
pub fn verify_pop_signature(spki_der: &[u8], nonce: &[u8], sig: &[u8]) -> Result<(), PopError> {
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1, RSA_PKCS1_2048_8192_SHA256,
        UnparsedPublicKey, VerificationAlgorithm,
    };
    use x509_parser::prelude::FromDer;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| PopError::Key(e.to_string()))?;
    let alg: &'static dyn VerificationAlgorithm =
        match PublicJwk::from_spki_der(spki_der).map_err(|e| PopError::Key(e.to_string()))? {
            PublicJwk::Ec { crv, .. } if crv == "P-256" => &ECDSA_P256_SHA256_ASN1,
            PublicJwk::Ec { crv, .. } if crv == "P-384" => &ECDSA_P384_SHA384_ASN1,
            PublicJwk::Rsa { .. } => &RSA_PKCS1_2048_8192_SHA256,
            other => return Err(PopError::Unsupported(other.describe())),
        };
    UnparsedPublicKey::new(alg, spki.subject_public_key.data.as_ref())
        .verify(nonce, sig)
        .map_err(|_| PopError::Signature)
}

/// The signature algorithm the node must answer the challenge with.
pub fn challenge_algorithm(spki_der: &[u8]) -> String {
    match PublicJwk::from_spki_der(spki_der) {
        Ok(PublicJwk::Ec { crv, .. }) if crv == "P-384" => "ecdsa-p384-sha384".to_string(),
        Ok(PublicJwk::Ec { .. }) => "ecdsa-p256-sha256".to_string(),
        Ok(PublicJwk::Rsa { .. }) => "rsa-pkcs1-sha256".to_string(),
        Err(_) => "unsupported".to_string(),
    }
}

/// The agent ID and selectors of a verified node certificate.
pub fn node_of(
    td: &TrustDomain,
    leaf_der: &[u8],
    common_name: Option<&str>,
) -> Result<AttestedNode, AttestError> {
    let fingerprint = sha256_hex(leaf_der);
    let agent_id = SpiffeId::from_parts(td, &format!("/lanyard/agent/x509pop/{fingerprint}"))
        .map_err(|e| AttestError::Internal(e.to_string()))?;
    let mut selectors = Vec::new();
    if let Some(cn) = common_name
        && let Ok(s) = Selector::from_parts(NAME, &format!("subject:cn:{cn}"))
    {
        selectors.push(s);
    }
    if let Ok(s) = Selector::from_parts(NAME, &format!("fingerprint:{fingerprint}")) {
        selectors.push(s);
    }
    Ok(AttestedNode {
        agent_id,
        selectors,
    })
}

/// x509pop attestation against the configured CA bundle.
#[derive(Debug)]
pub struct X509PopAttestor {
    roots: BundleSet,
    clock: Arc<dyn Clock>,
    trust_domain: TrustDomain,
}

impl X509PopAttestor {
    pub fn new(roots: BundleSet, clock: Arc<dyn Clock>, trust_domain: TrustDomain) -> Self {
        Self {
            roots,
            clock,
            trust_domain,
        }
    }
}

fn refused(e: impl std::fmt::Display) -> AttestError {
    tracing::warn!(reason = %e, "x509pop attestation refused");
    AttestError::Refused(e.to_string())
}

#[tonic::async_trait]
impl NodeAttestor for X509PopAttestor {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn attest(
        &self,
        evidence: NodeEvidence,
        challenger: &mut dyn Challenger,
    ) -> Result<AttestedNode, AttestError> {
        let NodeEvidence::X509Pop { cert_chain } = evidence else {
            return Err(AttestError::Malformed(format!(
                "{} evidence given to the x509pop attestor",
                evidence.method()
            )));
        };
        let Some(leaf) = cert_chain.first() else {
            return Err(AttestError::Malformed(
                "x509pop: no certificate given".to_string(),
            ));
        };
        let td = x509pop_trust_domain().map_err(|e| AttestError::Internal(e.to_string()))?;
        lanyard_core::x509::verify_path(&cert_chain, &td, &self.roots, self.clock.as_ref())
            .map_err(|e| refused(format!("x509pop: the node certificate is not trusted: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| AttestError::Malformed(format!("x509pop: bad certificate: {e}")))?;
        let spki = cert.public_key().raw.to_vec();
        let mut nonce = vec![0u8; 32];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| AttestError::Internal("the system random source failed".to_string()))?;
        let signature = challenger
            .challenge(nonce.clone(), challenge_algorithm(&spki))
            .await?;
        verify_pop_signature(&spki, &nonce, &signature).map_err(|e| {
            refused(format!(
                "x509pop: {e}; the agent does not hold the certificate's key"
            ))
        })?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok());
        node_of(&self.trust_domain, leaf, cn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    fn p256() -> (EcdsaKeyPair, Vec<u8>) {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pk8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pk8.as_ref()).unwrap();
        let rc = rcgen::KeyPair::try_from(pk8.as_ref()).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&rc);
        (kp, spki)
    }

    #[test]
    fn a_signed_nonce_proves_possession_and_anything_else_does_not() {
        let (kp, spki) = p256();
        let _ = kp.public_key();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = kp.sign(&rng, b"nonce").unwrap();
        assert_eq!(challenge_algorithm(&spki), "ecdsa-p256-sha256");
        assert!(verify_pop_signature(&spki, b"nonce", sig.as_ref()).is_ok());
        assert_eq!(
            verify_pop_signature(&spki, b"other", sig.as_ref()),
            Err(PopError::Signature)
        );
        let (_, other) = p256();
        assert_eq!(
            verify_pop_signature(&other, b"nonce", sig.as_ref()),
            Err(PopError::Signature)
        );
        assert!(matches!(
            verify_pop_signature(b"junk", b"nonce", sig.as_ref()),
            Err(PopError::Key(_))
        ));
    }

    #[test]
    fn the_agent_id_is_the_fingerprint() {
        let td = TrustDomain::new("example.org").unwrap();
        let n = node_of(&td, b"leaf", Some("node-1")).unwrap();
        let fp = sha256_hex(b"leaf");
        assert_eq!(
            n.agent_id.to_string(),
            format!("spiffe://example.org/lanyard/agent/x509pop/{fp}")
        );
        let s: Vec<String> = n.selectors.iter().map(ToString::to_string).collect();
        assert_eq!(
            s,
            [
                "x509pop:subject:cn:node-1".to_string(),
                format!("x509pop:fingerprint:{fp}")
            ]
        );
    }
}
