//! The `docker` workload attestor: the caller's container ID from its cgroup
//! ([`crate::cgroup`]), the container's labels, image and (opt-in) environment from
//! the Docker Engine API (`GET /containers/{id}/json` over the daemon's Unix socket):
//!
//! `docker:label:KEY:VALUE`, `docker:image_id:sha256:…` (the image's content ID, the
//! inspect answer's `Image`), `docker:image:NAME` (the image as the container was
//! created from, `Config.Image`), and `docker:env:KEY:VALUE` only for the keys
//! listed in `env_selectors` (environment variables often hold secrets, and their
//! values end up in entries and logs).
//!
//! The decision ([`container_selectors`]) is a pure function of the inspect JSON; the
//! attestor gathers it. Not applicable (no selectors): a process in no container, or
//! in a container another runtime made (CRI-O, containerd's `cri-containerd-…`,
//! Podman), or a bare cgroupfs ID that Docker does not know. Errors (`Unavailable`):
//! the socket unreachable; a container the cgroup says is Docker's that Docker does
//! not have ("no such container"); any other answer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use lanyard_core::Selector;
use serde::Deserialize;

use crate::attestor::{AttestError, PeerCredentials, WorkloadAttestor};
use crate::cgroup::{self, Runtime};

/// Where the Docker daemon listens unless `[docker] socket` says otherwise.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Longest a call to the Docker socket may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Cap on an inspect answer.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// How the attestor reaches Docker and what it reports.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    pub socket: PathBuf,
    /// Environment variable names reported as `docker:env:KEY:VALUE`.
    pub env_selectors: Vec<String>,
    /// Where `/proc` is.
    pub proc_root: PathBuf,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_DOCKER_SOCKET),
            env_selectors: Vec::new(),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

// The parts of the Engine API's ContainerInspectResponse the selectors come from.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    #[serde(default)]
    id: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    config: Option<InspectConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    #[serde(default)]
    image: String,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
}

/// Why an inspect answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    #[error("Docker's answer is not a container inspection: {0}")]
    NotAnInspection(String),
    #[error("Docker answered for container {got:?} when asked for {asked}")]
    OtherContainer { asked: String, got: String },
}

/// The selectors of container `id` from its inspect JSON.
pub fn container_selectors(
    inspect: &[u8],
    id: &str,
    env_keys: &[String],
) -> Result<Vec<Selector>, InspectError> {
    let c: Inspect = serde_json::from_slice(inspect)
        .map_err(|e| InspectError::NotAnInspection(e.to_string()))?;
    if c.id != id {
        return Err(InspectError::OtherContainer {
            asked: id.to_string(),
            got: c.id,
        });
    }
    let mut out: Vec<Selector> = Vec::new();
    let mut push = |value: String| {
        if let Ok(s) = Selector::from_parts("docker", &value)
            && !out.contains(&s)
        {
            out.push(s);
        }
    };
    let cfg = c.config.unwrap_or_default();
    for (k, v) in cfg.labels.iter().flatten() {
        push(format!("label:{k}:{v}"));
    }
    if !c.image.is_empty() {
        push(format!("image_id:{}", c.image));
    }
    if !cfg.image.is_empty() {
        push(format!("image:{}", cfg.image));
    }
    for kv in cfg.env.iter().flatten() {
        // The first `=` ends the name (values may contain `=`).
        if let Some((k, v)) = kv.split_once('=')
            && env_keys.iter().any(|want| want == k)
        {
            push(format!("env:{k}:{v}"));
        }
    }
    Ok(out)
}

/// One `GET` on the Engine API's Unix socket: (status, body).
pub async fn engine_get(socket: &Path, path: &str) -> Result<(u16, Vec<u8>), String> {
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
            format!(
                "cannot connect to the Docker socket {}: {e}",
                socket.display()
            )
        })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP with the Docker socket failed: {e}"))?;
        let driver = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            // The Engine API ignores the host; HTTP/1.1 requires one.
            .header(hyper::header::HOST, "docker")
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let result = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("the Docker socket did not answer: {e}"))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading Docker's answer failed: {e}"))?
                .to_bytes()
                .to_vec();
            Ok((status, body))
        }
        .await;
        driver.abort();
        result
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            format!(
                "the Docker socket {} did not answer within {}s",
                socket.display(),
                CALL_TIMEOUT.as_secs()
            )
        })?
}

