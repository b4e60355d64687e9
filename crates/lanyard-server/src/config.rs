//! Server configuration: a TOML file (unknown keys are errors naming the key) with
//! command-line overrides. Every setting is documented in docs/server-config.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lanyard_ca::KeyAlgorithm;
use lanyard_core::TrustDomain;
use lanyard_core::duration::parse_duration;
use serde::Deserialize;

/// Problems with the configuration, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("setting `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("setting `{0}` is required (in the config file or as --{1})")]
    Missing(&'static str, &'static str),
}

/// The TOML file, as written by the operator.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub trust_domain: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub bind: Option<String>,
    pub http_bind: Option<String>,
    pub admin_socket: Option<PathBuf>,
    pub admin_bind: Option<String>,
    /// Envoy ext_authz gRPC over mTLS (`envoy.service.auth.v3.Authorization`).
    pub ext_authz_bind: Option<String>,
    /// The AuthZEN evaluation API over HTTPS with mTLS (callers present an SVID).
    pub authzen_tls_bind: Option<String>,
    /// The URL relying parties reach the HTTP listener at (OIDC discovery, token
    /// endpoint); default `http://<http_bind address>`.
    pub public_url: Option<String>,
    /// Lifetime of exchanged tokens and task tokens (at most 5m for task tokens).
    pub exchange_token_ttl: Option<String>,
    /// Longest delegation chain (`act` nesting) a token exchange may produce.
    pub max_delegation_depth: Option<u32>,
    pub database_url: Option<String>,
    pub agent_svid_ttl: Option<String>,
    pub join_token_ttl: Option<String>,
    pub log_level: Option<String>,
    pub audit_checkpoint_file: Option<PathBuf>,
    /// The key-encryption key under which the keys every server needs are stored
    /// in the datastore (32 bytes: raw, base64 or hex). See docs/ha.md.
    pub kek_file: Option<PathBuf>,
    #[serde(default)]
    pub ca: FileCaConfig,
    #[serde(default)]
    pub x509pop: FileX509PopConfig,
    /// Federated trust domains whose bundles workloads receive.
    #[serde(default)]
    pub federation: Vec<FileFederation>,
    /// Identity providers whose tokens name people an agent may act for.
    #[serde(default)]
    pub trusted_issuer: Vec<FileTrustedIssuer>,
    /// Node attestation with signed OIDC tokens (CI jobs, cloud instances).
    #[serde(default)]
    pub jwt_attestor: Vec<crate::attest::jwt::FileJwtAttestor>,
    /// Node attestation with Kubernetes projected service-account tokens, per
    /// cluster.
    #[serde(default)]
    pub k8s_psat: Vec<crate::attest::k8s_psat::FileK8sPsat>,
    /// Node attestation with EC2 instance identity documents.
    pub aws_iid: Option<crate::attest::aws_iid::FileAwsIid>,
}

