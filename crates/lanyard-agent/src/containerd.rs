//! The `containerd` workload attestor: the caller's container ID from its cgroup
//! ([`crate::cgroup`]), the container from containerd's own API —
//! `containerd.services.containers.v1.Containers/Get` over gRPC on its Unix socket,
//! in each configured namespace in turn (the `containerd-namespace` header):
//!
//! `containerd:namespace:NS`, `containerd:label:KEY:VALUE`, `containerd:image:NAME`
//! (when the container has one), `containerd:runtime:NAME` (e.g.
//! `io.containerd.runc.v2`).
//!
//! The messages are written here from containerd's published
//! `api/services/containers/v1/containers.proto` (field numbers as published; the
//! fields not read — spec, snapshotter, timestamps, extensions — are skipped as
//! unknown fields).
//!
//! Not applicable: a process in no container, in CRI-O's or Podman's, or whose bare
//! ID no configured namespace holds. Errors (`Unavailable`): the socket unreachable
//! or not answering; a `cri-containerd-`/`nerdctl-` container (the cgroup says it is
//! containerd's) that no configured namespace holds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lanyard_core::Selector;
use tonic::transport::{Channel, Endpoint};

use crate::attestor::{AttestError, PeerCredentials, WorkloadAttestor};
use crate::cgroup::{self, Runtime};

/// containerd's socket unless `[containerd] socket` says otherwise.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The namespaces asked unless `[containerd] namespaces` says otherwise: the
/// kubelet's (CRI) and the one `ctr`/`nerdctl` use.
pub const DEFAULT_NAMESPACES: [&str; 2] = ["k8s.io", "default"];
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// `containerd.services.containers.v1.GetContainerRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetContainerRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

/// `containerd.services.containers.v1.GetContainerResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetContainerResponse {
    #[prost(message, optional, tag = "1")]
    pub container: Option<ContainerMsg>,
}

/// `containerd.services.containers.v1.Container` (the fields read).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerMsg {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(map = "string, string", tag = "2")]
    pub labels: std::collections::HashMap<String, String>,
    #[prost(string, tag = "3")]
    pub image: String,
    #[prost(message, optional, tag = "4")]
    pub runtime: Option<RuntimeMsg>,
}

/// `containerd.services.containers.v1.Container.Runtime` (its name).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RuntimeMsg {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// How the attestor reaches containerd.
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    pub socket: PathBuf,
    pub namespaces: Vec<String>,
    pub proc_root: PathBuf,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_CONTAINERD_SOCKET),
            namespaces: DEFAULT_NAMESPACES.iter().map(ToString::to_string).collect(),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// The selectors of `c`, found in namespace `ns` when asked for `id`.
pub fn container_selectors(ns: &str, id: &str, c: &ContainerMsg) -> Result<Vec<Selector>, String> {
    if c.id != id {
        return Err(format!(
            "containerd answered for container {:?} when asked for {id}",
            c.id
        ));
    }
    let mut out: Vec<Selector> = Vec::new();
    let mut push = |value: String| {
        if let Ok(s) = Selector::from_parts("containerd", &value)
            && !out.contains(&s)
        {
            out.push(s);
        }
    };
    push(format!("namespace:{ns}"));
    let mut labels: Vec<_> = c.labels.iter().collect();
    labels.sort();
    for (k, v) in labels {
        push(format!("label:{k}:{v}"));
    }
    if !c.image.is_empty() {
        push(format!("image:{}", c.image));
    }
    if let Some(r) = &c.runtime
        && !r.name.is_empty()
    {
        push(format!("runtime:{}", r.name));
    }
    Ok(out)
}

/// The attestor.
#[derive(Debug, Clone)]
pub struct ContainerdAttestor {
    cfg: Arc<ContainerdConfig>,
}

const NAME: &str = "containerd";

fn source(reason: impl Into<String>) -> AttestError {
    AttestError::Source {
        attestor: NAME,
        reason: reason.into(),
    }
}

impl ContainerdAttestor {
    pub fn new(cfg: ContainerdConfig) -> Self {
        Self { cfg: Arc::new(cfg) }
    }

