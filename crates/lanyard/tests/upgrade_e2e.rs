//! Upgrade in place, end to end: the current `lanyard server` starts on a data dir
//! (SQLite) and on a PostgreSQL database written by the previous release (the
//! fixture in `crates/lanyard-store/tests/fixtures/upgrade-0005/`, made once by
//! `scripts/make-upgrade-fixture` at commit 5b2bb59), migrates it at start, and
//! serves what was there: `entry list`, `agent list`, `exception list`, `policy get`
//! and `audit verify` pass over the old records; the fixture's node attests again,
//! and the exception's secret sealed by the previous release is released to the
//! workload.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{PgDb, ServerProc};
use serde_json::Value;

const WORKLOAD_ID: &str = "spiffe://example.org/upgrade/workload";
const NODE_ID: &str = "spiffe://example.org/lanyard/agent/upgrade-node";

fn fixture(backend: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../lanyard-store/tests/fixtures/upgrade-0005")
        .join(backend)
}

fn manifest(backend: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(backend).join("manifest.json")).unwrap())
        .unwrap()
}

/// A data dir made from the fixture: its keys (and, for SQLite, the database).
fn data_dir(backend: &str, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in [
        "audit-key.pk8",
        "audit-key.pub",
        "secrets.key",
        "ca-keys.json",
        "token-signing.pk8",
        "server-id",
        "lanyard.db",
    ] {
        let from = fixture(backend).join(f);
        if from.exists() {
            std::fs::copy(&from, dir.join(f)).unwrap();
        }
    }
}

