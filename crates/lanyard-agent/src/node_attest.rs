//! Node attestation, the agent's side: a [`NodeEvidenceSource`] produces the
//! evidence the server's attestor for the same method verifies (the first
//! attestation message, with the agent's CSR) and answers the server's challenges.
//! Evidence is produced afresh for every attestation, so a source can re-read a
//! rotating credential (a projected token file, a CI job's OIDC token).
//!
//! Methods: `join_token` ([`JoinTokenSource`]) and `x509pop` ([`X509PopSource`]).

use lanyard_proto::node as pb;

use crate::config::Bootstrap;
use crate::error::KeyError;

/// Where a node's attestation evidence comes from.
#[tonic::async_trait]
pub trait NodeEvidenceSource: Send + Sync + std::fmt::Debug {
    /// The method's name (the server's attestor of the same name verifies it).
    fn name(&self) -> &'static str;
    /// The first attestation message, carrying the agent's `csr`.
    async fn first_step(&self, csr: Vec<u8>) -> Result<pb::attest_request::Step, KeyError>;
    /// Sign a challenge `nonce` with `algorithm` (methods without challenges refuse).
    fn answer(&self, nonce: &[u8], algorithm: &str) -> Result<Vec<u8>, KeyError>;
}

/// The evidence source the configuration names (`None`: no way to attest).
pub fn evidence_source(b: &Bootstrap) -> Option<Box<dyn NodeEvidenceSource>> {
    match b {
        Bootstrap::JoinToken(t) => Some(Box::new(JoinTokenSource(t.clone()))),
        Bootstrap::X509Pop {
            cert_chain,
            key_pem,
        } => Some(Box::new(X509PopSource {
            cert_chain: cert_chain.clone(),
            key_pem: key_pem.clone(),
        })),
        Bootstrap::JwtTokenFile(path) => Some(Box::new(JwtFileSource(path.clone()))),
        Bootstrap::None => None,
    }
}

/// A signed OIDC token in a file (a CI job's token written by a step, a projected
/// token), read afresh for every attestation since such tokens are short-lived and
/// each attests once.
#[derive(Debug)]
pub struct JwtFileSource(pub std::path::PathBuf);

#[tonic::async_trait]
impl NodeEvidenceSource for JwtFileSource {
    fn name(&self) -> &'static str {
        "jwt"
    }
    async fn first_step(&self, csr: Vec<u8>) -> Result<pb::attest_request::Step, KeyError> {
        let text = tokio::fs::read_to_string(&self.0).await.map_err(|e| {
            KeyError::Evidence(format!(
                "cannot read the jwt token file {}: {e}",
                self.0.display()
            ))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(KeyError::Evidence(format!(
                "the jwt token file {} is empty; write the job's OIDC token to it",
                self.0.display()
            )));
        }
        Ok(pb::attest_request::Step::Token(pb::TokenAttestation {
            method: "jwt".to_string(),
            cluster: String::new(),
            token: token.to_string(),
            csr,
        }))
    }
    fn answer(&self, _: &[u8], _: &str) -> Result<Vec<u8>, KeyError> {
        Err(KeyError::UnexpectedChallenge(self.name()))
    }
}

/// A single-use join token given to this agent.
pub struct JoinTokenSource(pub String);

impl std::fmt::Debug for JoinTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.write_str("JoinTokenSource(..)")
    }
}

#[tonic::async_trait]
impl NodeEvidenceSource for JoinTokenSource {
    fn name(&self) -> &'static str {
        "join_token"
    }
    async fn first_step(&self, csr: Vec<u8>) -> Result<pb::attest_request::Step, KeyError> {
        Ok(pb::attest_request::Step::JoinToken(
            pb::JoinTokenAttestation {
                token: self.0.clone(),
                csr,
            },
        ))
    }
    fn answer(&self, _: &[u8], _: &str) -> Result<Vec<u8>, KeyError> {
        Err(KeyError::UnexpectedChallenge(self.name()))
    }
}

/// A node certificate and its private key (PEM).
pub struct X509PopSource {
    pub cert_chain: Vec<Vec<u8>>,
    pub key_pem: String,
}

impl std::fmt::Debug for X509PopSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "X509PopSource({} certificates, key ..)",
            self.cert_chain.len()
        )
    }
}

