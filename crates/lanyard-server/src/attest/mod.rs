//! Node attestation, the server's side: one [`NodeAttestor`] per method turns the
//! evidence a node presents into the agent ID it is admitted as and the selectors
//! entries can name (`join_token:…`, `x509pop:…`). The agent API converts the
//! protobuf request into [`NodeEvidence`] at the edge, picks the attestor by name
//! ([`NodeAttestors`]), and admits the node with what it returns; a method the
//! server is not configured for is refused with how to enable it.
//!
//! Methods: [`join_token`] (single-use token, consumed durably), [`x509pop`] (a
//! certificate from a configured CA plus a signed challenge), and, without any
//! distributed secret, [`jwt`] (CI jobs' and clouds' OIDC tokens), [`k8s_psat`]
//! (Kubernetes projected service-account tokens) and [`aws_iid`] (EC2 instance
//! identity documents). [`keys`] fetches and caches token issuers' keys.

pub mod aws_iid;
pub mod join_token;
pub mod jwt;
pub mod k8s_psat;
pub mod keys;
#[cfg(test)]
mod testutil;
pub mod x509pop;

use std::collections::BTreeMap;
use std::sync::Arc;

use lanyard_core::{Selector, SpiffeId};
use tonic::Status;

/// What a node presented, protobuf already converted. `Debug` never shows a token.
#[derive(Clone, PartialEq, Eq)]
pub enum NodeEvidence {
    JoinToken {
        token: String,
    },
    X509Pop {
        cert_chain: Vec<Vec<u8>>,
    },
    /// A signed token (`jwt`; `k8s_psat` with its `cluster`).
    Token {
        method: &'static str,
        cluster: String,
        token: String,
    },
    /// An EC2 instance identity document with its signatures (JSON).
    AwsIid {
        payload: Vec<u8>,
    },
}

impl std::fmt::Debug for NodeEvidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::JoinToken { .. } => f.write_str("JoinToken { token: .. }"),
            Self::X509Pop { cert_chain } => f
                .debug_struct("X509Pop")
                .field("certificates", &cert_chain.len())
                .finish(),
            Self::Token {
                method, cluster, ..
            } => f
                .debug_struct("Token")
                .field("method", method)
                .field("cluster", cluster)
                .finish_non_exhaustive(),
            Self::AwsIid { payload } => f
                .debug_struct("AwsIid")
                .field("payload_bytes", &payload.len())
                .finish(),
        }
    }
}

impl NodeEvidence {
    /// The method's name (also the prefix of its selectors).
    pub fn method(&self) -> &'static str {
        match self {
            Self::JoinToken { .. } => join_token::NAME,
            Self::X509Pop { .. } => x509pop::NAME,
            Self::Token { method, .. } => method,
            Self::AwsIid { .. } => aws_iid::NAME,
        }
    }
}

/// A node that proved itself: the agent ID it is admitted as, and its selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedNode {
    pub agent_id: SpiffeId,
    pub selectors: Vec<Selector>,
}

/// Why a node was not attested. The text is what the agent is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    /// The evidence is malformed (gRPC `InvalidArgument`).
    #[error("{0}")]
    Malformed(String),
    /// The evidence does not prove what it claims (gRPC `PermissionDenied`).
    #[error("{0}")]
    Refused(String),
    /// This server is not configured for the method (gRPC `FailedPrecondition`).
    #[error("{0}")]
    NotEnabled(String),
    /// The node did not answer a challenge in time (gRPC `DeadlineExceeded`).
    #[error("{0}")]
    Timeout(String),
    /// The node went away mid-attestation (gRPC `Cancelled`).
    #[error("the agent went away")]
    Gone,
    /// A verifier refused the token or document: `code` is the stable reason
    /// recorded in the evidence log; `malformed` when it could not be parsed
    /// (gRPC `InvalidArgument`, else `PermissionDenied`).
    #[error("{message}")]
    Evidence {
        code: &'static str,
        message: String,
        malformed: bool,
    },
    /// The server failed (datastore, randomness): gRPC `Internal`.
    #[error("{0}")]
    Internal(String),
}

impl From<AttestError> for Status {
    fn from(e: AttestError) -> Self {
        let m = e.to_string();
        match e {
            AttestError::Malformed(_) => Status::invalid_argument(m),
            AttestError::Refused(_) => Status::permission_denied(m),
            AttestError::NotEnabled(_) => Status::failed_precondition(m),
            AttestError::Timeout(_) => Status::deadline_exceeded(m),
            AttestError::Gone => Status::cancelled(m),
            AttestError::Evidence { malformed, .. } => {
                if malformed {
                    Status::invalid_argument(m)
                } else {
                    Status::permission_denied(m)
                }
            }
            AttestError::Internal(_) => Status::internal(m),
        }
    }
}