/// The attestor.
#[derive(Debug, Clone)]
pub struct DockerAttestor {
    cfg: Arc<DockerConfig>,
}

const NAME: &str = "docker";

fn source(reason: impl Into<String>) -> AttestError {
    AttestError::Source {
        attestor: NAME,
        reason: reason.into(),
    }
}

impl DockerAttestor {
    pub fn new(cfg: DockerConfig) -> Self {
        Self { cfg: Arc::new(cfg) }
    }

    /// Selectors of `pid`'s Docker container, or none when it is in none.
    pub async fn attest_pid(&self, pid: i32) -> Result<Vec<Selector>, AttestError> {
        let facts = cgroup::read_facts(&self.cfg.proc_root, pid)?;
        let Some(container) = facts.container else {
            return Ok(Vec::new());
        };
        if !matches!(container.runtime, Runtime::Docker | Runtime::Unknown) {
            return Ok(Vec::new());
        }
        let id = &container.id;
        let (status, body) = engine_get(&self.cfg.socket, &format!("/containers/{id}/json"))
            .await
            .map_err(source)?;
        match status {
            200 => container_selectors(&body, id, &self.cfg.env_selectors)
                .map_err(|e| source(e.to_string())),
            // A bare cgroupfs ID may be another runtime's (containerd, a kubelet's).
            404 if container.runtime == Runtime::Unknown => Ok(Vec::new()),
            404 => Err(source(format!(
                "no such container {id} on the Docker daemon at {} (process {pid}'s cgroup names it)",
                self.cfg.socket.display()
            ))),
            s => Err(source(format!(
                "Docker answered /containers/{id}/json with HTTP {s}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))),
        }
    }
}

#[tonic::async_trait]
impl WorkloadAttestor for DockerAttestor {
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

    const ID: &str = "5437dc964cbdccfbccbeb8c3b6731e2e3602811ce8ded22001380f396e6e16d3";

    /// `GET /containers/{id}/json` as dockerd 20.10.24 (Engine API 1.41, Debian 12's
    /// docker.io) answered it on this machine for
    /// `docker run -d --network none --label app=web -e ROLE=front lanyard-test:1 /bin/sleep 300`
    /// (fields the attestor does not read trimmed: GraphDriver, Mounts,
    /// NetworkSettings, most of HostConfig).
    pub(crate) fn inspect_json(id: &str) -> String {
        format!(
            r#"{{
 "Id": "{id}",
 "Created": "2026-12-03T13:41:43.747088509Z",
 "Path": "/bin/sleep",
 "Args": ["300"],
 "State": {{"Status": "running", "Running": true, "Paused": false, "Restarting": false,
   "OOMKilled": false, "Dead": false, "Pid": 29063, "ExitCode": 0, "Error": "",
   "StartedAt": "2026-12-03T13:41:44.132010474Z", "FinishedAt": "0001-01-01T00:00:00Z"}},
 "Image": "sha256:f5bd631805de06f59cb86a87342f6d35d3a243e6ab53a3eb31962e7149c52671",
 "Name": "/pensive_colden",
 "RestartCount": 0,
 "Driver": "vfs",
 "Platform": "linux",
 "Config": {{
  "Hostname": "5437dc964cbd", "Domainname": "", "User": "",
  "AttachStdin": false, "AttachStdout": false, "AttachStderr": false,
  "Tty": false, "OpenStdin": false, "StdinOnce": false,
  "Env": ["ROLE=front", "DB_PASSWORD=hunter2", "EQ=a=b"],
  "Cmd": ["/bin/sleep", "300"],
  "Image": "lanyard-test:1",
  "Volumes": null, "WorkingDir": "", "Entrypoint": null, "OnBuild": null,
  "Labels": {{"app": "web", "com.example.tier": "front"}}
 }},
 "HostConfig": {{"NetworkMode": "none", "Privileged": false}}
}}"#
        )
    }

    fn strings(s: &[Selector]) -> Vec<String> {
        s.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn labels_image_and_only_the_listed_env_keys() {
        let s = container_selectors(
            inspect_json(ID).as_bytes(),
            ID,
            &["ROLE".into(), "EQ".into()],
        )
        .unwrap();
        assert_eq!(
            strings(&s),
            [
                "docker:label:app:web",
                "docker:label:com.example.tier:front",
                "docker:image_id:sha256:f5bd631805de06f59cb86a87342f6d35d3a243e6ab53a3eb31962e7149c52671",
                "docker:image:lanyard-test:1",
                "docker:env:ROLE:front",
                "docker:env:EQ:a=b",
            ]
        );
        let s = container_selectors(inspect_json(ID).as_bytes(), ID, &[]).unwrap();
        assert!(!strings(&s).iter().any(|x| x.starts_with("docker:env:")));
        let e = container_selectors(inspect_json(ID).as_bytes(), &"a".repeat(64), &[]).unwrap_err();
        assert!(matches!(e, InspectError::OtherContainer { .. }), "{e}");
        assert!(container_selectors(b"{\"message\":1}", ID, &[]).is_err());
        // A container with no labels or env (nulls are what Docker writes).
        let bare = format!(
            r#"{{"Id":"{ID}","Image":"sha256:ab","Config":{{"Image":"x","Labels":null,"Env":null}}}}"#
        );
        assert_eq!(
            strings(&container_selectors(bare.as_bytes(), ID, &["ROLE".into()]).unwrap()),
            ["docker:image_id:sha256:ab", "docker:image:x"]
        );
    }

    fn fake_proc(cgroups: &[(i32, String)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (pid, cg) in cgroups {
            let p = dir.path().join(pid.to_string());
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(
                p.join("stat"),
                format!("{pid} (w) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0"),
            )
            .unwrap();
            std::fs::write(p.join("cgroup"), cg).unwrap();
        }
        dir
    }

    /// A loopback Engine API on a Unix socket replaying dockerd's answers: the
    /// inspection of `ID`, and Docker's 404 body for any other container.
    async fn engine(dir: &Path) -> PathBuf {
        let sock = dir.join("docker.sock");
        let app = axum::Router::new().route(
            "/containers/{id}/json",
            axum::routing::get(
                |axum::extract::Path(id): axum::extract::Path<String>| async move {
                    if id == ID {
                        (axum::http::StatusCode::OK, inspect_json(ID))
                    } else {
                        (
                            axum::http::StatusCode::NOT_FOUND,
                            format!(r#"{{"message":"No such container: {id}"}}"#),
                        )
                    }
                },
            ),
        );
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        sock
    }

    #[tokio::test]
    async fn attests_a_container_through_a_replayed_engine_api() {
        let other = "b".repeat(64);
        let proc = fake_proc(&[
            (10, format!("0::/docker/{ID}\n")),
            (11, format!("0::/system.slice/docker-{other}.scope\n")),
            (12, "0::/system.slice/nginx.service\n".into()),
            (13, format!("0::/default/{other}\n")),
            (
                14,
                format!(
                    "0::/kubepods.slice/kubepods-pod2c48913c_b29f_11e7_9350_020968147796.slice/cri-containerd-{other}.scope\n"
                ),
            ),
        ]);
        let sock = engine(proc.path()).await;
        let a = DockerAttestor::new(DockerConfig {
            socket: sock.clone(),
            env_selectors: vec!["ROLE".into()],
            proc_root: proc.path().to_path_buf(),
        });
        let s = strings(&a.attest_pid(10).await.unwrap());
        assert!(s.contains(&"docker:label:app:web".to_string()), "{s:?}");
        assert!(s.contains(&"docker:env:ROLE:front".to_string()), "{s:?}");
        // The cgroup says Docker's, Docker does not know it: an error naming it.
        let e = a.attest_pid(11).await.unwrap_err().to_string();
        assert!(
            e.contains(&format!("no such container {other}")) && e.contains("docker.sock"),
            "{e}"
        );
        // Not applicable: no container; a bare ID Docker does not know; another runtime's.
        assert!(a.attest_pid(12).await.unwrap().is_empty());
        assert!(a.attest_pid(13).await.unwrap().is_empty());
        assert!(a.attest_pid(14).await.unwrap().is_empty());
        // The daemon away.
        let away = DockerAttestor::new(DockerConfig {
            socket: proc.path().join("nothing.sock"),
            ..DockerConfig {
                proc_root: proc.path().to_path_buf(),
                ..DockerConfig::default()
            }
        });
        let e = away.attest_pid(10).await.unwrap_err().to_string();
        assert!(
            e.starts_with("the docker attestor: cannot connect to the Docker socket")
                && e.contains("nothing.sock"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_daemon_that_never_answers_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("mute.sock");
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let t = std::time::Instant::now();
        let e = engine_get(&sock, "/containers/x/json").await.unwrap_err();
        assert!(e.contains("did not answer within 2s"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(4));
    }
}
