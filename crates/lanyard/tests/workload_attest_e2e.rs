//! End-to-end workload attestation beyond `unix`: the real `lanyard server` and
//! `lanyard agent`, and a workload calling the Workload API socket with
//! `lanyard svid fetch`.
//!
//! - `k8s`: the kubelet cannot run on these machines, so the agent reads a loopback
//!   kubelet (`TestKubelet`, the secure port: HTTPS with a test CA and a bearer
//!   token) replaying the PodList the kubelet documents. The workload cannot be put
//!   in a real pod's cgroup either: the agent runs with `--proc-root` pointing at a
//!   directory where the workload's pid has its real `stat`, `status` and `exe`
//!   (symlinks into /proc) and a `cgroup` file with a kubelet's path. Proven: the
//!   agent's config, the kubelet client (TLS to the CA, token, refusal), waiting for
//!   a pod not yet listed, selectors matched by the server's entries, the error a
//!   workload sees. Not proven here: a real kubelet's answers, a real pod's cgroup.
//! - `docker`: a real `dockerd` (Debian's docker.io) started by the test with
//!   `--iptables=false --bridge=none --storage-driver=vfs` on a private socket; the
//!   workload is `lanyard svid fetch` running *inside* a container (the host's
//!   loader and binary bind-mounted read-only), attested by its real cgroup and the
//!   real Engine API; the `containerd` attestor reads the same container from
//!   dockerd's own containerd (namespace `moby`). When dockerd is not installed the test installs it with
//!   apt-get only under CI (`CI=true`) or `LANYARD_TEST_INSTALL=1`; when it cannot
//!   be installed or cannot start, the test says so on stderr and passes without
//!   the container part (the loopback replay of the Engine API is the agent's unit
//!   test `docker::tests`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use lanyard_testkit::TestKubelet;
use lanyard_testkit::kubelet::pod_list;

const CID: &str = "0f2a6c1b9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a291807f6e5d4c3b2a19080";
const UID1: &str = "6f1c0e36-7a4b-4b8e-9d55-2a3e8f0c1d22";
const UID2: &str = "8a2d1f47-8b5c-4c9f-8e66-3b4f9a1d2e33";

struct Stack {
    dir: tempfile::TempDir,
    _server: common::ServerProc,
    agent: Child,
    socket: PathBuf,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

/// A server with `entries` (SPIFFE ID, selectors) under node-1, and an agent on it
/// with `agent_toml` as its config file.
fn stack(agent_toml: &str, entries: &[(&str, &[&str])]) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let server = common::ServerProc::start(&dir.path().join("server"), None, None);
    let node = "spiffe://example.org/lanyard/agent/node-1";
    let token = server.json(&["token", "generate", "--spiffe-id", node])["token"]
        .as_str()
        .unwrap()
        .to_string();
    for (id, selectors) in entries {
        let mut args = vec!["entry", "create", "--spiffe-id", id, "--parent-id", node];
        for s in *selectors {
            args.extend(["--selector", s]);
        }
        args.extend(["--owner", "platform-team", "--environment", "test"]);
        server.ok(&args);
    }
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, server.ok(&["bundle", "show", "--format", "pem"])).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, agent_toml).unwrap();
    let socket = dir.path().join("agent.sock");
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let agent = Command::new(common::bin())
        .args(["agent", "--config"])
        .arg(&config)
        .args(["--trust-domain", "example.org", "--server-address"])
        .arg(&server.agent_addr)
        .arg("--data-dir")
        .arg(dir.path().join("agent"))
        .arg("--socket-path")
        .arg(&socket)
        .arg("--trust-bundle")
        .arg(&bundle)
        .args(["--join-token", &token])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Stack {
        dir,
        _server: server,
        agent,
        socket,
    }
}

