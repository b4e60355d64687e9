//! Lanyard's certificate authority: signing keys, CA slots with explicit rotation
//! states (prepared → active → retired), and X509-SVID / JWT-SVID minting.
//!
//! No I/O: the server persists [`authority::SlotRecord`]s and calls
//! [`CertificateAuthority::tick`] with the current time.

pub mod authority;
pub mod keys;

pub use authority::{
    CaConfig, CaEvent, CaSlot, CertificateAuthority, MintedJwt, MintedX509, SlotRecord, SlotState,
    SubjectKey, UpstreamCa, sign_compact, verify_csr,
};
pub use keys::{KeyAlgorithm, SigningKey};

/// Everything that can go wrong in the CA, each with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    #[error("unknown key algorithm {0:?}; use ec-p256 (default), ec-p384 or rsa-2048")]
    UnknownKeyAlgorithm(String),
    #[error("could not generate a key: {0}")]
    KeyGeneration(String),
    #[error("the private key cannot be used: {0}")]
    BadKey(String),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("the CA has no active signing key; the server must rotate its CA before issuing")]
    NoActiveSlot,
    #[error("the upstream CA cannot be used: {0}")]
    Upstream(String),
    #[error("a stored CA slot is corrupt: {0}")]
    BadRecord(String),
    #[error("invalid CA configuration: {0}")]
    Config(String),
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(String),
    #[error("invalid TTL: {0}")]
    BadTtl(String),
    #[error("{0:?} is not a valid DNS name for a certificate")]
    BadDnsName(String),
    #[error("a JWT-SVID needs at least one non-empty audience")]
    EmptyAudience,
    #[error(
        "{id} is not in trust domain {trust_domain}; this CA only signs for its own trust domain"
    )]
    ForeignId { id: String, trust_domain: String },
    #[error("{0} is a trust domain ID; SVIDs need a path, e.g. {0}/workload")]
    RootId(String),
    #[error("no CA slot {0:?}; `lanyard ca list` shows the slots")]
    UnknownSlot(String),
    #[error("CA slot {0:?} is already tainted")]
    AlreadyTainted(String),
}

#[cfg(test)]
mod tests;
