//! Node attestation without static secrets: the pure verification core.
//!
//! A node (a Kubernetes node, a CI job, a cloud VM) proves what it is with a signed
//! statement its platform already gives it, so no bootstrap secret is distributed.
//! This crate decides whether such a statement proves a node, and which agent ID and
//! selectors it earns. It does no I/O: fetching JWKS and discovery documents,
//! calling the Kubernetes TokenReview API, reading token files and talking to the
//! instance metadata service live in the server and the agent, which hand the bytes
//! here. Time comes in as a [`lanyard_core::Clock`] (or as `now`, unix seconds).
//!
//! * [`jws`]: compact JWS decoding without verification ([`UnverifiedToken`]), for
//!   routing a token to the attestor of its issuer.
//! * [`jwks`]: JWK Set parsing, one key at a time ([`Jwks`]).
//! * [`discovery`]: OIDC discovery documents, URL rules (https only, loopback http for
//!   tests), and [`JwksRefreshGate`] (one refresh per interval for unknown key IDs).
//! * [`oidc`]: token verification against a JWKS ([`verify_token`], [`TokenPolicy`],
//!   every refusal a [`TokenRefusal`] with a `reason()` code), and the generic `jwt`
//!   attestor ([`JwtAttestor`]).
//! * [`claims`]: claim paths, exact and `*`-glob requirements, claims to selectors.
//! * [`template`]: agent ID templates such as `/lanyard/agent/github/{*repository}/{run_id}`.
//! * [`presets`]: GitHub Actions, GitLab CI, GCP instance identity and Azure managed
//!   identity as configurations of the `jwt` attestor.
//! * [`k8s_psat`]: Kubernetes projected service-account tokens, offline or through a
//!   TokenReview, with SPIRE's selectors.
//! * [`aws_iid`]: the EC2 instance identity document and its `signature` and
//!   `rsa2048` (PKCS #7) signatures.
//! * [`replay`]: [`ReplayCache`], so a token attests once within its lifetime.
//!
//! Every refusal is a typed error whose text says what is wrong and how to fix it
//! (it is what the agent is told) and whose `reason()` is a stable short code for
//! `node_attestation_refused` evidence events.

#![warn(missing_docs)]

pub mod aws_iid;
pub mod claims;
pub mod discovery;
pub mod jwks;
pub mod jws;
pub mod k8s_psat;
pub mod oidc;
pub mod presets;
pub mod replay;
pub mod template;

#[cfg(test)]
mod robustness_tests;
#[cfg(test)]
mod testutil;

pub use aws_iid::{AwsIidConfig, IidAttestation, IidEvidence, IidRefusal};
pub use claims::{ClaimPath, ClaimPattern, ClaimRequirement, ClaimSelector};
pub use discovery::{DiscoveryDocument, JwksRefreshGate, UrlPolicy};
pub use jwks::Jwks;
pub use jws::{Algorithm, UnverifiedToken};
pub use k8s_psat::{PsatAttestation, PsatCluster, PsatRefusal, TokenReview};
pub use oidc::{
    JwtAttestError, JwtAttestation, JwtAttestor, TokenPolicy, TokenRefusal, VerifiedToken,
    verify_token,
};
pub use replay::{ReplayCache, ReplayError, ReplayKey};
pub use template::AgentIdTemplate;
