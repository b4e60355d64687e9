//! The `k8s` workload attestor: the caller's pod and container from its cgroup
//! ([`crate::cgroup`]), the pod's facts from the kubelet's `/pods` (the PodList of
//! the pods bound to this node), as selectors in SPIRE's form:
//!
//! `k8s:ns:NS`, `k8s:sa:SA`, `k8s:pod-name:NAME`, `k8s:pod-uid:UID`,
//! `k8s:pod-label:KEY:VALUE`, `k8s:pod-owner:KIND:NAME`, `k8s:pod-owner-uid:UID`,
//! `k8s:container-name:NAME`, `k8s:container-image:IMAGE` (the spec's image, the
//! status's image and the status's image ID, each once), `k8s:node-name:NODE`.
//!
//! The decision ([`pod_selectors`]) is a pure function of the PodList bytes, the pod
//! UID and the container ID; the attestor only gathers them. Not applicable (no
//! selectors, not an error): a process outside any pod. Errors (`Unavailable`): in a
//! pod's cgroup but in no container of it; the kubelet unreachable or refusing; the
//! pod or its container still not listed after the retry window.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanyard_core::Selector;
use lanyard_tls::http::{HttpClient, HttpRequest, Roots};
use serde::Deserialize;

use crate::attestor::{AttestError, PeerCredentials, WorkloadAttestor};
use crate::cgroup;

/// The kubelet's secure port on this node.
pub const DEFAULT_KUBELET_URL: &str = "https://127.0.0.1:10250";
/// The CA of the pod's service account (SPIRE's default for the kubelet CA too).
pub const DEFAULT_KUBELET_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The agent pod's own service-account token.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// How long a pod or container may be missing from `/pods` before attestation fails
/// (a new pod's status reaches the kubelet's list a moment after it starts).
pub const DEFAULT_POD_WAIT: Duration = Duration::from_millis(2000);

/// How the attestor reaches the kubelet.
#[derive(Debug, Clone)]
pub struct K8sConfig {
    /// `https://HOST:10250` (secure port: bearer token, CA-verified) or
    /// `http://HOST:10255` (the read-only port: neither).
    pub kubelet_url: String,
    /// The CA that issued the kubelet's serving certificate (`https://` only).
    pub kubelet_ca_file: PathBuf,
    /// The service-account token sent to the secure port, re-read on every call.
    pub token_file: PathBuf,
    /// How long to wait for a pod that is not yet listed.
    pub pod_wait: Duration,
    /// Where `/proc` is.
    pub proc_root: PathBuf,
}

