//! Which workload attestors the agent runs and how each is set up: agent.toml's
//! `workload_attestors = ["unix", "k8s", "docker", "systemd"]` and `proc_root`,
//! the `[k8s]`, `[docker]` and `[systemd]` tables, and the flags
//! `--workload-attestors` and `--proc-root`. Errors name the key.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::attestor::{
    ATTEST_BOUND, AttestError, UnixAttestor, WorkloadAttestor, WorkloadAttestors,
};
use crate::containerd::{ContainerdAttestor, ContainerdConfig};
use crate::docker::{DEFAULT_DOCKER_SOCKET, DockerAttestor, DockerConfig};
use crate::error::ConfigError;
use crate::k8s::{
    DEFAULT_KUBELET_CA_FILE, DEFAULT_KUBELET_URL, DEFAULT_POD_WAIT, DEFAULT_TOKEN_FILE,
    K8sAttestor, K8sConfig,
};
use crate::systemd::{SystemdAttestor, SystemdConfig};

/// `[k8s]` in agent.toml.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sFile {
    pub kubelet_url: Option<String>,
    pub kubelet_ca_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub node_name: Option<String>,
    pub read_only_port: Option<u16>,
    pub pod_wait_ms: Option<u64>,
}

/// `[docker]` in agent.toml.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerFile {
    pub socket: Option<PathBuf>,
    #[serde(default)]
    pub env_selectors: Vec<String>,
}

/// `[containerd]` in agent.toml.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerdFile {
    pub socket: Option<PathBuf>,
    pub namespaces: Option<Vec<String>>,
}

/// `[systemd]` in agent.toml.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdFile {
    pub unit_paths: Option<Vec<PathBuf>>,
}

/// One enabled workload attestor with its settings.
#[derive(Debug, Clone)]
pub enum AttestorConfig {
    Unix { proc_root: PathBuf },
    K8s(K8sConfig),
    Docker(DockerConfig),
    Containerd(ContainerdConfig),
    Systemd(SystemdConfig),
}

impl AttestorConfig {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Unix { .. } => "unix",
            Self::K8s(_) => "k8s",
            Self::Docker(_) => "docker",
            Self::Containerd(_) => "containerd",
            Self::Systemd(_) => "systemd",
        }
    }
}

/// The names `workload_attestors` accepts.
pub const ATTESTOR_NAMES: [&str; 5] = ["unix", "k8s", "docker", "containerd", "systemd"];

fn invalid(key: &'static str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::invalid(key, reason)
}

