//! Bulk entries end to end, as a user runs them against the real binary:
//! `lanyard entry import --spire` of a SPIRE export of a few hundred entries with a
//! malformed and a policy-refused one among them, the re-run that finds everything
//! unchanged, a `spire-server entry create -data` file, and `entry create --file`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ServerProc, TD};
use serde_json::{Value, json};

const N: usize = 300;
const MALFORMED: usize = 100;
const REFUSED: usize = 200;
const ALIAS: usize = 250;

/// What `spire-server entry show -output json` prints for N entries (protojson:
/// proto field names, unpopulated fields present, 64-bit numbers as strings).
fn spire_export() -> String {
    let entries: Vec<Value> = (0..N)
        .map(|i| {
            let (td, path) = match i {
                MALFORMED => ("Not A Domain", "/bad".to_string()),
                REFUSED => (TD, "/legacy/batch-job".to_string()),
                _ => (TD, format!("/svc/{i}")),
            };
            let parent = if i == ALIAS {
                "/spire/server".to_string()
            } else {
                format!("/spire/agent/x509pop/node-{}", i % 7)
            };
            json!({
                "id": format!("00000000-0000-0000-0000-{i:012}"),
                "spiffe_id": {"trust_domain": td, "path": path},
                "parent_id": {"trust_domain": TD, "path": parent},
                "selectors": [
                    {"type": "unix", "value": format!("uid:{}", 2000 + i)},
                    {"type": "unix", "value": "gid:100"}
                ],
                "x509_svid_ttl": if i % 2 == 0 { 1800 } else { 0 },
                "jwt_svid_ttl": if i % 3 == 0 { 300 } else { 0 },
                "federates_with": if i % 10 == 0 { vec!["partner.example"] } else { vec![] },
                "admin": false,
                "downstream": false,
                "expires_at": "0",
                "dns_names": if i % 5 == 0 { vec![format!("svc-{i}.internal")] } else { vec![] },
                "revision_number": "2",
                "store_svid": false,
                "hint": if i % 4 == 0 { "primary" } else { "" },
                "created_at": "1712345678",
                "jwt_svid_audience_policies": {}
            })
        })
        .collect();
    serde_json::to_string_pretty(&json!({"entries": entries, "next_page_token": ""})).unwrap()
}

/// The shipped registration policy plus a rule that refuses `/legacy/` identities.
fn policy() -> String {
    format!(
        "{}\n@id(\"no-legacy\")\n@reason(\"legacy identities are not migrated\")\nforbid (principal, action == Lanyard::Action::\"create_entry\", resource)\nwhen {{ resource.path like \"/legacy/*\" }};\n",
        lanyard_policy::PolicyKind::Registration.default_policy()
    )
}

