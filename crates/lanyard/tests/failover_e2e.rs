//! Agent failover: given several servers, an agent whose first server is down
//! moves to the next at once and attests, syncs and serves its workload there; the
//! next is given by DNS name (each of its records is a candidate).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ServerProc, TD};

#[test]
fn an_agent_fails_over_to_the_next_server_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), None, None);
    let agent_id = format!("spiffe://{TD}/lanyard/agent/failover-1");
    let token = server.json(&["token", "generate", "--spiffe-id", &agent_id])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let uid =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()).to_string();
    let workload = format!("spiffe://{TD}/failover/web");
    server.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        &workload,
        "--parent-id",
        &agent_id,
        "--selector",
        &format!("unix:uid:{uid}"),
        "--owner",
        "ops",
        "--environment",
        "test",
    ]);
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, server.ok(&["bundle", "show", "--format", "pem"])).unwrap();
    // A port nothing listens on first, then the real server.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let out = dir.path().join("out");
    let started = std::time::Instant::now();
    let o = std::process::Command::new(common::bin())
        .args([
            "agent",
            "--oneshot",
            "--trust-domain",
            TD,
            "--server-address",
        ])
        // The real server by name: names are looked up, each record a candidate.
        .arg(format!(
            "{dead_addr}, localhost:{}",
            server.agent_addr.rsplit_once(':').unwrap().1
        ))
        .arg("--trust-bundle")
        .arg(&bundle)
        .args(["--join-token", &token, "--write"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let pem = std::fs::read_to_string(out.join("svid.pem")).unwrap();
    assert!(!pem.is_empty());
    let agents = server.json(&["agent", "list"]).to_string();
    assert!(agents.contains(&agent_id), "{agents}");
    // At once, not after a retry backoff (generous for a loaded machine).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}
