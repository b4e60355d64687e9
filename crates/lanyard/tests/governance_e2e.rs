//! End-to-end governance with `lanyard dev`: revocation reaching connected
//! workloads' streams (entry delete, agent ban, JWT jti revocation), time-boxed
//! exceptions released through the agent socket, the inventory, and CA taint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Dev, Raw, raw};
use lanyard_proto::workload as wpb;
use tokio_stream::StreamExt;

fn ids(r: &wpb::X509svidResponse) -> Vec<String> {
    let mut v: Vec<String> = r.svids.iter().map(|s| s.spiffe_id.clone()).collect();
    v.sort();
    v
}

fn add_entry(dev: &Dev, path: &str) -> String {
    let out = dev.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        &format!("spiffe://example.org{path}"),
        "--parent-id",
        "spiffe://example.org/lanyard/agent/dev",
        "--selector",
        &format!("unix:uid:{}", dev.uid),
        "--owner",
        "team-a",
        "--environment",
        "test",
        "--output",
        "json",
    ]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Deleting an entry and banning the agent reach a connected workload's stream;
/// a revoked JWT-SVID is refused by ValidateJWTSVID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_connected_workloads() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let extra = add_entry(&dev, "/extra");
    let mut client = raw(&dev).await;
    let mut stream = client
        .fetch_x509svid(wpb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = tokio::time::timeout(Duration::from_secs(15), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if ids(&m).len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never got both SVIDs: {:?}",
            ids(&m)
        );
    }

    // JWT: issue, validate, revoke by jti, refused.
    let jwt = client
        .fetch_jwtsvid(wpb::JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: dev.expected_id(),
        })
        .await
        .unwrap()
        .into_inner()
        .svids
        .remove(0)
        .svid;
    let validate = |c: &mut Raw| {
        let mut c = c.clone();
        let jwt = jwt.clone();
        async move {
            c.validate_jwtsvid(wpb::ValidateJwtsvidRequest {
                audience: "db".into(),
                svid: jwt,
            })
            .await
        }
    };
    let claims = validate(&mut client)
        .await
        .unwrap()
        .into_inner()
        .claims
        .unwrap();
    let jti = match &claims.fields["jti"].kind {
        Some(prost_types::value::Kind::StringValue(s)) => s.clone(),
        other => panic!("{other:?}"),
    };
    let revoked = dev.ok(&[
        "jwt",
        "revoke",
        "--jti",
        &jti,
        "--reason",
        "leaked in a log",
    ]);
    assert!(revoked.contains(&jti), "{revoked}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match validate(&mut client).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "revocation never reached the agent"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(err.message().contains("revoked"), "{}", err.message());
    // A fresh JWT-SVID for the same audience is a new token, not the revoked one.
    let again = client
        .fetch_jwtsvid(wpb::JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: dev.expected_id(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(again.svids[0].svid, jwt);
    let listed = dev.ok(&["jwt", "revoked"]);
    assert!(listed.contains(&jti));

    // Delete an entry: the stream's next message lacks it.
    dev.ok(&["entry", "delete", &extra]);
    let m = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an update after the delete")
        .unwrap()
        .unwrap();
    assert_eq!(ids(&m), vec![dev.expected_id()]);

    // Ban the agent: the stream ends with PermissionDenied (no identities left).
    dev.ok(&["agent", "ban", "spiffe://example.org/lanyard/agent/dev"]);
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream reacts to the ban");
    match end {
        Some(Err(e)) => assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}"),
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    let err = client
        .fetch_jwtsvid(wpb::JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

/// Exceptions: released to an allowed attested workload, refused for an identity
/// not allowed, refused after expiry and after revocation; maximum duration is
/// policy; all on record; shown in the inventory with days left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_release_expiry_and_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "s3cr3t-password").unwrap();
    let s = secret.to_str().unwrap();
    let me = dev.expected_id();
    let create = |name: &str, expires: &str, allow: &str| {
        dev.cli(&[
            "exception",
            "create",
            "--name",
            name,
            "--owner",
            "team-legacy",
            "--justification",
            "vendor appliance without SPIFFE support",
            "--expires",
            expires,
            "--allow",
            allow,
            "--secret-file",
            s,
        ])
    };
    let o = create("too-long", "91d", &me);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"exception-max-90d\""));
    assert!(create("db", "30d", &me).status.success());
    assert!(
        create("other", "30d", "spiffe://example.org/someone-else")
            .status
            .success()
    );
    assert!(create("brief", "2s", &me).status.success());

    // Released to us (the test process is the attested workload).
    assert_eq!(dev.ok(&["secret", "fetch", "db"]), "s3cr3t-password");
    // Not allowed for our identity.
    let o = dev.cli(&["secret", "fetch", "other"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("not allowed"), "{err}");
    // Unknown name.
    assert!(!dev.cli(&["secret", "fetch", "nope"]).status.success());
    // Expiry.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let o = dev.cli(&["secret", "fetch", "brief"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("expired"), "{err}");
    // Revocation.
    dev.ok(&["exception", "revoke", "db"]);
    let o = dev.cli(&["secret", "fetch", "db"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("revoked"));

    let shown: serde_json::Value =
        serde_json::from_str(&dev.ok(&["exception", "show", "other", "--output", "json"])).unwrap();
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["days_left"], 29);
    let inv: serde_json::Value =
        serde_json::from_str(&dev.ok(&["inventory", "--output", "json"])).unwrap();
    let exc = inv["exceptions"].as_array().unwrap();
    assert_eq!(exc.len(), 3);
    assert!(
        exc.iter()
            .any(|e| e["name"] == "other" && e["owner"] == "team-legacy" && e["days_left"] == 29)
    );
    assert!(
        exc.iter()
            .any(|e| e["name"] == "brief" && e["status"] == "expired")
    );

    // Every release and refusal is on record, with the process that asked.
    let data = dir.path().to_str().unwrap();
    let released: serde_json::Value = serde_json::from_str(&dev.ok(&[
        "audit",
        "query",
        "--data-dir",
        data,
        "--kind",
        "secret_released",
        "--output",
        "json",
    ]))
    .unwrap();
    let released = released.as_array().unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0]["event"]["subject"], me.as_str());
    assert!(released[0]["event"]["evidence"]["pid"].as_i64().unwrap() > 0);
    assert_eq!(released[0]["event"]["evidence"]["exception"], "db");
    let refused: serde_json::Value = serde_json::from_str(&dev.ok(&[
        "audit",
        "query",
        "--data-dir",
        data,
        "--kind",
        "secret_refused",
        "--output",
        "json",
    ]))
    .unwrap();
    assert_eq!(refused.as_array().unwrap().len(), 4, "{refused}");
    // The secret itself never enters the log.
    let all = dev.ok(&["audit", "export", "--data-dir", data, "--format", "jsonl"]);
    assert!(!all.contains("s3cr3t"));
}

