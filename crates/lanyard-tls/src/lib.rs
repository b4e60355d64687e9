//! SPIFFE mTLS shared by the Lanyard server and agent.
//!
//! * [`tls`]: rustls certificate verifiers that validate X509-SVIDs against the
//!   current trust bundle (read on every handshake, since it rotates) and match
//!   SPIFFE IDs; a certificate resolver whose SVID is swapped on renewal; server and
//!   client configurations for gRPC.
//! * [`client`]: gRPC channels to a Lanyard server over SPIFFE mTLS and over the
//!   local admin Unix socket.
//! * [`http`]: a narrow HTTP/1.1 client (timeouts, body cap, no redirects) for
//!   attestation calls to OIDC issuers, the Kubernetes API, GitHub and IMDS.

pub mod client;
pub mod http;
pub mod tls;

pub use client::ConnectError;
pub use tls::TlsError;
