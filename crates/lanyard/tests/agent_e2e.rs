//! End-to-end: `lanyard dev` (server + agent) and independent SPIFFE clients,
//! unchanged: the `spiffe` crate, the Python `spiffe` package (py-spiffe), openssl,
//! and our own CLI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Dev;
use lanyard_proto::workload as wpb;

#[test]
fn dev_then_fetch_and_openssl_verify() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let out = dir.path().join("out");
    let text = dev.ok(&["svid", "fetch", "--write", out.to_str().unwrap()]);
    assert!(text.contains(&dev.expected_id()), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("svid.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let o = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(out.join("bundle.pem"))
        .arg(out.join("svid.pem"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // The fetched SVID passes our own inspector with the fetched bundle too.
    let o = dev.cli(&[
        "svid",
        "inspect",
        out.join("svid.pem").to_str().unwrap(),
        "--bundle",
        out.join("bundle.pem").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

    // JWT through the CLI; validation through the Workload API.
    let token = dev
        .ok(&["svid", "jwt", "--audience", "db"])
        .trim()
        .to_string();
    assert_eq!(token.split('.').count(), 3);
    assert!(
        dev.ok(&["svid", "validate", "--audience", "db", &token])
            .contains(&dev.expected_id())
    );
    let o = dev.cli(&["svid", "validate", "--audience", "other", &token]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("audience"));
    assert!(dev.ok(&["bundle", "fetch"]).contains("BEGIN CERTIFICATE"));
    assert!(
        dev.ok(&["bundle", "fetch", "--format", "jwks"])
            .contains("jwt-svid")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_crate_clients_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let client = spiffe::WorkloadApiClient::connect_to(&dev.endpoint)
        .await
        .unwrap();
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), dev.expected_id());
    let token = client.fetch_jwt_token(["aud-1"], None).await.unwrap();
    let validated = client.validate_jwt_token("aud-1", &token).await.unwrap();
    assert_eq!(validated.spiffe_id().to_string(), dev.expected_id());
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    assert!(jwt_bundles.get(&td).is_some());

    let source = spiffe::X509Source::builder()
        .endpoint(&dev.endpoint)
        .build()
        .await
        .unwrap();
    assert_eq!(
        source.svid().unwrap().spiffe_id().to_string(),
        dev.expected_id()
    );
    let jwt_source = spiffe::JwtSource::builder()
        .endpoint(&dev.endpoint)
        .build()
        .await
        .unwrap();
    let j = jwt_source.fetch_jwt_svid(["aud-2"]).await.unwrap();
    assert_eq!(j.spiffe_id().to_string(), dev.expected_id());

    // Rotation: give the entry an 8s TTL; the source sees new leaves (first at once,
    // because the entry changed, then at about half the lifetime).
    let list: serde_json::Value =
        serde_json::from_str(&dev.ok(&["entry", "list", "--output", "json"])).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_string();
    dev.ok(&["entry", "update", &id, "--x509-ttl", "8s"]);
    let first = source.svid().unwrap().cert_chain()[0].as_ref().to_vec();
    let mut seen = vec![first];
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut updates = source.updated();
    while seen.len() < 3 && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_secs(2), updates.changed()).await;
        let leaf = source.svid().unwrap().cert_chain()[0].as_ref().to_vec();
        if !seen.contains(&leaf) {
            seen.push(leaf);
        }
    }
    assert!(seen.len() >= 3, "saw {} distinct SVIDs", seen.len());
    source.shutdown().await;
    jwt_source.shutdown().await;
}

#[test]
fn python_spiffe_client() {
    let have = Command::new("python3")
        .args(["-c", "import spiffe"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        have,
        "py-spiffe is required: pip install spiffe (./scripts/test installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/py/pyspiffe_interop.py");
    let o = Command::new("python3")
        .arg(script)
        .env("SPIFFE_ENDPOINT_SOCKET", &dev.endpoint)
        .env("EXPECTED_ID", dev.expected_id())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "py-spiffe:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("0 failed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_api_rules() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let path = dev.endpoint.strip_prefix("unix://").unwrap().to_string();
    let channel = lanyard_server::client::unix_channel(Path::new(&path))
        .await
        .unwrap();
    let mut raw = wpb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel.clone());

    // No security header: InvalidArgument.
    let err = raw
        .fetch_x509svid(wpb::X509svidRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = raw
        .fetch_jwtsvid(wpb::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let mut c = wpb::spiffe_workload_api_client::SpiffeWorkloadApiClient::with_interceptor(
        channel,
        |mut r: tonic::Request<()>| {
            r.metadata_mut().insert(
                "workload.spiffe.io",
                tonic::metadata::MetadataValue::from_static("true"),
            );
            Ok(r)
        },
    );
    // WIT profile: Unimplemented.
    let err = c
        .fetch_witsvid(wpb::WitsvidRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    // JWT without audience: InvalidArgument.
    let err = c
        .fetch_jwtsvid(wpb::JwtsvidRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Bundle maps are keyed by the trust domain's SPIFFE ID.
    let mut s = c
        .fetch_x509_bundles(wpb::X509BundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    let b = tokio_stream::StreamExt::next(&mut s)
        .await
        .unwrap()
        .unwrap();
    assert!(
        b.bundles.contains_key("spiffe://example.org"),
        "{:?}",
        b.bundles.keys()
    );

    // A second entry for the same workload: two SVIDs, the hint passed through; the
    // open stream gets the new state at once, and loses it when the entry is deleted.
    let mut stream = c
        .fetch_x509svid(wpb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = tokio_stream::StreamExt::next(&mut stream)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.svids.len(), 1);
    let sel = format!("unix:uid:{}", dev.uid);
    let created: serde_json::Value = serde_json::from_str(&dev.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/second",
        "--parent-id",
        "spiffe://example.org/lanyard/agent/dev",
        "--selector",
        &sel,
        "--owner",
        "dev",
        "--environment",
        "test",
        "--hint",
        "external",
        "--output",
        "json",
    ]))
    .unwrap();
    let started = Instant::now();
    let two = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_stream::StreamExt::next(&mut stream),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(two.svids.len(), 2, "a new message on entry change");
    assert!(
        two.svids
            .iter()
            .any(|s| s.spiffe_id == "spiffe://example.org/second" && s.hint == "external")
    );
    dev.ok(&["entry", "delete", created["id"].as_str().unwrap()]);
    let one = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_stream::StreamExt::next(&mut stream),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(one.svids.len(), 1, "removal reaches the stream");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Another uid with no entry: PermissionDenied (run our CLI as nobody).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dev.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            common::bin(),
            "svid",
            "fetch",
            "--socket",
            &dev.endpoint,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("PermissionDenied"), "{err}");
}

/// The standalone `lanyard agent` against a separate `lanyard server`: join token,
/// restart without a token, serving cached SVIDs while the server is down, and a ban
/// that takes the identities away.
#[test]
fn standalone_agent_survives_server_outage_and_obeys_bans() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = common::ServerProc::start_on(
        &dir.path().join("server"),
        None,
        None,
        &format!("127.0.0.1:{port}"),
    );
    let uid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").unwrap().uid()
    };
    let token = server.json(&[
        "token",
        "generate",
        "--spiffe-id",
        "spiffe://example.org/lanyard/agent/node-1",
    ])["token"]
        .as_str()
        .unwrap()
        .to_string();
    server.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/api",
        "--parent-id",
        "spiffe://example.org/lanyard/agent/node-1",
        "--selector",
        &format!("unix:uid:{uid}"),
        "--owner",
        "api-team",
        "--environment",
        "test",
    ]);
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, server.ok(&["bundle", "show", "--format", "pem"])).unwrap();
    let agent_dir = dir.path().join("agent");
    let socket = dir.path().join("agent.sock");
    let start_agent = |token: Option<&str>| {
        let mut cmd = Command::new(common::bin());
        cmd.args([
            "agent",
            "--trust-domain",
            "example.org",
            "--server-address",
            &server.agent_addr,
        ])
        .arg("--data-dir")
        .arg(&agent_dir)
        .arg("--socket-path")
        .arg(&socket)
        .arg("--trust-bundle")
        .arg(&bundle)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(t) = token {
            cmd.args(["--join-token", t]);
        }
        cmd.spawn().unwrap()
    };
    let endpoint = format!("unix://{}", socket.display());
    let fetch = |endpoint: &str| {
        Command::new(common::bin())
            .args(["svid", "fetch", "--socket", endpoint, "--output", "json"])
            .output()
            .unwrap()
    };
    let wait_for = |want_ok: bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let o = fetch(&endpoint);
            if o.status.success() == want_ok {
                return o;
            }
            assert!(
                Instant::now() < deadline,
                "fetch never became {want_ok}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut agent = start_agent(Some(&token));
    let o = wait_for(true);
    assert!(String::from_utf8_lossy(&o.stdout).contains("spiffe://example.org/api"));

    // Restart the agent without a token: the stored agent SVID is reused.
    let _ = agent.kill();
    let _ = agent.wait();
    let mut agent = start_agent(None);
    wait_for(true);

    // Server down: cached SVIDs are still served.
    let server = {
        let mut s = server;
        let _ = s.child.kill();
        let _ = s.child.wait();
        s
    };
    std::thread::sleep(Duration::from_millis(500));
    let o = fetch(&endpoint);
    assert!(
        o.status.success(),
        "cached SVID while the server is down: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Server back; the agent reconnects; a ban removes the identity from workloads.
    let server = server.restart();
    std::thread::sleep(Duration::from_millis(300));
    server.ok(&["agent", "ban", "spiffe://example.org/lanyard/agent/node-1"]);
    let o = wait_for(false);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("PermissionDenied"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let _ = agent.kill();
    let _ = agent.wait();
}

/// Federation: a bundle of another trust domain configured on the server reaches
/// workloads in FetchX509SVID (federated_bundles), FetchX509Bundles and
/// FetchJWTBundles, and JWT-SVIDs of that trust domain validate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_bundles_reach_workloads() {
    use lanyard_proto::workload as wpb;
    use tokio_stream::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    // The partner trust domain: a CA and a JWT key of its own.
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
    let token = server.json(&[
        "token",
        "generate",
        "--spiffe-id",
        "spiffe://example.org/lanyard/agent/fed",
    ])["token"]
        .as_str()
        .unwrap()
        .to_string();
    server.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/lanyard/agent/fed",
        "--selector",
        &format!("unix:uid:{uid}"),
        "--owner",
        "web",
        "--environment",
        "test",
    ]);
    let (mut agent, endpoint) = common::spawn_agent(&server, &token, dir.path());
    let socket = dir.path().join("agent.sock");
    let deadline = Instant::now() + Duration::from_secs(15);
    let client = loop {
        if let Ok(c) = spiffe::WorkloadApiClient::connect_to(&endpoint).await
            && c.fetch_x509_svid().await.is_ok()
        {
            break c;
        }
        assert!(Instant::now() < deadline, "agent never served an SVID");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let partner = spiffe::TrustDomain::new("partner.org").unwrap();
    let x509_bundles = client.fetch_x509_bundles().await.unwrap();
    assert!(
        x509_bundles.get(&partner).is_some(),
        "federated X.509 bundle"
    );
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    assert!(jwt_bundles.get(&partner).is_some(), "federated JWT bundle");

    // The raw response carries federated_bundles keyed by the trust domain's ID.
    let ch = lanyard_server::client::unix_channel(&socket).await.unwrap();
    let mut raw = wpb::spiffe_workload_api_client::SpiffeWorkloadApiClient::with_interceptor(
        ch,
        |mut r: tonic::Request<()>| {
            r.metadata_mut().insert(
                "workload.spiffe.io",
                tonic::metadata::MetadataValue::from_static("true"),
            );
            Ok(r)
        },
    );
    let mut s = raw
        .fetch_x509svid(wpb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let msg = s.next().await.unwrap().unwrap();
    assert!(
        msg.federated_bundles.contains_key("spiffe://partner.org"),
        "{:?}",
        msg.federated_bundles.keys()
    );

    // A JWT-SVID minted by the partner validates through our agent.
    let partner_jwt = partner_ca
        .mint_jwt_svid(
            &lanyard_core::SpiffeId::new("spiffe://partner.org/api").unwrap(),
            &["web".into()],
            None,
            now,
        )
        .unwrap();
    let v = raw
        .validate_jwtsvid(wpb::ValidateJwtsvidRequest {
            audience: "web".into(),
            svid: partner_jwt.token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.spiffe_id, "spiffe://partner.org/api");
    let _ = agent.kill();
    let _ = agent.wait();
}

/// Evidence: after `lanyard dev` and one SVID fetch, `lanyard audit query` shows the
/// attestation and the issuance with selectors and serial; `audit verify` passes, and
/// fails naming the record when the SQLite rows are modified or the newest removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_of_dev_and_tamper_detection() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let fetched: serde_json::Value =
        serde_json::from_str(&dev.ok(&["svid", "fetch", "--output", "json"])).unwrap();
    let serial = fetched[0]["serial"].as_str().unwrap().to_string();
    let data = dir.path().to_str().unwrap().to_string();
    let events: serde_json::Value =
        serde_json::from_str(&dev.ok(&["audit", "query", "--data-dir", &data, "--output", "json"]))
            .unwrap();
    let events = events.as_array().unwrap();
    let attested = events
        .iter()
        .find(|e| e["event"]["kind"] == "node_attested")
        .expect("node_attested");
    assert_eq!(
        attested["event"]["evidence"]["attestation_type"],
        "join_token"
    );
    let issued = events
        .iter()
        .find(|e| {
            e["event"]["kind"] == "x509_svid_issued"
                && e["event"]["subject"] == dev.expected_id().as_str()
        })
        .expect("x509_svid_issued");
    assert_eq!(issued["event"]["evidence"]["serial"], serial.as_str());
    assert_eq!(
        issued["event"]["evidence"]["selectors"][0],
        format!("unix:uid:{}", dev.uid)
    );
    assert_eq!(issued["event"]["owner"], "dev");
    let o = dev.cli(&[
        "audit",
        "query",
        "--data-dir",
        &data,
        "--kind",
        "entry_created",
    ]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("entry_created"));

    // The agent reports which process received the SVID; the server records it
    // linked to the issuance event.
    let deadline = Instant::now() + Duration::from_secs(15);
    let delivered = loop {
        let out = dev.ok(&[
            "audit",
            "query",
            "--data-dir",
            &data,
            "--kind",
            "workload_svid_delivered",
            "--output",
            "json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        if let Some(d) = v
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"]["evidence"]["serial"] == serial.as_str())
        {
            break d.clone();
        }
        assert!(Instant::now() < deadline, "no delivery evidence: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ev = &delivered["event"];
    assert_eq!(ev["outcome"], "success");
    assert_eq!(ev["subject"], dev.expected_id().as_str());
    assert_eq!(ev["parent_id"], issued["event"]["id"]);
    assert!(
        ev["actor"].as_str().unwrap().contains("/lanyard/agent/"),
        "{ev}"
    );
    assert!(ev["evidence"]["pid"].as_i64().unwrap() > 0);
    assert_eq!(ev["evidence"]["uid"].as_u64().unwrap(), u64::from(dev.uid));
    let exe = std::fs::canonicalize(common::bin()).unwrap();
    assert_eq!(ev["evidence"]["path"], exe.to_str().unwrap());
    let sha = ev["evidence"]["sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64);
    let trace = dev.ok(&[
        "audit",
        "query",
        "--data-dir",
        &data,
        "--subject",
        dev.expected_id().as_str(),
    ]);
    assert!(trace.contains("workload_svid_delivered"), "{trace}");

    // Wait for a signed checkpoint, then verify.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = dev.cli(&["audit", "verify", "--data-dir", &data]);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        if !out.contains(" 0 checkpoints") {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint: {out}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(dev);

    // Tamper with the stored rows directly.
    use sqlx::ConnectOptions;
    let mut db = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("lanyard.db"))
        .connect()
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET event = REPLACE(event, '\"owner\":\"dev\"', '\"owner\":\"mallory\"') WHERE kind = 'entry_created'")
        .execute(&mut db)
        .await
        .unwrap();
    let verify = || {
        Command::new(common::bin())
            .args(["audit", "verify", "--data-dir", &data])
            .output()
            .unwrap()
    };
    let o = verify();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("was modified"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    sqlx::query("UPDATE audit_events SET event = REPLACE(event, '\"owner\":\"mallory\"', '\"owner\":\"dev\"') WHERE kind = 'entry_created'")
        .execute(&mut db)
        .await
        .unwrap();
    assert!(verify().status.success());
    sqlx::query("DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)")
        .execute(&mut db)
        .await
        .unwrap();
    let o = verify();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("removed"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The real agent renews its agent SVID at half-life and reconnects with the new
/// one, so clone detection never trips on it: after several renewals it still mints
/// through the server, and no superseded SVID was ever presented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_renews_and_reconnects_without_looking_like_a_clone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(&cfg, "agent_svid_ttl = \"4s\"\n").unwrap();
    let dev = Dev::start_with(
        &dir.path().join("data"),
        &["--server-config", cfg.to_str().unwrap()],
    );
    let agent = "spiffe://example.org/lanyard/agent/dev";
    let serial = |dev: &Dev| {
        let v: serde_json::Value =
            serde_json::from_str(&dev.ok(&["agent", "show", agent, "--output", "json"])).unwrap();
        (
            v["serial"].as_str().unwrap().to_string(),
            v["superseded_svids_presented"].as_i64().unwrap(),
        )
    };
    let (first, _) = serial(&dev);
    let mut c = common::raw(&dev).await;
    let path = dev
        .expected_id()
        .trim_start_matches("spiffe://example.org")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = std::collections::BTreeSet::from([first]);
    // Three renewals (every ~2 s), each followed by a server round trip.
    while seen.len() < 4 {
        assert!(Instant::now() < deadline, "renewals seen: {seen:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (s, superseded) = serial(&dev);
        assert_eq!(superseded, 0, "the real agent was taken for a clone");
        seen.insert(s);
    }
    // JWT-SVIDs are minted by the server on demand: the agent's connection works.
    let token = common::jwt(&mut c, &path, "after-renewals").await;
    assert_eq!(token.split('.').count(), 3);
    let shown = dev.ok(&["agent", "show", agent]);
    assert!(shown.contains("Clone check:  ok"), "{shown}");
}
