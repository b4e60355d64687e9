//! Several servers, one trust domain (issue #16): two `lanyard server` processes on
//! one PostgreSQL database and two agents, one attached to each server and both
//! given both addresses. An entry created through B reaches A's workload (pushed
//! through LISTEN/NOTIFY); an SVID minted by B verifies, with openssl, under the
//! bundle A's workload holds, and vice versa; after `kill -9` of A its agent fails
//! over to B and keeps receiving changes; A restarts, rejoins, and its changes reach
//! B's agent; `lanyard audit verify` passes over both servers' events and
//! checkpoints with both servers' keys pinned, and refuses with only one. Both
//! servers share one key-encryption key and nothing else: an exception sealed
//! through A is released through B, both publish the same token-signing key, and a
//! server with another KEK refuses to start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{PgDb, ServerProc, TD};

struct Agent {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(dir: &Path, name: &str, token: &str, addresses: &str, trust: &Path) -> Self {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let socket = data.join("agent.sock");
        let log = data.join("agent.log");
        let child = Command::new(common::bin())
            .args(["agent", "--trust-domain", TD, "--server-address", addresses])
            .arg("--data-dir")
            .arg(&data)
            .arg("--socket-path")
            .arg(&socket)
            .arg("--trust-bundle")
            .arg(trust)
            .args(["--join-token", token])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let a = Self { child, socket, log };
        wait_for(
            &format!("agent {name}'s socket"),
            Duration::from_secs(30),
            || a.socket.exists(),
        );
        a
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The SPIFFE IDs its Workload API serves this process now.
    fn ids(&self) -> Vec<String> {
        let o = Command::new(common::bin())
            .args(["svid", "fetch", "--output", "json", "--socket"])
            .arg(self.endpoint())
            .output()
            .unwrap();
        if !o.status.success() {
            return Vec::new();
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["spiffe_id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Write its SVIDs and bundle into `out` (svid.pem, bundle.pem, svid.N.pem...).
    fn write(&self, out: &Path) {
        let o = Command::new(common::bin())
            .args(["svid", "fetch", "--socket"])
            .arg(self.endpoint())
            .arg("--write")
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    fn wait_serving(&self, id: &str, what: &str) -> Duration {
        let start = Instant::now();
        wait_for(what, Duration::from_secs(30), || {
            self.ids().iter().any(|i| i == id)
        });
        let took = start.elapsed();
        eprintln!("{what}: {took:?}");
        took
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn token(server: &ServerProc, agent_id: &str) -> String {
    server.json(&["token", "generate", "--spiffe-id", agent_id])["token"]
        .as_str()
        .unwrap()
        .to_string()
}

fn entry(server: &ServerProc, path: &str, parent: &str) -> String {
    let id = format!("spiffe://{TD}{path}");
    server.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        &id,
        "--parent-id",
        parent,
        "--selector",
        &format!("unix:uid:{}", uid()),
        "--owner",
        "ops",
        "--environment",
        "test",
    ]);
    id
}

fn uid() -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
}

fn certs(pem: &str) -> usize {
    pem.matches("BEGIN CERTIFICATE").count()
}

/// `openssl verify -CAfile bundle svid`: an independent check of the chain.
fn openssl_verifies(bundle: &Path, svid: &Path) -> Result<(), String> {
    let o = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(bundle)
        .arg(svid)
        .output()
        .unwrap();
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

fn audit_verify(url: &str, keys: &[&Path]) -> std::process::Output {
    let mut cmd = Command::new(common::bin());
    cmd.args(["audit", "verify", "--database-url", url]);
    for k in keys {
        cmd.arg("--public-key").arg(k);
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_postgres_are_one_trust_domain() {
    let db = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let a_dir = dir.path().join("server-a");
    let b_dir = dir.path().join("server-b");
    // One key-encryption key, the only secret the servers share.
    let kek = dir.path().join("kek");
    std::fs::write(&kek, [0x5a_u8; 32]).unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!("kek_file = {:?}\n", kek.display().to_string()),
    )
    .unwrap();
    let mut a = ServerProc::start_on(&a_dir, Some(&db.url), Some(&config), &free_addr());
    let b = ServerProc::start(&b_dir, Some(&db.url), Some(&config));
    for d in [&a_dir, &b_dir] {
        for f in ["secrets.key", "token-signing.pk8", "audit-key.pk8"] {
            assert!(!d.join(f).exists(), "{f} written to {}", d.display());
        }
    }

    // Both servers publish their keys; both serve the same union bundle.
    wait_for(
        "both servers' CAs in both bundles",
        Duration::from_secs(30),
        || {
            let pa = a.ok(&["bundle", "show", "--format", "pem"]);
            let pb = b.ok(&["bundle", "show", "--format", "pem"]);
            pa == pb && certs(&pa) >= 2
        },
    );
    let servers = a.json(&["server", "list"]);
    let servers = servers.as_array().unwrap();
    assert_eq!(servers.len(), 2, "{servers:?}");
    assert_eq!(
        servers.iter().filter(|s| s["this_server"] == true).count(),
        1
    );
    let trust = dir.path().join("trust.pem");
    std::fs::write(&trust, a.ok(&["bundle", "show", "--format", "pem"])).unwrap();

    let a_node = format!("spiffe://{TD}/lanyard/agent/ha-a");
    let b_node = format!("spiffe://{TD}/lanyard/agent/ha-b");
    let a_web = entry(&a, "/ha/a-web", &a_node);
    let b_web = entry(&b, "/ha/b-web", &b_node);
    let both_ab = format!("{},{}", a.agent_addr, b.agent_addr);
    let both_ba = format!("{},{}", b.agent_addr, a.agent_addr);
    let agent_a = Agent::start(dir.path(), "agent-a", &token(&a, &a_node), &both_ab, &trust);
    let agent_b = Agent::start(dir.path(), "agent-b", &token(&b, &b_node), &both_ba, &trust);
    agent_a.wait_serving(&a_web, "agent A serves its workload");
    agent_b.wait_serving(&b_web, "agent B serves its workload");

    // An entry created through B reaches the workload of the agent attached to A.
    let late = entry(&b, "/ha/a-late", &a_node);
    let took = agent_a.wait_serving(&late, "entry created on B reaches A's workload");
    assert!(
        took < Duration::from_secs(10),
        "{took:?}\n{}",
        agent_a.log()
    );

    // SVIDs minted by each server verify under the bundle the other's workload holds.
    let (out_a, out_b) = (dir.path().join("svids-a"), dir.path().join("svids-b"));
    agent_a.write(&out_a);
    agent_b.write(&out_b);
    openssl_verifies(&out_a.join("bundle.pem"), &out_b.join("svid.pem"))
        .expect("B's SVID under A's workload bundle");
    openssl_verifies(&out_b.join("bundle.pem"), &out_a.join("svid.pem"))
        .expect("A's SVID under B's workload bundle");
    // ...and not under a bundle of A's keys only (the test can fail).
    let a_only = dir.path().join("a-only.pem");
    let a_ca: String = {
        let list = a.json(&["server", "list"]);
        let this = list
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["this_server"] == true)
            .unwrap()
            .clone();
        let skis: Vec<String> = this["authorities"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["kind"] == "x509")
            .map(|x| x["id"].as_str().unwrap().to_string())
            .collect();
        // The bundle's certificates, kept only if their SKI is one of A's.
        let pem = std::fs::read_to_string(out_a.join("bundle.pem")).unwrap();
        pem::parse_many(&pem)
            .unwrap()
            .into_iter()
            .filter(|p| {
                lanyard_core::x509::subject_key_id(p.contents()).is_some_and(|s| skis.contains(&s))
            })
            .map(|p| pem::encode(&p))
            .collect()
    };
    assert!(certs(&a_ca) >= 1);
    std::fs::write(&a_only, a_ca).unwrap();
    assert!(openssl_verifies(&a_only, &out_b.join("svid.pem")).is_err());

    // A secret sealed through A is released through B to B's workload.
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "shared-across-servers").unwrap();
    a.ok(&[
        "exception",
        "create",
        "--name",
        "legacy-db",
        "--owner",
        "ops",
        "--justification",
        "vendor appliance",
        "--expires",
        "1d",
        "--allow",
        &b_web,
        "--secret-file",
        secret.to_str().unwrap(),
    ]);
    let o = Command::new(common::bin())
        .args([
            "secret",
            "fetch",
            "legacy-db",
            "--spiffe-id",
            &b_web,
            "--socket",
        ])
        .arg(agent_b.endpoint())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "shared-across-servers",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Both servers publish the same token-signing key.
    let kids = |s: &ServerProc| -> Vec<String> {
        let body = http_get(&s.http_addr, "/keys");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|k| k["kid"].as_str())
            .filter(|k| k.starts_with("lanyard-token-"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(kids(&a).len(), 1);
    assert_eq!(kids(&a), kids(&b));
    // A server with another KEK refuses to start, saying why.
    let wrong = dir.path().join("wrong-kek");
    std::fs::write(&wrong, [0x11_u8; 32]).unwrap();
    let c_dir = dir.path().join("server-c");
    let o = Command::new(common::bin())
        .args([
            "server",
            "--trust-domain",
            TD,
            "--bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&c_dir)
        .args(["--database-url", &db.url])
        .arg("--kek-file")
        .arg(&wrong)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("same kek_file"), "{err}");

    // kill -9 of A: its agent fails over to B and keeps receiving changes.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let after = entry(&b, "/ha/a-after-kill", &a_node);
    agent_a.wait_serving(&after, "a change reaches A's agent after A died");
    assert!(agent_a.ids().contains(&a_web), "{:?}", agent_a.ids());

    // A restarts on its data dir and rejoins; its changes reach B's agent.
    let a = a.restart();
    let rejoined = entry(&a, "/ha/b-from-restarted-a", &b_node);
    agent_b.wait_serving(
        &rejoined,
        "entry created on restarted A reaches B's workload",
    );
    let list = b.json(&["server", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");

    // The evidence log verifies over both servers' events and checkpoints, with
    // both servers' keys pinned; with only one, the other's checkpoints are named.
    std::thread::sleep(lanyard_server::TICK + Duration::from_secs(1));
    let (ka, kb) = (a_dir.join("audit-key.pub"), b_dir.join("audit-key.pub"));
    let o = audit_verify(&db.url, &[&ka, &kb]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let only_a = audit_verify(&db.url, &[&ka]);
    assert!(!only_a.status.success());
    // Joined events of both servers are in the log.
    let q = Command::new(common::bin())
        .args([
            "audit",
            "query",
            "--kind",
            "server_joined",
            "--output",
            "json",
        ])
        .args(["--database-url", &db.url])
        .output()
        .unwrap();
    let joined = String::from_utf8_lossy(&q.stdout)
        .matches("server_joined")
        .count();
    assert_eq!(joined, 2, "{}", String::from_utf8_lossy(&q.stdout));
    drop(agent_a);
    drop(agent_b);
    drop(a);
    drop(b);
    db.drop_db().await;
}