    async fn channel(&self) -> Result<Channel, String> {
        let socket = self.cfg.socket.clone();
        let shown = socket.display().to_string();
        Endpoint::try_from("http://containerd")
            .map_err(|e| e.to_string())?
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await
            .map_err(|e| {
                let cause = std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| e.to_string());
                format!("cannot connect to the containerd socket {shown}: {cause}")
            })
    }

    /// `Containers/Get` of `id` in namespace `ns`: `None` when it has no such container.
    async fn get(&self, ch: Channel, ns: &str, id: &str) -> Result<Option<ContainerMsg>, String> {
        let mut grpc = tonic::client::Grpc::new(ch);
        grpc.ready()
            .await
            .map_err(|e| format!("containerd is not ready: {e}"))?;
        let mut req = tonic::Request::new(GetContainerRequest { id: id.to_string() });
        let ns_value = ns
            .parse()
            .map_err(|_| format!("namespace {ns:?} cannot be sent as a header"))?;
        req.metadata_mut().insert("containerd-namespace", ns_value);
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/containerd.services.containers.v1.Containers/Get",
        );
        let codec: tonic_prost::ProstCodec<GetContainerRequest, GetContainerResponse> =
            tonic_prost::ProstCodec::default();
        match grpc.unary(req, path, codec).await {
            Ok(r) => Ok(r.into_inner().container),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(format!(
                "containerd answered Containers/Get with {:?}: {}",
                s.code(),
                s.message()
            )),
        }
    }

    /// Selectors of `pid`'s containerd container, or none when it is in none.
    pub async fn attest_pid(&self, pid: i32) -> Result<Vec<Selector>, AttestError> {
        let facts = cgroup::read_facts(&self.cfg.proc_root, pid)?;
        let Some(container) = facts.container else {
            return Ok(Vec::new());
        };
        if matches!(container.runtime, Runtime::CriO | Runtime::Podman) {
            return Ok(Vec::new());
        }
        let work = async {
            let ch = self.channel().await?;
            for ns in &self.cfg.namespaces {
                if let Some(c) = self.get(ch.clone(), ns, &container.id).await? {
                    return container_selectors(ns, &container.id, &c).map(Some);
                }
            }
            Ok::<_, String>(None)
        };
        let found = tokio::time::timeout(CALL_TIMEOUT * 2, work)
            .await
            .map_err(|_| {
                source(format!(
                    "the containerd socket {} did not answer within {}s",
                    self.cfg.socket.display(),
                    (CALL_TIMEOUT * 2).as_secs()
                ))
            })?
            .map_err(source)?;
        match found {
            Some(s) => Ok(s),
            None if container.runtime == Runtime::Containerd => Err(source(format!(
                "no such container {} in containerd namespaces {:?} at {} (process {pid}'s cgroup names it)",
                container.id,
                self.cfg.namespaces,
                self.cfg.socket.display()
            ))),
            None => Ok(Vec::new()),
        }
    }
}

#[tonic::async_trait]
impl WorkloadAttestor for ContainerdAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    async fn attest(&self, peer: &PeerCredentials) -> Result<Vec<Selector>, AttestError> {
        self.attest_pid(peer.pid).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use prost::Message as _;

    const ID: &str = "c3b1ff2bbcf1035d30703ec3bffc8318a70101a1c307757b5cb79c7b7a48e4f0";

    #[test]
    fn selectors_of_a_container_message() {
        let c = ContainerMsg {
            id: ID.into(),
            labels: [
                (
                    "io.kubernetes.pod.namespace".to_string(),
                    "shop".to_string(),
                ),
                ("app".to_string(), "web".to_string()),
            ]
            .into_iter()
            .collect(),
            image: "docker.io/library/nginx:1.25".into(),
            runtime: Some(RuntimeMsg {
                name: "io.containerd.runc.v2".into(),
            }),
        };
        let s: Vec<String> = container_selectors("k8s.io", ID, &c)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            s,
            [
                "containerd:namespace:k8s.io",
                "containerd:label:app:web",
                "containerd:label:io.kubernetes.pod.namespace:shop",
                "containerd:image:docker.io/library/nginx:1.25",
                "containerd:runtime:io.containerd.runc.v2",
            ]
        );
        assert!(container_selectors("k8s.io", &"a".repeat(64), &c).is_err());
    }

    #[test]
    fn wire_format_matches_the_published_field_numbers() {
        // Container{id=1, labels=2 (map entry key=1 value=2), image=3,
        // runtime=4{name=1}, spec=5 (skipped)}, hand-encoded.
        let mut b = vec![0x0a, 3, b'a', b'b', b'c'];
        b.extend([0x12, 6, 0x0a, 1, b'k', 0x12, 1, b'v']);
        b.extend([0x1a, 1, b'i']);
        b.extend([0x22, 3, 0x0a, 1, b'r']);
        b.extend([0x2a, 2, 0x0a, 0]);
        let c = ContainerMsg::decode(b.as_slice()).unwrap();
        assert_eq!(c.id, "abc");
        assert_eq!(c.labels.get("k").map(String::as_str), Some("v"));
        assert_eq!(c.image, "i");
        assert_eq!(c.runtime.unwrap().name, "r");
        let r = GetContainerRequest { id: "x".into() }.encode_to_vec();
        assert_eq!(r, [0x0a, 1, b'x']);
    }

    #[tokio::test]
    async fn an_unreachable_socket_is_an_error_and_no_container_is_not_applicable() {
        let dir = tempfile::tempdir().unwrap();
        for (pid, cg) in [
            (
                30,
                format!(
                    "0::/system.slice/containerd.service/kubepods-x/cri-containerd-{ID}.scope\n"
                ),
            ),
            (31, "0::/system.slice/cron.service\n".to_string()),
        ] {
            let p = dir.path().join(pid.to_string());
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(
                p.join("stat"),
                format!("{pid} (w) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0"),
            )
            .unwrap();
            std::fs::write(p.join("cgroup"), cg).unwrap();
        }
        let a = ContainerdAttestor::new(ContainerdConfig {
            socket: dir.path().join("none.sock"),
            proc_root: dir.path().to_path_buf(),
            ..ContainerdConfig::default()
        });
        let e = a.attest_pid(30).await.unwrap_err().to_string();
        assert!(
            e.starts_with("the containerd attestor: cannot connect to the containerd socket")
                && e.contains("none.sock"),
            "{e}"
        );
        assert!(a.attest_pid(31).await.unwrap().is_empty());
    }
}