impl Default for K8sConfig {
    fn default() -> Self {
        Self {
            kubelet_url: DEFAULT_KUBELET_URL.to_string(),
            kubelet_ca_file: PathBuf::from(DEFAULT_KUBELET_CA_FILE),
            token_file: PathBuf::from(DEFAULT_TOKEN_FILE),
            pod_wait: DEFAULT_POD_WAIT,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

// The parts of the kubelet's PodList (core/v1) the selectors come from.
#[derive(Debug, Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Debug, Deserialize)]
struct Pod {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: Spec,
    #[serde(default)]
    status: Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    owner_references: Vec<OwnerRef>,
}

#[derive(Debug, Deserialize)]
struct OwnerRef {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    uid: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    node_name: String,
    #[serde(default)]
    service_account_name: String,
    #[serde(default)]
    containers: Vec<SpecContainer>,
    #[serde(default)]
    init_containers: Vec<SpecContainer>,
    #[serde(default)]
    ephemeral_containers: Vec<SpecContainer>,
}

#[derive(Debug, Deserialize)]
struct SpecContainer {
    #[serde(default)]
    name: String,
    #[serde(default)]
    image: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    #[serde(default)]
    name: String,
    #[serde(default)]
    image: String,
    #[serde(rename = "imageID", default)]
    image_id: String,
    /// `RUNTIME://ID`, e.g. `containerd://9bca…`; empty until the container starts.
    #[serde(rename = "containerID", default)]
    container_id: String,
}

/// What the PodList says about a pod's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodLookup {
    Found(Vec<Selector>),
    /// No pod with this UID is listed (yet).
    NoPod,
    /// The pod is listed, but none of its container statuses has this ID (yet).
    NoContainer {
        pod: String,
    },
}

/// Why a PodList could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodListError {
    #[error("the kubelet's /pods answer is not a PodList: {0}")]
    NotAPodList(String),
}

/// The selectors of container `container_id` of pod `pod_uid`, from the kubelet's
/// PodList JSON.
pub fn pod_selectors(
    podlist: &[u8],
    pod_uid: &str,
    container_id: &str,
) -> Result<PodLookup, PodListError> {
    let list: PodList =
        serde_json::from_slice(podlist).map_err(|e| PodListError::NotAPodList(e.to_string()))?;
    let Some(pod) = list.items.iter().find(|p| p.metadata.uid == pod_uid) else {
        return Ok(PodLookup::NoPod);
    };
    let status = pod
        .status
        .container_statuses
        .iter()
        .chain(&pod.status.init_container_statuses)
        .chain(&pod.status.ephemeral_container_statuses)
        .find(|c| {
            c.container_id
                .split_once("://")
                .is_some_and(|(_, id)| id == container_id)
        });
    let Some(status) = status else {
        return Ok(PodLookup::NoContainer {
            pod: format!("{}/{}", pod.metadata.namespace, pod.metadata.name),
        });
    };
    let mut out: Vec<Selector> = Vec::new();
    let mut push = |value: String| {
        // A value a selector cannot hold (empty, whitespace) is no fact.
        if let Ok(s) = Selector::from_parts("k8s", &value)
            && !out.contains(&s)
        {
            out.push(s);
        }
    };
    let m = &pod.metadata;
    push(format!("ns:{}", m.namespace));
    push(format!("sa:{}", pod.spec.service_account_name));
    push(format!("pod-name:{}", m.name));
    push(format!("pod-uid:{}", m.uid));
    for (k, v) in &m.labels {
        push(format!("pod-label:{k}:{v}"));
    }
    for o in &m.owner_references {
        push(format!("pod-owner:{}:{}", o.kind, o.name));
        push(format!("pod-owner-uid:{}", o.uid));
    }
    push(format!("node-name:{}", pod.spec.node_name));
    push(format!("container-name:{}", status.name));
    let spec_image = pod
        .spec
        .containers
        .iter()
        .chain(&pod.spec.init_containers)
        .chain(&pod.spec.ephemeral_containers)
        .find(|c| c.name == status.name)
        .map(|c| c.image.clone());
    for image in spec_image
        .into_iter()
        .chain([status.image.clone(), status.image_id.clone()])
    {
        if !image.is_empty() {
            push(format!("container-image:{image}"));
        }
    }
    Ok(PodLookup::Found(out))
}

/// The attestor.
#[derive(Debug, Clone)]
pub struct K8sAttestor {
    cfg: Arc<K8sConfig>,
    client: HttpClient,
    https: bool,
}

const NAME: &str = "k8s";

fn source(reason: impl Into<String>) -> AttestError {
    AttestError::Source {
        attestor: NAME,
        reason: reason.into(),
    }
}

impl K8sAttestor {
    /// A client for the configured kubelet (the CA file is read now).
    pub fn new(cfg: K8sConfig) -> Result<Self, AttestError> {
        let https = cfg.kubelet_url.starts_with("https://");
        if !https && !cfg.kubelet_url.starts_with("http://") {
            return Err(source(format!(
                "kubelet_url {:?} is not an https:// (secure port) or http:// (read-only port) URL",
                cfg.kubelet_url
            )));
        }
        let roots = if https {
            Roots::PemFile(cfg.kubelet_ca_file.clone())
        } else {
            Roots::None
        };
        let client = HttpClient::new(&roots)
            .map_err(|e| source(format!("the kubelet's CA (kubelet_ca_file): {e}")))?
            // Each request stays well inside the Workload API's attestation bound.
            .with_timeout(Duration::from_secs(2))
            .with_max_body(64 * 1024 * 1024);
        Ok(Self {
            cfg: Arc::new(cfg),
            client,
            https,
        })
    }