/// Record that the token with `replay_key` attested (durably, in the datastore
/// every server shares, until `expires_at`); a token seen before is refused as
/// `replayed`, with `fresh` saying how the agent gets a new one.
pub(crate) async fn spend_token(
    store: &lanyard_store::AnyStore,
    method: &'static str,
    replay_key: &lanyard_nodeattest::ReplayKey,
    expires_at: i64,
    now: i64,
    fresh: &str,
) -> Result<(), AttestError> {
    use lanyard_store::Store;
    let first = store
        .record_attestation_token(&replay_key.to_hex(), method, expires_at, now)
        .await
        .map_err(|e| AttestError::Internal(e.to_string()))?;
    if first {
        Ok(())
    } else {
        Err(AttestError::Evidence {
            code: "replayed",
            message: format!(
                "{method} attestation refused: this token already attested a node (a token attests once within its lifetime); {fresh}"
            ),
            malformed: false,
        })
    }
}

/// The conversation with the node during attestation: a challenge goes out, the
/// node's answer comes back (bounded in time by the implementation).
#[tonic::async_trait]
pub trait Challenger: Send {
    /// Send `nonce` to be signed with `algorithm`; the node's signature.
    async fn challenge(
        &mut self,
        nonce: Vec<u8>,
        algorithm: String,
    ) -> Result<Vec<u8>, AttestError>;
}

/// One node attestation method.
#[tonic::async_trait]
pub trait NodeAttestor: Send + Sync + std::fmt::Debug {
    /// The method's name, as in [`NodeEvidence::method`].
    fn name(&self) -> &'static str;
    /// Verify `evidence` (of this method) and say who the node is. Called after the
    /// node's CSR was checked, so a single-use credential is not spent on a request
    /// that cannot succeed.
    async fn attest(
        &self,
        evidence: NodeEvidence,
        challenger: &mut dyn Challenger,
    ) -> Result<AttestedNode, AttestError>;
}

/// The attestors a server offers, by method name.
#[derive(Debug, Clone, Default)]
pub struct NodeAttestors {
    by_name: BTreeMap<&'static str, Arc<dyn NodeAttestor>>,
    /// Why a known method is off, for the refusal (e.g. how to enable x509pop).
    disabled: BTreeMap<&'static str, String>,
}

impl NodeAttestors {
    pub fn add(&mut self, a: Arc<dyn NodeAttestor>) {
        self.by_name.insert(a.name(), a);
    }

    /// Record that `method` is known but not configured, and how to enable it.
    pub fn disable(&mut self, method: &'static str, how_to_enable: impl Into<String>) {
        self.disabled.insert(method, how_to_enable.into());
    }

    /// The attestor for `method`, or why there is none.
    pub fn get(&self, method: &str) -> Result<&Arc<dyn NodeAttestor>, AttestError> {
        self.by_name.get(method).ok_or_else(|| {
            AttestError::NotEnabled(
                self.disabled.get(method).cloned().unwrap_or_else(|| {
                    format!("{method} attestation is not enabled on this server")
                }),
            )
        })
    }

    /// Names of the enabled methods.
    pub fn names(&self) -> Vec<&'static str> {
        self.by_name.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed;

    #[tonic::async_trait]
    impl NodeAttestor for Fixed {
        fn name(&self) -> &'static str {
            "join_token"
        }
        async fn attest(
            &self,
            _: NodeEvidence,
            _: &mut dyn Challenger,
        ) -> Result<AttestedNode, AttestError> {
            Err(AttestError::Refused("no".into()))
        }
    }

    #[test]
    fn unknown_and_disabled_methods_say_how_to_enable_them() {
        let mut a = NodeAttestors::default();
        a.add(Arc::new(Fixed));
        a.disable("x509pop", "set x509pop.ca_bundle");
        assert!(a.get("join_token").is_ok());
        assert_eq!(
            a.get("x509pop").unwrap_err(),
            AttestError::NotEnabled("set x509pop.ca_bundle".into())
        );
        assert!(
            a.get("k8s_psat")
                .unwrap_err()
                .to_string()
                .contains("k8s_psat attestation is not enabled")
        );
        assert_eq!(a.names(), ["join_token"]);
    }

    #[test]
    fn evidence_debug_never_shows_a_token() {
        let t = NodeEvidence::JoinToken {
            token: "s3cret-join".into(),
        };
        let j = NodeEvidence::Token {
            method: "jwt",
            cluster: String::new(),
            token: "eyJhbGciOi.s3cret.sig".into(),
        };
        for e in [t, j] {
            let shown = format!("{e:?}");
            assert!(!shown.contains("s3cret"), "{shown}");
        }
    }

    #[test]
    fn errors_map_to_grpc_codes() {
        let cases = [
            (
                AttestError::Malformed("m".into()),
                tonic::Code::InvalidArgument,
            ),
            (
                AttestError::Refused("r".into()),
                tonic::Code::PermissionDenied,
            ),
            (
                AttestError::NotEnabled("n".into()),
                tonic::Code::FailedPrecondition,
            ),
            (
                AttestError::Timeout("t".into()),
                tonic::Code::DeadlineExceeded,
            ),
            (AttestError::Gone, tonic::Code::Cancelled),
            (AttestError::Internal("i".into()), tonic::Code::Internal),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
    }
}
