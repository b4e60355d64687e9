//! A loopback kubelet: the pods API the agent's `k8s` workload attestor reads
//! (`GET /pods`, a core/v1 PodList), over HTTPS with a test CA and bearer-token
//! authentication (the secure port, 10250) or over plain HTTP (the read-only port,
//! 10255). The PodList is whatever the test sets ([`TestKubelet::set_pods`]), so a
//! test replays the answers the kubelet documents — including a pod not yet
//! listed — and counts the calls.

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};

use crate::loopback::{Background, lock, random_hex};
use crate::oidc::TestTls;

struct Inner {
    token: String,
    pods: serde_json::Value,
    calls: usize,
}

/// The kubelet's `/pods`, on loopback; stopped on drop.
pub struct TestKubelet {
    inner: Arc<Mutex<Inner>>,
    url: String,
    ca_pem: Option<String>,
    _service: Background,
}

impl TestKubelet {
    /// The secure port: HTTPS with a fresh test CA; `/pods` needs the bearer token
    /// [`Self::token`] (else 401 `Unauthorized`, as the kubelet answers).
    pub fn secure() -> Self {
        Self::start(true)
    }

    /// The read-only port: plain HTTP, no authentication.
    pub fn read_only() -> Self {
        Self::start(false)
    }

    fn start(tls: bool) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            token: random_hex(),
            pods: serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []}),
            calls: 0,
        }));
        let state = inner.clone();
        let router = axum::Router::new().route(
            "/pods",
            axum::routing::get(move |headers: HeaderMap| {
                let state = state.clone();
                async move {
                    let mut st = lock(&state);
                    st.calls += 1;
                    if tls {
                        let want = format!("Bearer {}", st.token);
                        let got = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        if got != want {
                            return (StatusCode::UNAUTHORIZED, "Unauthorized".to_string());
                        }
                    }
                    (StatusCode::OK, st.pods.to_string())
                }
            }),
        );
        let (service, ca_pem) = if tls {
            let t = TestTls::generate();
            (
                Background::serve("kubelet", router, Some(t.acceptor())),
                Some(t.ca_pem.clone()),
            )
        } else {
            (Background::serve("kubelet", router, None), None)
        };
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://{}", service.addr());
        Self {
            inner,
            url,
            ca_pem,
            _service: service,
        }
    }

    /// `https://127.0.0.1:PORT` or `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The test CA's PEM (secure port only).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The service-account token the secure port accepts.
    pub fn token(&self) -> String {
        lock(&self.inner).token.clone()
    }

    /// Answer `/pods` with this PodList from now on.
    pub fn set_pods(&self, podlist: serde_json::Value) {
        lock(&self.inner).pods = podlist;
    }

    /// How many `/pods` calls were made.
    pub fn calls(&self) -> usize {
        lock(&self.inner).calls
    }
}

/// A PodList with one running pod (as the kubelet lists it) whose container
/// `container` has runtime ID `containerd://<container_id>`.
pub fn pod_list(
    namespace: &str,
    name: &str,
    uid: &str,
    service_account: &str,
    container: &str,
    image: &str,
    container_id: &str,
) -> serde_json::Value {
    serde_json::json!({
      "kind": "PodList", "apiVersion": "v1", "metadata": {},
      "items": [{
        "metadata": {"name": name, "namespace": namespace, "uid": uid,
                     "labels": {"app": name}, "resourceVersion": "1",
                     "creationTimestamp": "2024-05-02T10:11:12Z"},
        "spec": {"nodeName": "node-1", "serviceAccountName": service_account,
                 "serviceAccount": service_account,
                 "containers": [{"name": container, "image": image}]},
        "status": {"phase": "Running", "qosClass": "BestEffort",
          "containerStatuses": [{"name": container, "image": image,
            "imageID": format!("{image}@sha256:{}", "0".repeat(64)),
            "containerID": format!("containerd://{container_id}"),
            "ready": true, "restartCount": 0, "started": true,
            "state": {"running": {"startedAt": "2024-05-02T10:11:15Z"}}}]}
      }]
    })
}
