//! Upgrade in place: databases written by the release before a schema change open
//! with the current code, which runs every later migration at start, with nothing
//! lost.
//!
//! The fixture (`tests/fixtures/upgrade-0005/`, see its README) was written once by
//! `scripts/make-upgrade-fixture` with the `lanyard` binary built at commit 5b2bb59
//! (schema up to migration 0005): a SQLite database file and a `pg_dump` of a
//! PostgreSQL database, each with a `manifest.json` holding the rows of every table
//! as that server stored them and the evidence log's size, head and kinds. The
//! checks read everything back through the [`Store`] trait and compare it with those
//! rows column by column (a column's value against the field read from it), so they
//! keep holding when later migrations add tables or columns.
//!
//! PostgreSQL comes from `LANYARD_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), as in `tests/conformance.rs`
//! (`tests/common`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use lanyard_core::SpiffeId;
use lanyard_store::{AnyStore, Store};
use serde_json::{Map, Value};
use sqlx::Connection;

mod common;
use common::{drop_pg_db, fresh_pg_db};

fn fixture(backend: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/upgrade-0005")
        .join(backend)
}

fn manifest(backend: &str) -> Value {
    let path = fixture(backend).join("manifest.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn rows<'a>(m: &'a Value, table: &str) -> &'a Vec<Value> {
    let r = m["rows"][table].as_array().unwrap();
    assert_eq!(
        r.len() as u64,
        m["written"][table].as_u64().unwrap(),
        "the manifest's {table} rows are what the fixture script wrote"
    );
    r
}

/// Whether a column's value as the previous release stored it (`stored`, from the
/// manifest) is the value the current store reads from it (`read`, serialized).
fn same(stored: &Value, read: &Value) -> bool {
    match (stored, read) {
        // SQLite keeps booleans as 0/1.
        (Value::Number(n), Value::Bool(b)) => (n.as_i64() != Some(0)) == *b,
        // JSON kept in a TEXT column (selectors, DNS names, allowed IDs, holdings).
        (Value::String(s), Value::Array(_) | Value::Object(_)) => {
            serde_json::from_str::<Value>(s).ok().as_ref() == Some(read)
        }
        _ => stored == read,
    }
}

/// Every column of `row` equals the field read back into `read` (columns renamed
/// by `rename`, columns in `skip` checked by the caller).
fn check_row(table: &str, row: &Value, read: &impl serde::Serialize, rename: &[(&str, &str)]) {
    check_row_skipping(table, row, read, rename, &[]);
}

fn check_row_skipping(
    table: &str,
    row: &Value,
    read: &impl serde::Serialize,
    rename: &[(&str, &str)],
    skip: &[&str],
) {
    let read = serde_json::to_value(read).unwrap();
    let read: &Map<String, Value> = read.as_object().unwrap();
    for (column, stored) in row.as_object().unwrap() {
        if skip.contains(&column.as_str()) {
            continue;
        }
        let field = rename
            .iter()
            .find(|(c, _)| c == column)
            .map_or(column.as_str(), |(_, f)| f);
        let got = read.get(field).unwrap_or(&Value::Null);
        assert!(
            same(stored, got),
            "{table} {row}: column {column} was {stored}, reads back as {got}"
        );
    }
}

fn public_key(dir: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(dir.join("audit-key.pub")).unwrap();
    hex::decode(text.trim()).unwrap()
}

/// The migrations the current code ships for `dialect`.
fn shipped_migrations(dialect: &str) -> Vec<i64> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    let mut v: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .map(|n| n.split('_').next().unwrap().parse().unwrap())
        .collect();
    v.sort();
    v
}

/// (version, success) of every applied migration.
async fn applied_migrations(store: &AnyStore) -> Vec<(i64, bool)> {
    let q = "SELECT version, success FROM _sqlx_migrations ORDER BY version";
    match store {
        AnyStore::Sqlite(s) => sqlx::query_as(q).fetch_all(s.pool()).await,
        AnyStore::Postgres(s) => sqlx::query_as(q).fetch_all(s.pool()).await,
    }
    .unwrap()
}

