//! End-to-end: the real `lanyard server` binary, the admin CLI, and a test agent that
//! speaks the agent API over SPIFFE mTLS. The main scenario runs on SQLite and on
//! PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{PgDb, ServerProc, TD, node_client, shared_bundles};
use lanyard_core::{BundleSet, SystemClock, X509Svid};
use lanyard_proto::node as pb;
use rcgen::{CertificateParams, KeyPair};
use tokio_stream::StreamExt;

fn csr(key: &KeyPair) -> Vec<u8> {
    CertificateParams::default()
        .serialize_request(key)
        .unwrap()
        .der()
        .to_vec()
}

async fn attest_join_token(
    server: &ServerProc,
    token: &str,
    key: &KeyPair,
) -> Result<pb::AgentSvid, tonic::Status> {
    let mut c = node_client(&server.agent_addr, shared_bundles(server.bundle()), None).await;
    let req = pb::AttestRequest {
        step: Some(pb::attest_request::Step::JoinToken(
            pb::JoinTokenAttestation {
                token: token.to_string(),
                csr: csr(key),
            },
        )),
    };
    let mut stream = c.attest(tokio_stream::iter(vec![req])).await?.into_inner();
    let msg = stream.next().await.expect("one response")?;
    match msg.step {
        Some(pb::attest_response::Step::Result(svid)) => Ok(svid),
        other => panic!("unexpected attestation step {other:?}"),
    }
}

fn token(server: &ServerProc, extra: &[&str]) -> String {
    let mut args = vec!["token", "generate"];
    args.extend_from_slice(extra);
    server.json(&args)["token"].as_str().unwrap().to_string()
}

fn create_entry(server: &ServerProc, path: &str, parent: &str, extra: &[&str]) -> String {
    let spiffe_id = format!("spiffe://{TD}{path}");
    let mut args = vec![
        "entry",
        "create",
        "--spiffe-id",
        &spiffe_id,
        "--parent-id",
        parent,
        "--selector",
        "unix:uid:1000",
        "--owner",
        "team-a",
        "--environment",
        "test",
    ];
    args.extend_from_slice(extra);
    server.json(&args)["id"].as_str().unwrap().to_string()
}