    async fn fetch_pods(&self) -> Result<Vec<u8>, AttestError> {
        let url = format!("{}/pods", self.cfg.kubelet_url.trim_end_matches('/'));
        let mut req = HttpRequest::get(&url).header("Accept", "application/json");
        if self.https {
            let token = std::fs::read_to_string(&self.cfg.token_file).map_err(|e| {
                source(format!(
                    "cannot read the service-account token {} (token_file): {e}",
                    self.cfg.token_file.display()
                ))
            })?;
            req = req.header("Authorization", &format!("Bearer {}", token.trim()));
        }
        let resp = self
            .client
            .send(req)
            .await
            .map_err(|e| source(format!("the kubelet at {url} is unreachable: {e}")))?;
        match resp.status {
            200 => Ok(resp.body),
            401 | 403 => Err(source(format!(
                "the kubelet refused the agent (HTTP {}): its service account needs `get` on `nodes/proxy` (and a valid token in token_file); {}",
                resp.status,
                resp.snippet()
            ))),
            s => Err(source(format!(
                "the kubelet answered /pods with HTTP {s}: {}",
                resp.snippet()
            ))),
        }
    }

    /// Selectors of `pid`'s container, or none when it is in no pod.
    pub async fn attest_pid(&self, pid: i32) -> Result<Vec<Selector>, AttestError> {
        let facts = cgroup::read_facts(&self.cfg.proc_root, pid)?;
        let Some(pod_uid) = facts.pod_uid else {
            return Ok(Vec::new());
        };
        let Some(container) = facts.container else {
            return Err(source(format!(
                "process {pid} is in pod {pod_uid}'s cgroup but in none of its containers (a runtime helper such as conmon?)"
            )));
        };
        let deadline = Instant::now() + self.cfg.pod_wait;
        loop {
            let body = self.fetch_pods().await?;
            let found =
                pod_selectors(&body, &pod_uid, &container.id).map_err(|e| source(e.to_string()))?;
            let missing = match found {
                PodLookup::Found(s) => return Ok(s),
                PodLookup::NoPod => format!("pod {pod_uid} is not listed by the kubelet"),
                PodLookup::NoContainer { pod } => {
                    format!("pod {pod} has no container {} in its status", container.id)
                }
            };
            if Instant::now() >= deadline {
                return Err(source(format!(
                    "{missing} (waited {}ms)",
                    self.cfg.pod_wait.as_millis()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tonic::async_trait]
impl WorkloadAttestor for K8sAttestor {
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    const CID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";

    /// A PodList as the kubelet's `/pods` returns it (core/v1, trimmed of fields the
    /// attestor does not read but keeping their shape: managedFields, volumes,
    /// conditions stay out for brevity; unknown fields are ignored).
    pub(crate) fn podlist(uid: &str, cid: &str) -> String {
        serde_json::json!({
          "kind": "PodList",
          "apiVersion": "v1",
          "metadata": {},
          "items": [
            {
              "metadata": {
                "name": "other", "namespace": "kube-system",
                "uid": "11111111-2222-3333-4444-555555555555",
                "labels": {"k8s-app": "kube-dns"}
              },
              "spec": {"nodeName": "node-1", "serviceAccountName": "coredns",
                       "containers": [{"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.11.1"}]},
              "status": {"phase": "Running", "containerStatuses": [
                {"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.11.1",
                 "imageID": "registry.k8s.io/coredns/coredns@sha256:1eeb4c7316bacb1d4c8ead65571cd92dd21e27359f0d4917f1a5822a73b75db1",
                 "containerID": format!("containerd://{}", "2".repeat(64)), "ready": true, "restartCount": 0}
              ]}
            },
            {
              "metadata": {
                "name": "web-7d4b9c-xk2lp", "generateName": "web-7d4b9c-",
                "namespace": "shop", "uid": uid, "resourceVersion": "48211",
                "creationTimestamp": "2024-05-02T10:11:12Z",
                "labels": {"app": "web", "pod-template-hash": "7d4b9c"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                  "name": "web-7d4b9c", "uid": "fd41c180-5ddf-4baa-94f8-68d01c999136",
                  "controller": true, "blockOwnerDeletion": true}]
              },
              "spec": {
                "nodeName": "node-1", "serviceAccountName": "web", "serviceAccount": "web",
                "initContainers": [{"name": "init", "image": "busybox:1.36"}],
                "containers": [{"name": "nginx", "image": "nginx:1.25",
                  "ports": [{"containerPort": 80, "protocol": "TCP"}]}]
              },
              "status": {
                "phase": "Running", "podIP": "10.244.1.7", "qosClass": "Burstable",
                "initContainerStatuses": [{"name": "init", "image": "docker.io/library/busybox:1.36",
                  "imageID": "docker.io/library/busybox@sha256:9ae97d36d26566ff84e8893c64a6dc4fe8ca6d1144bf5b87b2b85a32def253c7",
                  "containerID": format!("containerd://{}", "3".repeat(64)),
                  "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
                "containerStatuses": [{"name": "nginx", "image": "docker.io/library/nginx:1.25",
                  "imageID": "docker.io/library/nginx@sha256:a484819eb60211f5299034ac80f6a681b06f89e65866ce91f356ed7c72af059c",
                  "containerID": format!("containerd://{cid}"), "ready": true, "restartCount": 0, "started": true,
                  "state": {"running": {"startedAt": "2024-05-02T10:11:15Z"}}}]
              }
            }
          ]
        })
        .to_string()
    }

    fn strings(s: &[Selector]) -> Vec<String> {
        s.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_pods_container_gets_spire_form_selectors() {
        let PodLookup::Found(s) = pod_selectors(podlist(UID, CID).as_bytes(), UID, CID).unwrap()
        else {
            panic!("not found")
        };
        assert_eq!(
            strings(&s),
            [
                "k8s:ns:shop",
                "k8s:sa:web",
                "k8s:pod-name:web-7d4b9c-xk2lp",
                "k8s:pod-uid:2c48913c-b29f-11e7-9350-020968147796",
                "k8s:pod-label:app:web",
                "k8s:pod-label:pod-template-hash:7d4b9c",
                "k8s:pod-owner:ReplicaSet:web-7d4b9c",
                "k8s:pod-owner-uid:fd41c180-5ddf-4baa-94f8-68d01c999136",
                "k8s:node-name:node-1",
                "k8s:container-name:nginx",
                "k8s:container-image:nginx:1.25",
                "k8s:container-image:docker.io/library/nginx:1.25",
                "k8s:container-image:docker.io/library/nginx@sha256:a484819eb60211f5299034ac80f6a681b06f89e65866ce91f356ed7c72af059c",
            ]
        );
        // An init container is found by its ID too.
        let PodLookup::Found(s) =
            pod_selectors(podlist(UID, CID).as_bytes(), UID, &"3".repeat(64)).unwrap()
        else {
            panic!("not found")
        };
        assert!(strings(&s).contains(&"k8s:container-name:init".to_string()));
    }

    #[test]
    fn a_container_of_another_pod_is_not_this_pods() {
        // The coredns container's ID with the web pod's UID: the container must be
        // in the pod the cgroup names.
        assert_eq!(
            pod_selectors(podlist(UID, CID).as_bytes(), UID, &"2".repeat(64)).unwrap(),
            PodLookup::NoContainer {
                pod: "shop/web-7d4b9c-xk2lp".into()
            }
        );
        assert_eq!(
            pod_selectors(
                podlist(UID, CID).as_bytes(),
                "99999999-2222-3333-4444-555555555555",
                CID
            )
            .unwrap(),
            PodLookup::NoPod
        );
        assert!(pod_selectors(b"<html>", UID, CID).is_err());
        assert_eq!(
            pod_selectors(br#"{"kind":"PodList","items":[]}"#, UID, CID).unwrap(),
            PodLookup::NoPod
        );
    }

    /// A fake /proc with pid 42 in the web pod's container (systemd driver, v2).
    fn fake_proc(uid: &str, cid: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("42");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(
            p.join("stat"),
            "42 (nginx) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0",
        )
        .unwrap();
        std::fs::write(
            p.join("cgroup"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope\n",
                uid.replace('-', "_")
            ),
        )
        .unwrap();
        let q = dir.path().join("43");
        std::fs::create_dir_all(&q).unwrap();
        std::fs::write(
            q.join("stat"),
            "43 (sh) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 778 0 0",
        )
        .unwrap();
        std::fs::write(q.join("cgroup"), "0::/system.slice/ssh.service\n").unwrap();
        dir
    }

    /// A loopback kubelet read-only port: `/pods` answers `lists[n]` on the nth call
    /// (the last one thereafter), or `status` when not 200.
    async fn kubelet(lists: Vec<String>, status: u16) -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let app = axum::Router::new().route(
            "/pods",
            axum::routing::get(move || {
                let (c, lists) = (c.clone(), lists.clone());
                async move {
                    let n = c.fetch_add(1, Ordering::SeqCst);
                    let body = lists[n.min(lists.len() - 1)].clone();
                    (axum::http::StatusCode::from_u16(status).unwrap(), body)
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        (format!("http://{addr}"), calls)
    }

    fn attestor(url: &str, proc: &tempfile::TempDir, wait: Duration) -> K8sAttestor {
        K8sAttestor::new(K8sConfig {
            kubelet_url: url.into(),
            pod_wait: wait,
            proc_root: proc.path().to_path_buf(),
            ..K8sConfig::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn attests_through_the_read_only_port_and_waits_for_a_new_pod() {
        let proc = fake_proc(UID, CID);
        let empty = r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[]}"#.to_string();
        // First answer: the pod is not listed yet; then it is, without the container's
        // ID (still creating); then with it.
        let creating = podlist(UID, "");
        let (url, calls) = kubelet(vec![empty, creating, podlist(UID, CID)], 200).await;
        let a = attestor(&url, &proc, Duration::from_secs(3));
        let s = strings(&a.attest_pid(42).await.unwrap());
        assert!(s.contains(&"k8s:ns:shop".to_string()), "{s:?}");
        assert!(s.contains(&"k8s:sa:web".to_string()), "{s:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // A process outside any pod: not applicable, and the kubelet is not asked.
        assert!(a.attest_pid(43).await.unwrap().is_empty());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn every_failure_names_its_cause() {
        let proc = fake_proc(UID, CID);
        // Never listed: fails after the wait.
        let (url, _) = kubelet(
            vec![podlist("11111111-0000-0000-0000-000000000000", CID)],
            200,
        )
        .await;
        let e = attestor(&url, &proc, Duration::from_millis(300))
            .attest_pid(42)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pod 2c48913c-b29f-11e7-9350-020968147796 is not listed by the kubelet")
                && e.contains("waited 300ms"),
            "{e}"
        );
        // Refused.
        let (url, _) = kubelet(vec!["Unauthorized".into()], 401).await;
        let e = attestor(&url, &proc, Duration::ZERO)
            .attest_pid(42)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("the k8s attestor: the kubelet refused the agent (HTTP 401)")
                && e.contains("nodes/proxy"),
            "{e}"
        );
        // Unreachable.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", dead.local_addr().unwrap());
        drop(dead);
        let e = attestor(&url, &proc, Duration::ZERO)
            .attest_pid(42)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("is unreachable"), "{e}");
        // Secure port without a readable CA file: refused at construction.
        let e = K8sAttestor::new(K8sConfig {
            kubelet_ca_file: "/nonexistent/ca.crt".into(),
            ..K8sConfig::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("kubelet_ca_file") && e.contains("/nonexistent/ca.crt"),
            "{e}"
        );
        // A process that vanished.
        let e = attestor(&url, &proc, Duration::ZERO)
            .attest_pid(44)
            .await
            .unwrap_err();
        assert!(matches!(e, AttestError::Proc { pid: 44, .. }), "{e}");
    }
}
