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
    /// A signed OIDC token in this environment variable (GitLab CI's `id_tokens:`),
    /// read at every attestation, verified by the server's `jwt` attestor.
    JwtTokenEnv(String),
    /// A GitHub Actions job's OIDC token, requested afresh for every attestation
    /// with the job's `ACTIONS_ID_TOKEN_REQUEST_URL` / `_TOKEN`, for `audience`.
    GithubActions {
        audience: String,
    },
    /// A cloud VM's identity token for `audience` from its metadata service at
    /// `metadata_url` (GCP: the instance identity token; Azure: a managed-identity
    /// token), requested afresh for every attestation.
    CloudToken {
        cloud: Cloud,
        audience: String,
        metadata_url: String,
    },
    /// A Kubernetes projected service-account token, re-read from `token_file` at
    /// every attestation, verified by the server's `k8s_psat` attestor for `cluster`.
    K8sPsat {
        cluster: String,
        token_file: PathBuf,
    },
    /// The EC2 instance identity document, read from the instance metadata service
    /// (IMDSv2) at `imds_url`.
    AwsIid {
        imds_url: String,
    },
}

/// Where the `k8s_psat` token is mounted unless `k8s_psat_token_file` says otherwise.
pub const DEFAULT_K8S_PSAT_TOKEN_FILE: &str = "/var/run/secrets/tokens/lanyard-agent";
/// The EC2 instance metadata service.
pub const DEFAULT_AWS_IMDS_URL: &str = "http://169.254.169.254";

/// A cloud whose metadata service hands a VM an identity token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    /// GCP's instance identity token (`.../service-accounts/default/identity`).
    Gcp,
    /// Azure's managed-identity token (`/metadata/identity/oauth2/token`).
    Azure,
}

impl Cloud {
    /// The metadata service's address on the VM.
    pub fn default_metadata_url(self) -> &'static str {
        match self {
            Self::Gcp => "http://metadata.google.internal",
            Self::Azure => "http://169.254.169.254",
        }
    }
}

/// Where a `jwt` token comes from when it is not in a file or a variable
/// (`jwt_token_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtTokenSource {
    /// GitHub Actions' token-request endpoint (`ACTIONS_ID_TOKEN_REQUEST_URL`).
    GithubActions,
    /// A VM's metadata service.
    Cloud(Cloud),
}

impl std::str::FromStr for JwtTokenSource {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "github_actions" | "github-actions" => Ok(Self::GithubActions),
            "gcp_metadata" | "gcp-metadata" => Ok(Self::Cloud(Cloud::Gcp)),
            "azure_imds" | "azure-imds" => Ok(Self::Cloud(Cloud::Azure)),
            other => Err(invalid(
                "jwt_token_source",
                format!(
                    "{other:?} is not a token source; use \"github_actions\", \"gcp_metadata\" or \"azure_imds\" (flag: --jwt-from github-actions|gcp-metadata|azure-imds); for a token in a file or a variable use jwt_token_file or jwt_token_env"
                ),
            )),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub trust_domain: Option<String>,
    /// One `host:port`, several comma-separated, or a list.
    pub server_address: Option<ServerAddresses>,
    pub data_dir: Option<PathBuf>,
    pub socket_path: Option<PathBuf>,
    pub join_token: Option<String>,
    pub trust_bundle: Option<PathBuf>,
    pub insecure_bootstrap: Option<bool>,
    pub x509pop_cert: Option<PathBuf>,
    pub x509pop_key: Option<PathBuf>,
    pub jwt_token_file: Option<PathBuf>,
    pub jwt_token_env: Option<String>,
    pub jwt_token_source: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_metadata_url: Option<String>,
    pub k8s_psat_cluster: Option<String>,
    pub k8s_psat_token_file: Option<PathBuf>,
    pub aws_iid: Option<bool>,
    pub aws_imds_url: Option<String>,
    pub log_level: Option<String>,
    pub authz_bind: Option<String>,
    /// Workload attestors to run, in order (default `["unix"]`).
    pub workload_attestors: Option<Vec<String>>,
    /// Where the attestors read `/proc` (default `/proc`).
    pub proc_root: Option<PathBuf>,
    pub k8s: Option<crate::attestor_config::K8sFile>,
    pub docker: Option<crate::attestor_config::DockerFile>,
    pub containerd: Option<crate::attestor_config::ContainerdFile>,
    pub systemd: Option<crate::attestor_config::SystemdFile>,
    /// Envoy SDS resource names and options (SPIRE's `[sds]` settings).
    pub sds: Option<SdsFile>,
}

