//! `aws_iid`: an EC2 instance proves itself with its signed instance identity
//! document (from IMDS), verified against AWS's public certificate for the region
//! given in config (`[aws_iid]`, docs/attestation.md), for an allowed account.
//! The agent ID is `spiffe://TD/lanyard/agent/aws_iid/<account>/<region>/<instance
//! id>`; an instance attests once (an existing node of that ID is refused) unless
//! `allow_reattestation`. The document never expires, so this is the rule that
//! keeps a copied document from minting a second agent; evicting the node
//! (`lanyard agent evict`) lets the instance attest again.

use std::path::PathBuf;
use std::sync::Arc;

use lanyard_core::{Clock, TrustDomain};
pub use lanyard_nodeattest::aws_iid::NAME;
use lanyard_nodeattest::aws_iid::{AwsCertificate, check_first_attestation, verify};
use lanyard_nodeattest::{AwsIidConfig, IidEvidence, IidRefusal, ReplayKey};
use lanyard_store::{AnyStore, Store};
use serde::Deserialize;

use super::{AttestError, AttestedNode, Challenger, NodeAttestor, NodeEvidence};
use crate::config::ConfigError;

const KEY: &str = "aws_iid";
/// How long two concurrent attestations of one instance are kept apart (the node
/// record then takes over).
const CONCURRENT_WINDOW_SECS: i64 = 30;

/// `[aws_iid]`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAwsIid {
    /// AWS accounts whose instances may attest (12 digits each).
    pub accounts: Vec<String>,
    /// AWS's public certificates (RSA or RSA-2048), per region.
    #[serde(default)]
    pub certificate: Vec<FileAwsCertificate>,
    /// Let an instance attest again while its node exists (default false).
    #[serde(default)]
    pub allow_reattestation: bool,
    /// Accept the `signature` form verified with a 1024-bit key (default false;
    /// agents send the `rsa2048` form).
    #[serde(default)]
    pub allow_rsa1024_signature: bool,
}

/// `[[aws_iid.certificate]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAwsCertificate {
    /// The PEM certificate file, as AWS publishes it for the region.
    pub file: PathBuf,
    /// The region it is for; absent: any region without its own certificate.
    pub region: Option<String>,
}

fn invalid(reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: KEY,
        reason: reason.to_string(),
    }
}

/// Validate `[aws_iid]` (reading the certificate files).
pub fn parse_config(f: &FileAwsIid) -> Result<AwsIidConfig, ConfigError> {
    let mut certs = Vec::new();
    for c in &f.certificate {
        let pem = std::fs::read_to_string(&c.file)
            .map_err(|e| invalid(format!("certificate file {}: {e}", c.file.display())))?;
        certs.push(
            AwsCertificate::from_pem(&pem, c.region.as_deref())
                .map_err(|e| invalid(format!("certificate file {}: {e}", c.file.display())))?,
        );
    }
    let accounts: Vec<&str> = f.accounts.iter().map(String::as_str).collect();
    let mut cfg = AwsIidConfig::new(&accounts, certs).map_err(invalid)?;
    cfg.allow_reattestation = f.allow_reattestation;
    cfg.allow_rsa1024_signature = f.allow_rsa1024_signature;
    Ok(cfg)
}

fn refusal(e: &IidRefusal) -> AttestError {
    AttestError::Evidence {
        code: e.reason(),
        message: format!("aws_iid attestation refused: {e}"),
        malformed: e.is_malformed(),
    }
}

/// Verifies `aws_iid` evidence.
#[derive(Debug)]
pub struct AwsIidAttestor {
    config: AwsIidConfig,
    store: AnyStore,
    clock: Arc<dyn Clock>,
    trust_domain: TrustDomain,
}

impl AwsIidAttestor {
    pub fn new(
        config: AwsIidConfig,
        store: AnyStore,
        clock: Arc<dyn Clock>,
        trust_domain: TrustDomain,
    ) -> Self {
        Self {
            config,
            store,
            clock,
            trust_domain,
        }
    }
}

