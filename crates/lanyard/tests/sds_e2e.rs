//! End-to-end: Envoy SDS on the agent's Workload API socket, exercised by a client
//! built from Envoy's published API definitions (`tests/go/sds`, Go, on
//! `github.com/envoyproxy/go-control-plane/envoy` v1.40.0 and grpc-go), not from
//! Lanyard's own protos.
//!
//! The real `lanyard server` (with a federated trust domain, `partner.org`) and a
//! standalone `lanyard agent` run; the entry's X509-SVID TTL is 8 s, so the agent
//! rotates about every 4 s during the test. The Go client checks: FetchSecrets
//! (trusted_ca for a client without a build version or with
//! `disable_spiffe_cert_validation`, NotFound for an unknown name); StreamSecrets for
//! `default`, `ROOTCA`, `ALL` and `spiffe://partner.org` (chain and key parse, the
//! SPIFFE ID, the chain verifies against the bundle, SPIFFE validator configs); an ACK
//! answered by nothing but the next rotation; a NACK that is not retried; an unknown
//! name left out; a stream naming only an unknown name getting nothing; DeltaSecrets.
//! A second run under another uid (`setpriv --reuid 65534`, no entry) is refused with
//! `PermissionDenied` on all three RPCs. The agent's log must record the NACK.
//!
//! Needs Go (1.24 or later) on PATH. The client is built with `go build` into a
//! temporary directory outside the clone; modules come from the Go module proxy into
//! the default GOMODCACHE. The first build on a fresh machine downloads the modules
//! (about 23 MB) and compiles them: 40–80 s on two cores (measured with empty
//! GOMODCACHE and GOCACHE, the longer while other builds ran); later builds hit Go's
//! build cache and take a few seconds. The build runs while the server and agent
//! start; the SDS checks themselves take about 13 s.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `go build` the SDS client into `out`; returns the binary.
fn build_go_client(out: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/go/sds");
    let bin = out.join("sds-client");
    let o = Command::new("go")
        .args(["build", "-mod=readonly", "-buildvcs=false", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .output()
        .expect("Go is required for the SDS interop test (go on PATH)");
    assert!(
        o.status.success(),
        "go build of tests/go/sds failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    bin
}

fn world_readable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn envoy_sds_client_gets_svids_bundles_rotations_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    // Build the Go client while the server and agent start.
    let go_dir = dir.path().join("go");
    std::fs::create_dir_all(&go_dir).unwrap();
    let builder = {
        let go_dir = go_dir.clone();
        std::thread::spawn(move || build_go_client(&go_dir))
    };

    // A federated trust domain with a CA of its own.
    let mut partner_ca = lanyard_ca::CertificateAuthority::new(
        lanyard_ca::CaConfig::new(lanyard_core::TrustDomain::new("partner.org").unwrap()),
        None,
        vec![],
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    partner_ca.tick(now).unwrap();
    let partner_bundle = dir.path().join("partner.json");
    std::fs::write(
        &partner_bundle,
        partner_ca.bundle().unwrap().to_json().unwrap(),
    )
    .unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[federation]]\ntrust_domain = \"partner.org\"\nbundle_file = \"{}\"\n",
            partner_bundle.display()
        ),
    )
    .unwrap();
    let server = common::ServerProc::start(&dir.path().join("server"), None, Some(&cfg));
    let uid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").unwrap().uid()
    };
    let agent_id = "spiffe://example.org/lanyard/agent/envoy-node";
    let token = server.json(&["token", "generate", "--spiffe-id", agent_id])["token"]
        .as_str()
        .unwrap()
        .to_string();
    server.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/envoy",
        "--parent-id",
        agent_id,
        "--selector",
        &format!("unix:uid:{uid}"),
        "--owner",
        "mesh-team",
        "--environment",
        "test",
        "--x509-ttl",
        "8s",
    ]);
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, server.ok(&["bundle", "show", "--format", "pem"])).unwrap();
    let socket = dir.path().join("agent.sock");
    let agent_log = dir.path().join("agent.log");
    let mut agent = Command::new(common::bin())
        .args([
            "agent",
            "--trust-domain",
            "example.org",
            "--server-address",
            &server.agent_addr,
            "--join-token",
            &token,
        ])
        .arg("--data-dir")
        .arg(dir.path().join("agent"))
        .arg("--socket-path")
        .arg(&socket)
        .arg("--trust-bundle")
        .arg(&bundle)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&agent_log).unwrap()))
        .spawn()
        .unwrap();
    let endpoint = format!("unix://{}", socket.display());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = Command::new(common::bin())
            .args(["svid", "fetch", "--socket", &endpoint])
            .output()
            .unwrap();
        if o.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never served an SVID: {}\nagent log:\n{}",
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(&agent_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let client = builder.join().unwrap();
    let run = |cmd: &mut Command| {
        let o = cmd.output().unwrap();
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), out)
    };

    // The attested caller (this test's uid holds the entry).
    let (ok, out) = run(Command::new(&client)
        .args(["-mode", "attested", "-socket"])
        .arg(&socket)
        .args([
            "-expect-id",
            "spiffe://example.org/envoy",
            "-rotation-timeout",
            "20s",
        ]));
    let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
    assert!(ok, "SDS client failed:\n{out}\nagent log:\n{log}");
    for want in [
        "OK FetchSecrets ROOTCA without a build version: trusted_ca",
        "OK FetchSecrets with node metadata disable_spiffe_cert_validation",
        "OK FetchSecrets of an unknown name: NotFound",
        "OK StreamSecrets first response",
        "OK ACK sent",
        "OK rotation push",
        "OK NACK sent",
        "OK after the NACK, the next push is the next rotation",
        "OK a request adding the unknown name",
        "OK a stream naming only",
        "OK DeltaSecrets",
        "PASS",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    println!("{out}");
    // The NACK is in the agent's log, with the client's message.
    assert!(
        log.contains("NACK") && log.contains("rejecting this update on purpose"),
        "agent log without the NACK:\n{log}"
    );

    // Another uid, with no entry: refused.
    world_readable(dir.path());
    world_readable(&go_dir);
    let (ok, out) = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&client)
        .args(["-mode", "unattested", "-socket"])
        .arg(&socket));
    assert!(ok, "unattested run failed:\n{out}");
    for want in [
        "OK StreamSecrets refused: PermissionDenied: no identity issued",
        "OK FetchSecrets refused: PermissionDenied",
        "OK DeltaSecrets refused: PermissionDenied",
        "PASS",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    println!("{out}");
    let _ = agent.kill();
    let _ = agent.wait();
}