/// The store opened on the fixture's database holds everything the manifest says the
/// previous release wrote, its evidence log verifies, and it keeps working.
async fn check_upgraded(store: &AnyStore, backend: &str, dialect: &str) {
    let m = manifest(backend);
    let dir = fixture(backend);

    // Every migration ran: the previous ones (as recorded) and any added since.
    let applied = applied_migrations(store).await;
    let versions: Vec<i64> = applied.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, shipped_migrations(dialect), "{applied:?}");
    assert!(applied.iter().all(|(_, ok)| *ok), "{applied:?}");
    let previous: Vec<i64> = serde_json::from_value(m["migrations"].clone()).unwrap();
    assert_eq!(
        previous,
        vec![1, 2, 3, 4, 5],
        "the fixture is at schema 0005"
    );

    // Entries: each one, every column.
    let entries = store.list_entries().await.unwrap();
    let expected = rows(&m, "entries");
    assert_eq!(entries.len(), expected.len(), "entries");
    for row in expected {
        let id = row["id"].as_str().unwrap();
        let e = store.get_entry(id).await.unwrap().expect("entry kept");
        check_row("entries", row, &e, &[]);
        assert!(entries.contains(&e));
    }
    assert!(
        entries.iter().any(|e| e.spec.admin),
        "the fixture has an admin entry"
    );
    assert!(entries.iter().any(|e| !e.spec.dns_names.is_empty()));
    assert!(entries.iter().any(|e| e.spec.expires_at.is_some()));
    assert!(entries.iter().any(|e| e.revision > 1));

    // Nodes, with their holdings, serials and bans.
    let nodes = store.list_nodes().await.unwrap();
    let expected = rows(&m, "nodes");
    assert_eq!(nodes.len(), expected.len(), "nodes");
    for row in expected {
        let id = SpiffeId::new(row["spiffe_id"].as_str().unwrap()).unwrap();
        let n = store.get_node(&id).await.unwrap().expect("node kept");
        check_row("nodes", row, &n, &[("held_authorities", "holdings")]);
    }
    assert!(nodes.iter().any(|n| n.banned));
    assert!(nodes.iter().any(|n| !n.holdings.authorities.is_empty()));

    // Revoked JWT-SVIDs (all of them: `now` before any expiry).
    let revoked = store.revoked_jwts(0).await.unwrap();
    let expected = rows(&m, "revoked_jwts");
    assert_eq!(revoked.len(), expected.len(), "revoked JWTs");
    for row in expected {
        let r = revoked
            .iter()
            .find(|r| r.jti == row["jti"].as_str().unwrap())
            .expect("revocation kept");
        check_row("revoked_jwts", row, r, &[]);
    }

    // Exceptions, their sealed secrets byte for byte.
    let exceptions = store.list_exceptions().await.unwrap();
    let expected = rows(&m, "exceptions");
    assert_eq!(exceptions.len(), expected.len(), "exceptions");
    for row in expected {
        let name = row["name"].as_str().unwrap();
        let e = store.get_exception(name).await.unwrap().expect("kept");
        check_row_skipping("exceptions", row, &e, &[], &["sealed"]);
        assert_eq!(e.sealed, row["sealed"].as_str().unwrap(), "{name} sealed");
    }
    assert!(exceptions.iter().any(|e| e.revoked_at.is_some()));

    // The policy set.
    for row in rows(&m, "policies") {
        let p = store
            .get_policy(row["kind"].as_str().unwrap())
            .await
            .unwrap()
            .expect("policy kept");
        check_row("policies", row, &p, &[]);
    }

    // The evidence log verifies with the fixture's key: every record and checkpoint.
    let key = public_key(&dir);
    let records = store.audit_records().await.unwrap();
    let checkpoints = store.audit_checkpoints().await.unwrap();
    let summary = lanyard_audit::verify(&records, &checkpoints, &key).expect("log verifies");
    assert_eq!(summary.events, m["audit"]["events"].as_u64().unwrap());
    assert_eq!(
        summary.checkpoints,
        m["audit"]["checkpoints"].as_u64().unwrap()
    );
    assert!(summary.checkpoints >= 2, "{summary:?}");
    assert_eq!(summary.head, m["audit"]["head"].as_str().unwrap());
    let mut kinds = std::collections::BTreeMap::<String, u64>::new();
    for r in &records {
        *kinds.entry(r.event.kind.name()).or_default() += 1;
    }
    let expected: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(m["audit"]["kinds"].clone()).unwrap();
    assert_eq!(kinds, expected, "evidence kinds");
    assert!(summary.events >= 50, "{summary:?}");

    // Join tokens: each can be consumed once (it was not, before the upgrade).
    for row in rows(&m, "join_tokens") {
        let hash = row["token_hash"].as_str().unwrap();
        let t = store
            .consume_join_token(hash)
            .await
            .unwrap()
            .expect("join token kept");
        check_row_skipping("join_tokens", row, &t, &[], &["token_hash", "created_at"]);
        assert!(store.consume_join_token(hash).await.unwrap().is_none());
    }

    // The upgraded log keeps growing and verifying under the same key.
    let mut next = records.last().unwrap().event.clone();
    next.id = "after-upgrade".into();
    next.time += 1;
    store.append_audit(&[next]).await.unwrap();
    let der = std::fs::read(dir.join("audit-key.pk8")).unwrap();
    let signer = lanyard_audit::AuditKey::from_pkcs8(&der).unwrap();
    let chain = store.audit_chain().await.unwrap();
    let cp = signer.checkpoint(&chain, 4_000_000_000).unwrap();
    store.put_audit_checkpoint(&cp).await.unwrap();
    let after = lanyard_audit::verify(
        &store.audit_records().await.unwrap(),
        &store.audit_checkpoints().await.unwrap(),
        &key,
    )
    .expect("log verifies after an append");
    assert_eq!(after.events, summary.events + 1);
    assert_eq!(after.checkpoints, summary.checkpoints + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_database_of_the_previous_release_upgrades_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("lanyard.db");
    std::fs::copy(fixture("sqlite").join("lanyard.db"), &db).unwrap();
    let store = AnyStore::open(&db.to_string_lossy()).await.unwrap();
    check_upgraded(&store, "sqlite", "sqlite").await;
    // And it opens again (migrations already applied).
    drop(store);
    let again = AnyStore::open(&db.to_string_lossy()).await.unwrap();
    assert_eq!(
        again.list_entries().await.unwrap().len(),
        rows(&manifest("sqlite"), "entries").len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_database_of_the_previous_release_upgrades_in_place() {
    let (url, name) = fresh_pg_db().await;
    {
        // The dump, as the previous release's server left the database.
        let dump = std::fs::read_to_string(fixture("postgres").join("dump.sql")).unwrap();
        let mut load = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(dump))
            .execute(&mut load)
            .await
            .unwrap();
        load.close().await.unwrap();

        let store = AnyStore::open(&url).await.unwrap();
        check_upgraded(&store, "postgres", "postgres").await;
        if let AnyStore::Postgres(s) = &store {
            s.pool().close().await;
        }
        let again = AnyStore::open(&url).await.unwrap();
        assert_eq!(
            again.list_entries().await.unwrap().len(),
            rows(&manifest("postgres"), "entries").len()
        );
        if let AnyStore::Postgres(s) = &again {
            s.pool().close().await;
        }
    }
    drop_pg_db(&name).await;
}