/// The enabled attestors, in the order given (flags win over the file).
pub fn resolve(
    names_flag: Option<&[String]>,
    names_file: Option<&[String]>,
    proc_root: Option<PathBuf>,
    k8s: Option<&K8sFile>,
    docker: Option<&DockerFile>,
    containerd: Option<&ContainerdFile>,
    systemd: Option<&SystemdFile>,
) -> Result<Vec<AttestorConfig>, ConfigError> {
    let names: Vec<String> = names_flag
        .or(names_file)
        .map(<[String]>::to_vec)
        .unwrap_or_else(|| vec!["unix".to_string()]);
    if names.is_empty() {
        return Err(invalid(
            "workload_attestors",
            "is empty: enable at least one of \"unix\", \"k8s\", \"docker\", \"systemd\" (usually \"unix\" first)",
        ));
    }
    let proc_root = proc_root.unwrap_or_else(|| PathBuf::from("/proc"));
    if !proc_root.is_absolute() {
        return Err(invalid(
            "proc_root",
            format!(
                "{} is not an absolute path (the default is /proc)",
                proc_root.display()
            ),
        ));
    }
    let mut out: Vec<AttestorConfig> = Vec::new();
    for n in &names {
        let n = n.trim();
        if out.iter().any(|a| a.name() == n) {
            return Err(invalid(
                "workload_attestors",
                format!("{n:?} is listed twice"),
            ));
        }
        out.push(match n {
            "unix" => AttestorConfig::Unix {
                proc_root: proc_root.clone(),
            },
            "k8s" => AttestorConfig::K8s(k8s_config(k8s.cloned().unwrap_or_default(), &proc_root)?),
            "docker" => AttestorConfig::Docker(docker_config(
                docker.cloned().unwrap_or_default(),
                &proc_root,
            )?),
            "containerd" => AttestorConfig::Containerd(containerd_config(
                containerd.cloned().unwrap_or_default(),
                &proc_root,
            )?),
            "systemd" => AttestorConfig::Systemd(SystemdConfig {
                unit_paths: systemd
                    .and_then(|s| s.unit_paths.clone())
                    .unwrap_or_else(|| SystemdConfig::default().unit_paths),
                proc_root: proc_root.clone(),
            }),
            other => {
                return Err(invalid(
                    "workload_attestors",
                    format!(
                        "{other:?} is not a workload attestor; use {}",
                        ATTESTOR_NAMES.map(|a| format!("{a:?}")).join(", ")
                    ),
                ));
            }
        });
    }
    // A table for an attestor that is not enabled is a mistake worth saying.
    for (key, set) in [
        ("k8s", k8s.is_some()),
        ("docker", docker.is_some()),
        ("containerd", containerd.is_some()),
        ("systemd", systemd.is_some()),
    ] {
        if set && !out.iter().any(|a| a.name() == key) {
            return Err(invalid(
                match key {
                    "k8s" => "k8s",
                    "docker" => "docker",
                    "containerd" => "containerd",
                    _ => "systemd",
                },
                format!(
                    "the [{key}] table is set but {key:?} is not in workload_attestors; add it there (e.g. workload_attestors = [\"unix\", {key:?}]) or remove the table"
                ),
            ));
        }
    }
    Ok(out)
}

fn k8s_config(f: K8sFile, proc_root: &std::path::Path) -> Result<K8sConfig, ConfigError> {
    let host = match &f.node_name {
        Some(n) if n.trim().is_empty() || n.contains(['/', ':', '@', ' ']) => {
            return Err(invalid(
                "k8s.node_name",
                format!(
                    "{n:?} is not a node name (the kubelet's host name, e.g. from the downward API's spec.nodeName)"
                ),
            ));
        }
        Some(n) => n.clone(),
        None => "127.0.0.1".to_string(),
    };
    let url = match (f.read_only_port, f.kubelet_url) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "k8s.read_only_port",
                "and k8s.kubelet_url are both set; give one (read_only_port = 10255 means http://NODE:10255)",
            ));
        }
        (Some(0), None) => return Err(invalid("k8s.read_only_port", "must be a port, not 0")),
        (Some(p), None) => {
            for (key, set) in [
                ("k8s.kubelet_ca_file", f.kubelet_ca_file.is_some()),
                ("k8s.token_file", f.token_file.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        key,
                        "is not used with read_only_port (plain HTTP, no authentication); remove it, or use the secure port via kubelet_url",
                    ));
                }
            }
            format!("http://{host}:{p}")
        }
        (None, Some(u)) => {
            let u = u.trim_end_matches('/').to_string();
            let ok = (u.starts_with("https://") || u.starts_with("http://"))
                && !u.contains(['?', '#'])
                && u.split_once("://")
                    .is_some_and(|(_, r)| !r.is_empty() && !r.contains('/'));
            if !ok {
                return Err(invalid(
                    "k8s.kubelet_url",
                    format!(
                        "{u:?} is not https://HOST:PORT (the secure port, default {DEFAULT_KUBELET_URL}) or http://HOST:PORT (the read-only port)"
                    ),
                ));
            }
            u
        }
        (None, None) if f.node_name.is_some() => format!("https://{host}:10250"),
        (None, None) => DEFAULT_KUBELET_URL.to_string(),
    };
    let pod_wait = match f.pod_wait_ms {
        None => DEFAULT_POD_WAIT,
        Some(ms) => {
            let d = Duration::from_millis(ms);
            // The kubelet call after the wait must still fit in the bound.
            if d + Duration::from_secs(2) >= ATTEST_BOUND {
                return Err(invalid(
                    "k8s.pod_wait_ms",
                    format!(
                        "{ms} leaves no time for the kubelet call within the {}ms attestation bound; use at most {}",
                        ATTEST_BOUND.as_millis(),
                        ATTEST_BOUND.as_millis() - 2001
                    ),
                ));
            }
            d
        }
    };
    Ok(K8sConfig {
        kubelet_url: url,
        kubelet_ca_file: f
            .kubelet_ca_file
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBELET_CA_FILE)),
        token_file: f
            .token_file
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILE)),
        pod_wait,
        proc_root: proc_root.to_path_buf(),
    })
}