/// Events of `kind` from the server's evidence log (SQLite data dir).
fn server_audit(data: &std::path::Path, kind: &str) -> Vec<serde_json::Value> {
    let o = std::process::Command::new(common::bin())
        .args(["audit", "query", "--data-dir"])
        .arg(data)
        .args(["--kind", kind, "--output", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn verify(chain: &[Vec<u8>], server: &ServerProc) -> X509Svid {
    let set: BundleSet = [server.bundle()].into_iter().collect();
    X509Svid::validate(chain.to_vec(), &set, &SystemClock).unwrap()
}

async fn scenario(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(dir.path(), database_url, None);

    // Join-token attestation.
    let agent_key = KeyPair::generate().unwrap();
    let t = token(&server, &[]);
    let svid = attest_join_token(&server, &t, &agent_key).await.unwrap();
    assert!(
        svid.spiffe_id
            .starts_with(&format!("spiffe://{TD}/lanyard/agent/join_token/")),
        "{}",
        svid.spiffe_id
    );
    let agent_id = svid.spiffe_id.clone();
    let checked = verify(&svid.cert_chain, &server);
    assert_eq!(checked.spiffe_id().to_string(), agent_id);
    assert!(svid.bundle_sequence >= 1);

    // A bad CSR is refused without spending the token.
    let t2 = token(&server, &[]);
    let mut c = node_client(&server.agent_addr, shared_bundles(server.bundle()), None).await;
    let req = pb::AttestRequest {
        step: Some(pb::attest_request::Step::JoinToken(
            pb::JoinTokenAttestation {
                token: t2.clone(),
                csr: b"junk".to_vec(),
            },
        )),
    };
    let err = c
        .attest(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("signing request"),
        "{}",
        err.message()
    );
    attest_join_token(&server, &t2, &KeyPair::generate().unwrap())
        .await
        .unwrap();

    // A used token is refused; so is an expired one.
    let err = attest_join_token(&server, &t, &KeyPair::generate().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("already used"), "{}", err.message());
    let short = token(&server, &["--ttl", "1s"]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = attest_join_token(&server, &short, &KeyPair::generate().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("expired"), "{}", err.message());
    let err = attest_join_token(&server, "not-a-token", &KeyPair::generate().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // The agent syncs over mTLS with its SVID; an entry created while it is connected
    // reaches it in well under a second.
    let key_der = agent_key.serialize_der();
    let bundles = shared_bundles(server.bundle());
    let mut agent = node_client(
        &server.agent_addr,
        bundles.clone(),
        Some((&svid.cert_chain, &key_der)),
    )
    .await;
    let mut sync = agent
        .sync(pb::SyncRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = sync.next().await.unwrap().unwrap();
    assert!(first.entries.is_empty());
    assert!(!first.bundle.is_empty());
    let started = Instant::now();
    let entry_id = create_entry(&server, "/web", &agent_id, &["--dns-name", "web.local"]);
    let update = tokio::time::timeout(Duration::from_secs(5), sync.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let latency = started.elapsed();
    assert_eq!(update.entries.len(), 1);
    assert_eq!(update.entries[0].id, entry_id);
    assert_eq!(update.entries[0].spiffe_id, format!("spiffe://{TD}/web"));
    // The CLI round trip (process start + gRPC) is included; the push itself is far faster.
    assert!(
        latency < Duration::from_secs(2),
        "entry took {latency:?} to arrive"
    );

    // An agent that asks for deltas gets a snapshot first, then only what changed.
    let mut deltas = agent
        .sync(pb::SyncRequest { deltas: true })
        .await
        .unwrap()
        .into_inner();
    let snapshot = deltas.next().await.unwrap().unwrap();
    assert!(!snapshot.delta);
    assert_eq!(snapshot.entries.len(), 1);
    let web2 = create_entry(&server, "/web2", &agent_id, &[]);
    let added = next_update(&mut deltas).await;
    assert!(added.delta);
    assert_eq!(
        added
            .entries
            .iter()
            .map(|e| e.id.as_str())
            .collect::<Vec<_>>(),
        [web2.as_str()]
    );
    assert!(added.removed_entry_ids.is_empty());
    assert!(!added.bundle.is_empty(), "the rest is full state");
    // The agent without deltas gets the whole set again.
    let full = next_update(&mut sync).await;
    assert!(!full.delta);
    assert_eq!(full.entries.len(), 2);
    server.ok(&["entry", "delete", &web2]);
    let removed = next_update(&mut deltas).await;
    assert!(removed.delta && removed.entries.is_empty());
    assert_eq!(removed.removed_entry_ids, vec![web2.clone()]);
    assert_eq!(next_update(&mut sync).await.entries.len(), 1);

    // An entry parented to someone else is not sent to this agent.
    let other_entry = create_entry(
        &server,
        "/db",
        &format!("spiffe://{TD}/lanyard/agent/other"),
        &[],
    );

    // Signing: the agent gets an SVID for its entry, and nothing for another agent's entry.
    let wl_key = KeyPair::generate().unwrap();
    let batch = agent
        .batch_new_x509_svid(pb::BatchX509SvidRequest {
            requests: vec![
                pb::X509SvidRequest {
                    entry_id: entry_id.clone(),
                    csr: csr(&wl_key),
                },
                pb::X509SvidRequest {
                    entry_id: other_entry.clone(),
                    csr: csr(&wl_key),
                },
                pb::X509SvidRequest {
                    entry_id: entry_id.clone(),
                    csr: b"garbage".to_vec(),
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.results.len(), 3);
    assert!(
        batch.results[0].error.is_empty(),
        "{}",
        batch.results[0].error
    );
    let wl = verify(&batch.results[0].cert_chain, &server);
    assert_eq!(wl.spiffe_id().to_string(), format!("spiffe://{TD}/web"));
    assert!(
        batch.results[1].error.contains("not authorized"),
        "{}",
        batch.results[1].error
    );
    assert!(batch.results[1].cert_chain.is_empty());
    assert!(
        batch.results[2].error.contains("signing request"),
        "{}",
        batch.results[2].error
    );

    let jwt = agent
        .new_jwt_svid(pb::JwtSvidRequest {
            entry_id: entry_id.clone(),
            audience: vec!["db".into()],
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwt.spiffe_id, format!("spiffe://{TD}/web"));
    assert_eq!(jwt.token.split('.').count(), 3);
    let err = agent
        .new_jwt_svid(pb::JwtSvidRequest {
            entry_id: other_entry.clone(),
            audience: vec!["db".into()],
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // Renewal over mTLS.
    let new_key = KeyPair::generate().unwrap();
    let renewed = agent
        .renew_agent(pb::RenewRequest { csr: csr(&new_key) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renewed.spiffe_id, agent_id);
    assert_ne!(renewed.cert_chain[0], svid.cert_chain[0]);
    let shown = server.json(&["agent", "show", &agent_id]);
    assert_eq!(
        shown["serial"].as_str().unwrap(),
        verify(&renewed.cert_chain, &server).serial()
    );

    // Deleting the entry reaches the agent too.
    server.ok(&["entry", "delete", &entry_id]);
    let update = tokio::time::timeout(Duration::from_secs(5), sync.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(update.entries.is_empty());
    let entry_id = create_entry(&server, "/web", &agent_id, &[]);
    let _ = tokio::time::timeout(Duration::from_secs(5), sync.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // Without a client certificate, only attestation is possible.
    let mut anon = node_client(&server.agent_addr, bundles.clone(), None).await;
    let err = anon.sync(pb::SyncRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // A restart (after SIGKILL) keeps entries, agents, CA keys and the bundle.
    let bundle_before = server.ok(&["bundle", "show", "--format", "jwks"]);
    let entries_before = server.json(&["entry", "list"]);
    server = server.restart();
    assert_eq!(
        server.ok(&["bundle", "show", "--format", "jwks"]),
        bundle_before
    );
    assert_eq!(server.json(&["entry", "list"]), entries_before);
    assert_eq!(server.json(&["agent", "list"]).as_array().unwrap().len(), 2);
    let mut agent = node_client(
        &server.agent_addr,
        bundles.clone(),
        Some((&svid.cert_chain, &key_der)),
    )
    .await;
    let mut sync = agent
        .sync(pb::SyncRequest::default())
        .await
        .unwrap()
        .into_inner();
    let state = sync.next().await.unwrap().unwrap();
    assert_eq!(state.entries.len(), 1);
    assert_eq!(state.entries[0].id, entry_id);

    // Banning: the open stream ends with PermissionDenied and every RPC is refused.
    server.ok(&["agent", "ban", &agent_id]);
    let end = tokio::time::timeout(Duration::from_secs(5), sync.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end.unwrap_err().code(), tonic::Code::PermissionDenied);
    let err = agent
        .renew_agent(pb::RenewRequest { csr: csr(&new_key) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("banned"), "{}", err.message());
    // The ban survives a restart.
    server = server.restart();
    let mut agent = node_client(
        &server.agent_addr,
        bundles.clone(),
        Some((&svid.cert_chain, &key_der)),
    )
    .await;
    let err = agent.sync(pb::SyncRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // Eviction forgets the agent; its old SVID no longer works.
    server.ok(&["agent", "evict", &agent_id]);
    let err = agent.sync(pb::SyncRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("not an attested agent"),
        "{}",
        err.message()
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_scenario_sqlite() {
    scenario(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_scenario_postgres() {
    let db = PgDb::create().await;
    scenario(Some(&db.url)).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_pem_is_a_spiffe_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), None, None);
    let pem = server.ok(&["bundle", "show", "--format", "pem"]);
    let certs = lanyard_core::bundle::pem_certificates(pem.as_bytes()).unwrap();
    assert_eq!(certs.len(), 1);
    let report = lanyard_core::x509::rule_report(&certs[0], false).unwrap();
    assert!(report.iter().all(|c| c.passed), "{report:?}");
    let summary = lanyard_core::x509::summarize(&certs[0]).unwrap();
    assert_eq!(summary.uri_sans, vec![format!("spiffe://{TD}")]);
    assert_eq!(
        summary.not_after - summary.not_before,
        86_400 + 10,
        "24h CA, back-dated 10s"
    );
    // The JWKS form is a valid SPIFFE bundle with one X.509 and one JWT authority.
    let b = server.bundle();
    assert_eq!(b.x509_authorities().len(), 1);
    assert_eq!(b.jwt_authorities().count(), 1);
    assert!(b.sequence().unwrap() >= 1);
    let jwks_file = dir.path().join("b.json");
    std::fs::write(
        &jwks_file,
        server.ok(&["bundle", "show", "--format", "jwks"]),
    )
    .unwrap();
    let o = server.cli(&["bundle", "inspect", jwks_file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // Keys on disk are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("ca-keys.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = std::fs::metadata(&server.admin_socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_admin_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), None, None);
    let parent = format!("spiffe://{TD}/lanyard/agent/a");
    let ok_id = create_entry(&server, "/web", &parent, &[]);
    let base = |id: &str| -> Vec<String> {
        vec![
            "entry",
            "create",
            "--spiffe-id",
            id,
            "--parent-id",
            &parent,
            "--selector",
            "unix:uid:1000",
            "--owner",
            "o",
            "--environment",
            "test",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (base("spiffe://example.org/a/"), "trailing slash"),
        (
            base("spiffe://other.org/a"),
            "not in this server's trust domain",
        ),
        (base("spiffe://example.org"), "trust domain itself"),
        (base("https://example.org/a"), "spiffe://"),
        (
            vec![
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/x",
                "--parent-id",
                &parent,
                "--selector",
                "unix:uid:1000",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            "refused by registration policy \"owner-required\"",
        ),
        (
            [
                base("spiffe://example.org/x"),
                vec!["--selector".into(), "unix:uid:abc".into()],
            ]
            .concat(),
            "unix:uid",
        ),
        (
            [
                base("spiffe://example.org/x"),
                vec!["--x509-ttl".into(), "48h".into()],
            ]
            .concat(),
            "exceeds the CA lifetime",
        ),
        (
            [
                base("spiffe://example.org/x"),
                vec!["--x509-ttl".into(), "soon".into()],
            ]
            .concat(),
            "--x509-ttl",
        ),
        (
            [
                base("spiffe://example.org/x"),
                vec!["--dns-name".into(), "bad name".into()],
            ]
            .concat(),
            "dns_name",
        ),
        (
            [
                base("spiffe://example.org/x"),
                vec!["--expires-at".into(), "2000-01-01T00:00:00Z".into()],
            ]
            .concat(),
            "in the past",
        ),
        (
            [
                base("spiffe://example.org/x"),
                vec!["--expires-at".into(), "tomorrow".into()],
            ]
            .concat(),
            "RFC 3339",
        ),
        (base("spiffe://example.org/web"), "already exists"),
    ];
    for (args, needle) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = server.fails(&a);
        assert!(err.contains(needle), "{a:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
    }
    assert!(
        server
            .fails(&["entry", "delete", "xyz"])
            .contains("malformed")
    );
    assert!(
        server
            .fails(&["entry", "delete", &"0".repeat(32)])
            .contains("no entry")
    );
    assert!(
        server
            .fails(&["entry", "show", &"0".repeat(32)])
            .contains("no entry")
    );
    assert!(
        server
            .fails(&["agent", "ban", "spiffe://example.org/nobody"])
            .contains("no agent")
    );
    assert!(
        server
            .fails(&["agent", "show", "not-an-id"])
            .contains("agent ID")
    );
    assert!(
        server
            .fails(&["token", "generate", "--ttl", "30d"])
            .contains("7d")
    );
    assert!(
        server
            .fails(&["token", "generate", "--spiffe-id", "spiffe://other.org/a"])
            .contains("trust domain")
    );
    // Nothing changed: still exactly the one entry.
    let list = server.json(&["entry", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], ok_id.as_str());
    // Partial update keeps the other fields and bumps the revision.
    let updated = server.json(&[
        "entry",
        "update",
        &ok_id,
        "--owner",
        "team-b",
        "--environment",
        "prod",
    ]);
    assert_eq!(updated["owner"], "team-b");
    assert_eq!(updated["environment"], "prod");
    assert_eq!(updated["selectors"][0], "unix:uid:1000");
    assert_eq!(updated["revision"], 2);
    // A missing socket is a clear error.
    let o = std::process::Command::new(common::bin())
        .args(["entry", "list", "--admin-socket", "/nonexistent/admin.sock"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("is `lanyard server` running"));
    // Bad server configuration names the key.
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "trust_domain = \"example.org\"\n[ca]\nca_tl = \"1h\"\n",
    )
    .unwrap();
    let o = std::process::Command::new(common::bin())
        .args([
            "server",
            "--data-dir",
            dir.path().join("other").to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ca_tl"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A second server on the same data dir is refused instead of stealing the socket.
    let o = std::process::Command::new(common::bin())
        .args([
            "server",
            "--trust-domain",
            TD,
            "--bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// x509pop: the agent proves possession of a key whose certificate chains to the
/// configured CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509pop_attestation() {
    use rcgen::{BasicConstraints, DnType, IsCa, Issuer, KeyUsagePurpose};
    let dir = tempfile::tempdir().unwrap();
    // A node CA and a node certificate.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "node CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let node_key = KeyPair::generate().unwrap();
    let mut node_params = CertificateParams::default();
    node_params
        .distinguished_name
        .push(DnType::CommonName, "node-1");
    node_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let node_cert = node_params
        .signed_by(&node_key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    std::fs::write(dir.path().join("node-ca.pem"), ca_cert.pem()).unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "[x509pop]\nca_bundle = \"{}\"\n",
            dir.path().join("node-ca.pem").display()
        ),
    )
    .unwrap();
    let server = ServerProc::start(&dir.path().join("data"), None, Some(&cfg));

    let run = |chain: Vec<Vec<u8>>, signer: &KeyPair| {
        let server_addr = server.agent_addr.clone();
        let bundle = server.bundle();
        let signer_der = signer.serialize_der();
        async move {
            let mut c = node_client(&server_addr, shared_bundles(bundle), None).await;
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            tx.send(pb::AttestRequest {
                step: Some(pb::attest_request::Step::X509pop(pb::X509PopAttestation {
                    cert_chain: chain,
                    csr: csr(&KeyPair::generate().unwrap()),
                })),
            })
            .await
            .unwrap();
            let mut stream = c
                .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            let challenge = match stream.next().await.unwrap()?.step {
                Some(pb::attest_response::Step::Challenge(ch)) => ch,
                other => panic!("expected a challenge, got {other:?}"),
            };
            assert_eq!(challenge.algorithm, "ecdsa-p256-sha256");
            let kp = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &signer_der,
            )
            .unwrap();
            let sig = kp
                .sign(&aws_lc_rs::rand::SystemRandom::new(), &challenge.nonce)
                .unwrap();
            tx.send(pb::AttestRequest {
                step: Some(pb::attest_request::Step::ChallengeResponse(
                    pb::ChallengeResponse {
                        signature: sig.as_ref().to_vec(),
                    },
                )),
            })
            .await
            .unwrap();
            match stream.next().await.unwrap()?.step {
                Some(pb::attest_response::Step::Result(svid)) => Ok::<_, tonic::Status>(svid),
                other => panic!("expected a result, got {other:?}"),
            }
        }
    };

    let svid = run(vec![node_cert.der().to_vec()], &node_key)
        .await
        .unwrap();
    assert!(
        svid.spiffe_id
            .starts_with(&format!("spiffe://{TD}/lanyard/agent/x509pop/")),
        "{}",
        svid.spiffe_id
    );
    let agent = server.json(&["agent", "show", &svid.spiffe_id]);
    assert_eq!(agent["attestation_type"], "x509pop");
    assert!(
        agent["selectors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "x509pop:subject:cn:node-1")
    );

    // The right certificate but the wrong key: the challenge fails.
    let err = run(
        vec![node_cert.der().to_vec()],
        &KeyPair::generate().unwrap(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("does not hold"), "{}", err.message());

    // A certificate from an unknown CA is refused before any challenge.
    let rogue_key = KeyPair::generate().unwrap();
    let rogue = CertificateParams::default()
        .self_signed(&rogue_key)
        .unwrap();
    let mut c = node_client(&server.agent_addr, shared_bundles(server.bundle()), None).await;
    let req = pb::AttestRequest {
        step: Some(pb::attest_request::Step::X509pop(pb::X509PopAttestation {
            cert_chain: vec![rogue.der().to_vec()],
            csr: csr(&rogue_key),
        })),
    };
    let mut stream = c
        .attest(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let err = stream.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("not trusted"), "{}", err.message());
}

/// The admin API over mTLS serves only SVIDs of admin entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_over_mtls_requires_an_admin_svid() {
    use lanyard_proto::admin as apb;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(&cfg, "admin_bind = \"127.0.0.1:0\"\n").unwrap();
    let server = ServerProc::start(&dir.path().join("data"), None, Some(&cfg));
    let mtls_addr = server
        .admin_mtls
        .clone()
        .expect("admin_mtls in the ready line");

    // An agent, an admin entry and a plain entry, and an SVID for each.
    let agent_key = KeyPair::generate().unwrap();
    let svid = attest_join_token(&server, &token(&server, &[]), &agent_key)
        .await
        .unwrap();
    let bundles = shared_bundles(server.bundle());
    let mut agent = node_client(
        &server.agent_addr,
        bundles.clone(),
        Some((&svid.cert_chain, &agent_key.serialize_der())),
    )
    .await;
    let admin_entry = create_entry(&server, "/ops/admin", &svid.spiffe_id, &["--admin"]);
    let plain_entry = create_entry(&server, "/ops/plain", &svid.spiffe_id, &[]);
    let mut identities = Vec::new();
    for entry_id in [&admin_entry, &plain_entry] {
        let key = KeyPair::generate().unwrap();
        let r = agent
            .batch_new_x509_svid(pb::BatchX509SvidRequest {
                requests: vec![pb::X509SvidRequest {
                    entry_id: entry_id.clone(),
                    csr: csr(&key),
                }],
            })
            .await
            .unwrap()
            .into_inner();
        identities.push((r.results[0].cert_chain.clone(), key.serialize_der()));
    }

    let client = |i: usize| {
        let (chain, key) = identities[i].clone();
        let addr = mtls_addr.clone();
        let bundles = bundles.clone();
        async move {
            let ch = common::tls_channel(&addr, bundles, Some((&chain, &key)))
                .await
                .unwrap();
            apb::admin_client::AdminClient::new(ch)
        }
    };
    let mut admin = client(0).await;
    let list = admin
        .list_entries(apb::ListEntriesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.entries.len(), 2);
    let mut plain = client(1).await;
    let err = plain
        .list_entries(apb::ListEntriesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("not an admin identity"),
        "{}",
        err.message()
    );
    let err = plain.create_entry(apb::Entry::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // Registration policy over mTLS. The default forbids admin entries from
    // anywhere but the local socket.
    let entry = |path: &str, admin_flag: bool| apb::Entry {
        spiffe_id: format!("spiffe://{TD}{path}"),
        parent_id: svid.spiffe_id.clone(),
        selectors: vec!["unix:uid:1000".into()],
        owner: "ops".into(),
        environment: "test".into(),
        admin: admin_flag,
        ..Default::default()
    };
    let err = admin
        .create_entry(entry("/ops/admin2", true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("\"admin-entries-local-only\""),
        "{}",
        err.message()
    );
    admin
        .create_entry(entry("/anywhere/web", false))
        .await
        .unwrap();
    // Downstream entries are not supported: refused, not silently ignored.
    let mut downstream = entry("/anywhere/nested", false);
    downstream.downstream = true;
    let err = admin.create_entry(downstream).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("downstream"), "{}", err.message());
    // Under the shipped default a full admin SVID keeps every admin operation:
    // join tokens (for agent IDs only) included.
    let t = admin
        .generate_join_token(apb::JoinTokenRequest {
            ttl_seconds: 60,
            spiffe_id: format!("spiffe://{TD}/lanyard/agent/ops/n1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.spiffe_id, format!("spiffe://{TD}/lanyard/agent/ops/n1"));
    let err = admin
        .generate_join_token(apb::JoinTokenRequest {
            ttl_seconds: 60,
            spiffe_id: format!("spiffe://{TD}/lanyard/server"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Delegated administration: ops admins manage /ops/ only.
    let policy = dir.path().join("delegated.cedar");
    std::fs::write(
        &policy,
        r#"@id("local-root")
permit (principal, action, resource) when { principal.local };

@id("ops-scope")
@reason("ops admins manage identities under /ops/")
permit (principal, action, resource is Lanyard::Entry)
when { principal.path like "/ops/*" && resource.path like "/ops/*" };

@id("admin-entries-local-only")
@reason("only the local admin socket may manage admin entries")
forbid (principal, action, resource is Lanyard::Entry)
when { (resource.admin || resource.downstream) && !principal.local };
"#,
    )
    .unwrap();
    server.ok(&[
        "policy",
        "set",
        "--kind",
        "registration",
        "--file",
        policy.to_str().unwrap(),
    ]);
    let created = admin
        .create_entry(entry("/ops/web", false))
        .await
        .unwrap()
        .into_inner();
    let err = admin
        .create_entry(entry("/team-b/web", false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("no registration policy permits"),
        "{}",
        err.message()
    );
    // Moving an entry out of the delegated prefix is refused too.
    let mut moved = created.clone();
    moved.spiffe_id = format!("spiffe://{TD}/team-b/moved");
    let err = admin
        .update_entry(apb::UpdateEntryRequest {
            entry: Some(moved),
            expected_revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    admin
        .delete_entry(apb::EntryId {
            id: created.id.clone(),
        })
        .await
        .unwrap();
    // The local socket still may do anything the policy lets it.
    create_entry(&server, "/team-b/web", &svid.spiffe_id, &[]);
    // Every other admin operation is policy too: the ops admin may not mint a join
    // token, replace the policy, taint the CA, ban or evict agents.
    fn denied<T>(r: Result<T, tonic::Status>, what: &str) {
        let err = r.err().unwrap_or_else(|| panic!("{what} was allowed"));
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{what}: {err:?}");
        assert!(
            err.message().contains("no registration policy permits"),
            "{what}: {}",
            err.message()
        );
    }
    let join = |path: &str| apb::JoinTokenRequest {
        ttl_seconds: 60,
        spiffe_id: format!("spiffe://{TD}{path}"),
    };
    denied(
        admin
            .generate_join_token(join("/lanyard/agent/team-b/n1"))
            .await,
        "join token for another agent path",
    );
    denied(
        admin
            .generate_join_token(apb::JoinTokenRequest::default())
            .await,
        "join token with a generated agent ID",
    );
    denied(
        admin
            .set_policy(apb::SetPolicyRequest {
                kind: "registration".into(),
                body: "permit (principal, action, resource);".into(),
            })
            .await,
        "policy set",
    );
    let slots = server.json(&["ca", "list"]);
    let active = slots
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["state"] == "active")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    denied(
        admin
            .taint_ca(apb::TaintRequest {
                slot: active.clone(),
            })
            .await,
        "CA taint",
    );
    let agent_req = || apb::AgentId {
        spiffe_id: svid.spiffe_id.clone(),
    };
    denied(admin.ban_agent(agent_req()).await, "agent ban");
    denied(admin.evict_agent(agent_req()).await, "agent evict");
    assert!(
        !server.json(&["agent", "show", &svid.spiffe_id])["banned"]
            .as_bool()
            .unwrap()
    );
    let refused = server_audit(&dir.path().join("data"), "admin_call_refused");
    for action in [
        "create_join_token",
        "set_policy",
        "taint_ca",
        "ban_agent",
        "evict_agent",
    ] {
        assert!(
            refused
                .iter()
                .any(|e| e["event"]["evidence"]["action"] == action
                    && e["event"]["decision"] == "deny"
                    && e["event"]["actor"] == format!("spiffe://{TD}/ops/admin")),
            "{action} refusal not recorded: {refused:?}"
        );
    }
    // A policy that delegates enrolment of /lanyard/agent/ops/ nodes, and nothing more.
    let mut text = std::fs::read_to_string(&policy).unwrap();
    text.push_str(
        r#"
@id("ops-enrol")
@reason("ops admins enrol agents under /lanyard/agent/ops/")
permit (principal, action == Lanyard::Action::"create_join_token", resource is Lanyard::JoinToken)
when { principal.path like "/ops/*" && resource.agent_path like "/lanyard/agent/ops/*" };
"#,
    );
    std::fs::write(&policy, text).unwrap();
    server.ok(&[
        "policy",
        "set",
        "--kind",
        "registration",
        "--file",
        policy.to_str().unwrap(),
    ]);
    let t = admin
        .generate_join_token(join("/lanyard/agent/ops/n2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.spiffe_id, format!("spiffe://{TD}/lanyard/agent/ops/n2"));
    denied(
        admin
            .generate_join_token(join("/lanyard/agent/team-b/n2"))
            .await,
        "join token outside the delegated agent path",
    );
    let created = server_audit(&dir.path().join("data"), "token_created");
    assert!(
        created
            .iter()
            .any(|e| e["event"]["policy_ids"][0] == "ops-enrol"),
        "{created:?}"
    );
    // The local socket keeps full control: it taints (the refused taint above
    // changed nothing).
    server.ok(&["ca", "taint", &active]);
    // Refusals are on record with the policy named.
    let data = dir.path().join("data");
    let refused = server_audit(&data, "entry_refused");
    assert!(
        refused
            .iter()
            .any(|e| e["event"]["policy_ids"][0] == "admin-entries-local-only"),
        "{refused:?}"
    );

    // No client certificate: the TLS handshake itself is refused.
    let anon = common::tls_channel(&mtls_addr, bundles.clone(), None).await;
    if let Ok(ch) = anon {
        let err = apb::admin_client::AdminClient::new(ch)
            .list_entries(apb::ListEntriesRequest::default())
            .await
            .unwrap_err();
        assert_ne!(err.code(), tonic::Code::Ok);
    }
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Health endpoints, and an upstream CA from disk: our CA becomes an intermediate and
/// SVID chains verify to the upstream root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_upstream_ca() {
    use rcgen::{BasicConstraints, DnType, IsCa, KeyUsagePurpose};
    let dir = tempfile::tempdir().unwrap();
    let up_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "Corp Root CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = p.self_signed(&up_key).unwrap();
    std::fs::write(dir.path().join("up.pem"), root.pem()).unwrap();
    std::fs::write(dir.path().join("up-key.pem"), up_key.serialize_pem()).unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "[ca]\nupstream_cert = \"{}\"\nupstream_key = \"{}\"\n",
            dir.path().join("up.pem").display(),
            dir.path().join("up-key.pem").display()
        ),
    )
    .unwrap();
    let server = ServerProc::start(&dir.path().join("data"), None, Some(&cfg));

    let live = http_get(&server.http_addr, "/live").await;
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    let ready = http_get(&server.http_addr, "/ready").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    // The bundle holds the upstream root, not our intermediate.
    let b = server.bundle();
    assert_eq!(b.x509_authorities().len(), 1);
    assert_eq!(b.x509_authorities()[0].der(), root.der().as_ref());

    let agent_key = KeyPair::generate().unwrap();
    let svid = attest_join_token(&server, &token(&server, &[]), &agent_key)
        .await
        .unwrap();
    assert_eq!(svid.cert_chain.len(), 2, "leaf and Lanyard's intermediate");
    let checked = verify(&svid.cert_chain, &server);
    assert_eq!(checked.spiffe_id().to_string(), svid.spiffe_id);

    // A mismatched upstream key is refused at start with a clear error.
    let other = KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("up-key.pem"), other.serialize_pem()).unwrap();
    let o = std::process::Command::new(common::bin())
        .args([
            "server",
            "--trust-domain",
            TD,
            "--bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data2"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not belong"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The evidence log on PostgreSQL: `audit verify --database-url` passes on an intact
/// log and names the record when a row is modified or a middle record removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_over_postgres() {
    use sqlx::Connection;
    let db = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), Some(&db.url), None);
    token(&server, &[]);
    create_entry(
        &server,
        "/pg/web",
        &format!("spiffe://{TD}/lanyard/server"),
        &[],
    );
    create_entry(
        &server,
        "/pg/db",
        &format!("spiffe://{TD}/lanyard/server"),
        &[],
    );
    let data = dir.path().to_str().unwrap().to_string();
    let verify = || {
        std::process::Command::new(common::bin())
            .args([
                "audit",
                "verify",
                "--database-url",
                &db.url,
                "--data-dir",
                &data,
            ])
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let o = verify();
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        if !out.contains(" 0 checkpoints") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint: {out}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE audit_events SET event = REPLACE(event, '\"owner\":\"team-a\"', '\"owner\":\"mallory\"') WHERE kind = 'entry_created'")
        .execute(&mut conn)
        .await
        .unwrap();
    let o = verify();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("was modified"), "{err}");
    sqlx::query("UPDATE audit_events SET event = REPLACE(event, '\"owner\":\"mallory\"', '\"owner\":\"team-a\"') WHERE kind = 'entry_created'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(verify().status.success());
    sqlx::query("DELETE FROM audit_events WHERE seq = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    let o = verify();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("record 1"), "{err}");
    drop(conn);
    drop(server);
    db.drop_db().await;
}

/// The shipped registration policy's rules through the CLI, a custom policy loaded at
/// run time, an invalid policy refused with its location, `policy check` and `policy
/// test`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_policy_rules_and_runtime_policy() {
    let dir = tempfile::tempdir().unwrap();
    // A CA that lives long enough for the TTL cap to be policy's to enforce.
    let cfg = dir.path().join("server.toml");
    std::fs::write(&cfg, "[ca]\nca_ttl = \"30d\"\n").unwrap();
    let server = ServerProc::start(&dir.path().join("data"), None, Some(&cfg));
    let parent = format!("spiffe://{TD}/lanyard/agent/a");
    let create = |path: &str, extra: &[&str]| {
        let id = format!("spiffe://{TD}{path}");
        let mut args = vec![
            "entry",
            "create",
            "--spiffe-id",
            &id,
            "--parent-id",
            &parent,
            "--owner",
            "team-a",
            "--environment",
            "test",
        ];
        args.extend_from_slice(extra);
        server.cli(&args)
    };
    let refused = |o: std::process::Output, policy: &str| {
        assert!(
            !o.status.success(),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(
            err.contains(&format!("\"{policy}\"")),
            "expected {policy}: {err}"
        );
    };
    let accepted = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    refused(
        create("/a", &["--selector", "unix:uid:1", "--x509-ttl", "48h"]),
        "x509-ttl-max-24h",
    );
    accepted(create(
        "/a",
        &["--selector", "unix:uid:1", "--x509-ttl", "24h"],
    ));
    refused(
        create("/b", &["--selector", "unix:uid:1", "--jwt-ttl", "2h"]),
        "jwt-ttl-max-1h",
    );
    accepted(create(
        "/b",
        &["--selector", "unix:uid:1", "--jwt-ttl", "1h"],
    ));
    refused(
        create("/prod/web", &["--selector", "unix:uid:1"]),
        "prod-strong-selectors",
    );
    refused(
        create(
            "/prod/web",
            &["--selector", "unix:uid:1", "--selector", "unix:gid:1"],
        ),
        "prod-strong-selectors",
    );
    accepted(create(
        "/prod/web",
        &[
            "--selector",
            "unix:uid:1",
            "--selector",
            "unix:path:/usr/bin/web",
        ],
    ));
    let o = server.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &format!("spiffe://{TD}/c"),
        "--parent-id",
        &parent,
        "--selector",
        "unix:uid:1",
    ]);
    refused(o, "owner-required");

    // An invalid policy is refused with its location; nothing changes.
    let bad = dir.path().join("bad.cedar");
    std::fs::write(&bad, "@id(\"x\")\nforbid (principal, action, resource is Lanyard::Entry)\nwhen { resource.ttl > 5 };\n").unwrap();
    let err = server.fails(&["policy", "set", "--file", bad.to_str().unwrap()]);
    assert!(err.contains("line 3") && err.contains("ttl"), "{err}");
    let err = server.fails(&["policy", "check", "--file", bad.to_str().unwrap()]);
    assert!(err.contains("line 3"), "{err}");
    let current = server.json(&["policy", "get"]);
    assert_eq!(current["version"], 0, "still the shipped default");

    // A custom policy at run time.
    let custom = dir.path().join("custom.cedar");
    std::fs::write(
        &custom,
        r#"@id("allow-all")
permit (principal, action, resource);

@id("frozen")
@reason("nothing new under /frozen/ during the freeze")
forbid (principal, action == Lanyard::Action::"create_entry", resource)
when { resource.path like "/frozen/*" };
"#,
    )
    .unwrap();
    let checked = server.ok(&["policy", "check", "--file", custom.to_str().unwrap()]);
    assert!(checked.contains("allow-all, frozen"), "{checked}");
    server.ok(&["policy", "set", "--file", custom.to_str().unwrap()]);
    let current = server.json(&["policy", "get"]);
    assert_eq!(current["version"], 1);
    assert_eq!(
        current["policy_ids"],
        serde_json::json!(["allow-all", "frozen"])
    );
    refused(create("/frozen/x", &["--selector", "unix:uid:1"]), "frozen");
    // The default's TTL cap no longer applies.
    accepted(create(
        "/long",
        &["--selector", "unix:uid:1", "--x509-ttl", "48h"],
    ));

    // policy test against the active set and against a file.
    let req = dir.path().join("req.json");
    std::fs::write(
        &req,
        r#"{"caller": "uid:0", "action": "create_entry", "entry": {"spiffe_id": "spiffe://example.org/frozen/y", "selectors": ["unix:uid:1"], "owner": "t", "environment": "test"}}"#,
    )
    .unwrap();
    let o = server.cli(&["policy", "test", "--request", req.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"frozen\""));
    let default_file = dir.path().join("default.cedar");
    std::fs::write(
        &default_file,
        lanyard_policy::PolicyKind::Registration.default_policy(),
    )
    .unwrap();
    let o = server.cli(&[
        "policy",
        "test",
        "--file",
        default_file.to_str().unwrap(),
        "--request",
        req.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let changed = server_audit(&dir.path().join("data"), "policy_changed");
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0]["event"]["evidence"]["version"], 1);
}

/// Agent IDs stay under /lanyard/agent/: refused when the token is created, and again
/// at attestation for a token row written by hand (or by an older version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_ids_must_be_under_lanyard_agent() {
    use sqlx::ConnectOptions;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), None, None);
    for bad in [
        format!("spiffe://{TD}/lanyard/server"),
        format!("spiffe://{TD}/web"),
        format!("spiffe://{TD}/lanyard/agent"),
    ] {
        let err = server.fails(&["token", "generate", "--spiffe-id", &bad]);
        assert!(
            err.contains(&format!("spiffe://{TD}/lanyard/agent/<name>")),
            "{bad}: {err}"
        );
    }
    let good = format!("spiffe://{TD}/lanyard/agent/rack1/node7");
    let t = token(&server, &["--spiffe-id", &good]);
    let svid = attest_join_token(&server, &t, &KeyPair::generate().unwrap())
        .await
        .unwrap();
    assert_eq!(svid.spiffe_id, good);

    // A token row that names the server's identity, inserted behind the API's back.
    let raw = "feedfacefeedfacefeedfacefeedfacefeedfacefeedface";
    let hash = lanyard_server::node::sha256_hex(raw.as_bytes());
    let mut db = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("lanyard.db"))
        .connect()
        .await
        .unwrap();
    sqlx::query("INSERT INTO join_tokens (token_hash, spiffe_id, expires_at, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&hash)
        .bind(format!("spiffe://{TD}/lanyard/server"))
        .bind(i64::MAX / 4)
        .bind(0i64)
        .execute(&mut db)
        .await
        .unwrap();
    let err = attest_join_token(&server, raw, &KeyPair::generate().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("/lanyard/agent/"),
        "{}",
        err.message()
    );
    let agents = server.json(&["agent", "list"]);
    assert!(
        agents
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["spiffe_id"] != format!("spiffe://{TD}/lanyard/server")),
        "{agents}"
    );
    let refused = server_audit(dir.path(), "node_refused");
    assert!(
        refused
            .iter()
            .any(|e| e["event"]["subject"] == format!("spiffe://{TD}/lanyard/server")),
        "{refused:?}"
    );
    // Attestation issues an agent SVID, and says so.
    let issued = server_audit(dir.path(), "agent_svid_issued");
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0]["event"]["subject"], good.as_str());
}

/// A copy of an agent's earlier SVID and key cannot renew or call the agent API once
/// the agent has used its renewed SVID; the attempt is recorded as a possible clone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_agent_svid_is_refused_as_a_possible_clone() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), None, None);
    let key_a = KeyPair::generate().unwrap();
    let a = attest_join_token(&server, &token(&server, &[]), &key_a)
        .await
        .unwrap();
    let bundles = shared_bundles(server.bundle());
    let client = |chain: Vec<Vec<u8>>, key: Vec<u8>| {
        let bundles = bundles.clone();
        let addr = server.agent_addr.clone();
        async move { node_client(&addr, bundles, Some((&chain, &key))).await }
    };
    // Renew with A: B is issued; A (the connection the agent still holds) keeps
    // working until B is seen.
    let mut with_a = client(a.cert_chain.clone(), key_a.serialize_der()).await;
    let key_b = KeyPair::generate().unwrap();
    let b = with_a
        .renew_agent(pb::RenewRequest { csr: csr(&key_b) })
        .await
        .unwrap()
        .into_inner();
    let holdings = || pb::Holdings {
        authorities: Default::default(),
    };
    with_a.report_holdings(holdings()).await.unwrap();
    let mut with_b = client(b.cert_chain.clone(), key_b.serialize_der()).await;
    with_b.report_holdings(holdings()).await.unwrap();
    let shown = server.ok(&["agent", "show", &a.spiffe_id]);
    assert!(shown.contains("Clone check:  ok"), "{shown}");

    // Now A is superseded: a copy of it (new connection) is refused, and so is a
    // renewal with it.
    let mut copy = client(a.cert_chain.clone(), key_a.serialize_der()).await;
    let err = copy.report_holdings(holdings()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("possible clone"),
        "{}",
        err.message()
    );
    let err = copy
        .renew_agent(pb::RenewRequest {
            csr: csr(&KeyPair::generate().unwrap()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = copy.sync(pb::SyncRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // The real agent is unaffected.
    with_b.report_holdings(holdings()).await.unwrap();

    let shown = server.ok(&["agent", "show", &a.spiffe_id]);
    assert!(
        shown.contains("POSSIBLE CLONE") && shown.contains("3 time(s)"),
        "{shown}"
    );
    let listed = server.json(&["agent", "list"]);
    assert_eq!(listed[0]["superseded_svids_presented"], 3, "{listed}");
    let events = server_audit(dir.path(), "agent_clone_suspected");
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0]["event"]["subject"], a.spiffe_id.as_str());
    assert_eq!(events[0]["event"]["outcome"], "denied");
    let verified = server.ok(&[
        "audit",
        "verify",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(verified.contains("intact"), "{verified}");
}

/// A stored registration policy that no longer compiles refuses every change, and
/// the local admin socket can still replace it (policy set is itself policy, so
/// without this nothing could).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stored_policy_is_replaced_from_the_local_socket() {
    use sqlx::ConnectOptions;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), None, None);
    let mut db = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("lanyard.db"))
        .connect()
        .await
        .unwrap();
    sqlx::query("INSERT INTO policies (kind, body, version, updated_at, updated_by) VALUES ('registration', 'permit (principal, action, resource) when { resource.nope };', 1, 0, 'hand')")
        .execute(&mut db)
        .await
        .unwrap();
    let parent = format!("spiffe://{TD}/lanyard/agent/a");
    let err = server.fails(&[
        "entry",
        "create",
        "--spiffe-id",
        &format!("spiffe://{TD}/web"),
        "--parent-id",
        &parent,
        "--selector",
        "unix:uid:1",
        "--owner",
        "t",
        "--environment",
        "test",
    ]);
    assert!(err.contains("no longer compiles"), "{err}");
    let file = dir.path().join("default.cedar");
    std::fs::write(
        &file,
        lanyard_policy::PolicyKind::Registration.default_policy(),
    )
    .unwrap();
    server.ok(&["policy", "set", "--file", file.to_str().unwrap()]);
    create_entry(&server, "/web", &parent, &[]);
    let changed = server_audit(dir.path(), "policy_changed");
    assert_eq!(
        changed[0]["event"]["evidence"]["allowed_by"],
        serde_json::json!(["local-socket-recovery"]),
        "{changed:?}"
    );
}

/// A CI job's OIDC token (GitHub Actions' documented claims, signed by a test key
/// whose JWKS the server reads from a file) attests a node once; a replay and a
/// wrong audience are refused with clear messages and recorded with their reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ci_job_token_attests_a_node_once_and_refusals_name_their_reason() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let dir = tempfile::tempdir().unwrap();
    let signer = KeyPair::generate().unwrap();
    let raw = signer.public_key_raw();
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "gh1",
        "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])}]});
    let jwks_path = dir.path().join("github-jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[[jwt_attestor]]\npreset = \"github_actions\"\naudience = \"lanyard-server\"\njwks_file = {:?}\nrequire = {{ repository_owner = \"acme\", ref = [\"refs/heads/main\", \"refs/tags/v*\"] }}\n",
            jwks_path.to_str().unwrap()
        ),
    )
    .unwrap();
    let server = ServerProc::start(&dir.path().join("data"), None, Some(&config));
    let now = lanyard_core::Clock::unix_seconds(&SystemClock);
    let sign = |jti: &str, aud: &str| {
        let claims = serde_json::json!({
            "jti": jti, "sub": "repo:acme/api:ref:refs/heads/main", "aud": aud,
            "ref": "refs/heads/main", "sha": "a1b2c3", "repository": "acme/api",
            "repository_owner": "acme", "repository_owner_id": "42", "repository_id": "7",
            "repository_visibility": "private", "run_id": "4711", "run_number": "3",
            "run_attempt": "1", "actor": "octocat", "workflow": "deploy",
            "event_name": "push", "ref_type": "branch", "ref_protected": "true",
            "environment": "prod",
            "job_workflow_ref": "acme/api/.github/workflows/deploy.yml@refs/heads/main",
            "runner_environment": "github-hosted",
            "iss": "https://token.actions.githubusercontent.com",
            "nbf": now - 5, "iat": now - 5, "exp": now + 300
        });
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some("gh1".into());
        jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&signer.serialize_der()),
        )
        .unwrap()
    };
    let attest = |token: String| {
        let server = &server;
        async move {
            let mut c =
                node_client(&server.agent_addr, shared_bundles(server.bundle()), None).await;
            let req = pb::AttestRequest {
                step: Some(pb::attest_request::Step::Token(pb::TokenAttestation {
                    method: "jwt".into(),
                    cluster: String::new(),
                    token,
                    csr: csr(&KeyPair::generate().unwrap()),
                })),
            };
            let mut stream = c.attest(tokio_stream::iter(vec![req])).await?.into_inner();
            match stream.next().await.expect("one response")?.step {
                Some(pb::attest_response::Step::Result(svid)) => {
                    Ok::<pb::AgentSvid, tonic::Status>(svid)
                }
                other => panic!("unexpected attestation step {other:?}"),
            }
        }
    };
    let token = sign("job-1", "lanyard-server");
    let svid = attest(token.clone()).await.unwrap();
    assert_eq!(
        svid.spiffe_id,
        format!("spiffe://{TD}/lanyard/agent/github/acme/api/4711/job-1")
    );
    verify(&svid.cert_chain, &server);
    let agents = server.json(&["agent", "list"]);
    let agent = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["spiffe_id"] == svid.spiffe_id.as_str())
        .unwrap_or_else(|| panic!("{agents}"));
    assert_eq!(agent["attestation_type"], "jwt", "{agent}");
    let sels = agent["selectors"].to_string();
    assert!(sels.contains("github:repository:acme/api"), "{sels}");
    assert!(sels.contains("github:environment:prod"), "{sels}");

    let replay = attest(token).await.unwrap_err();
    assert_eq!(replay.code(), tonic::Code::PermissionDenied);
    assert!(
        replay.message().contains("already attested"),
        "{}",
        replay.message()
    );
    let wrong_aud = attest(sign("job-2", "someone-else")).await.unwrap_err();
    assert_eq!(wrong_aud.code(), tonic::Code::PermissionDenied);
    assert!(
        wrong_aud.message().contains("lanyard-server"),
        "{}",
        wrong_aud.message()
    );
    let refused = server_audit(&dir.path().join("data"), "node_attestation_refused");
    let reasons: Vec<&str> = refused
        .iter()
        .filter_map(|e| e["event"]["evidence"]["refusal"].as_str())
        .collect();
    assert_eq!(reasons, ["replayed", "wrong_audience"], "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|e| e["event"]["evidence"]["attestation_type"] == "jwt"),
        "{refused:?}"
    );
}

/// The next pushed update, within 5 s.
async fn next_update(s: &mut tonic::Streaming<pb::SyncUpdate>) -> pb::SyncUpdate {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("no update within 5 s")
        .unwrap()
        .unwrap()
}