fn audit_verify(data: &Path, url: Option<&str>) -> String {
    let mut cmd = Command::new(common::bin());
    cmd.args(["audit", "verify", "--data-dir"]).arg(data);
    if let Some(u) = url {
        cmd.args(["--database-url", u]);
    }
    let o = cmd.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "audit verify: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// "audit log intact: N events, C checkpoints verified, head H" -> (N, C).
fn counts(verified: &str) -> (u64, u64) {
    let words: Vec<&str> = verified.split_whitespace().collect();
    let n = |w: &str| {
        let i = words.iter().position(|x| x.starts_with(w)).unwrap();
        words[i - 1].parse::<u64>().unwrap()
    };
    (n("events"), n("checkpoints"))
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x[key].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

async fn scenario(backend: &str, url: Option<&str>) {
    let m = manifest(backend);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    data_dir(backend, &data);

    // Before the current server touches it, the old log verifies as the manifest says.
    let audit = &m["audit"];
    let before = audit_verify(&data, url);
    assert_eq!(
        counts(&before),
        (
            audit["events"].as_u64().unwrap(),
            audit["checkpoints"].as_u64().unwrap()
        ),
        "{before}"
    );
    assert!(before.contains(audit["head"].as_str().unwrap()), "{before}");

    let server = ServerProc::start(&data, url, None);
    let rows = &m["rows"];

    // Entries: every one, as listed by the current server.
    let listed = server.json(&["entry", "list"]);
    assert_eq!(ids(&listed, "id"), ids(&rows["entries"], "id"), "{listed}");
    for row in rows["entries"].as_array().unwrap() {
        let e = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == row["id"])
            .unwrap();
        for k in ["spiffe_id", "parent_id", "owner", "environment", "hint"] {
            assert_eq!(e[k], row[k], "entry {}: {k}", row["id"]);
        }
        for k in ["revision", "created_at", "updated_at", "expires_at"] {
            assert_eq!(e[k], row[k], "entry {}: {k}", row["id"]);
        }
        let stored_dns: Value = serde_json::from_str(row["dns_names"].as_str().unwrap()).unwrap();
        assert_eq!(e["dns_names"], stored_dns);
    }

    // Agents, the banned one still banned.
    let agents = server.json(&["agent", "list"]);
    assert_eq!(
        ids(&agents, "spiffe_id"),
        ids(&rows["nodes"], "spiffe_id"),
        "{agents}"
    );
    for row in rows["nodes"].as_array().unwrap() {
        let a = server.json(&["agent", "show", row["spiffe_id"].as_str().unwrap()]);
        assert_eq!(a["serial"], row["serial"]);
        let banned = row["banned"] == Value::Bool(true) || row["banned"] == 1;
        assert_eq!(a["banned"], banned, "{a}");
    }

    // Exceptions, the revoked one still revoked; the policy set.
    let exceptions = server.json(&["exception", "list"]);
    assert_eq!(
        ids(&exceptions, "name"),
        ids(&rows["exceptions"], "name"),
        "{exceptions}"
    );
    let revoked = server.json(&["exception", "show", "old-api-key"]);
    assert_eq!(revoked["status"], "revoked", "{revoked}");
    let active = server.json(&["exception", "show", "legacy-db"]);
    assert_eq!(active["status"], "active", "{active}");
    let policy = server.ok(&["policy", "get"]);
    let stored = rows["policies"][0]["body"].as_str().unwrap();
    assert!(policy.contains(stored.trim()), "{policy}");

    // The sealed secrets open with the fixture's secrets.key.
    let key = std::fs::read(data.join("secrets.key")).unwrap();
    let sealer = lanyard_server::secrets::SecretBox::from_bytes(&key).unwrap();
    for row in rows["exceptions"].as_array().unwrap() {
        let name = row["name"].as_str().unwrap();
        let plain = sealer.open(name, row["sealed"].as_str().unwrap()).unwrap();
        assert_eq!(plain, m["secrets"][name].as_str().unwrap().as_bytes());
    }

    // The fixture's node attests again with a new join token, and a workload of it
    // gets the secret the previous release sealed.
    let token = server.json(&["token", "generate", "--spiffe-id", NODE_ID])["token"]
        .as_str()
        .unwrap()
        .to_string();
    // The workload is this test's process: its uid and gid.
    let (uid, gid) = {
        use std::os::unix::fs::MetadataExt;
        let me = std::fs::metadata("/proc/self").unwrap();
        (me.uid(), me.gid())
    };
    server.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        WORKLOAD_ID,
        "--parent-id",
        NODE_ID,
        "--selector",
        &format!("unix:uid:{uid}"),
        "--selector",
        &format!("unix:gid:{gid}"),
        "--owner",
        "team-upgrade",
        "--environment",
        "test",
    ]);
    let (mut agent, endpoint) = common::spawn_agent(&server, &token, tmp.path());
    let fetch = || {
        Command::new(common::bin())
            .args([
                "secret",
                "fetch",
                "legacy-db",
                "--socket",
                &endpoint,
                "--spiffe-id",
                WORKLOAD_ID,
            ])
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let released = loop {
        let o = fetch();
        if o.status.success() {
            break String::from_utf8(o.stdout).unwrap();
        }
        let err = String::from_utf8_lossy(&o.stderr);
        // Until the agent is up and holds the workload's SVID the fetch fails; a
        // refusal of the secret itself is final.
        let refused = err.contains("not released") && !err.contains("no identity issued");
        assert!(
            Instant::now() < deadline && !refused,
            "secret fetch: {err}\nserver log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(released, m["secrets"]["legacy-db"].as_str().unwrap());
    let _ = agent.kill();
    let _ = agent.wait();

    // The log (old records and the current server's) verifies under the same key,
    // with a checkpoint of the current server over it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let after = audit_verify(&data, url);
        let (events, checkpoints) = counts(&after);
        assert!(events > audit["events"].as_u64().unwrap(), "{after}");
        if checkpoints > audit["checkpoints"].as_u64().unwrap() {
            break;
        }
        assert!(Instant::now() < deadline, "no new checkpoint: {after}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_data_dir_of_the_previous_release_upgrades_in_place() {
    scenario("sqlite", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_database_of_the_previous_release_upgrades_in_place() {
    let db = PgDb::create().await;
    {
        use sqlx::Connection;
        let dump = std::fs::read_to_string(fixture("postgres").join("dump.sql")).unwrap();
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(dump))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    scenario("postgres", Some(&db.url)).await;
    db.drop_db().await;
}
