//! Agent configuration: `--config agent.toml` and/or flags (flags win). Unknown keys
//! and bad values are errors naming the key.

use std::path::{Path, PathBuf};

use lanyard_core::bundle::pem_certificates;
use lanyard_core::{Bundle, SpiffeId, TrustDomain};
use serde::Deserialize;

/// How the agent proves itself to the server when it has no stored agent SVID.
#[derive(Debug, Clone)]
pub enum Bootstrap {
    None,
    JoinToken(String),
    X509Pop {
        cert_chain: Vec<Vec<u8>>,
        key_pem: String,
    },
    /// A signed OIDC token (a CI job's, a cloud instance's) read from this file
    /// afresh at every attestation, verified by the server's `jwt` attestor.
    JwtTokenFile(PathBuf),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub trust_domain: Option<String>,
    pub server_address: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub socket_path: Option<PathBuf>,
    pub join_token: Option<String>,
    pub trust_bundle: Option<PathBuf>,
    pub insecure_bootstrap: Option<bool>,
    pub x509pop_cert: Option<PathBuf>,
    pub x509pop_key: Option<PathBuf>,
    pub jwt_token_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub authz_bind: Option<String>,
}

/// Command-line values (each wins over the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub trust_domain: Option<String>,
    pub server_address: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub socket_path: Option<PathBuf>,
    pub join_token: Option<String>,
    pub trust_bundle: Option<PathBuf>,
    pub insecure_bootstrap: bool,
    pub x509pop_cert: Option<PathBuf>,
    pub x509pop_key: Option<PathBuf>,
    /// A file holding a signed OIDC token for `jwt` node attestation.
    pub jwt_token_file: Option<PathBuf>,
    /// Address of the local AuthZEN evaluation API (e.g. 127.0.0.1:8181).
    pub authz_bind: Option<String>,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub trust_domain: TrustDomain,
    pub server_address: String,
    pub server_id: SpiffeId,
    pub data_dir: PathBuf,
    pub socket_path: PathBuf,
    pub bootstrap: Bootstrap,
    pub trust_bundle: Option<Bundle>,
    pub insecure_bootstrap: bool,
    pub log_level: String,
    /// Serve the AuthZEN evaluation API for agent-local decisions here (plain HTTP:
    /// bind to loopback or a protected interface). `None`: not served.
    pub authz_bind: Option<std::net::SocketAddr>,
}

use crate::error::ConfigError;

fn invalid(key: &'static str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::invalid(key, reason)
}

/// Read a trust bundle file: a SPIFFE bundle (JSON) or PEM CA certificates.
pub fn read_bundle(path: &Path, td: &TrustDomain) -> Result<Bundle, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Bundle::parse_json_or_pem(td.clone(), &bytes).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl AgentConfig {
    pub fn load(o: &Overrides) -> Result<Self, ConfigError> {
        let f: FileConfig = match &o.config {
            None => FileConfig::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                    path: p.clone(),
                    reason: e.to_string(),
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.clone(),
                    reason: e.to_string(),
                })?
            }
        };
        let td = o
            .trust_domain
            .clone()
            .or(f.trust_domain)
            .ok_or(ConfigError::Missing("trust_domain"))?;
        let trust_domain = TrustDomain::new(&td).map_err(|e| invalid("trust_domain", e))?;
        let server_address = o
            .server_address
            .clone()
            .or(f.server_address)
            .unwrap_or_else(|| "127.0.0.1:8081".to_string());
        if server_address.parse::<std::net::SocketAddr>().is_err()
            && server_address
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
        {
            return Err(invalid(
                "server_address",
                format!("{server_address:?} is not host:port"),
            ));
        }
        let data_dir = o
            .data_dir
            .clone()
            .or(f.data_dir)
            .ok_or(ConfigError::Missing("data_dir"))?;
        let socket_path = o
            .socket_path
            .clone()
            .or(f.socket_path)
            .unwrap_or_else(|| data_dir.join("agent.sock"));
        let trust_bundle = match o.trust_bundle.clone().or(f.trust_bundle) {
            Some(p) => {
                Some(read_bundle(&p, &trust_domain).map_err(|e| invalid("trust_bundle", e))?)
            }
            None => None,
        };
        let insecure_bootstrap = o.insecure_bootstrap || f.insecure_bootstrap.unwrap_or(false);
        let token = o.join_token.clone().or(f.join_token);
        let pop_cert = o.x509pop_cert.clone().or(f.x509pop_cert);
        let pop_key = o.x509pop_key.clone().or(f.x509pop_key);
        let jwt_file = o.jwt_token_file.clone().or(f.jwt_token_file);
        if jwt_file.is_some() && (token.is_some() || pop_cert.is_some() || pop_key.is_some()) {
            return Err(ConfigError::Conflict(
                "give one way to attest: a join token, an x509pop certificate and key, or a jwt_token_file",
            ));
        }
        let bootstrap = match (token, pop_cert, pop_key) {
            (None, None, None) if jwt_file.is_some() => {
                Bootstrap::JwtTokenFile(jwt_file.unwrap_or_default())
            }
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(ConfigError::Conflict(
                    "give either a join token or an x509pop certificate and key, not both",
                ));
            }
            (Some(t), None, None) => Bootstrap::JoinToken(t),
            (None, Some(c), Some(k)) => Bootstrap::X509Pop {
                cert_chain: pem_certificates(
                    &std::fs::read(&c).map_err(|e| invalid("x509pop_cert", e))?,
                )
                .map_err(|e| invalid("x509pop_cert", e))?,
                key_pem: std::fs::read_to_string(&k).map_err(|e| invalid("x509pop_key", e))?,
            },
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(ConfigError::Conflict(
                    "x509pop needs both x509pop_cert and x509pop_key",
                ));
            }
            (None, None, None) => Bootstrap::None,
        };
        let authz_bind = match o.authz_bind.clone().or(f.authz_bind) {
            None => None,
            Some(a) => Some(a.parse().map_err(|_| {
                invalid(
                    "authz_bind",
                    format!("{a:?} is not ip:port (e.g. 127.0.0.1:8181; port 0 picks one)"),
                )
            })?),
        };
        let server_id = SpiffeId::from_parts(&trust_domain, "/lanyard/server")
            .map_err(|e| invalid("trust_domain", e))?;
        Ok(Self {
            trust_domain,
            server_address,
            server_id,
            data_dir,
            socket_path,
            bootstrap,
            trust_bundle,
            insecure_bootstrap,
            log_level: f.log_level.unwrap_or_else(|| "info".to_string()),
            authz_bind,
        })
    }
}