/// The inventory: owner, agents, last issuance and last workload, and flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_lists_identities_with_flags() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    // Let anything be registered, so that risky entries can exist.
    let allow_all = dir.path().join("allow.cedar");
    std::fs::write(
        &allow_all,
        "@id(\"allow-all\")\npermit (principal, action, resource);\n",
    )
    .unwrap();
    dev.ok(&["policy", "set", "--file", allow_all.to_str().unwrap()]);
    let parent = "spiffe://example.org/lanyard/agent/dev";
    dev.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/root-anything",
        "--parent-id",
        "spiffe://example.org/lanyard/agent/elsewhere",
        "--selector",
        "unix:uid:0",
    ]);
    dev.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/soon-gone",
        "--parent-id",
        parent,
        "--selector",
        "unix:uid:4242",
        "--selector",
        "unix:gid:4242",
        "--owner",
        "t",
        "--environment",
        "test",
        "--expires-at",
        &(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600)
            .to_string(),
    ]);
    // One fetch, so the dev identity has an issuance and a workload seen.
    dev.ok(&["svid", "fetch"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let inv = loop {
        let inv: serde_json::Value =
            serde_json::from_str(&dev.ok(&["inventory", "--output", "json"])).unwrap();
        let mine = inv["identities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["spiffe_id"] == dev.expected_id().as_str())
            .cloned()
            .unwrap();
        if mine["last_seen_workload"].is_string() {
            break inv;
        }
        assert!(Instant::now() < deadline, "no workload seen: {mine}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let find = |id: &str| {
        inv["identities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["spiffe_id"] == id)
            .cloned()
            .unwrap()
    };
    let mine = find(&dev.expected_id());
    assert_eq!(mine["owner"], "dev");
    assert_eq!(mine["environment"], "dev");
    assert_eq!(mine["agents"], serde_json::json!([parent]));
    assert!(mine["last_issued_ms"].as_i64().unwrap() > 0);
    assert!(
        mine["last_seen_workload"]
            .as_str()
            .unwrap()
            .contains(&format!("uid {}", dev.uid))
    );
    assert_eq!(
        mine["flags"],
        serde_json::json!(["over_broad"]),
        "only a uid selector"
    );
    let root = find("spiffe://example.org/root-anything");
    let flags: Vec<&str> = root["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        flags.contains(&"unowned") && flags.contains(&"over_broad"),
        "{flags:?}"
    );
    let soon = find("spiffe://example.org/soon-gone");
    let flags: Vec<&str> = soon["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(flags.contains(&"expiring"), "{flags:?}");
    assert!(!flags.contains(&"over_broad"), "{flags:?}");
    // Stale: never issued for longer than the window.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale: serde_json::Value =
        serde_json::from_str(&dev.ok(&["inventory", "--stale-after", "1s", "--output", "json"]))
            .unwrap();
    let root = stale["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["spiffe_id"] == "spiffe://example.org/root-anything")
        .cloned()
        .unwrap();
    assert!(
        root["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "stale"),
        "{root}"
    );
    let text = dev.ok(&["inventory"]);
    assert!(
        text.contains("root-anything") && text.contains("unowned"),
        "{text}"
    );
}

/// `lanyard ca taint`: a new key signs at once, the agent re-mints its SVIDs, and
/// the tainted key leaves the bundle once nothing depends on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_taint_rotates_and_drops_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let slots: serde_json::Value =
        serde_json::from_str(&dev.ok(&["ca", "list", "--output", "json"])).unwrap();
    let active = slots
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["state"] == "active")
        .unwrap()
        .clone();
    let old_ski = active["subject_key_id"].as_str().unwrap().to_string();
    let client = raw(&dev).await;
    let aki = || {
        let mut c = client.clone();
        async move {
            let m = c
                .fetch_x509svid(wpb::X509svidRequest {})
                .await
                .unwrap()
                .into_inner()
                .next()
                .await
                .unwrap()
                .unwrap();
            let chain = lanyard_core::x509::split_der_chain(&m.svids[0].x509_svid).unwrap();
            lanyard_core::x509::authority_key_id(&chain[0]).unwrap()
        }
    };
    assert_eq!(aki().await, old_ski);
    let out = dev.ok(&["ca", "taint", active["id"].as_str().unwrap()]);
    assert!(out.contains("tainted"), "{out}");
    // The agent re-mints with the new key.
    let deadline = Instant::now() + Duration::from_secs(20);
    while aki().await == old_ski {
        assert!(Instant::now() < deadline, "SVID never re-minted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Once the agent reports it no longer depends on the key, it leaves the bundle.
    // The slot goes first and the bundle is republished right after: wait for both.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let slots: serde_json::Value =
            serde_json::from_str(&dev.ok(&["ca", "list", "--output", "json"])).unwrap();
        let published =
            lanyard_core::bundle::pem_certificates(dev.ok(&["bundle", "fetch"]).as_bytes())
                .unwrap()
                .iter()
                .any(|c| {
                    lanyard_core::x509::subject_key_id(c).as_deref() == Some(old_ski.as_str())
                });
        if !published
            && !slots
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["subject_key_id"] == old_ski.as_str())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tainted key still published: {slots}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Still serving, with the new key only.
    let pem = dev.ok(&["bundle", "fetch"]);
    let certs = lanyard_core::bundle::pem_certificates(pem.as_bytes()).unwrap();
    assert!(
        !certs
            .iter()
            .any(|c| lanyard_core::x509::subject_key_id(c).as_deref() == Some(old_ski.as_str()))
    );
    let data = dir.path().to_str().unwrap();
    let tainted = dev.ok(&[
        "audit",
        "query",
        "--data-dir",
        data,
        "--kind",
        "ca_key_tainted",
    ]);
    assert!(tainted.contains("ca_key_tainted"));
}