#[tonic::async_trait]
impl NodeEvidenceSource for X509PopSource {
    fn name(&self) -> &'static str {
        "x509pop"
    }
    async fn first_step(&self, csr: Vec<u8>) -> Result<pb::attest_request::Step, KeyError> {
        Ok(pb::attest_request::Step::X509pop(pb::X509PopAttestation {
            cert_chain: self.cert_chain.clone(),
            csr,
        }))
    }
    fn answer(&self, nonce: &[u8], algorithm: &str) -> Result<Vec<u8>, KeyError> {
        sign_pop(&self.key_pem, nonce, algorithm)
    }
}

fn sign_pop(key_pem: &str, nonce: &[u8], algorithm: &str) -> Result<Vec<u8>, KeyError> {
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
        RSA_PKCS1_SHA256, RsaKeyPair,
    };
    let der = pem::parse(key_pem)
        .map_err(|e| KeyError::PopKey(e.to_string()))?
        .into_contents();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    match algorithm {
        "ecdsa-p256-sha256" | "ecdsa-p384-sha384" => {
            let alg = if algorithm == "ecdsa-p256-sha256" {
                &ECDSA_P256_SHA256_ASN1_SIGNING
            } else {
                &ECDSA_P384_SHA384_ASN1_SIGNING
            };
            let kp =
                EcdsaKeyPair::from_pkcs8(alg, &der).map_err(|e| KeyError::PopKey(e.to_string()))?;
            Ok(kp
                .sign(&rng, nonce)
                .map_err(|e| KeyError::Sign(e.to_string()))?
                .as_ref()
                .to_vec())
        }
        "rsa-pkcs1-sha256" => {
            let kp = RsaKeyPair::from_pkcs8(&der).map_err(|e| KeyError::PopKey(e.to_string()))?;
            let mut sig = vec![0; kp.public_modulus_len()];
            kp.sign(&RSA_PKCS1_SHA256, &rng, nonce, &mut sig)
                .map_err(|e| KeyError::Sign(e.to_string()))?;
            Ok(sig)
        }
        other => Err(KeyError::UnsupportedAlgorithm(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};

    #[tokio::test]
    async fn sources_follow_the_configuration() {
        assert!(evidence_source(&Bootstrap::None).is_none());
        let s = evidence_source(&Bootstrap::JoinToken("secret".into())).unwrap();
        assert_eq!(s.name(), "join_token");
        assert!(!format!("{s:?}").contains("secret"));
        match s.first_step(vec![1]).await.unwrap() {
            pb::attest_request::Step::JoinToken(j) => {
                assert_eq!((j.token.as_str(), j.csr.as_slice()), ("secret", &[1u8][..]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.answer(b"n", "ecdsa-p256-sha256"),
            Err(KeyError::UnexpectedChallenge("join_token"))
        );
    }

    #[tokio::test]
    async fn a_jwt_token_file_is_read_at_every_attestation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let src = evidence_source(&Bootstrap::JwtTokenFile(path.clone())).unwrap();
        assert_eq!(src.name(), "jwt");
        let e = src.first_step(vec![]).await.unwrap_err().to_string();
        assert!(e.contains("cannot read the jwt token file"), "{e}");
        std::fs::write(&path, "  \n").unwrap();
        let e = src.first_step(vec![]).await.unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        for token in ["a.b.c", "d.e.f"] {
            std::fs::write(&path, format!("{token}\n")).unwrap();
            match src.first_step(vec![7]).await.unwrap() {
                pb::attest_request::Step::Token(t) => {
                    assert_eq!((t.method.as_str(), t.token.as_str()), ("jwt", token));
                    assert_eq!(t.csr, [7]);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn x509pop_answers_challenges_with_its_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let src = X509PopSource {
            cert_chain: vec![],
            key_pem: key.serialize_pem(),
        };
        let sig = src.answer(b"nonce", "ecdsa-p256-sha256").unwrap();
        let spki = key.public_key_raw();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, spki)
            .verify(b"nonce", &sig)
            .unwrap();
        assert_eq!(
            src.answer(b"nonce", "md5"),
            Err(KeyError::UnsupportedAlgorithm("md5".into()))
        );
        let bad = X509PopSource {
            cert_chain: vec![],
            key_pem: "junk".into(),
        };
        assert!(matches!(
            bad.answer(b"n", "ecdsa-p256-sha256"),
            Err(KeyError::PopKey(_))
        ));
    }
}