fn run(server: &ServerProc, args: &[&str]) -> (Option<i32>, String, String) {
    let o = server.cli(args);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn entries(server: &ServerProc) -> Vec<Value> {
    server.json(&["entry", "list"]).as_array().unwrap().clone()
}

#[test]
fn spire_import_and_batch_create() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("server"), None, None);
    let policy_file = dir.path().join("policy.cedar");
    std::fs::write(&policy_file, policy()).unwrap();
    server.ok(&["policy", "set", "--file", policy_file.to_str().unwrap()]);

    let export = dir.path().join("spire-entries.json");
    std::fs::write(&export, spire_export()).unwrap();
    let file = export.to_str().unwrap();
    let import = [
        "entry",
        "import",
        "--spire",
        file,
        "--owner",
        "payments",
        "--environment",
        "staging",
    ];

    // A dry run writes nothing.
    let mut dry = import.to_vec();
    dry.push("--dry-run");
    let (code, out, _) = run(&server, &dry);
    assert_eq!(code, Some(1), "a malformed entry makes the exit code 1");
    assert!(out.contains("would create 299"), "{out}");
    assert!(entries(&server).is_empty());

    // The import: the malformed and the refused entry are reported, the rest exist.
    let (code, out, err) = run(&server, &import);
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(
        out.trim(),
        "created 298, unchanged 0, refused 1, malformed 1",
        "{err}"
    );
    assert!(
        err.contains(&format!("malformed entries[{MALFORMED}]: spiffe_id")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "refused   entries[{REFUSED}] spiffe://{TD}/legacy/batch-job: refused by registration policy \"no-legacy\": legacy identities are not migrated\n"
        )),
        "{err}"
    );
    assert!(
        err.contains("1 unknown field ignored: jwt_svid_audience_policies")
            || err.contains("unknown fields ignored: jwt_svid_audience_policies"),
        "{err}"
    );
    assert!(err.contains("node alias"), "{err}");

    let listed = entries(&server);
    assert_eq!(listed.len(), 298);
    let by_id = |path: &str| {
        listed
            .iter()
            .find(|e| e["spiffe_id"] == format!("spiffe://{TD}{path}"))
            .unwrap_or_else(|| panic!("{path} not imported"))
            .clone()
    };
    let e0 = by_id("/svc/0");
    assert_eq!(
        e0["parent_id"],
        format!("spiffe://{TD}/spire/agent/x509pop/node-0")
    );
    assert_eq!(e0["selectors"], json!(["unix:gid:100", "unix:uid:2000"]));
    assert_eq!(e0["owner"], "payments");
    assert_eq!(e0["environment"], "staging");
    assert_eq!(e0["x509_ttl_seconds"], 1800);
    assert_eq!(e0["jwt_ttl_seconds"], 300);
    assert_eq!(e0["dns_names"], json!(["svc-0.internal"]));
    assert_eq!(e0["federates_with"], json!(["partner.example"]));
    assert_eq!(e0["hint"], "primary");
    let e7 = by_id("/svc/7");
    assert_eq!(e7["x509_ttl_seconds"], 0);
    assert_eq!(e7["federates_with"], json!([]));
    assert_eq!(
        by_id(&format!("/svc/{ALIAS}"))["parent_id"],
        format!("spiffe://{TD}/lanyard/server")
    );
    // One entry shown on its own carries the federated trust domains too.
    let shown = server.json(&["entry", "show", e0["id"].as_str().unwrap()]);
    assert_eq!(shown["federates_with"], json!(["partner.example"]));
    let text = server.ok(&["entry", "show", e0["id"].as_str().unwrap()]);
    assert!(text.contains("Federates:    partner.example"), "{text}");

    // Running it again changes nothing and says so.
    let (code, out, _) = run(&server, &import);
    assert_eq!(code, Some(1));
    assert_eq!(
        out.trim(),
        "created 0, unchanged 298, refused 1, malformed 1"
    );
    assert_eq!(entries(&server).len(), 298);

    // The same identities with another owner are not silently rewritten.
    let other_owner = [&import[..4], &["--owner", "other-team"], &import[6..]].concat();
    let (code, _, err) = run(&server, &other_owner);
    assert_eq!(code, Some(1));
    assert!(err.contains("different owner"), "{err}");
    // With --update they are changed (each decided by policy as an update), and
    // changed back.
    let (code, out, err) = run(&server, &[&other_owner[..], &["--update"]].concat());
    assert_eq!(code, Some(1));
    assert_eq!(
        out.trim(),
        "created 0, updated 298, unchanged 0, refused 1, malformed 1",
        "{err}"
    );
    assert!(entries(&server).iter().all(|e| e["owner"] == "other-team"));
    let (_, out, _) = run(&server, &[&import[..], &["--update"]].concat());
    assert_eq!(
        out.trim(),
        "created 0, updated 298, unchanged 0, refused 1, malformed 1"
    );
    assert_eq!(by_id("/svc/0")["revision"], 1, "the listing taken before");
    let again = server.json(&["entry", "show", e0["id"].as_str().unwrap()]);
    assert_eq!(
        (again["revision"].as_i64(), again["owner"].as_str()),
        (Some(3), Some("payments"))
    );

    // The JSON report names every entry.
    let (_, out, _) = run(&server, &[&import[..], &["--output", "json"]].concat());
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["unchanged"], 298);
    assert_eq!(report["entries"].as_array().unwrap().len(), N);
    assert_eq!(report["entries"][REFUSED]["outcome"], "refused");
    assert_eq!(report["entries"][MALFORMED]["outcome"], "malformed");

    // `spire-server entry create -data` format: string IDs, entryExpiry.
    let data = dir.path().join("create-data.json");
    std::fs::write(
        &data,
        json!({"entries": [
            {"spiffe_id": format!("spiffe://{TD}/data/a"), "parent_id": format!("spiffe://{TD}/spire/agent/k8s_psat/c1/n1"),
             "selectors": [{"type": "unix", "value": "uid:3000"}], "x509_svid_ttl": 600,
             "dns_names": ["a.internal"], "federates_with": ["spiffe://partner.example"],
             "admin": false, "entryExpiry": 4_000_000_000i64, "hint": "a"},
            {"spiffe_id": format!("spiffe://{TD}/data/b"), "parent_id": format!("spiffe://{TD}/spire/agent/k8s_psat/c1/n1"),
             "selectors": [{"type": "unix", "value": "uid:3001"}], "downstream": true},
            {"spiffe_id": format!("spiffe://{TD}/data/c"), "parent_id": format!("spiffe://{TD}/spire/agent/k8s_psat/c1/n1"),
             "selectors": [{"type": "unix", "value": "uid:3002"}], "store_svid": true}
        ]})
        .to_string(),
    )
    .unwrap();
    let (code, out, err) = run(
        &server,
        &[
            "entry",
            "import",
            "--spire",
            data.to_str().unwrap(),
            "--owner",
            "payments",
            "--environment",
            "staging",
        ],
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        out.trim(),
        "created 1, unchanged 0, refused 2, malformed 0",
        "{err}"
    );
    assert!(err.contains("downstream"), "{err}");
    assert!(err.contains("store_svid"), "{err}");
    let a = entries(&server)
        .into_iter()
        .find(|e| e["spiffe_id"] == format!("spiffe://{TD}/data/a"))
        .unwrap();
    assert_eq!(a["expires_at"], 4_000_000_000i64);
    assert_eq!(a["federates_with"], json!(["partner.example"]));

    // `entry create --file` in the shape `entry list -o json` prints: an existing
    // entry as listed is unchanged, new ones are created, a bad one is reported.
    let mut batch = vec![e7.clone()];
    for i in 0..3 {
        batch.push(json!({
            "spiffe_id": format!("spiffe://{TD}/file/{i}"),
            "parent_id": format!("spiffe://{TD}/lanyard/agent/join_token/x"),
            "selectors": [format!("unix:uid:{}", 4000 + i)],
            "owner": "web", "environment": "staging", "x509_ttl_seconds": 900,
            "federates_with": ["partner.example"]
        }));
    }
    let batch_file = dir.path().join("entries.json");
    std::fs::write(&batch_file, Value::Array(batch.clone()).to_string()).unwrap();
    let (code, out, err) = run(
        &server,
        &["entry", "create", "--file", batch_file.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), "created 3, unchanged 1, refused 0, malformed 0");
    batch.push(json!({"spiffe_id": format!("spiffe://{TD}/file/x"), "parent_id": "nope", "selectors": ["unix:uid:1"]}));
    batch.push(json!({"spiffe_id": format!("spiffe://{TD}/file/y"), "parent_id": format!("spiffe://{TD}/p"),
        "selectors": ["unix:uid:1"], "owner": "", "environment": "staging"}));
    std::fs::write(&batch_file, json!({"entries": batch}).to_string()).unwrap();
    let (code, out, err) = run(
        &server,
        &["entry", "create", "--file", batch_file.to_str().unwrap()],
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        out.trim(),
        "created 0, unchanged 4, refused 1, malformed 1",
        "{err}"
    );
    assert!(err.contains("malformed entries[4]: parent_id"), "{err}");
    assert!(err.contains("owner-required"), "{err}");
    assert_eq!(entries(&server).len(), 298 + 1 + 3);

    // Every refusal left evidence, every created entry its event, and the log
    // verifies.
    let data_dir = dir.path().join("server");
    let data_dir = data_dir.to_str().unwrap();
    let events = |kind: &str| -> Vec<Value> {
        let out = server.ok(&[
            "audit",
            "query",
            "--data-dir",
            data_dir,
            "--kind",
            kind,
            "--output",
            "json",
        ]);
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let refusals = events("entry_refused");
    assert!(
        refusals
            .iter()
            .any(|e| e["event"]["subject"] == format!("spiffe://{TD}/legacy/batch-job")),
        "{refusals:?}"
    );
    assert_eq!(events("entry_created").len(), 298 + 1 + 3);
    server.ok(&["audit", "verify", "--data-dir", data_dir]);
}