fn docker_config(f: DockerFile, proc_root: &std::path::Path) -> Result<DockerConfig, ConfigError> {
    for k in &f.env_selectors {
        let ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(invalid(
                "docker.env_selectors",
                format!("{k:?} is not an environment variable name (letters, digits and _)"),
            ));
        }
    }
    let socket = f
        .socket
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKER_SOCKET));
    if !socket.is_absolute() {
        return Err(invalid(
            "docker.socket",
            format!(
                "{} is not an absolute path (default {DEFAULT_DOCKER_SOCKET})",
                socket.display()
            ),
        ));
    }
    Ok(DockerConfig {
        socket,
        env_selectors: f.env_selectors,
        proc_root: proc_root.to_path_buf(),
    })
}

fn containerd_config(
    f: ContainerdFile,
    proc_root: &std::path::Path,
) -> Result<ContainerdConfig, ConfigError> {
    let d = ContainerdConfig::default();
    let socket = f.socket.unwrap_or(d.socket);
    if !socket.is_absolute() {
        return Err(invalid(
            "containerd.socket",
            format!("{} is not an absolute path", socket.display()),
        ));
    }
    let namespaces = f.namespaces.unwrap_or(d.namespaces);
    if namespaces.is_empty() {
        return Err(invalid(
            "containerd.namespaces",
            "is empty: list the namespaces to look containers up in (e.g. [\"k8s.io\", \"default\"])",
        ));
    }
    for n in &namespaces {
        let ok = !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !ok {
            return Err(invalid(
                "containerd.namespaces",
                format!("{n:?} is not a containerd namespace name"),
            ));
        }
    }
    Ok(ContainerdConfig {
        socket,
        namespaces,
        proc_root: proc_root.to_path_buf(),
    })
}

