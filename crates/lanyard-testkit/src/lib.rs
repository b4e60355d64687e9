//! Lanyard's test kit: what unit and end-to-end tests of every crate share.
//!
//! - [`FakeClock`]: time that moves only when a test says so (re-exported from
//!   `lanyard_core`, where production code takes a `Clock`).
//! - [`TestCa`]: a real Lanyard CA for a trust domain, minting X509- and JWT-SVIDs.
//! - [`entry`] and [`node`]: builders of registration entries and attested nodes as
//!   the datastore holds them.
//! - [`TestServer`]: the real `lanyard server` binary on a temp dir and loopback
//!   ports, killed on drop.
//! - [`TestIssuer`] ([`oidc`]): an OIDC issuer over HTTPS on loopback (test CA,
//!   discovery, JWKS with ES256/RS256 keys and rotation, request counters), minting
//!   tokens with the claim sets GitHub Actions, GitLab CI and Kubernetes document
//!   ([`GithubJob`], [`GitlabJob`], [`K8sPod`]) and forgeries ([`Mint`]); it also
//!   plays GitHub's token-request endpoint and kube-apiserver's TokenReview API.
//! - [`TestImds`] ([`imds`]): the EC2 instance metadata service (IMDSv2 session
//!   tokens) serving an [`InstanceDocument`] with its `signature` and `rsa2048`
//!   (PKCS #7) signatures and the certificate that verifies them.
//! - [`TestKubelet`] ([`kubelet`]): the kubelet's `/pods` on its secure port (HTTPS,
//!   bearer token) or read-only port, replaying a PodList the test sets.
//!
//! The loopback services run on their own thread with their own tokio runtime, so
//! sync tests and `#[tokio::test]`s can both use them; each stops on drop.
//!
//! Dev-only: no crate lists it under `[dependencies]`. It depends on no service
//! crate (server, agent), so any crate can use it without a dependency cycle and
//! the agent's dependency tree stays free of the server.
//!
//! A test kit fails loudly: a setup step that cannot be done panics with what
//! went wrong, which fails the test that asked for it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod builders;
mod ca;
pub mod imds;
pub mod kubelet;
mod loopback;
pub mod oidc;
mod server;
#[cfg(test)]
mod testclient;

pub use builders::{EntryBuilder, NodeBuilder, entry, node, spiffe_id};
pub use ca::TestCa;
pub use imds::{ImdsOptions, InstanceDocument, TestImds};
pub use kubelet::TestKubelet;
pub use lanyard_core::FakeClock;
pub use oidc::{
    GithubJob, GitlabJob, IssuerOptions, K8sPod, KeyAlg, Mint, ReviewFailure, Signer, TestIssuer,
};
pub use server::{TestServer, lanyard_binary, succeeded};

/// The trust domain tests use unless they say otherwise.
pub const TD: &str = "example.org";