/// The batch RPCs themselves: per-item outcomes for updates and deletes (stale
/// revision, unknown id, refused by policy), the batch size limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_update_and_delete_report_each_item() {
    use lanyard_proto::admin as apb;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("server"), None, None);
    let policy_file = dir.path().join("policy.cedar");
    std::fs::write(
        &policy_file,
        format!(
            "{}\n@id(\"keep\")\n@reason(\"/keep/ identities are never deleted\")\nforbid (principal, action == Lanyard::Action::\"delete_entry\", resource)\nwhen {{ resource.path like \"/keep/*\" }};\n",
            lanyard_policy::PolicyKind::Registration.default_policy()
        ),
    )
    .unwrap();
    server.ok(&["policy", "set", "--file", policy_file.to_str().unwrap()]);
    let ch = lanyard_server::client::unix_channel(&server.admin_socket)
        .await
        .unwrap();
    let mut admin = apb::admin_client::AdminClient::new(ch);
    let entry = |path: &str, uid: u32| apb::Entry {
        spiffe_id: format!("spiffe://{TD}{path}"),
        parent_id: format!("spiffe://{TD}/lanyard/agent/join_token/a"),
        selectors: vec![format!("unix:uid:{uid}")],
        owner: "web".into(),
        environment: "staging".into(),
        ..Default::default()
    };
    let created = admin
        .batch_create_entry(apb::BatchCreateEntryRequest {
            entries: vec![
                entry("/a", 1),
                entry("/keep/b", 2),
                entry("/c", 3),
                apb::Entry {
                    federates_with: vec!["Bad Domain".into()],
                    ..entry("/d", 4)
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let codes: Vec<i32> = created.iter().map(|r| r.code).collect();
    assert_eq!(codes, [0, 0, 0, tonic::Code::InvalidArgument as i32]);
    assert!(
        created[3].message.contains("federates_with"),
        "{}",
        created[3].message
    );
    assert!(
        !created[0].policy_ids.is_empty(),
        "the permitting policies are named"
    );
    let ids: Vec<String> = created[..3]
        .iter()
        .map(|r| r.entry.as_ref().unwrap().id.clone())
        .collect();

    // Updates: one applied, one at a stale revision, one unknown.
    let mut a = created[0].entry.clone().unwrap();
    a.hint = "primary".into();
    let c = created[2].entry.clone().unwrap();
    let updated = admin
        .batch_update_entry(apb::BatchUpdateEntryRequest {
            entries: vec![
                apb::UpdateEntryRequest {
                    entry: Some(a),
                    expected_revision: 1,
                },
                apb::UpdateEntryRequest {
                    entry: Some(c),
                    expected_revision: 5,
                },
                apb::UpdateEntryRequest {
                    entry: Some(apb::Entry {
                        id: "0123456789abcdef0123456789abcdef".into(),
                        ..entry("/z", 9)
                    }),
                    expected_revision: 0,
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let codes: Vec<i32> = updated.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        [0, tonic::Code::Aborted as i32, tonic::Code::NotFound as i32],
        "{updated:?}"
    );
    let a = updated[0].entry.as_ref().unwrap();
    assert_eq!((a.revision, a.hint.as_str()), (2, "primary"));

    // Deletes: one applied, one refused by policy, one malformed id.
    let deleted = admin
        .batch_delete_entry(apb::BatchDeleteEntryRequest {
            ids: vec![ids[0].clone(), ids[1].clone(), "nope".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let codes: Vec<i32> = deleted.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        [
            0,
            tonic::Code::PermissionDenied as i32,
            tonic::Code::InvalidArgument as i32
        ]
    );
    assert!(
        deleted[1].message.contains("keep"),
        "{}",
        deleted[1].message
    );
    assert_eq!(deleted[1].policy_ids, ["keep"]);
    let left = entries(&server);
    assert_eq!(left.len(), 2, "{left:?}");

    // More than MAX_ENTRY_BATCH items are refused as a whole.
    let err = admin
        .batch_delete_entry(apb::BatchDeleteEntryRequest {
            ids: vec![ids[2].clone(); apb::MAX_ENTRY_BATCH + 1],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("at most 1000"), "{}", err.message());
    assert_eq!(entries(&server).len(), 2);
}
