//! The agent's errors. Each says what failed and, where the operator can act, how
//! to fix it; they become log lines, CLI messages or gRPC statuses at the edge.

use std::path::PathBuf;

/// A bad agent configuration: names the setting and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("setting `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("setting `{0}` is required (in the config file or as --{flag})", flag = .0.replace('_', "-"))]
    Missing(&'static str),
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("config file {}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("{0}")]
    Conflict(&'static str),
    /// More than one way to attest is configured (the keys, comma-separated).
    #[error("give one way to attest, not several: {0} are set; keep one of them")]
    SeveralMethods(String),
}

impl ConfigError {
    pub(crate) fn invalid(key: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Invalid {
            key,
            reason: reason.to_string(),
        }
    }
}

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    File(#[from] lanyard_fs::FsError),
    #[error("{} is in use by another agent", .0.display())]
    SocketInUse(PathBuf),
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no trust bundle: give --trust-bundle (from `lanyard bundle show --format pem` on the server), or --insecure-bootstrap to trust the server on first contact"
    )]
    NoTrustBundle,
    /// A listener stopped with an error.
    #[error("{what}: {reason}")]
    Serve { what: &'static str, reason: String },
    /// A task of the agent panicked or was cancelled.
    #[error("an agent task stopped: {0}")]
    Task(String),
}

impl AgentError {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Why a key, CSR or proof of possession could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("cannot generate a key or CSR: {0}")]
    Generate(String),
    #[error("x509pop key: {0}")]
    PopKey(String),
    #[error("cannot sign the x509pop challenge: {0}")]
    Sign(String),
    #[error("the server asked for an unsupported challenge algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("the server sent a challenge, but {0} attestation has none")]
    UnexpectedChallenge(&'static str),
    /// The attestation evidence could not be obtained (a token file, say).
    #[error("{0}")]
    Evidence(String),
}