#[tonic::async_trait]
impl NodeAttestor for AwsIidAttestor {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn attest(
        &self,
        evidence: NodeEvidence,
        _: &mut dyn Challenger,
    ) -> Result<AttestedNode, AttestError> {
        let NodeEvidence::AwsIid { payload } = evidence else {
            return Err(AttestError::Malformed(format!(
                "{} evidence given to the aws_iid attestor",
                evidence.method()
            )));
        };
        let evidence = IidEvidence::parse(&payload).map_err(|e| refusal(&e))?;
        let admitted =
            verify(&evidence, &self.config, &self.trust_domain).map_err(|e| refusal(&e))?;
        if !self.config.allow_reattestation {
            let existing = self
                .store
                .get_node(&admitted.agent_id)
                .await
                .map_err(|e| AttestError::Internal(e.to_string()))?;
            check_first_attestation(&admitted.agent_id, existing.is_some(), false)
                .map_err(|e| refusal(&e))?;
            // Two attestations racing for one instance: only the first passes.
            let now = self.clock.unix_seconds();
            let key = ReplayKey::for_bytes(NAME, admitted.agent_id.to_string().as_bytes());
            let first = self
                .store
                .record_attestation_token(&key.to_hex(), NAME, now + CONCURRENT_WINDOW_SECS, now)
                .await
                .map_err(|e| AttestError::Internal(e.to_string()))?;
            if !first {
                return Err(refusal(&IidRefusal::AlreadyAttested {
                    agent_id: admitted.agent_id.to_string(),
                }));
            }
        }
        Ok(AttestedNode {
            agent_id: admitted.agent_id,
            selectors: admitted.selectors,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::super::testutil::NoChallenges;
    use super::*;
    use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256};
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use lanyard_testkit::FakeClock;
    use std::path::Path;

    const DOC: &str = r#"{
  "accountId" : "123456789012",
  "architecture" : "x86_64",
  "availabilityZone" : "us-east-1a",
  "billingProducts" : null,
  "devpayProductCodes" : null,
  "marketplaceProductCodes" : null,
  "imageId" : "ami-0abcdef1234567890",
  "instanceId" : "i-0123456789abcdef0",
  "instanceType" : "t3.micro",
  "kernelId" : null,
  "pendingTime" : "2026-12-01T10:00:00Z",
  "privateIp" : "10.0.0.12",
  "ramdiskId" : null,
  "region" : "us-east-1",
  "version" : "2017-09-30"
}"#;

    /// An RSA-2048 key and a self-signed certificate for it (AWS's role).
    fn aws_key(dir: &Path) -> (aws_lc_rs::rsa::KeyPair, PathBuf) {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8 =
            aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
        let kp = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let path = dir.join("aws.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        let _ = pair.public_key();
        (pair, path)
    }

    fn sign(pair: &aws_lc_rs::rsa::KeyPair, doc: &str) -> String {
        let mut sig = vec![0u8; pair.public_modulus_len()];
        pair.sign(
            &RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            doc.as_bytes(),
            &mut sig,
        )
        .unwrap();
        STANDARD.encode(sig)
    }

    fn payload(doc: &str, sig: &str) -> Vec<u8> {
        serde_json::to_vec(&IidEvidence {
            document: doc.into(),
            signature: Some(sig.into()),
            rsa2048: None,
        })
        .unwrap()
    }

    async fn attestor(dir: &Path, f: &FileAwsIid) -> AwsIidAttestor {
        let store = AnyStore::open(&dir.join("db.sqlite").to_string_lossy())
            .await
            .unwrap();
        AwsIidAttestor::new(
            parse_config(f).unwrap(),
            store,
            Arc::new(FakeClock::at(1_800_000_000)),
            TrustDomain::new("example.org").unwrap(),
        )
    }

    fn code(r: Result<AttestedNode, AttestError>) -> &'static str {
        match r {
            Err(AttestError::Evidence { code, .. }) => code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_signed_document_attests_an_instance_once() {
        let dir = tempfile::tempdir().unwrap();
        let (pair, cert) = aws_key(dir.path());
        let f = FileAwsIid {
            accounts: vec!["123456789012".into()],
            certificate: vec![FileAwsCertificate {
                file: cert,
                region: Some("us-east-1".into()),
            }],
            ..Default::default()
        };
        let a = attestor(dir.path(), &f).await;
        let good = payload(DOC, &sign(&pair, DOC));
        let node = a
            .attest(
                NodeEvidence::AwsIid {
                    payload: good.clone(),
                },
                &mut NoChallenges,
            )
            .await
            .unwrap();
        assert_eq!(
            node.agent_id.to_string(),
            "spiffe://example.org/lanyard/agent/aws_iid/123456789012/us-east-1/i-0123456789abcdef0"
        );
        let sels: Vec<String> = node.selectors.iter().map(ToString::to_string).collect();
        for want in [
            "aws_iid:account:123456789012",
            "aws_iid:region:us-east-1",
            "aws_iid:instance:id:i-0123456789abcdef0",
            "aws_iid:image:id:ami-0abcdef1234567890",
            "aws_iid:instance:type:t3.micro",
        ] {
            assert!(sels.iter().any(|s| s == want), "{want} not in {sels:?}");
        }
        // The same instance again (concurrently, before its node is stored).
        let again = a
            .attest(NodeEvidence::AwsIid { payload: good }, &mut NoChallenges)
            .await;
        assert_eq!(code(again), "already_attested");
        // A tampered document, another account, garbage.
        let tampered = DOC.replace("t3.micro", "m5.large");
        let other = DOC.replace("123456789012", "210987654321");
        for (p, want) in [
            (payload(&tampered, &sign(&pair, DOC)), "bad_signature"),
            (payload(&other, &sign(&pair, &other)), "account_not_allowed"),
            (b"{not json".to_vec(), "malformed"),
        ] {
            let r = a
                .attest(NodeEvidence::AwsIid { payload: p }, &mut NoChallenges)
                .await;
            assert_eq!(code(r), want);
        }
    }

    #[test]
    fn config_needs_accounts_and_readable_certificates() {
        let e = parse_config(&FileAwsIid::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("aws_iid"), "{e}");
        let e = parse_config(&FileAwsIid {
            accounts: vec!["123456789012".into()],
            certificate: vec![FileAwsCertificate {
                file: "/nonexistent/aws.pem".into(),
                region: None,
            }],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/aws.pem"), "{e}");
    }
}