impl Stack {
    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

/// Run `lanyard svid fetch` as a process the agent sees in `cgroup` through the
/// proc root `proc_root`: the shell waits until its pid's entry is made, then
/// execs the fetch (same pid, same start time).
fn fetch_in_cgroup(proc_root: &Path, cgroup: &str, socket: &Path) -> Output {
    let mut child = Command::new("sh")
        .args([
            "-c",
            "read go; exec \"$0\" svid fetch --socket \"$1\" --output json",
        ])
        .arg(std::fs::canonicalize(common::bin()).unwrap())
        .arg(format!("unix://{}", socket.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let d = proc_root.join(pid.to_string());
    std::fs::create_dir_all(&d).unwrap();
    for f in ["stat", "status"] {
        std::os::unix::fs::symlink(format!("/proc/{pid}/{f}"), d.join(f)).unwrap();
    }
    std::os::unix::fs::symlink(std::fs::canonicalize(common::bin()).unwrap(), d.join("exe"))
        .unwrap();
    std::fs::write(d.join("cgroup"), cgroup).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&d);
    out
}

fn pod_cgroup(uid: &str) -> String {
    // The systemd driver with containerd, cgroup v2, as on a kubeadm node.
    format!(
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{CID}.scope\n",
        uid.replace('-', "_")
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_pod_is_attested_through_the_kubelet_secure_port() {
    let kubelet = TestKubelet::secure();
    kubelet.set_pods(pod_list(
        "shop",
        "web",
        UID1,
        "web",
        "nginx",
        "nginx:1.25",
        CID,
    ));
    let files = tempfile::tempdir().unwrap();
    let ca = files.path().join("kubelet-ca.pem");
    std::fs::write(&ca, kubelet.ca_pem().unwrap()).unwrap();
    let token = files.path().join("token");
    std::fs::write(&token, kubelet.token()).unwrap();
    let proc_root = files.path().join("proc");
    std::fs::create_dir(&proc_root).unwrap();
    let toml = format!(
        "workload_attestors = [\"unix\", \"k8s\"]\nproc_root = {:?}\n\n[k8s]\nkubelet_url = {:?}\nkubelet_ca_file = {:?}\ntoken_file = {:?}\npod_wait_ms = 2500\n",
        proc_root.to_str().unwrap(),
        kubelet.url(),
        ca.to_str().unwrap(),
        token.to_str().unwrap(),
    );
    let st = stack(
        &toml,
        &[
            (
                "spiffe://example.org/ns/shop/sa/web",
                &["k8s:ns:shop", "k8s:sa:web", "k8s:container-name:nginx"],
            ),
            (
                "spiffe://example.org/ns/shop/sa/api",
                &["k8s:ns:shop", "k8s:sa:api"],
            ),
        ],
    );

    // The pod's container gets the identity its k8s selectors match (waiting for
    // the agent's first sync).
    let deadline = Instant::now() + Duration::from_secs(20);
    let o = loop {
        let o = fetch_in_cgroup(&proc_root, &pod_cgroup(UID1), &st.socket);
        if o.status.success() || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        o.status.success(),
        "{}\nagent log:\n{}",
        text(&o.stderr),
        st.agent_log()
    );
    let out = text(&o.stdout);
    assert!(out.contains("spiffe://example.org/ns/shop/sa/web"), "{out}");
    assert!(!out.contains("sa/api"), "{out}");

    // A new pod not yet listed: the agent asks again until it is (within pod_wait).
    kubelet.set_pods(
        serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []}),
    );
    let calls = kubelet.calls();
    let o = std::thread::scope(|s| {
        let h = s.spawn(|| fetch_in_cgroup(&proc_root, &pod_cgroup(UID2), &st.socket));
        std::thread::sleep(Duration::from_millis(700));
        kubelet.set_pods(pod_list("shop", "api-0", UID2, "api", "api", "api:2", CID));
        h.join().unwrap()
    });
    assert!(
        o.status.success(),
        "{}\nagent log:\n{}",
        text(&o.stderr),
        st.agent_log()
    );
    assert!(text(&o.stdout).contains("spiffe://example.org/ns/shop/sa/api"));
    assert!(kubelet.calls() >= calls + 2, "the agent asked again");

    // A process in no pod: no k8s selectors, so no identity (not an attestation error).
    let o = fetch_in_cgroup(&proc_root, "0::/system.slice/cron.service\n", &st.socket);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("no identity issued"),
        "{}",
        text(&o.stderr)
    );

    // The kubelet refuses the agent's token: the workload's call fails, naming why.
    std::fs::write(&token, "not-the-token").unwrap();
    let o = fetch_in_cgroup(&proc_root, &pod_cgroup(UID2), &st.socket);
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(
        e.contains("the k8s attestor: the kubelet refused the agent (HTTP 401)"),
        "{e}"
    );
    assert!(
        st.agent_log().contains("kubelet refused the agent"),
        "the agent logs it too:\n{}",
        st.agent_log()
    );
}

/// dockerd started by this test; killed on drop.
struct Dockerd {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Start a private dockerd, installing Debian's docker.io first when allowed.
fn dockerd() -> Result<Dockerd, String> {
    if !have("dockerd") {
        let allowed = std::env::var("CI").is_ok_and(|v| v == "true")
            || std::env::var("LANYARD_TEST_INSTALL").is_ok_and(|v| v == "1");
        if !allowed {
            return Err("dockerd is not installed (set LANYARD_TEST_INSTALL=1 to apt-get install docker.io)".into());
        }
        let ok = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io",
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok || !have("dockerd") {
            return Err("apt-get install docker.io failed".into());
        }
    }
    // Short paths: containerd's sockets live under the exec root (108-byte limit).
    let dir = tempfile::Builder::new()
        .prefix("lyd")
        .tempdir_in("/tmp")
        .unwrap();
    let socket = dir.path().join("d.sock");
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    // No iptables, no bridge and the vfs storage driver: what a sandbox without
    // netfilter or overlayfs allows.
    let child = Command::new("dockerd")
        .args([
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--storage-driver=vfs",
        ])
        .arg("--data-root")
        .arg(dir.path().join("root"))
        .arg("--exec-root")
        .arg(dir.path().join("x"))
        .arg("--pidfile")
        .arg(dir.path().join("pid"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run dockerd: {e}"))?;
    let mut d = Dockerd {
        child,
        socket,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if d.docker(&["version"]).status.success() {
            return Ok(d);
        }
        if let Ok(Some(s)) = d.child.try_wait() {
            let log = std::fs::read_to_string(d._dir.path().join("log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(format!("dockerd exited ({s}): {}", tail.join(" | ")));
        }
        if Instant::now() > deadline {
            return Err("dockerd did not answer within 60s".into());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

impl Dockerd {
    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .output()
            .unwrap()
    }
}

#[test]
fn a_docker_container_is_attested_against_the_real_daemon() {
    let d = match dockerd() {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIPPED the real-dockerd part: {why}");
            return;
        }
    };
    if !have("docker") {
        eprintln!("SKIPPED the real-dockerd part: no docker CLI");
        return;
    }
    // An image with nothing in it: the container runs the host's loader and binary,
    // bind-mounted read-only (no registry is reachable from these machines).
    let empty = tempfile::tempdir().unwrap();
    let tar = Command::new("tar")
        .arg("-C")
        .arg(empty.path())
        .args(["-c", "."])
        .output()
        .unwrap();
    let mut import = Command::new("docker")
        .args(["import", "-", "lanyard-e2e:1"])
        .env("DOCKER_HOST", format!("unix://{}", d.socket.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    import.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    let o = import.wait_with_output().unwrap();
    assert!(o.status.success(), "docker import: {}", text(&o.stderr));

    // Docker runs its containers on its own containerd (namespace `moby`, socket
    // under its exec root): the containerd attestor reads the same container there.
    let containerd_sock = d._dir.path().join("x/containerd/containerd.sock");
    let toml = format!(
        "workload_attestors = [\"unix\", \"docker\", \"containerd\"]\n\n[docker]\nsocket = {:?}\nenv_selectors = [\"ROLE\"]\n\n[containerd]\nsocket = {:?}\nnamespaces = [\"moby\"]\n",
        d.socket.to_str().unwrap(),
        containerd_sock.to_str().unwrap()
    );
    let st = stack(
        &toml,
        &[
            (
                "spiffe://example.org/docker/web",
                &[
                    "docker:label:app:web",
                    "docker:env:ROLE:front",
                    "docker:image:lanyard-e2e:1",
                ],
            ),
            ("spiffe://example.org/docker/db", &["docker:label:app:db"]),
        ],
    );
    let bin = std::fs::canonicalize(common::bin()).unwrap();
    let sock_dir = st.socket.parent().unwrap().to_path_buf();
    let loader = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-x86-64.so.2"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .map(|p| std::fs::canonicalize(p).unwrap())
        .expect("the x86-64 loader");
    let run = |label: &str| {
        d.docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--label",
            label,
            "-e",
            "ROLE=front",
            "-v",
            "/:/host:ro",
            "-v",
            &format!("{}:/sock", sock_dir.display()),
            "lanyard-e2e:1",
            &format!("/host{}", loader.display()),
            "--library-path",
            "/host/lib/x86_64-linux-gnu:/host/usr/lib/x86_64-linux-gnu",
            &format!("/host{}", bin.display()),
            "svid",
            "fetch",
            "--socket",
            "unix:///sock/agent.sock",
            "--output",
            "json",
        ])
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let o = loop {
        let o = run("app=web");
        if o.status.success() || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        o.status.success(),
        "{}\nagent log:\n{}",
        text(&o.stderr),
        st.agent_log()
    );
    let out = text(&o.stdout);
    assert!(out.contains("spiffe://example.org/docker/web"), "{out}");
    assert!(!out.contains("docker/db"), "{out}");
    // Another container's labels match another entry's (here: none of them).
    let o = run("app=cache");
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("no identity issued"),
        "{}",
        text(&o.stderr)
    );
    // The same binary on the host, outside any container: no docker selectors.
    let o = Command::new(common::bin())
        .args(["svid", "fetch", "--socket"])
        .arg(format!("unix://{}", st.socket.display()))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("no identity issued"),
        "{}",
        text(&o.stderr)
    );
}