/// An external identity provider (OIDC) trusted for person tokens in task-token
/// requests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTrustedIssuer {
    /// `iss` of its tokens.
    pub issuer: String,
    /// Its JWKS (JSON), read at start.
    pub jwks_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFederation {
    pub trust_domain: String,
    /// SPIFFE bundle JSON (or PEM CA certificates) of that trust domain.
    pub bundle_file: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCaConfig {
    pub key_type: Option<String>,
    pub ca_ttl: Option<String>,
    pub x509_svid_ttl: Option<String>,
    pub jwt_svid_ttl: Option<String>,
    pub jwt_issuer: Option<String>,
    pub common_name: Option<String>,
    pub upstream_cert: Option<PathBuf>,
    pub upstream_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileX509PopConfig {
    /// PEM file of CA certificates that node certificates must chain to.
    pub ca_bundle: Option<PathBuf>,
}

/// Command-line overrides (each wins over the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    /// Envoy ext_authz listener (`lanyard dev` serves it on a free port).
    pub ext_authz_bind: Option<String>,
    /// mTLS AuthZEN listener (`lanyard dev` serves it on a free port).
    pub authzen_tls_bind: Option<String>,
    pub trust_domain: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub bind: Option<String>,
    pub http_bind: Option<String>,
    pub admin_socket: Option<PathBuf>,
    pub database_url: Option<String>,
    pub audit_checkpoint_file: Option<PathBuf>,
    pub kek_file: Option<PathBuf>,
}

/// The effective, validated configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub trust_domain: TrustDomain,
    pub data_dir: PathBuf,
    pub bind: SocketAddr,
    pub http_bind: SocketAddr,
    pub admin_socket: PathBuf,
    /// Admin API over mTLS for admin SVIDs; `None`: not served.
    pub admin_bind: Option<SocketAddr>,
    /// Envoy ext_authz over mTLS; `None`: not served.
    pub ext_authz_bind: Option<SocketAddr>,
    /// AuthZEN over HTTPS with mTLS; `None`: not served.
    pub authzen_tls_bind: Option<SocketAddr>,
    /// Public base URL of the HTTP listener; `None`: `http://<bound address>`.
    pub public_url: Option<String>,
    pub exchange_token_ttl: Duration,
    pub max_delegation_depth: u32,
    /// `None`: SQLite at `data_dir/lanyard.db`.
    pub database_url: Option<String>,
    pub agent_svid_ttl: Duration,
    pub join_token_ttl: Duration,
    pub key_type: KeyAlgorithm,
    pub ca_ttl: Duration,
    pub x509_svid_ttl: Duration,
    pub jwt_svid_ttl: Duration,
    pub jwt_issuer: Option<String>,
    pub ca_common_name: String,
    pub upstream_cert: Option<PathBuf>,
    pub upstream_key: Option<PathBuf>,
    pub x509pop_ca_bundle: Option<PathBuf>,
    /// `[[jwt_attestor]]`: OIDC issuers whose tokens attest nodes.
    pub jwt_attestors: Vec<crate::attest::jwt::JwtIssuerConfig>,
    /// `[[k8s_psat]]`: Kubernetes clusters whose agents attest with projected tokens.
    pub k8s_psat_clusters: Vec<crate::attest::k8s_psat::K8sClusterConfig>,
    /// `[aws_iid]`: EC2 instances attesting with identity documents.
    pub aws_iid: Option<lanyard_nodeattest::AwsIidConfig>,
    /// (trust domain, bundle file) of each federated trust domain.
    pub federation: Vec<(TrustDomain, PathBuf)>,
    /// (issuer, JWKS file) of identity providers trusted for person tokens.
    pub trusted_issuers: Vec<(String, PathBuf)>,
    /// Where signed audit checkpoints are also appended (outside the datastore).
    pub audit_checkpoint_file: Option<PathBuf>,
    /// The key-encryption key file; `None`: keys stay in the data dir (or come from
    /// `LANYARD_KEK`).
    pub kek_file: Option<PathBuf>,
    pub log_level: String,
}

fn dur(key: &'static str, v: Option<&String>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => {
            let d = parse_duration(s).map_err(|reason| ConfigError::Invalid { key, reason })?;
            if d.is_zero() {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be greater than zero".to_string(),
                });
            }
            Ok(d)
        }
    }
}

fn addr(key: &'static str, v: Option<&String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let s = v.map(String::as_str).unwrap_or(default);
    s.parse().map_err(|e| ConfigError::Invalid {
        key,
        reason: format!("{s:?} is not an address: {e}; write ip:port, e.g. 127.0.0.1:8081"),
    })
}

impl ServerConfig {
    /// Read the file named by `--config` (if any) and apply the overrides.
    pub fn load(o: &Overrides) -> Result<Self, ConfigError> {
        let file = match &o.config {
            None => FileConfig::default(),
            Some(path) => Self::read_file(path)?,
        };
        Self::resolve(file, o)
    }

    pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    pub fn resolve(f: FileConfig, o: &Overrides) -> Result<Self, ConfigError> {
        let td = o
            .trust_domain
            .clone()
            .or(f.trust_domain)
            .ok_or(ConfigError::Missing("trust_domain", "trust-domain"))?;
        let trust_domain = TrustDomain::new(&td).map_err(|e| ConfigError::Invalid {
            key: "trust_domain",
            reason: e.to_string(),
        })?;
        let data_dir = o
            .data_dir
            .clone()
            .or(f.data_dir)
            .ok_or(ConfigError::Missing("data_dir", "data-dir"))?;
        let bind = addr(
            "bind",
            o.bind.as_ref().or(f.bind.as_ref()),
            "127.0.0.1:8081",
        )?;
        let http_bind = addr(
            "http_bind",
            o.http_bind.as_ref().or(f.http_bind.as_ref()),
            "127.0.0.1:8082",
        )?;
        let admin_socket = o
            .admin_socket
            .clone()
            .or(f.admin_socket)
            .unwrap_or_else(|| data_dir.join("admin.sock"));
        let admin_bind = match &f.admin_bind {
            None => None,
            Some(a) => Some(addr("admin_bind", Some(a), "")?),
        };
        let ext_authz_bind = match o.ext_authz_bind.as_ref().or(f.ext_authz_bind.as_ref()) {
            None => None,
            Some(a) => Some(addr("ext_authz_bind", Some(a), "")?),
        };
        let authzen_tls_bind = match o.authzen_tls_bind.as_ref().or(f.authzen_tls_bind.as_ref()) {
            None => None,
            Some(a) => Some(addr("authzen_tls_bind", Some(a), "")?),
        };
        let public_url = match f.public_url {
            None => None,
            Some(u) => {
                let t = u.trim_end_matches('/').to_string();
                if !(t.starts_with("http://") || t.starts_with("https://")) || t.len() < 10 {
                    return Err(ConfigError::Invalid {
                        key: "public_url",
                        reason: format!("{u:?}; use an absolute http:// or https:// URL"),
                    });
                }
                Some(t)
            }
        };
        let exchange_token_ttl = dur(
            "exchange_token_ttl",
            f.exchange_token_ttl.as_ref(),
            Duration::from_secs(300),
        )?;
        let max_delegation_depth = f.max_delegation_depth.unwrap_or(4);
        if max_delegation_depth == 0 || max_delegation_depth > 16 {
            return Err(ConfigError::Invalid {
                key: "max_delegation_depth",
                reason: format!("{max_delegation_depth}; use 1 to 16"),
            });
        }
        let database_url = o.database_url.clone().or(f.database_url);
        if let Some(u) = &database_url
            && !(u.starts_with("postgres://") || u.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid {
                key: "database_url",
                reason: format!(
                    "{u:?} is not a PostgreSQL URL; use postgres://user@host:port/db, or leave it unset for SQLite in the data dir"
                ),
            });
        }
        let key_type = match &f.ca.key_type {
            None => KeyAlgorithm::EcP256,
            Some(k) => k
                .parse()
                .map_err(|e: lanyard_ca::CaError| ConfigError::Invalid {
                    key: "ca.key_type",
                    reason: e.to_string(),
                })?,
        };
        let ca_ttl = dur(
            "ca.ca_ttl",
            f.ca.ca_ttl.as_ref(),
            Duration::from_secs(86_400),
        )?;
        let x509_svid_ttl = dur(
            "ca.x509_svid_ttl",
            f.ca.x509_svid_ttl.as_ref(),
            Duration::from_secs(3600),
        )?;
        let jwt_svid_ttl = dur(
            "ca.jwt_svid_ttl",
            f.ca.jwt_svid_ttl.as_ref(),
            Duration::from_secs(300),
        )?;
        for (key, d) in [
            ("ca.x509_svid_ttl", x509_svid_ttl),
            ("ca.jwt_svid_ttl", jwt_svid_ttl),
        ] {
            if d > ca_ttl {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!(
                        "{}s exceeds ca.ca_ttl ({}s); an SVID never outlives its CA",
                        d.as_secs(),
                        ca_ttl.as_secs()
                    ),
                });
            }
        }
        if ca_ttl < Duration::from_secs(60) {
            return Err(ConfigError::Invalid {
                key: "ca.ca_ttl",
                reason: "must be at least 1m".to_string(),
            });
        }
        let agent_svid_ttl = dur(
            "agent_svid_ttl",
            f.agent_svid_ttl.as_ref(),
            Duration::from_secs(3600),
        )?;
        if agent_svid_ttl > ca_ttl {
            return Err(ConfigError::Invalid {
                key: "agent_svid_ttl",
                reason: "exceeds ca.ca_ttl".to_string(),
            });
        }
        let join_token_ttl = dur(
            "join_token_ttl",
            f.join_token_ttl.as_ref(),
            Duration::from_secs(600),
        )?;
        if f.ca.upstream_cert.is_some() != f.ca.upstream_key.is_some() {
            return Err(ConfigError::Invalid {
                key: "ca.upstream_cert",
                reason: "ca.upstream_cert and ca.upstream_key must be set together".to_string(),
            });
        }
        let mut trusted_issuers = Vec::new();
        for t in &f.trusted_issuer {
            if !(t.issuer.starts_with("https://") || t.issuer.starts_with("http://")) {
                return Err(ConfigError::Invalid {
                    key: "trusted_issuer.issuer",
                    reason: format!("{:?}; use the provider's issuer URL", t.issuer),
                });
            }
            trusted_issuers.push((t.issuer.clone(), t.jwks_file.clone()));
        }
        let mut federation = Vec::new();
        for fed in &f.federation {
            let td = TrustDomain::new(&fed.trust_domain).map_err(|e| ConfigError::Invalid {
                key: "federation.trust_domain",
                reason: e.to_string(),
            })?;
            if td == trust_domain {
                return Err(ConfigError::Invalid {
                    key: "federation.trust_domain",
                    reason: "a server does not federate with its own trust domain".to_string(),
                });
            }
            federation.push((td, fed.bundle_file.clone()));
        }
        let jwt_attestors = f
            .jwt_attestor
            .iter()
            .map(crate::attest::jwt::parse_config)
            .collect::<Result<Vec<_>, _>>()?;
        let k8s_psat_clusters = f
            .k8s_psat
            .iter()
            .map(crate::attest::k8s_psat::parse_config)
            .collect::<Result<Vec<_>, _>>()?;
        let aws_iid = f
            .aws_iid
            .as_ref()
            .map(crate::attest::aws_iid::parse_config)
            .transpose()?;
        let log_level = f.log_level.unwrap_or_else(|| "info".to_string());
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            return Err(ConfigError::Invalid {
                key: "log_level",
                reason: format!("{log_level:?}; use error, warn, info, debug or trace"),
            });
        }
        Ok(Self {
            trust_domain,
            data_dir,
            bind,
            http_bind,
            admin_socket,
            admin_bind,
            ext_authz_bind,
            authzen_tls_bind,
            public_url,
            exchange_token_ttl,
            max_delegation_depth,
            database_url,
            agent_svid_ttl,
            join_token_ttl,
            key_type,
            ca_ttl,
            x509_svid_ttl,
            jwt_svid_ttl,
            jwt_issuer: f.ca.jwt_issuer,
            ca_common_name: f.ca.common_name.unwrap_or_else(|| "Lanyard CA".to_string()),
            upstream_cert: f.ca.upstream_cert,
            upstream_key: f.ca.upstream_key,
            x509pop_ca_bundle: f.x509pop.ca_bundle,
            jwt_attestors,
            k8s_psat_clusters,
            aws_iid,
            federation,
            trusted_issuers,
            audit_checkpoint_file: o.audit_checkpoint_file.clone().or(f.audit_checkpoint_file),
            kek_file: o.kek_file.clone().or(f.kek_file),
            log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Overrides {
        Overrides {
            trust_domain: Some("example.org".into()),
            data_dir: Some("/tmp/x".into()),
            ..Overrides::default()
        }
    }

    fn parse(toml_text: &str) -> Result<ServerConfig, ConfigError> {
        let f: FileConfig = toml::from_str(toml_text).map_err(|e| ConfigError::Parse {
            path: "test".into(),
            reason: e.to_string(),
        })?;
        ServerConfig::resolve(f, &base())
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:8081");
        assert_eq!(c.admin_socket, PathBuf::from("/tmp/x/admin.sock"));
        assert_eq!(c.ca_ttl, Duration::from_secs(86_400));
        assert_eq!(c.x509_svid_ttl, Duration::from_secs(3600));
        assert_eq!(c.jwt_svid_ttl, Duration::from_secs(300));
        assert_eq!(c.join_token_ttl, Duration::from_secs(600));
        assert_eq!(c.key_type, KeyAlgorithm::EcP256);
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("surprise = 1", "surprise"),
            ("[ca]\nkey_typ = \"ec-p256\"", "key_typ"),
            ("[ca]\nkey_type = \"ed25519\"", "ca.key_type"),
            ("[ca]\nca_ttl = \"forever\"", "ca.ca_ttl"),
            ("[ca]\nx509_svid_ttl = \"48h\"", "ca.x509_svid_ttl"),
            ("bind = \"localhost\"", "bind"),
            ("admin_bind = \"nowhere\"", "admin_bind"),
            ("database_url = \"mysql://x\"", "database_url"),
            ("log_level = \"loud\"", "log_level"),
            ("[ca]\nupstream_cert = \"/a\"", "ca.upstream_cert"),
            ("agent_svid_ttl = \"0s\"", "agent_svid_ttl"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text:?} gave {e}");
        }
        let e = ServerConfig::resolve(FileConfig::default(), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("trust_domain"), "{e}");
        let mut o = base();
        o.trust_domain = Some("Bad.Domain".into());
        let e = ServerConfig::resolve(FileConfig::default(), &o).unwrap_err();
        assert!(e.to_string().contains("trust_domain"), "{e}");
    }
}