/// `server_address` as written: one address (possibly comma-separated) or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ServerAddresses {
    One(String),
    Many(Vec<String>),
}

/// The servers to try, in order: `host:port` each (a DNS name may have several
/// records; each is tried on connect). Empty parts and repeats are errors.
pub fn parse_server_addresses(given: &ServerAddresses) -> Result<Vec<String>, ConfigError> {
    let parts: Vec<String> = match given {
        ServerAddresses::One(s) => s.split(',').map(|p| p.trim().to_string()).collect(),
        ServerAddresses::Many(v) => v.iter().map(|p| p.trim().to_string()).collect(),
    };
    if parts.is_empty() || parts.iter().any(String::is_empty) {
        return Err(invalid(
            "server_address",
            "an address is empty; give host:port, several separated by commas (a list in TOML)",
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for a in parts {
        let ok = a.parse::<std::net::SocketAddr>().is_ok()
            || a.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(invalid("server_address", format!("{a:?} is not host:port")));
        }
        if out.contains(&a) {
            return Err(invalid("server_address", format!("{a:?} is given twice")));
        }
        out.push(a);
    }
    Ok(out)
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
    /// The environment variable holding a signed OIDC token (GitLab `id_tokens:`).
    pub jwt_token_env: Option<String>,
    /// Where to request the `jwt` token: `github_actions` (or `github-actions`).
    pub jwt_token_source: Option<String>,
    /// The audience to request the `jwt` token for (with `jwt_token_source`).
    pub jwt_audience: Option<String>,
    /// The metadata service for `gcp_metadata` / `azure_imds` (default the cloud's).
    pub jwt_metadata_url: Option<String>,
    /// The cluster name for `k8s_psat` attestation, as configured on the server.
    pub k8s_psat_cluster: Option<String>,
    /// The projected service-account token file (default
    /// [`DEFAULT_K8S_PSAT_TOKEN_FILE`]).
    pub k8s_psat_token_file: Option<PathBuf>,
    /// Attest with the EC2 instance identity document.
    pub aws_iid: bool,
    /// The instance metadata service (default [`DEFAULT_AWS_IMDS_URL`]).
    pub aws_imds_url: Option<String>,
    /// Address of the local AuthZEN evaluation API (e.g. 127.0.0.1:8181).
    pub authz_bind: Option<String>,
    /// Workload attestors to run, in order (`--workload-attestors unix,k8s`).
    pub workload_attestors: Option<Vec<String>>,
    /// Where the attestors read `/proc` (`--proc-root`).
    pub proc_root: Option<PathBuf>,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub trust_domain: TrustDomain,
    /// The first of [`AgentConfig::server_addresses`].
    pub server_address: String,
    /// The servers, tried in turn: on failure the agent moves to the next one
    /// (keeping its identity and serving cached SVIDs meanwhile).
    pub server_addresses: Vec<String>,
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
    /// The workload attestors, in order ([`crate::attestor_config`]).
    pub workload_attestors: Vec<crate::attestor_config::AttestorConfig>,
    /// Envoy SDS names and options.
    pub sds: crate::sds::SdsConfig,
}

/// `[sds]`, as written (SPIRE's agent `sds` settings).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SdsFile {
    pub default_svid_name: Option<String>,
    pub default_bundle_name: Option<String>,
    pub default_all_bundles_name: Option<String>,
    pub disable_spiffe_cert_validation: Option<bool>,
}

/// Validate `[sds]`: names non-empty, distinct, and not SPIFFE IDs (which name
/// SVIDs and trust domains already).
pub fn sds_config(f: Option<&SdsFile>) -> Result<crate::sds::SdsConfig, ConfigError> {
    let mut c = crate::sds::SdsConfig::default();
    let Some(f) = f else { return Ok(c) };
    for (key, given, slot) in [
        (
            "sds.default_svid_name",
            &f.default_svid_name,
            &mut c.default_svid_name,
        ),
        (
            "sds.default_bundle_name",
            &f.default_bundle_name,
            &mut c.default_bundle_name,
        ),
        (
            "sds.default_all_bundles_name",
            &f.default_all_bundles_name,
            &mut c.default_all_bundles_name,
        ),
    ] {
        if let Some(name) = given {
            if name.trim().is_empty() || name.starts_with("spiffe://") {
                return Err(invalid(
                    key,
                    format!(
                        "{name:?} cannot name an SDS resource: give a non-empty name that is not a SPIFFE ID"
                    ),
                ));
            }
            *slot = name.clone();
        }
    }
    let names = [
        &c.default_svid_name,
        &c.default_bundle_name,
        &c.default_all_bundles_name,
    ];
    if names[0] == names[1] || names[0] == names[2] || names[1] == names[2] {
        return Err(invalid(
            "sds",
            "default_svid_name, default_bundle_name and default_all_bundles_name must differ",
        ));
    }
    c.disable_spiffe_cert_validation = f.disable_spiffe_cert_validation.unwrap_or(false);
    Ok(c)
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

/// The one way to attest that the flags and the file name (flags win key by key).
fn bootstrap(o: &Overrides, f: &FileConfig) -> Result<Bootstrap, ConfigError> {
    let token = o.join_token.clone().or(f.join_token.clone());
    let pop_cert = o.x509pop_cert.clone().or(f.x509pop_cert.clone());
    let pop_key = o.x509pop_key.clone().or(f.x509pop_key.clone());
    let jwt_file = o.jwt_token_file.clone().or(f.jwt_token_file.clone());
    let jwt_env = o.jwt_token_env.clone().or(f.jwt_token_env.clone());
    let jwt_source = o.jwt_token_source.clone().or(f.jwt_token_source.clone());
    let jwt_audience = o.jwt_audience.clone().or(f.jwt_audience.clone());
    let jwt_metadata_url = o.jwt_metadata_url.clone().or(f.jwt_metadata_url.clone());
    let k8s_cluster = o.k8s_psat_cluster.clone().or(f.k8s_psat_cluster.clone());
    let k8s_file = o
        .k8s_psat_token_file
        .clone()
        .or(f.k8s_psat_token_file.clone());
    let aws_iid = o.aws_iid || f.aws_iid.unwrap_or(false);
    let imds_url = o.aws_imds_url.clone().or(f.aws_imds_url.clone());

    // Settings that only make sense with their method.
    if jwt_audience.is_some() && jwt_source.is_none() {
        return Err(invalid(
            "jwt_audience",
            "is only used with jwt_token_source = \"github_actions\" (--jwt-from github-actions), to request the job's token for that audience; remove it, or set jwt_token_source",
        ));
    }
    let cloud_source = jwt_source
        .as_deref()
        .is_some_and(|s| matches!(s.parse::<JwtTokenSource>(), Ok(JwtTokenSource::Cloud(_))));
    if jwt_metadata_url.is_some() && !cloud_source {
        return Err(invalid(
            "jwt_metadata_url",
            "is only used with jwt_token_source = \"gcp_metadata\" or \"azure_imds\"; remove it, or set jwt_token_source",
        ));
    }
    if k8s_file.is_some() && k8s_cluster.is_none() {
        return Err(invalid(
            "k8s_psat_cluster",
            "is required for k8s_psat attestation (k8s_psat_token_file is set): give the cluster name the server's k8s_psat attestor is configured with (--k8s-psat-cluster NAME)",
        ));
    }
    if imds_url.is_some() && !aws_iid {
        return Err(invalid(
            "aws_imds_url",
            "is only used with aws_iid = true (--aws-iid); remove it, or enable aws_iid",
        ));
    }

    let methods: Vec<&'static str> = [
        token.as_ref().map(|_| "join_token"),
        (pop_cert.is_some() || pop_key.is_some()).then_some("x509pop_cert/x509pop_key"),
        jwt_file.as_ref().map(|_| "jwt_token_file"),
        jwt_env.as_ref().map(|_| "jwt_token_env"),
        jwt_source.as_ref().map(|_| "jwt_token_source"),
        k8s_cluster.as_ref().map(|_| "k8s_psat_cluster"),
        aws_iid.then_some("aws_iid"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if methods.len() > 1 {
        return Err(ConfigError::SeveralMethods(methods.join(", ")));
    }

    if let Some(t) = token {
        return Ok(Bootstrap::JoinToken(t));
    }
    match (pop_cert, pop_key) {
        (Some(c), Some(k)) => {
            return Ok(Bootstrap::X509Pop {
                cert_chain: pem_certificates(
                    &std::fs::read(&c).map_err(|e| invalid("x509pop_cert", e))?,
                )
                .map_err(|e| invalid("x509pop_cert", e))?,
                key_pem: std::fs::read_to_string(&k).map_err(|e| invalid("x509pop_key", e))?,
            });
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(ConfigError::Conflict(
                "x509pop needs both x509pop_cert and x509pop_key",
            ));
        }
        (None, None) => {}
    }
    if let Some(p) = jwt_file {
        return Ok(Bootstrap::JwtTokenFile(p));
    }
    if let Some(var) = jwt_env {
        let valid = !var.is_empty()
            && !var.starts_with(|c: char| c.is_ascii_digit())
            && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(invalid(
                "jwt_token_env",
                format!(
                    "{var:?} is not an environment variable name (letters, digits and _, not starting with a digit), e.g. LANYARD_ID_TOKEN as declared under `id_tokens:` in .gitlab-ci.yml"
                ),
            ));
        }
        return Ok(Bootstrap::JwtTokenEnv(var));
    }
    if let Some(source) = jwt_source {
        return match source.parse::<JwtTokenSource>()? {
            JwtTokenSource::GithubActions => {
                let audience = jwt_audience.filter(|a| !a.trim().is_empty()).ok_or_else(|| {
                    invalid(
                        "jwt_audience",
                        "is required with jwt_token_source = \"github_actions\": the audience the server's [[jwt_attestor]] expects, e.g. lanyard-server (--jwt-attestation-audience AUD)",
                    )
                })?;
                Ok(Bootstrap::GithubActions { audience })
            }
            JwtTokenSource::Cloud(cloud) => {
                let audience = jwt_audience.filter(|a| !a.trim().is_empty()).ok_or_else(|| {
                    invalid(
                        "jwt_audience",
                        "is required with a cloud jwt_token_source: the audience the server's [[jwt_attestor]] expects (GCP: the identity token's audience; Azure: the resource, e.g. api://lanyard) (--jwt-attestation-audience AUD)",
                    )
                })?;
                let url = jwt_metadata_url
                    .unwrap_or_else(|| cloud.default_metadata_url().to_string())
                    .trim_end_matches('/')
                    .to_string();
                if !url.starts_with("http://") || url.contains(['?', '#']) || url.len() <= 7 {
                    return Err(invalid(
                        "jwt_metadata_url",
                        format!(
                            "{url:?} is not an http:// base URL without query (the default is {})",
                            cloud.default_metadata_url()
                        ),
                    ));
                }
                Ok(Bootstrap::CloudToken {
                    cloud,
                    audience,
                    metadata_url: url,
                })
            }
        };
    }
    if let Some(cluster) = k8s_cluster {
        if cluster.trim().is_empty() {
            return Err(invalid(
                "k8s_psat_cluster",
                "is empty: give the cluster name the server's k8s_psat attestor is configured with",
            ));
        }
        return Ok(Bootstrap::K8sPsat {
            cluster,
            token_file: k8s_file.unwrap_or_else(|| PathBuf::from(DEFAULT_K8S_PSAT_TOKEN_FILE)),
        });
    }
    if aws_iid {
        let url = imds_url.unwrap_or_else(|| DEFAULT_AWS_IMDS_URL.to_string());
        let url = url.trim_end_matches('/').to_string();
        let ok = (url.starts_with("http://") || url.starts_with("https://"))
            && !url.contains(['?', '#'])
            && url
                .split_once("://")
                .is_some_and(|(_, rest)| !rest.is_empty());
        if !ok {
            return Err(invalid(
                "aws_imds_url",
                format!(
                    "{url:?} is not an http:// or https:// base URL without query (the default is {DEFAULT_AWS_IMDS_URL})"
                ),
            ));
        }
        return Ok(Bootstrap::AwsIid { imds_url: url });
    }
    Ok(Bootstrap::None)
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
            .or(f.trust_domain.clone())
            .ok_or(ConfigError::Missing("trust_domain"))?;
        let trust_domain = TrustDomain::new(&td).map_err(|e| invalid("trust_domain", e))?;
        let server_addresses = parse_server_addresses(
            &o.server_address
                .clone()
                .map(ServerAddresses::One)
                .or(f.server_address.clone())
                .unwrap_or_else(|| ServerAddresses::One("127.0.0.1:8081".to_string())),
        )?;
        let server_address = server_addresses.first().cloned().unwrap_or_default();
        let data_dir = o
            .data_dir
            .clone()
            .or(f.data_dir.clone())
            .ok_or(ConfigError::Missing("data_dir"))?;
        let socket_path = o
            .socket_path
            .clone()
            .or(f.socket_path.clone())
            .unwrap_or_else(|| data_dir.join("agent.sock"));
        let trust_bundle = match o.trust_bundle.clone().or(f.trust_bundle.clone()) {
            Some(p) => {
                Some(read_bundle(&p, &trust_domain).map_err(|e| invalid("trust_bundle", e))?)
            }
            None => None,
        };
        let insecure_bootstrap = o.insecure_bootstrap || f.insecure_bootstrap.unwrap_or(false);
        let bootstrap = bootstrap(o, &f)?;
        let authz_bind = match o.authz_bind.clone().or(f.authz_bind) {
            None => None,
            Some(a) => Some(a.parse().map_err(|_| {
                invalid(
                    "authz_bind",
                    format!("{a:?} is not ip:port (e.g. 127.0.0.1:8181; port 0 picks one)"),
                )
            })?),
        };
        let workload_attestors = crate::attestor_config::resolve(
            o.workload_attestors.as_deref(),
            f.workload_attestors.as_deref(),
            o.proc_root.clone().or(f.proc_root.clone()),
            f.k8s.as_ref(),
            f.docker.as_ref(),
            f.containerd.as_ref(),
            f.systemd.as_ref(),
        )?;
        let server_id = SpiffeId::from_parts(&trust_domain, "/lanyard/server")
            .map_err(|e| invalid("trust_domain", e))?;
        Ok(Self {
            trust_domain,
            server_address,
            server_addresses,
            server_id,
            data_dir,
            socket_path,
            bootstrap,
            trust_bundle,
            insecure_bootstrap,
            log_level: f.log_level.unwrap_or_else(|| "info".to_string()),
            authz_bind,
            workload_attestors,
            sds: sds_config(f.sds.as_ref())?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn base() -> Overrides {
        Overrides {
            trust_domain: Some("example.org".into()),
            data_dir: Some(PathBuf::from("/tmp/lanyard-agent-config-test")),
            ..Overrides::default()
        }
    }

    fn from_file(toml: &str) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, toml).unwrap();
        AgentConfig::load(&Overrides {
            config: Some(path),
            ..base()
        })
    }

    fn err(o: Overrides) -> String {
        AgentConfig::load(&o).unwrap_err().to_string()
    }

    #[test]
    fn k8s_psat_takes_a_cluster_and_defaults_the_token_file() {
        let c = AgentConfig::load(&Overrides {
            k8s_psat_cluster: Some("prod-eu".into()),
            ..base()
        })
        .unwrap();
        match c.bootstrap {
            Bootstrap::K8sPsat {
                cluster,
                token_file,
            } => {
                assert_eq!(cluster, "prod-eu");
                assert_eq!(token_file, PathBuf::from(DEFAULT_K8S_PSAT_TOKEN_FILE));
            }
            other => panic!("{other:?}"),
        }
        let c = from_file("k8s_psat_cluster = \"c1\"\nk8s_psat_token_file = \"/run/t\"\n").unwrap();
        assert!(
            matches!(c.bootstrap, Bootstrap::K8sPsat { ref token_file, .. } if token_file == Path::new("/run/t")),
            "{:?}",
            c.bootstrap
        );
        let e = err(Overrides {
            k8s_psat_token_file: Some("/run/t".into()),
            ..base()
        });
        assert!(
            e.contains("`k8s_psat_cluster`") && e.contains("--k8s-psat-cluster"),
            "{e}"
        );
        let e = err(Overrides {
            k8s_psat_cluster: Some("  ".into()),
            ..base()
        });
        assert!(
            e.contains("`k8s_psat_cluster`") && e.contains("empty"),
            "{e}"
        );
    }

    #[test]
    fn cloud_token_sources_need_an_audience_and_an_http_metadata_url() {
        let c = from_file(
            "jwt_token_source = \"gcp_metadata\"\njwt_audience = \"https://l.example\"\n",
        )
        .unwrap();
        match c.bootstrap {
            Bootstrap::CloudToken {
                cloud: Cloud::Gcp,
                ref metadata_url,
                ..
            } => assert_eq!(metadata_url, "http://metadata.google.internal"),
            ref other => panic!("{other:?}"),
        }
        let c = AgentConfig::load(&Overrides {
            jwt_token_source: Some("azure-imds".into()),
            jwt_audience: Some("api://lanyard".into()),
            jwt_metadata_url: Some("http://127.0.0.1:9/".into()),
            ..base()
        })
        .unwrap();
        assert!(matches!(
            c.bootstrap,
            Bootstrap::CloudToken { cloud: Cloud::Azure, ref metadata_url, .. } if metadata_url == "http://127.0.0.1:9"
        ));
        let e = err(Overrides {
            jwt_token_source: Some("azure_imds".into()),
            ..base()
        });
        assert!(e.contains("`jwt_audience`"), "{e}");
        let e = err(Overrides {
            jwt_token_source: Some("gcp_metadata".into()),
            jwt_audience: Some("a".into()),
            jwt_metadata_url: Some("https://metadata/".into()),
            ..base()
        });
        assert!(
            e.contains("`jwt_metadata_url`") && e.contains("http://"),
            "{e}"
        );
        let e = err(Overrides {
            jwt_token_source: Some("github_actions".into()),
            jwt_audience: Some("a".into()),
            jwt_metadata_url: Some("http://x".into()),
            ..base()
        });
        assert!(
            e.contains("`jwt_metadata_url`") && e.contains("gcp_metadata"),
            "{e}"
        );
    }

    #[test]
    fn sds_names_are_spires_by_default_and_checked_when_set() {
        let c = from_file("").unwrap();
        assert_eq!(c.sds, crate::sds::SdsConfig::default());
        let c = from_file(
            "[sds]\ndefault_svid_name = \"svid\"\ndefault_bundle_name = \"ca\"\ndisable_spiffe_cert_validation = true\n",
        )
        .unwrap();
        assert_eq!(
            (
                c.sds.default_svid_name.as_str(),
                c.sds.default_bundle_name.as_str(),
                c.sds.default_all_bundles_name.as_str()
            ),
            ("svid", "ca", "ALL")
        );
        assert!(c.sds.disable_spiffe_cert_validation);
        for (toml, want) in [
            (
                "[sds]\ndefault_bundle_name = \"spiffe://x\"\n",
                "sds.default_bundle_name",
            ),
            ("[sds]\ndefault_svid_name = \"ALL\"\n", "must differ"),
            ("[sds]\nnames = 1\n", "unknown field"),
        ] {
            let e = from_file(toml).unwrap_err().to_string();
            assert!(e.contains(want), "{toml}: {e}");
        }
    }

    #[test]
    fn several_server_addresses_from_a_flag_or_a_list() {
        let c = AgentConfig::load(&Overrides {
            server_address: Some("a.example:8081, 10.0.0.2:8081".into()),
            ..base()
        })
        .unwrap();
        assert_eq!(c.server_addresses, ["a.example:8081", "10.0.0.2:8081"]);
        assert_eq!(c.server_address, "a.example:8081");
        let c = from_file("server_address = [\"s1:8081\", \"s2:8081\"]\n").unwrap();
        assert_eq!(c.server_addresses, ["s1:8081", "s2:8081"]);
        for (bad, want) in [
            ("s1:8081,,s2:8081", "empty"),
            ("s1:8081,s1:8081", "twice"),
            ("s1", "not host:port"),
            (":8081", "not host:port"),
        ] {
            let e = err(Overrides {
                server_address: Some(bad.into()),
                ..base()
            });
            assert!(
                e.contains("`server_address`") && e.contains(want),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn github_actions_needs_an_audience_and_a_known_source() {
        let c =
            from_file("jwt_token_source = \"github_actions\"\njwt_audience = \"lanyard-server\"\n")
                .unwrap();
        assert!(
            matches!(c.bootstrap, Bootstrap::GithubActions { ref audience } if audience == "lanyard-server"),
            "{:?}",
            c.bootstrap
        );
        // The flag's spelling.
        let c = AgentConfig::load(&Overrides {
            jwt_token_source: Some("github-actions".into()),
            jwt_audience: Some("aud".into()),
            ..base()
        })
        .unwrap();
        assert!(matches!(c.bootstrap, Bootstrap::GithubActions { .. }));
        let e = err(Overrides {
            jwt_token_source: Some("github_actions".into()),
            ..base()
        });
        assert!(
            e.contains("`jwt_audience`") && e.contains("is required"),
            "{e}"
        );
        let e = err(Overrides {
            jwt_token_source: Some("circleci".into()),
            jwt_audience: Some("aud".into()),
            ..base()
        });
        assert!(
            e.contains("`jwt_token_source`") && e.contains("\"circleci\""),
            "{e}"
        );
        let e = err(Overrides {
            jwt_audience: Some("aud".into()),
            ..base()
        });
        assert!(
            e.contains("`jwt_audience`") && e.contains("only used with"),
            "{e}"
        );
    }

    #[test]
    fn a_gitlab_token_variable_must_be_a_variable_name() {
        let c = from_file("jwt_token_env = \"LANYARD_ID_TOKEN\"\n").unwrap();
        assert!(
            matches!(c.bootstrap, Bootstrap::JwtTokenEnv(ref v) if v == "LANYARD_ID_TOKEN"),
            "{:?}",
            c.bootstrap
        );
        for bad in ["", "1TOKEN", "MY-TOKEN", "$TOKEN"] {
            let e = err(Overrides {
                jwt_token_env: Some(bad.into()),
                ..base()
            });
            assert!(e.contains("`jwt_token_env`"), "{bad}: {e}");
        }
    }

    #[test]
    fn aws_iid_defaults_to_the_link_local_metadata_service() {
        let c = from_file("aws_iid = true\n").unwrap();
        assert!(
            matches!(c.bootstrap, Bootstrap::AwsIid { ref imds_url } if imds_url == DEFAULT_AWS_IMDS_URL),
            "{:?}",
            c.bootstrap
        );
        let c = AgentConfig::load(&Overrides {
            aws_iid: true,
            aws_imds_url: Some("http://127.0.0.1:9999/".into()),
            ..base()
        })
        .unwrap();
        assert!(
            matches!(c.bootstrap, Bootstrap::AwsIid { ref imds_url } if imds_url == "http://127.0.0.1:9999"),
            "{:?}",
            c.bootstrap
        );
        for bad in ["169.254.169.254", "ftp://x", "http://x/?a=b", "http://"] {
            let e = err(Overrides {
                aws_iid: true,
                aws_imds_url: Some(bad.into()),
                ..base()
            });
            assert!(e.contains("`aws_imds_url`"), "{bad}: {e}");
        }
        let e = err(Overrides {
            aws_imds_url: Some("http://127.0.0.1:1".into()),
            ..base()
        });
        assert!(e.contains("`aws_imds_url`") && e.contains("aws_iid"), "{e}");
        let e = from_file("aws_iid = \"yes\"\n").unwrap_err().to_string();
        assert!(e.contains("aws_iid"), "{e}");
    }

    #[test]
    fn exactly_one_way_to_attest() {
        let e = err(Overrides {
            join_token: Some("t".into()),
            aws_iid: true,
            ..base()
        });
        assert!(
            e.contains("one way to attest") && e.contains("join_token, aws_iid"),
            "{e}"
        );
        let e = from_file("jwt_token_env = \"T\"\nk8s_psat_cluster = \"c\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("jwt_token_env, k8s_psat_cluster"), "{e}");
        let e = err(Overrides {
            jwt_token_file: Some("/t".into()),
            jwt_token_source: Some("github_actions".into()),
            jwt_audience: Some("a".into()),
            ..base()
        });
        assert!(e.contains("jwt_token_file, jwt_token_source"), "{e}");
        let e = err(Overrides {
            x509pop_cert: Some("/c".into()),
            ..base()
        });
        assert!(e.contains("both x509pop_cert and x509pop_key"), "{e}");
        assert!(matches!(
            AgentConfig::load(&base()).unwrap().bootstrap,
            Bootstrap::None
        ));
    }

    #[test]
    fn workload_attestors_and_their_tables_from_the_file() {
        let c = from_file(
            "workload_attestors = [\"unix\", \"k8s\", \"docker\", \"systemd\"]\nproc_root = \"/host/proc\"\n[k8s]\nread_only_port = 10255\nnode_name = \"node-1\"\n[docker]\nsocket = \"/run/docker.sock\"\nenv_selectors = [\"ROLE\"]\n[systemd]\nunit_paths = [\"/etc/systemd/system\"]\n",
        )
        .unwrap();
        let names: Vec<&str> = c.workload_attestors.iter().map(|a| a.name()).collect();
        assert_eq!(names, ["unix", "k8s", "docker", "systemd"]);
        match &c.workload_attestors[1] {
            crate::attestor_config::AttestorConfig::K8s(k) => {
                assert_eq!(k.kubelet_url, "http://node-1:10255")
            }
            other => panic!("{other:?}"),
        }
        let e = from_file("workload_attestors = [\"unix\", \"k8s\"]\n[k8s]\nkubelet_port = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kubelet_port"), "{e}");
        assert_eq!(
            AgentConfig::load(&base()).unwrap().workload_attestors.len(),
            1
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = from_file("k8s_cluster = \"c\"\n").unwrap_err().to_string();
        assert!(e.contains("k8s_cluster"), "{e}");
    }
}