/// The attestors of a configuration, each within [`ATTEST_BOUND`].
pub fn build(configs: &[AttestorConfig]) -> Result<WorkloadAttestors, AttestError> {
    let mut list: Vec<Arc<dyn WorkloadAttestor>> = Vec::new();
    for c in configs {
        list.push(match c {
            AttestorConfig::Unix { proc_root } => Arc::new(UnixAttestor::new(proc_root.clone())),
            AttestorConfig::K8s(k) => Arc::new(K8sAttestor::new(k.clone())?),
            AttestorConfig::Docker(d) => Arc::new(DockerAttestor::new(d.clone())),
            AttestorConfig::Containerd(c) => Arc::new(ContainerdAttestor::new(c.clone())),
            AttestorConfig::Systemd(s) => Arc::new(SystemdAttestor::new(s.clone())),
        });
    }
    Ok(WorkloadAttestors::new(list, ATTEST_BOUND))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    fn err(r: Result<Vec<AttestorConfig>, ConfigError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn unix_by_default_and_in_the_order_given() {
        let c = resolve(None, None, None, None, None, None, None).unwrap();
        assert_eq!(
            c.iter().map(AttestorConfig::name).collect::<Vec<_>>(),
            ["unix"]
        );
        let file = names(&["unix", "k8s", "docker", "systemd"]);
        let c = resolve(
            None,
            Some(&file),
            Some("/host/proc".into()),
            None,
            None,
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            c.iter().map(AttestorConfig::name).collect::<Vec<_>>(),
            ["unix", "k8s", "docker", "systemd"]
        );
        match &c[1] {
            AttestorConfig::K8s(k) => {
                assert_eq!(k.kubelet_url, DEFAULT_KUBELET_URL);
                assert_eq!(k.proc_root, PathBuf::from("/host/proc"));
            }
            other => panic!("{other:?}"),
        }
        // The flag wins.
        let flag = names(&["docker"]);
        let c = resolve(Some(&flag), Some(&file), None, None, None, None, None).unwrap();
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn kubelet_url_from_the_node_name_or_the_read_only_port() {
        let k = |f: K8sFile| match resolve(
            None,
            Some(&names(&["k8s"])),
            None,
            Some(&f),
            None,
            None,
            None,
        )
        .map(|mut v| v.remove(0))
        {
            Ok(AttestorConfig::K8s(k)) => Ok(k),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(
            k(K8sFile {
                node_name: Some("node-1".into()),
                ..K8sFile::default()
            })
            .unwrap()
            .kubelet_url,
            "https://node-1:10250"
        );
        assert_eq!(
            k(K8sFile {
                read_only_port: Some(10255),
                ..K8sFile::default()
            })
            .unwrap()
            .kubelet_url,
            "http://127.0.0.1:10255"
        );
        let e = k(K8sFile {
            read_only_port: Some(10255),
            kubelet_url: Some("https://x:10250".into()),
            ..K8sFile::default()
        })
        .unwrap_err();
        assert!(e.contains("`k8s.read_only_port`"), "{e}");
        let e = k(K8sFile {
            read_only_port: Some(10255),
            token_file: Some("/t".into()),
            ..K8sFile::default()
        })
        .unwrap_err();
        assert!(e.contains("`k8s.token_file`"), "{e}");
        for bad in ["127.0.0.1:10250", "https://x:1/pods", "ftp://x"] {
            let e = k(K8sFile {
                kubelet_url: Some(bad.into()),
                ..K8sFile::default()
            })
            .unwrap_err();
            assert!(e.contains("`k8s.kubelet_url`"), "{bad}: {e}");
        }
        let e = k(K8sFile {
            pod_wait_ms: Some(4000),
            ..K8sFile::default()
        })
        .unwrap_err();
        assert!(
            e.contains("`k8s.pod_wait_ms`") && e.contains("at most 2999"),
            "{e}"
        );
    }

    #[test]
    fn mistakes_name_their_key() {
        let e = err(resolve(
            None,
            Some(&names(&["unix", "kubernetes"])),
            None,
            None,
            None,
            None,
            None,
        ));
        assert!(
            e.contains("`workload_attestors`") && e.contains("\"kubernetes\""),
            "{e}"
        );
        let e = err(resolve(
            None,
            Some(&names(&["unix", "unix"])),
            None,
            None,
            None,
            None,
            None,
        ));
        assert!(e.contains("listed twice"), "{e}");
        let e = err(resolve(None, Some(&[]), None, None, None, None, None));
        assert!(e.contains("is empty"), "{e}");
        let e = err(resolve(
            None,
            None,
            None,
            None,
            Some(&DockerFile::default()),
            None,
            None,
        ));
        assert!(
            e.contains("`docker`") && e.contains("[docker] table"),
            "{e}"
        );
        let e = err(resolve(
            None,
            Some(&names(&["docker"])),
            None,
            None,
            Some(&DockerFile {
                env_selectors: vec!["A-B".into()],
                ..DockerFile::default()
            }),
            None,
            None,
        ));
        assert!(e.contains("`docker.env_selectors`"), "{e}");
        let e = err(resolve(
            None,
            None,
            Some("proc".into()),
            None,
            None,
            None,
            None,
        ));
        assert!(e.contains("`proc_root`"), "{e}");
    }
}
