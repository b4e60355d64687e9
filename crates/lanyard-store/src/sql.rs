//! The SQL backends. Both dialects accept the same statements (positional `$n`
//! parameters, `RETURNING`, `ON CONFLICT`), so one macro implements [`Store`] for
//! each pool type; only the migrations and connection setup differ.

use std::str::FromStr;
use std::time::Duration;

use lanyard_core::{Selector, SpiffeId, TrustDomain};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Row, SqlitePool};

use crate::{
    Activity, AuditFn, BatchOutcome, BundlePut, Change, ChangeKind, Entry, EntrySpec, EntryUpdate,
    Exception, JoinToken, Node, NodeHoldings, REPLAY_PRUNE_BATCH, Result, RevokedJwt, SealedKey,
    ServerRecord, ServerRegistration, Store, StoreError, StoredBundle, StoredPolicy, new_id,
};

/// The PostgreSQL NOTIFY channel of the change feed; the payload is the revision.
pub const CHANGE_CHANNEL: &str = "lanyard_changes";
/// The advisory lock (`pg_advisory_xact_lock`) that orders change-feed appends.
const CHANGE_FEED_LOCK: i64 = 0x6c61_6e79_6172_6401;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

fn db_err(e: sqlx::Error) -> StoreError {
    if is_unreachable(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Database(e.to_string())
    }
}

/// Errors that say the database cannot be reached now, not that a statement failed.
fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // PostgreSQL: connection exceptions (08), operator intervention (57: admin
        // shutdown, cannot connect now), and a database that refuses connections.
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            c.starts_with("08") || c.starts_with("57") || c == "55000" || c == "3D000"
        }),
        _ => false,
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn selectors_json(s: &[Selector]) -> Result<String> {
    serde_json::to_string(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn parse_selectors(json: &str) -> Result<Vec<Selector>> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("selectors {json:?}: {e}")))
}

fn parse_id(s: &str) -> Result<SpiffeId> {
    SpiffeId::new(s).map_err(|e| StoreError::Corrupt(format!("SPIFFE ID {s:?}: {e}")))
}

fn federates_json(t: &[TrustDomain]) -> Result<String> {
    serde_json::to_string(t).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn parse_federates(json: &str) -> Result<Vec<TrustDomain>> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("federates_with {json:?}: {e}")))
}

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Database(format!("{v} does not fit a 64-bit column")))
}

fn to_u64(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative value {v}")))
}

const ENTRY_COLUMNS: &str = "id, spiffe_id, parent_id, selectors, owner, environment, x509_ttl, jwt_ttl, dns_names, hint, admin, downstream, expires_at, federates_with, revision, created_at, updated_at";
const NODE_COLUMNS: &str = "spiffe_id, attestation_type, selectors, serial, expires_at, banned, created_at, updated_at, held_authorities, previous_serial, superseded_count, superseded_at";

const EXCEPTION_COLUMNS: &str =
    "name, owner, justification, allowed, expires_at, created_at, created_by, revoked_at, sealed";

/// Attempts at appending to the evidence log when writers race.
const AUDIT_RETRIES: usize = 20;

fn is_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation()
                || d.code()
                    .is_some_and(|c| c == "5" || c == "517" || c == "40001" || c == "40P01")
        }
        _ => false,
    }
}

fn record_from_parts(
    seq: i64,
    prev_hash: String,
    hash: String,
    event: &str,
    columns: lanyard_audit::IndexColumns,
) -> Result<lanyard_audit::Record> {
    Ok(lanyard_audit::Record {
        seq: to_u64(seq)?,
        prev_hash,
        hash,
        // A record whose JSON no longer parses was tampered with; keep it visible to
        // verification as an event that cannot match its hash.
        event: serde_json::from_str(event)
            .map_err(|e| StoreError::Corrupt(format!("audit record {seq}: {e}")))?,
        // Every stored column is checked by verification: these against the event.
        columns: Some(columns),
    })
}

/// A failure inside an audited transaction: a database error (retried when it is a
/// serialization conflict) or a domain error (returned as is).
enum TxErr {
    Sql(sqlx::Error),
    Store(StoreError),
}

impl From<sqlx::Error> for TxErr {
    fn from(e: sqlx::Error) -> Self {
        Self::Sql(e)
    }
}

impl From<StoreError> for TxErr {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Fixes the error type of a transaction body so that `?` converts into [`TxErr`].
fn tx_body<T, F: std::future::Future<Output = std::result::Result<T, TxErr>>>(f: F) -> F {
    f
}

/// Run `$body` (which uses `$tx`) in a serialized transaction, append the events
/// `$audit` builds from its result to the evidence log in the same transaction, and
/// commit; retry the whole transaction on serialization conflicts.
///
/// With `change: F`, `F(&value)` names the change other servers must see (or
/// `None`): it is appended to the change feed in the same transaction (see
/// `record_change`).
macro_rules! audited {
    ($self:ident, $begin:expr, $audit:expr, |$tx:ident| $body:block) => {
        audited!($self, $begin, $audit, change: |_| None, |$tx| $body)
    };
    ($self:ident, $begin:expr, $audit:expr, change: $change:expr, |$tx:ident| $body:block) => {
        audited!($self, $begin, $audit, changes: |v| {
            let c: Option<(ChangeKind, String)> = ($change)(v);
            c.into_iter().collect::<Vec<_>>()
        }, |$tx| $body)
    };
    ($self:ident, $begin:expr, $audit:expr, changes: $changes:expr, |$tx:ident| $body:block) => {{
        let mut last_err = None;
        for attempt in 0..AUDIT_RETRIES {
            let result: std::result::Result<_, TxErr> = async {
                let mut $tx = $self.pool.begin_with($begin).await?;
                let value = tx_body(async { $body }).await?;
                let events = ($audit)(&value);
                if !events.is_empty() {
                    append_in_tx(&mut $tx, &events).await?;
                }
                let changes: Vec<(ChangeKind, String)> = ($changes)(&value);
                record_changes(&mut $tx, &changes, &$self.origin).await?;
                $tx.commit().await?;
                Ok(value)
            }
            .await;
            match result {
                Ok(v) => return Ok(v),
                Err(TxErr::Sql(e)) if is_retryable(&e) => last_err = Some(e),
                Err(TxErr::Sql(e)) => return Err(db_err(e)),
                Err(TxErr::Store(e)) => return Err(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(2 << attempt.min(6))).await;
        }
        Err(StoreError::Database(format!(
            "the datastore stayed busy after {AUDIT_RETRIES} attempts: {}",
            last_err.map(|e| e.to_string()).unwrap_or_default()
        )))
    }};
}

/// Bind an entry's columns ($2..$14, in `ENTRY_COLUMNS` order after the id).
macro_rules! bind_spec {
    ($q:expr, $spec:expr, $selectors:expr, $dns:expr, $fed:expr) => {
        $q.bind($spec.spiffe_id.to_string())
            .bind($spec.parent_id.to_string())
            .bind(&$selectors)
            .bind(&$spec.owner)
            .bind(&$spec.environment)
            .bind(to_i64($spec.x509_ttl)?)
            .bind(to_i64($spec.jwt_ttl)?)
            .bind(&$dns)
            .bind(&$spec.hint)
            .bind($spec.admin)
            .bind($spec.downstream)
            .bind($spec.expires_at)
            .bind(&$fed)
    };
}

/// The SET clause of an entry update: columns $2..$14 as [`bind_spec`] binds them,
/// `updated_at` = $15.
const UPDATE_SET: &str = "spiffe_id=$2, parent_id=$3, selectors=$4, owner=$5, environment=$6, x509_ttl=$7, jwt_ttl=$8, dns_names=$9, hint=$10, admin=$11, downstream=$12, expires_at=$13, federates_with=$14, revision=revision+1, updated_at=$15";

/// The JSON-encoded columns of a spec: canonical selectors, DNS names, federated
/// trust domains.
fn spec_json(spec: &EntrySpec) -> Result<(String, String, String)> {
    Ok((
        selectors_json(&spec.canonical_selectors())?,
        serde_json::to_string(&spec.dns_names).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        federates_json(&spec.federates_with)?,
    ))
}

/// The change-feed records of a batch: one per written (or deleted) entry.
fn batch_changes(out: &BatchOutcome) -> Vec<(ChangeKind, String)> {
    out.iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|e| (ChangeKind::Entry, e.id.clone()))
        .collect()
}

/// Change-feed rows per INSERT statement (3 parameters each).
const CHANGE_ROWS_PER_INSERT: usize = 64;

/// Entry rows per INSERT statement of a batch (15 parameters each).
const ENTRY_ROWS_PER_INSERT: usize = 64;

/// `INSERT INTO entries … VALUES (…), … ON CONFLICT DO NOTHING RETURNING id` for
/// `rows` rows bound as [`bind_spec`] binds them after the id, then `now`.
fn multi_row_entry_insert(rows: usize) -> String {
    let mut sql = format!("INSERT INTO entries ({ENTRY_COLUMNS}) VALUES ");
    for k in 0..rows {
        let b = k * 15;
        if k > 0 {
            sql.push(',');
        }
        sql.push('(');
        for i in 1..=14 {
            sql.push_str(&format!("${},", b + i));
        }
        sql.push_str(&format!("1,${0},${0})", b + 15));
    }
    sql.push_str(" ON CONFLICT DO NOTHING RETURNING id");
    sql
}

/// Evidence-log rows per INSERT statement (7 parameters each).
const AUDIT_ROWS_PER_INSERT: usize = 64;

macro_rules! impl_store {
    ($store:ident, $row:ty, $db:ty, $begin:expr, $postgres:expr) => {
        /// Append a change to the feed inside the caller's transaction. On
        /// PostgreSQL writers first take one transaction-scoped advisory lock, so
        /// revisions commit in order (a reader that saw revision N never later finds
        /// a smaller one committed), and the change is announced with NOTIFY, which
        /// PostgreSQL delivers at commit.
        /// Append `changes` to the change feed inside the caller's transaction (many
        /// rows per statement), then announce the newest revision once.
        async fn record_changes(
            tx: &mut sqlx::Transaction<'_, $db>,
            changes: &[(ChangeKind, String)],
            origin: &str,
        ) -> std::result::Result<(), sqlx::Error> {
            if changes.is_empty() {
                return Ok(());
            }
            if $postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(CHANGE_FEED_LOCK)
                    .execute(&mut **tx)
                    .await?;
            }
            let mut newest = 0i64;
            for chunk in changes.chunks(CHANGE_ROWS_PER_INSERT) {
                let mut sql = String::from("INSERT INTO changes (kind, key, origin) VALUES ");
                for k in 0..chunk.len() {
                    if k > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&format!("(${},${},${})", 3 * k + 1, 3 * k + 2, 3 * k + 3));
                }
                sql.push_str(" RETURNING revision");
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (kind, key) in chunk {
                    q = q.bind(kind.name()).bind(key.as_str()).bind(origin);
                }
                for row in q.fetch_all(&mut **tx).await? {
                    newest = newest.max(row.try_get::<i64, _>("revision")?);
                }
            }
            if $postgres {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANGE_CHANNEL)
                    .bind(newest.to_string())
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(())
        }

        fn server_from_row(row: &$row) -> Result<ServerRecord> {
            let authorities: String = row.try_get("authorities").map_err(db_err)?;
            Ok(ServerRecord {
                name: row.try_get("name").map_err(db_err)?,
                address: row.try_get("address").map_err(db_err)?,
                authorities: serde_json::from_str(&authorities)
                    .map_err(|e| StoreError::Corrupt(format!("server authorities: {e}")))?,
                expires_at: row.try_get("expires_at").map_err(db_err)?,
                started_at: row.try_get("started_at").map_err(db_err)?,
                seen_at: row.try_get("seen_at").map_err(db_err)?,
                deregistered_at: row.try_get("deregistered_at").map_err(db_err)?,
            })
        }

        /// Append events after the newest record, inside the caller's transaction.
        async fn append_in_tx(
            tx: &mut sqlx::Transaction<'_, $db>,
            events: &[lanyard_audit::Event],
        ) -> std::result::Result<Vec<lanyard_audit::Record>, sqlx::Error> {
            let last = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut **tx)
                .await?;
            let mut chain = match last {
                None => lanyard_audit::Chain::default(),
                Some(r) => lanyard_audit::Chain {
                    next_seq: u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0) + 1,
                    head: r.try_get::<String, _>("hash")?,
                },
            };
            let mut out = Vec::with_capacity(events.len());
            let mut encoded = Vec::with_capacity(events.len());
            for ev in events {
                let (rec, json) = chain
                    .append_encoded(ev.clone())
                    .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
                out.push(rec);
                encoded.push(String::from_utf8_lossy(&json).into_owned());
            }
            // Many rows per statement: each statement is a round trip to the driver.
            for (recs, jsons) in out.chunks(AUDIT_ROWS_PER_INSERT).zip(encoded.chunks(AUDIT_ROWS_PER_INSERT)) {
                let mut sql = String::from(
                    "INSERT INTO audit_events (seq, prev_hash, hash, time, kind, subject, event) VALUES ",
                );
                for k in 0..recs.len() {
                    let b = k * 7;
                    if k > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&format!(
                        "(${},${},${},${},${},${},${})",
                        b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7
                    ));
                }
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (rec, json) in recs.iter().zip(jsons) {
                    q = q
                        .bind(i64::try_from(rec.seq).unwrap_or(i64::MAX))
                        .bind(rec.prev_hash.clone())
                        .bind(rec.hash.clone())
                        .bind(rec.event.time)
                        .bind(rec.event.kind.name())
                        .bind(rec.event.subject.clone())
                        .bind(json.clone());
                }
                q.execute(&mut **tx).await?;
            }
            Ok(out)
        }

        fn entry_from_row(row: &$row) -> Result<Entry> {
            let get_s = |c: &str| row.try_get::<String, _>(c).map_err(db_err);
            let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(db_err);
            let dns: String = get_s("dns_names")?;
            Ok(Entry {
                id: get_s("id")?,
                spec: EntrySpec {
                    spiffe_id: parse_id(&get_s("spiffe_id")?)?,
                    parent_id: parse_id(&get_s("parent_id")?)?,
                    selectors: parse_selectors(&get_s("selectors")?)?,
                    owner: get_s("owner")?,
                    environment: row.try_get::<Option<String>, _>("environment").map_err(db_err)?,
                    x509_ttl: to_u64(get_i("x509_ttl")?)?,
                    jwt_ttl: to_u64(get_i("jwt_ttl")?)?,
                    dns_names: serde_json::from_str(&dns)
                        .map_err(|e| StoreError::Corrupt(format!("dns_names: {e}")))?,
                    hint: row.try_get::<Option<String>, _>("hint").map_err(db_err)?,
                    admin: row.try_get::<bool, _>("admin").map_err(db_err)?,
                    downstream: row.try_get::<bool, _>("downstream").map_err(db_err)?,
                    expires_at: row.try_get::<Option<i64>, _>("expires_at").map_err(db_err)?,
                    federates_with: parse_federates(&get_s("federates_with")?)?,
                },
                revision: get_i("revision")?,
                created_at: get_i("created_at")?,
                updated_at: get_i("updated_at")?,
            })
        }

        fn node_from_row(row: &$row) -> Result<Node> {
            let get_s = |c: &str| row.try_get::<String, _>(c).map_err(db_err);
            let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(db_err);
            Ok(Node {
                spiffe_id: parse_id(&get_s("spiffe_id")?)?,
                attestation_type: get_s("attestation_type")?,
                selectors: parse_selectors(&get_s("selectors")?)?,
                serial: get_s("serial")?,
                expires_at: get_i("expires_at")?,
                banned: row.try_get::<bool, _>("banned").map_err(db_err)?,
                created_at: get_i("created_at")?,
                updated_at: get_i("updated_at")?,
                holdings: serde_json::from_str(&get_s("held_authorities")?).unwrap_or_default(),
                previous_serial: get_s("previous_serial")?,
                superseded_count: get_i("superseded_count")?,
                superseded_at: row.try_get::<Option<i64>, _>("superseded_at").map_err(db_err)?,
            })
        }

        fn policy_from_row(row: &$row) -> Result<StoredPolicy> {
            Ok(StoredPolicy {
                kind: row.try_get("kind").map_err(db_err)?,
                body: row.try_get("body").map_err(db_err)?,
                version: row.try_get("version").map_err(db_err)?,
                updated_at: row.try_get("updated_at").map_err(db_err)?,
                updated_by: row.try_get("updated_by").map_err(db_err)?,
            })
        }

        fn exception_from_row(row: &$row) -> Result<Exception> {
            let allowed: String = row.try_get("allowed").map_err(db_err)?;
            let allowed: Vec<String> = serde_json::from_str(&allowed)
                .map_err(|e| StoreError::Corrupt(format!("exception allowed list: {e}")))?;
            Ok(Exception {
                name: row.try_get("name").map_err(db_err)?,
                owner: row.try_get("owner").map_err(db_err)?,
                justification: row.try_get("justification").map_err(db_err)?,
                allowed: allowed.iter().map(|s| parse_id(s)).collect::<Result<_>>()?,
                expires_at: row.try_get("expires_at").map_err(db_err)?,
                created_at: row.try_get("created_at").map_err(db_err)?,
                created_by: row.try_get("created_by").map_err(db_err)?,
                revoked_at: row.try_get("revoked_at").map_err(db_err)?,
                sealed: row.try_get("sealed").map_err(db_err)?,
            })
        }

        fn duplicate_entry(spec: &EntrySpec) -> StoreError {
            StoreError::Duplicate(format!(
                "an entry for {} under parent {} with the same selectors already exists; update it instead of creating another",
                spec.spiffe_id, spec.parent_id
            ))
        }

        impl Store for $store {
            async fn create_entry(&self, spec: &EntrySpec, now: i64, audit: AuditFn<'_, Entry>) -> Result<Entry> {
                let id = new_id()?;
                let sql = format!(
                    "INSERT INTO entries ({ENTRY_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,1,$15,$15) RETURNING {ENTRY_COLUMNS}"
                );
                let (selectors, dns, fed) = spec_json(spec)?;
                audited!(self, $begin, audit, change: |e: &Entry| Some((ChangeKind::Entry, e.id.clone())), |tx| {
                    let row = bind_spec!(sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(&id), spec, selectors, dns, fed)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(|e| if is_unique_violation(&e) { TxErr::Store(duplicate_entry(spec)) } else { TxErr::Sql(e) })?;
                    Ok(entry_from_row(&row)?)
                })
            }

            async fn update_entry(
                &self,
                id: &str,
                spec: &EntrySpec,
                expected_revision: Option<i64>,
                now: i64,
                audit: AuditFn<'_, Entry>,
            ) -> Result<Entry> {
                let sql = format!(
                    "UPDATE entries SET {UPDATE_SET} WHERE id=$1 AND ($16 IS NULL OR revision=$16) RETURNING {ENTRY_COLUMNS}"
                );
                let current_sql = format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE id=$1");
                let (selectors, dns, fed) = spec_json(spec)?;
                audited!(self, $begin, audit, change: |e: &Entry| Some((ChangeKind::Entry, e.id.clone())), |tx| {
                    let row = bind_spec!(sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(id), spec, selectors, dns, fed)
                        .bind(now)
                        .bind(expected_revision)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(|e| if is_unique_violation(&e) { TxErr::Store(duplicate_entry(spec)) } else { TxErr::Sql(e) })?;
                    match row {
                        Some(r) => Ok(entry_from_row(&r)?),
                        None => {
                            let current = sqlx::query(sqlx::AssertSqlSafe(current_sql.clone()))
                                .bind(id)
                                .fetch_optional(&mut *tx)
                                .await?;
                            match current {
                                None => Err(TxErr::Store(StoreError::NotFound { what: "entry", id: id.to_string() })),
                                Some(c) => Err(TxErr::Store(StoreError::Conflict {
                                    what: "entry",
                                    id: id.to_string(),
                                    expected: expected_revision.unwrap_or_default(),
                                    actual: entry_from_row(&c)?.revision,
                                })),
                            }
                        }
                    }
                })
            }

            async fn delete_entry(&self, id: &str, audit: AuditFn<'_, Entry>) -> Result<Entry> {
                let sql = format!("DELETE FROM entries WHERE id=$1 RETURNING {ENTRY_COLUMNS}");
                audited!(self, $begin, audit, change: |e: &Entry| Some((ChangeKind::Entry, e.id.clone())), |tx| {
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(id).fetch_optional(&mut *tx).await?;
                    match row {
                        Some(r) => Ok(entry_from_row(&r)?),
                        None => Err(TxErr::Store(StoreError::NotFound { what: "entry", id: id.to_string() })),
                    }
                })
            }

            async fn create_entries(&self, specs: &[EntrySpec], now: i64, audit: AuditFn<'_, BatchOutcome>) -> Result<BatchOutcome> {
                // Many rows per statement (each statement is a round trip to the
                // driver). A duplicate inserts nothing and returns no id: decided per
                // entry without failing the transaction.
                let prepared = specs
                    .iter()
                    .map(|spec| Ok((new_id()?, spec_json(spec)?)))
                    .collect::<Result<Vec<_>>>()?;
                let statements: Vec<String> = prepared
                    .chunks(ENTRY_ROWS_PER_INSERT)
                    .map(|rows| multi_row_entry_insert(rows.len()))
                    .collect();
                audited!(self, $begin, audit, changes: batch_changes, |tx| {
                    let mut inserted = std::collections::HashSet::with_capacity(specs.len());
                    let chunks = specs.chunks(ENTRY_ROWS_PER_INSERT).zip(prepared.chunks(ENTRY_ROWS_PER_INSERT));
                    for ((specs, rows), sql) in chunks.zip(&statements) {
                        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
                        for (spec, (id, (selectors, dns, fed))) in specs.iter().zip(rows) {
                            q = bind_spec!(q.bind(id), spec, selectors, dns, fed).bind(now);
                        }
                        for r in q.fetch_all(&mut *tx).await? {
                            inserted.insert(r.try_get::<String, _>("id")?);
                        }
                    }
                    // What was inserted is the spec as given, selectors canonical.
                    Ok(specs
                        .iter()
                        .zip(&prepared)
                        .map(|(spec, (id, _))| {
                            if inserted.contains(id) {
                                Ok(Entry {
                                    id: id.clone(),
                                    spec: EntrySpec { selectors: spec.canonical_selectors(), ..spec.clone() },
                                    revision: 1,
                                    created_at: now,
                                    updated_at: now,
                                })
                            } else {
                                Err(duplicate_entry(spec))
                            }
                        })
                        .collect())
                })
            }

            async fn update_entries(&self, updates: &[EntryUpdate], now: i64, audit: AuditFn<'_, BatchOutcome>) -> Result<BatchOutcome> {
                // The collision check is part of the statement (a unique violation
                // would abort a PostgreSQL transaction); no row means not found,
                // stale revision or collision, told apart afterwards.
                let sql = format!(
                    "UPDATE entries SET {UPDATE_SET} WHERE id=$1 AND ($16 IS NULL OR revision=$16) \
                     AND NOT EXISTS (SELECT 1 FROM entries o WHERE o.spiffe_id=$2 AND o.parent_id=$3 AND o.selectors=$4 AND o.id<>$1) \
                     RETURNING {ENTRY_COLUMNS}"
                );
                let current_sql = format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE id=$1");
                let prepared = updates.iter().map(|u| spec_json(&u.spec)).collect::<Result<Vec<_>>>()?;
                audited!(self, $begin, audit, changes: batch_changes, |tx| {
                    let mut out = Vec::with_capacity(updates.len());
                    for (u, (selectors, dns, fed)) in updates.iter().zip(&prepared) {
                        let row = bind_spec!(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(&u.id), u.spec, selectors, dns, fed)
                            .bind(now)
                            .bind(u.expected_revision)
                            .fetch_optional(&mut *tx)
                            .await?;
                        if let Some(r) = row {
                            out.push(Ok(entry_from_row(&r)?));
                            continue;
                        }
                        let current = sqlx::query(sqlx::AssertSqlSafe(current_sql.as_str()))
                            .bind(&u.id)
                            .fetch_optional(&mut *tx)
                            .await?;
                        out.push(Err(match current {
                            None => StoreError::NotFound { what: "entry", id: u.id.clone() },
                            Some(c) => {
                                let actual = entry_from_row(&c)?.revision;
                                match u.expected_revision {
                                    Some(expected) if expected != actual => StoreError::Conflict {
                                        what: "entry",
                                        id: u.id.clone(),
                                        expected,
                                        actual,
                                    },
                                    _ => duplicate_entry(&u.spec),
                                }
                            }
                        }));
                    }
                    Ok(out)
                })
            }

            async fn delete_entries(&self, ids: &[String], audit: AuditFn<'_, BatchOutcome>) -> Result<BatchOutcome> {
                let sql = format!("DELETE FROM entries WHERE id=$1 RETURNING {ENTRY_COLUMNS}");
                audited!(self, $begin, audit, changes: batch_changes, |tx| {
                    let mut out = Vec::with_capacity(ids.len());
                    for id in ids {
                        let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(&mut *tx).await?;
                        out.push(match row {
                            Some(r) => Ok(entry_from_row(&r)?),
                            None => Err(StoreError::NotFound { what: "entry", id: id.clone() }),
                        });
                    }
                    Ok(out)
                })
            }

            async fn get_entry(&self, id: &str) -> Result<Option<Entry>> {
                let sql = format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE id=$1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await.map_err(db_err)?;
                row.as_ref().map(entry_from_row).transpose()
            }

            async fn list_entries(&self) -> Result<Vec<Entry>> {
                let sql = format!("SELECT {ENTRY_COLUMNS} FROM entries ORDER BY spiffe_id, id");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await.map_err(db_err)?;
                rows.iter().map(entry_from_row).collect()
            }

            async fn list_entries_by_parent(&self, parent: &SpiffeId) -> Result<Vec<Entry>> {
                let sql = format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE parent_id=$1 ORDER BY spiffe_id, id");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(parent.to_string())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                rows.iter().map(entry_from_row).collect()
            }

            async fn upsert_node(&self, node: &Node) -> Result<()> {
                let sql = format!(
                    "INSERT INTO nodes ({NODE_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) \
                     ON CONFLICT (spiffe_id) DO UPDATE SET attestation_type=excluded.attestation_type, selectors=excluded.selectors, \
                     serial=excluded.serial, expires_at=excluded.expires_at, updated_at=excluded.updated_at, previous_serial=''"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(node.spiffe_id.to_string())
                    .bind(&node.attestation_type)
                    .bind(selectors_json(&node.selectors)?)
                    .bind(&node.serial)
                    .bind(node.expires_at)
                    .bind(node.banned)
                    .bind(node.created_at)
                    .bind(node.updated_at)
                    .bind(serde_json::to_string(&node.holdings).map_err(|e| StoreError::Corrupt(e.to_string()))?)
                    .bind(&node.previous_serial)
                    .bind(node.superseded_count)
                    .bind(node.superseded_at)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn get_node(&self, id: &SpiffeId) -> Result<Option<Node>> {
                let sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE spiffe_id=$1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(node_from_row).transpose()
            }

            async fn list_nodes(&self) -> Result<Vec<Node>> {
                let sql = format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY spiffe_id");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await.map_err(db_err)?;
                rows.iter().map(node_from_row).collect()
            }

            async fn set_node_svid(&self, id: &SpiffeId, presented_serial: &str, serial: &str, expires_at: i64, now: i64) -> Result<Node> {
                let sql = format!(
                    "UPDATE nodes SET previous_serial=$5, serial=$2, expires_at=$3, updated_at=$4 WHERE spiffe_id=$1 RETURNING {NODE_COLUMNS}"
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id.to_string())
                    .bind(serial)
                    .bind(expires_at)
                    .bind(now)
                    .bind(presented_serial)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.as_ref()
                    .map(node_from_row)
                    .transpose()?
                    .ok_or_else(|| StoreError::NotFound { what: "agent", id: id.to_string() })
            }

            async fn set_node_holdings(&self, id: &SpiffeId, holdings: &NodeHoldings) -> Result<()> {
                let r = sqlx::query("UPDATE nodes SET held_authorities=$2 WHERE spiffe_id=$1")
                    .bind(id.to_string())
                    .bind(serde_json::to_string(holdings).map_err(|e| StoreError::Corrupt(e.to_string()))?)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                if r.rows_affected() == 0 {
                    return Err(StoreError::NotFound { what: "agent", id: id.to_string() });
                }
                Ok(())
            }

            async fn set_node_banned(&self, id: &SpiffeId, banned: bool, now: i64, audit: AuditFn<'_, Node>) -> Result<Node> {
                let sql = format!("UPDATE nodes SET banned=$2, updated_at=$3 WHERE spiffe_id=$1 RETURNING {NODE_COLUMNS}");
                audited!(self, $begin, audit, change: |n: &Node| Some((ChangeKind::Node, n.spiffe_id.to_string())), |tx| {
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                        .bind(id.to_string())
                        .bind(banned)
                        .bind(now)
                        .fetch_optional(&mut *tx)
                        .await?;
                    match row {
                        Some(r) => Ok(node_from_row(&r)?),
                        None => Err(TxErr::Store(StoreError::NotFound { what: "agent", id: id.to_string() })),
                    }
                })
            }

            async fn promote_node_serial(&self, id: &SpiffeId, serial: &str) -> Result<()> {
                sqlx::query("UPDATE nodes SET previous_serial='' WHERE spiffe_id=$1 AND serial=$2 AND previous_serial<>''")
                    .bind(id.to_string())
                    .bind(serial)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn record_superseded_svid(&self, id: &SpiffeId, now: i64, audit: AuditFn<'_, Node>) -> Result<Node> {
                let sql = format!("UPDATE nodes SET superseded_count=superseded_count+1, superseded_at=$2 WHERE spiffe_id=$1 RETURNING {NODE_COLUMNS}");
                audited!(self, $begin, audit, |tx| {
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                        .bind(id.to_string())
                        .bind(now)
                        .fetch_optional(&mut *tx)
                        .await?;
                    match row {
                        Some(r) => Ok(node_from_row(&r)?),
                        None => Err(TxErr::Store(StoreError::NotFound { what: "agent", id: id.to_string() })),
                    }
                })
            }

            async fn delete_node(&self, id: &SpiffeId, audit: AuditFn<'_, Node>) -> Result<Node> {
                let sql = format!("DELETE FROM nodes WHERE spiffe_id=$1 RETURNING {NODE_COLUMNS}");
                audited!(self, $begin, audit, change: |n: &Node| Some((ChangeKind::Node, n.spiffe_id.to_string())), |tx| {
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                        .bind(id.to_string())
                        .fetch_optional(&mut *tx)
                        .await?;
                    match row {
                        Some(r) => Ok(node_from_row(&r)?),
                        None => Err(TxErr::Store(StoreError::NotFound { what: "agent", id: id.to_string() })),
                    }
                })
            }

            async fn create_join_token(&self, token_hash: &str, token: &JoinToken, now: i64, audit: AuditFn<'_, ()>) -> Result<()> {
                audited!(self, $begin, audit, |tx| {
                    sqlx::query("INSERT INTO join_tokens (token_hash, spiffe_id, expires_at, created_at) VALUES ($1,$2,$3,$4)")
                        .bind(token_hash)
                        .bind(token.spiffe_id.as_ref().map(|i| i.to_string()))
                        .bind(token.expires_at)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| {
                            if is_unique_violation(&e) {
                                TxErr::Store(StoreError::Duplicate("this join token already exists".to_string()))
                            } else {
                                TxErr::Sql(e)
                            }
                        })?;
                    Ok(())
                })
            }

            async fn consume_join_token(&self, token_hash: &str) -> Result<Option<JoinToken>> {
                let row = sqlx::query("DELETE FROM join_tokens WHERE token_hash=$1 RETURNING spiffe_id, expires_at")
                    .bind(token_hash)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                let Some(row) = row else { return Ok(None) };
                let spiffe_id = row
                    .try_get::<Option<String>, _>("spiffe_id")
                    .map_err(db_err)?
                    .map(|s| parse_id(&s))
                    .transpose()?;
                Ok(Some(JoinToken {
                    spiffe_id,
                    expires_at: row.try_get::<i64, _>("expires_at").map_err(db_err)?,
                }))
            }

            async fn record_attestation_token(&self, replay_key: &str, attestor: &str, expires_at: i64, now: i64) -> Result<bool> {
                // Housekeeping first, so that an error here records nothing. Another
                // server pruning the same rows at the same time (a deadlock between the
                // two deletes, or a busy SQLite file) is no failure: those rows are
                // being deleted anyway.
                let pruned = sqlx::query(
                    "DELETE FROM attestation_replays WHERE replay_key IN \
                     (SELECT replay_key FROM attestation_replays WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2)",
                )
                .bind(now)
                .bind(REPLAY_PRUNE_BATCH)
                .execute(&self.pool)
                .await;
                match pruned {
                    Err(e) if !is_retryable(&e) => return Err(db_err(e)),
                    _ => {}
                }
                // One statement decides and records: a new key is inserted, an expired
                // row is replaced, a live row is left alone (0 rows affected: a replay).
                // On PostgreSQL (read committed) a concurrent insert of the same key
                // waits for the other one and then sees its live row.
                let done = sqlx::query(
                    "INSERT INTO attestation_replays (replay_key, attestor, expires_at, created_at) VALUES ($1,$2,$3,$4) \
                     ON CONFLICT (replay_key) DO UPDATE SET attestor=excluded.attestor, expires_at=excluded.expires_at, created_at=excluded.created_at \
                     WHERE attestation_replays.expires_at <= $4",
                )
                .bind(replay_key)
                .bind(attestor)
                .bind(expires_at)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn get_bundle(&self, trust_domain: &str) -> Result<Option<StoredBundle>> {
                let row = sqlx::query("SELECT sequence, document FROM bundles WHERE trust_domain=$1")
                    .bind(trust_domain)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                let Some(row) = row else { return Ok(None) };
                Ok(Some(StoredBundle {
                    sequence: to_u64(row.try_get::<i64, _>("sequence").map_err(db_err)?)?,
                    document: row.try_get::<String, _>("document").map_err(db_err)?,
                }))
            }

            async fn put_bundle(&self, trust_domain: &str, document: &str, now: i64, audit: AuditFn<'_, BundlePut>) -> Result<BundlePut> {
                let td = trust_domain.to_string();
                audited!(self, $begin, audit, change: |p: &BundlePut| p.changed.then(|| (ChangeKind::Bundle, td.clone())), |tx| {
                    let current = sqlx::query("SELECT sequence, document FROM bundles WHERE trust_domain=$1")
                        .bind(trust_domain)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if let Some(c) = &current {
                        if c.try_get::<String, _>("document")? == document {
                            return Ok(BundlePut { sequence: to_u64(c.try_get::<i64, _>("sequence")?)?, changed: false });
                        }
                    }
                    let row = sqlx::query(
                        "INSERT INTO bundles (trust_domain, sequence, document, updated_at) VALUES ($1, 1, $2, $3) \
                         ON CONFLICT (trust_domain) DO UPDATE SET sequence=bundles.sequence+1, document=excluded.document, updated_at=excluded.updated_at \
                         RETURNING sequence",
                    )
                    .bind(trust_domain)
                    .bind(document)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    Ok(BundlePut { sequence: to_u64(row.try_get::<i64, _>("sequence")?)?, changed: true })
                })
            }

            async fn register_server(&self, server: &ServerRecord, audit: AuditFn<'_, ServerRegistration>) -> Result<ServerRegistration> {
                let authorities = serde_json::to_string(&server.authorities).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let name = server.name.clone();
                audited!(self, $begin, audit, change: |r: &ServerRegistration| r.authorities_changed.then(|| (ChangeKind::Server, name.clone())), |tx| {
                    let current = sqlx::query("SELECT name, address, authorities, expires_at, started_at, seen_at, deregistered_at FROM servers WHERE name=$1")
                        .bind(&server.name)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let current = current.as_ref().map(server_from_row).transpose()?;
                    match current {
                        // A deregistered server stays out: only its heartbeat is kept.
                        Some(mut c) if c.deregistered_at.is_some() => {
                            sqlx::query("UPDATE servers SET seen_at=$2 WHERE name=$1")
                                .bind(&server.name)
                                .bind(server.seen_at)
                                .execute(&mut *tx)
                                .await?;
                            c.seen_at = server.seen_at;
                            Ok(ServerRegistration { record: c, joined: false, authorities_changed: false })
                        }
                        current => {
                            sqlx::query(
                                "INSERT INTO servers (name, address, authorities, expires_at, started_at, seen_at, deregistered_at) VALUES ($1,$2,$3,$4,$5,$6,NULL) \
                                 ON CONFLICT (name) DO UPDATE SET address=excluded.address, authorities=excluded.authorities, \
                                 expires_at=excluded.expires_at, started_at=excluded.started_at, seen_at=excluded.seen_at",
                            )
                            .bind(&server.name)
                            .bind(&server.address)
                            .bind(&authorities)
                            .bind(server.expires_at)
                            .bind(server.started_at)
                            .bind(server.seen_at)
                            .execute(&mut *tx)
                            .await?;
                            let mut record = server.clone();
                            record.deregistered_at = None;
                            Ok(ServerRegistration {
                                record,
                                joined: current.is_none(),
                                authorities_changed: current.is_none_or(|c| c.authorities != server.authorities),
                            })
                        }
                    }
                })
            }

            async fn list_servers(&self) -> Result<Vec<ServerRecord>> {
                let rows = sqlx::query("SELECT name, address, authorities, expires_at, started_at, seen_at, deregistered_at FROM servers ORDER BY name")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                rows.iter().map(server_from_row).collect()
            }

            async fn deregister_server(&self, name: &str, now: i64, audit: AuditFn<'_, ServerRecord>) -> Result<ServerRecord> {
                let key = name.to_string();
                audited!(self, $begin, audit, change: |_: &ServerRecord| Some((ChangeKind::Server, key.clone())), |tx| {
                    let row = sqlx::query("UPDATE servers SET deregistered_at=$2 WHERE name=$1 AND deregistered_at IS NULL \
                                           RETURNING name, address, authorities, expires_at, started_at, seen_at, deregistered_at")
                        .bind(name)
                        .bind(now)
                        .fetch_optional(&mut *tx)
                        .await?;
                    match row {
                        Some(r) => Ok(server_from_row(&r)?),
                        None => {
                            let exists = sqlx::query("SELECT name FROM servers WHERE name=$1").bind(name).fetch_optional(&mut *tx).await?;
                            Err(TxErr::Store(match exists {
                                Some(_) => StoreError::Duplicate(format!("server {name:?} is already deregistered")),
                                None => StoreError::NotFound { what: "server", id: name.to_string() },
                            }))
                        }
                    }
                })
            }

            async fn insert_sealed_key(&self, key: &SealedKey) -> Result<SealedKey> {
                sqlx::query("INSERT INTO sealed_keys (name, sealed, kek_id, created_at) VALUES ($1,$2,$3,$4) ON CONFLICT (name) DO NOTHING")
                    .bind(&key.name)
                    .bind(&key.sealed)
                    .bind(&key.kek_id)
                    .bind(key.created_at)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                self.get_sealed_key(&key.name)
                    .await?
                    .ok_or_else(|| StoreError::Database(format!("sealed key {:?} vanished after insert", key.name)))
            }

            async fn get_sealed_key(&self, name: &str) -> Result<Option<SealedKey>> {
                let row = sqlx::query("SELECT name, sealed, kek_id, created_at FROM sealed_keys WHERE name=$1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.map(|r| {
                    Ok(SealedKey {
                        name: r.try_get("name").map_err(db_err)?,
                        sealed: r.try_get("sealed").map_err(db_err)?,
                        kek_id: r.try_get("kek_id").map_err(db_err)?,
                        created_at: r.try_get("created_at").map_err(db_err)?,
                    })
                })
                .transpose()
            }

            async fn change_revision(&self) -> Result<i64> {
                let row = sqlx::query("SELECT COALESCE(MAX(revision), 0) AS r FROM changes")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.try_get::<i64, _>("r").map_err(db_err)
            }

            async fn changes_since(&self, after: i64, limit: i64) -> Result<Vec<Change>> {
                let rows = sqlx::query("SELECT revision, kind, key, origin FROM changes WHERE revision > $1 ORDER BY revision LIMIT $2")
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        let kind: String = r.try_get("kind").map_err(db_err)?;
                        Ok(Change {
                            revision: r.try_get("revision").map_err(db_err)?,
                            kind: ChangeKind::parse(&kind)
                                .ok_or_else(|| StoreError::Corrupt(format!("unknown change kind {kind:?}")))?,
                            key: r.try_get("key").map_err(db_err)?,
                            origin: r.try_get("origin").map_err(db_err)?,
                        })
                    })
                    .collect()
            }

            async fn prune_changes(&self, keep: i64) -> Result<u64> {
                let done = sqlx::query("DELETE FROM changes WHERE revision <= (SELECT COALESCE(MAX(revision), 0) FROM changes) - $1")
                    .bind(keep.max(0))
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(done.rows_affected())
            }

            async fn append_audit(
                &self,
                events: &[lanyard_audit::Event],
            ) -> Result<Vec<lanyard_audit::Record>> {
                let mut last_err = None;
                for attempt in 0..AUDIT_RETRIES {
                    let result = async {
                        let mut tx = self.pool.begin_with($begin).await?;
                        let out = append_in_tx(&mut tx, events).await?;
                        tx.commit().await?;
                        Ok::<_, sqlx::Error>(out)
                    }
                    .await;
                    match result {
                        Ok(out) => return Ok(out),
                        Err(e) if is_retryable(&e) => last_err = Some(e),
                        Err(e) => return Err(db_err(e)),
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2 << attempt.min(6))).await;
                }
                Err(StoreError::Database(format!(
                    "could not append to the evidence log after {AUDIT_RETRIES} attempts: {}",
                    last_err.map(|e| e.to_string()).unwrap_or_default()
                )))
            }

            async fn audit_chain(&self) -> Result<lanyard_audit::Chain> {
                let last = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(match last {
                    None => lanyard_audit::Chain::default(),
                    Some(r) => lanyard_audit::Chain {
                        next_seq: to_u64(r.try_get::<i64, _>("seq").map_err(db_err)?)? + 1,
                        head: r.try_get::<String, _>("hash").map_err(db_err)?,
                    },
                })
            }

            async fn audit_records(&self) -> Result<Vec<lanyard_audit::Record>> {
                let rows = sqlx::query("SELECT seq, prev_hash, hash, time, kind, subject, event FROM audit_events ORDER BY seq")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        record_from_parts(
                            r.try_get::<i64, _>("seq").map_err(db_err)?,
                            r.try_get::<String, _>("prev_hash").map_err(db_err)?,
                            r.try_get::<String, _>("hash").map_err(db_err)?,
                            &r.try_get::<String, _>("event").map_err(db_err)?,
                            lanyard_audit::IndexColumns {
                                time: r.try_get::<i64, _>("time").map_err(db_err)?,
                                kind: r.try_get::<String, _>("kind").map_err(db_err)?,
                                subject: r.try_get::<Option<String>, _>("subject").map_err(db_err)?,
                            },
                        )
                    })
                    .collect()
            }

            async fn put_audit_checkpoint(&self, c: &lanyard_audit::Checkpoint) -> Result<()> {
                sqlx::query(
                    "INSERT INTO audit_checkpoints (size, head, time, key_id, signature) VALUES ($1,$2,$3,$4,$5) ON CONFLICT (size) DO NOTHING",
                )
                .bind(i64::try_from(c.size).unwrap_or(i64::MAX))
                .bind(&c.head)
                .bind(c.time)
                .bind(&c.key_id)
                .bind(&c.signature)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn audit_checkpoints(&self) -> Result<Vec<lanyard_audit::Checkpoint>> {
                let rows = sqlx::query("SELECT size, head, time, key_id, signature FROM audit_checkpoints ORDER BY size")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        Ok(lanyard_audit::Checkpoint {
                            size: to_u64(r.try_get::<i64, _>("size").map_err(db_err)?)?,
                            head: r.try_get::<String, _>("head").map_err(db_err)?,
                            time: r.try_get::<i64, _>("time").map_err(db_err)?,
                            key_id: r.try_get::<String, _>("key_id").map_err(db_err)?,
                            signature: r.try_get::<String, _>("signature").map_err(db_err)?,
                        })
                    })
                    .collect()
            }

            async fn put_policy(&self, kind: &str, body: &str, updated_by: &str, now: i64, audit: AuditFn<'_, StoredPolicy>) -> Result<StoredPolicy> {
                audited!(self, $begin, audit, change: |p: &StoredPolicy| Some((ChangeKind::Policy, p.kind.clone())), |tx| {
                    let row = sqlx::query(
                        "INSERT INTO policies (kind, body, version, updated_at, updated_by) VALUES ($1,$2,1,$3,$4) \
                         ON CONFLICT (kind) DO UPDATE SET body=excluded.body, version=policies.version+1, updated_at=excluded.updated_at, updated_by=excluded.updated_by \
                         RETURNING kind, body, version, updated_at, updated_by",
                    )
                    .bind(kind)
                    .bind(body)
                    .bind(now)
                    .bind(updated_by)
                    .fetch_one(&mut *tx)
                    .await?;
                    Ok(policy_from_row(&row)?)
                })
            }

            async fn get_policy(&self, kind: &str) -> Result<Option<StoredPolicy>> {
                let row = sqlx::query("SELECT kind, body, version, updated_at, updated_by FROM policies WHERE kind=$1")
                    .bind(kind)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(policy_from_row).transpose()
            }

            async fn revoke_jwt(&self, r: &RevokedJwt, audit: AuditFn<'_, RevokedJwt>) -> Result<RevokedJwt> {
                audited!(self, $begin, audit, change: |r: &RevokedJwt| Some((ChangeKind::DenyList, r.jti.clone())), |tx| {
                    sqlx::query("INSERT INTO revoked_jwts (jti, spiffe_id, expires_at, revoked_at, reason) VALUES ($1,$2,$3,$4,$5)")
                        .bind(&r.jti)
                        .bind(&r.spiffe_id)
                        .bind(r.expires_at)
                        .bind(r.revoked_at)
                        .bind(&r.reason)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| if is_unique_violation(&e) {
                            TxErr::Store(StoreError::Duplicate(format!("JWT-SVID {:?} is already revoked", r.jti)))
                        } else {
                            TxErr::Sql(e)
                        })?;
                    Ok(r.clone())
                })
            }

            async fn revoked_jwts(&self, now: i64) -> Result<Vec<RevokedJwt>> {
                let rows = sqlx::query("SELECT jti, spiffe_id, expires_at, revoked_at, reason FROM revoked_jwts WHERE expires_at > $1 ORDER BY jti")
                    .bind(now)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        Ok(RevokedJwt {
                            jti: r.try_get("jti").map_err(db_err)?,
                            spiffe_id: r.try_get("spiffe_id").map_err(db_err)?,
                            expires_at: r.try_get("expires_at").map_err(db_err)?,
                            revoked_at: r.try_get("revoked_at").map_err(db_err)?,
                            reason: r.try_get("reason").map_err(db_err)?,
                        })
                    })
                    .collect()
            }

            async fn create_exception(&self, e: &Exception, audit: AuditFn<'_, Exception>) -> Result<Exception> {
                let allowed = serde_json::to_string(&e.allowed).map_err(|x| StoreError::Corrupt(x.to_string()))?;
                audited!(self, $begin, audit, change: |e: &Exception| Some((ChangeKind::Exception, e.name.clone())), |tx| {
                    sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO exceptions ({EXCEPTION_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)")))
                        .bind(&e.name)
                        .bind(&e.owner)
                        .bind(&e.justification)
                        .bind(&allowed)
                        .bind(e.expires_at)
                        .bind(e.created_at)
                        .bind(&e.created_by)
                        .bind(e.revoked_at)
                        .bind(&e.sealed)
                        .execute(&mut *tx)
                        .await
                        .map_err(|x| if is_unique_violation(&x) {
                            TxErr::Store(StoreError::Duplicate(format!("an exception named {:?} already exists; pick another name or revoke it first", e.name)))
                        } else {
                            TxErr::Sql(x)
                        })?;
                    Ok(e.clone())
                })
            }

            async fn get_exception(&self, name: &str) -> Result<Option<Exception>> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {EXCEPTION_COLUMNS} FROM exceptions WHERE name=$1")))
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(exception_from_row).transpose()
            }

            async fn list_exceptions(&self) -> Result<Vec<Exception>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {EXCEPTION_COLUMNS} FROM exceptions ORDER BY name")))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                rows.iter().map(exception_from_row).collect()
            }

            async fn revoke_exception(&self, name: &str, now: i64, audit: AuditFn<'_, Exception>) -> Result<Exception> {
                audited!(self, $begin, audit, change: |e: &Exception| Some((ChangeKind::Exception, e.name.clone())), |tx| {
                    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "UPDATE exceptions SET revoked_at=$2 WHERE name=$1 AND revoked_at IS NULL RETURNING {EXCEPTION_COLUMNS}"
                    )))
                    .bind(name)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match row {
                        Some(r) => Ok(exception_from_row(&r)?),
                        None => Err(TxErr::Store(StoreError::NotFound { what: "unrevoked exception", id: name.to_string() })),
                    }
                })
            }

            async fn identity_activity(&self) -> Result<Vec<Activity>> {
                let issued = sqlx::query(
                    "SELECT subject, MAX(time) AS last FROM audit_events \
                     WHERE subject IS NOT NULL AND kind IN ('x509_svid_issued', 'jwt_svid_issued') GROUP BY subject",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                let delivered = sqlx::query(
                    "SELECT subject, event FROM audit_events WHERE seq IN \
                     (SELECT MAX(seq) FROM audit_events WHERE subject IS NOT NULL AND kind = 'workload_svid_delivered' GROUP BY subject)",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                let mut out: std::collections::BTreeMap<String, Activity> = Default::default();
                for r in &issued {
                    let subject: String = r.try_get("subject").map_err(db_err)?;
                    let last: i64 = r.try_get("last").map_err(db_err)?;
                    out.entry(subject.clone())
                        .or_insert_with(|| Activity { subject, last_issued_ms: None, last_delivery: None })
                        .last_issued_ms = Some(last);
                }
                for r in &delivered {
                    let subject: String = r.try_get("subject").map_err(db_err)?;
                    let event: String = r.try_get("event").map_err(db_err)?;
                    let ev = serde_json::from_str(&event).ok();
                    out.entry(subject.clone())
                        .or_insert_with(|| Activity { subject, last_issued_ms: None, last_delivery: None })
                        .last_delivery = ev;
                }
                Ok(out.into_values().collect())
            }
        }
    };
}

/// The embedded SQLite backend (one file, WAL, synchronous=FULL).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// This server's name, recorded with each change it appends to the feed.
    origin: std::sync::Arc<str>,
}

impl SqliteStore {
    /// Open (creating if missing) the database file at `path` and run migrations.
    pub async fn open(path: &std::path::Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        SQLITE_MIGRATIONS
            .run(&pool)
            .await
            .map_err(|e| StoreError::Open(format!("migrating {}: {e}", path.display())))?;
        Ok(Self {
            pool,
            origin: std::sync::Arc::from(""),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// The PostgreSQL backend, for several servers sharing one database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// This server's name, recorded with each change it appends to the feed.
    origin: std::sync::Arc<str>,
}

/// Longest a statement waits for a PostgreSQL connection before it fails as
/// [`StoreError::Unavailable`].
pub const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

impl PgStore {
    /// Connect to `url` (`postgres://user@host:port/db`) and run migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url).map_err(|e| {
            StoreError::Open(format!(
                "bad database URL: {e}; expected postgres://user[:password]@host[:port]/database"
            ))
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(PG_ACQUIRE_TIMEOUT)
            .connect_with(opts)
            .await
            .map_err(|e| StoreError::Open(format!("cannot connect to PostgreSQL: {e}")))?;
        PG_MIGRATIONS
            .run(&pool)
            .await
            .map_err(|e| StoreError::Open(format!("migrating PostgreSQL: {e}")))?;
        Ok(Self {
            pool,
            origin: std::sync::Arc::from(""),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Listen to the change feed's NOTIFY channel on a connection of its own.
    pub async fn listen_changes(&self) -> Result<ChangeListener> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool)
            .await
            .map_err(db_err)?;
        listener.listen(CHANGE_CHANNEL).await.map_err(db_err)?;
        Ok(ChangeListener { listener })
    }
}

/// Notifications of the change feed (PostgreSQL `LISTEN lanyard_changes`).
#[derive(Debug)]
pub struct ChangeListener {
    listener: sqlx::postgres::PgListener,
}

/// What a [`ChangeListener`] heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// A change with this revision was committed.
    Revision(i64),
    /// The connection was lost and re-established (or will be on the next call):
    /// notifications may have been missed; read the feed to catch up.
    Reconnected,
}

impl ChangeListener {
    /// The next notification. After a lost connection this says so once (the
    /// listener reconnects and listens again on the next call); an error means
    /// reconnecting failed (the database is away: retry later).
    pub async fn next(&mut self) -> Result<Heard> {
        match self.listener.try_recv().await.map_err(db_err)? {
            None => Ok(Heard::Reconnected),
            Some(n) => Ok(n
                .payload()
                .parse::<i64>()
                .map(Heard::Revision)
                // A payload that is not ours still says something changed.
                .unwrap_or(Heard::Reconnected)),
        }
    }
}

mod sqlite_impl {
    use super::*;
    impl_store!(
        SqliteStore,
        sqlx::sqlite::SqliteRow,
        sqlx::Sqlite,
        "BEGIN IMMEDIATE",
        false
    );
}

mod pg_impl {
    use super::*;
    impl_store!(
        PgStore,
        sqlx::postgres::PgRow,
        sqlx::Postgres,
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        true
    );
}

/// Either backend, chosen at run time from the configuration.
#[derive(Debug, Clone)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl AnyStore {
    /// The same store, recording `name` as the origin of the changes it appends to
    /// the change feed.
    pub fn with_origin(self, name: &str) -> Self {
        let origin: std::sync::Arc<str> = std::sync::Arc::from(name);
        match self {
            Self::Sqlite(s) => Self::Sqlite(SqliteStore { origin, ..s }),
            Self::Postgres(s) => Self::Postgres(PgStore { origin, ..s }),
        }
    }

    /// A listener to other servers' changes: PostgreSQL only (a SQLite database has
    /// one server, which knows its own changes).
    pub async fn listen_changes(&self) -> Option<Result<ChangeListener>> {
        match self {
            Self::Sqlite(_) => None,
            Self::Postgres(s) => Some(s.listen_changes().await),
        }
    }

    /// Whether the database answers a trivial query within `within`; the error
    /// says why not (unreachable, or no answer in time).
    pub async fn ping(&self, within: Duration) -> Result<()> {
        let q = async {
            match self {
                Self::Sqlite(s) => sqlx::query("SELECT 1").execute(s.pool()).await.map(|_| ()),
                Self::Postgres(s) => sqlx::query("SELECT 1").execute(s.pool()).await.map(|_| ()),
            }
        };
        match tokio::time::timeout(within, q).await {
            Ok(r) => r.map_err(db_err),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {} ms",
                within.as_millis()
            ))),
        }
    }

    /// `postgres://…` connects to PostgreSQL; anything else is a SQLite file path.
    pub async fn open(location: &str) -> Result<Self> {
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            Ok(Self::Postgres(PgStore::connect(location).await?))
        } else {
            let path = location.strip_prefix("sqlite://").unwrap_or(location);
            Ok(Self::Sqlite(
                SqliteStore::open(std::path::Path::new(path)).await?,
            ))
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $e.await,
            AnyStore::Postgres($s) => $e.await,
        }
    };
}

impl Store for AnyStore {
    async fn create_entry(
        &self,
        spec: &EntrySpec,
        now: i64,
        a: AuditFn<'_, Entry>,
    ) -> Result<Entry> {
        delegate!(self, s => s.create_entry(spec, now, a))
    }
    async fn update_entry(
        &self,
        id: &str,
        spec: &EntrySpec,
        rev: Option<i64>,
        now: i64,
        a: AuditFn<'_, Entry>,
    ) -> Result<Entry> {
        delegate!(self, s => s.update_entry(id, spec, rev, now, a))
    }
    async fn delete_entry(&self, id: &str, a: AuditFn<'_, Entry>) -> Result<Entry> {
        delegate!(self, s => s.delete_entry(id, a))
    }
    async fn create_entries(
        &self,
        specs: &[EntrySpec],
        now: i64,
        a: AuditFn<'_, BatchOutcome>,
    ) -> Result<BatchOutcome> {
        delegate!(self, s => s.create_entries(specs, now, a))
    }
    async fn update_entries(
        &self,
        updates: &[EntryUpdate],
        now: i64,
        a: AuditFn<'_, BatchOutcome>,
    ) -> Result<BatchOutcome> {
        delegate!(self, s => s.update_entries(updates, now, a))
    }
    async fn delete_entries(
        &self,
        ids: &[String],
        a: AuditFn<'_, BatchOutcome>,
    ) -> Result<BatchOutcome> {
        delegate!(self, s => s.delete_entries(ids, a))
    }
    async fn get_entry(&self, id: &str) -> Result<Option<Entry>> {
        delegate!(self, s => s.get_entry(id))
    }
    async fn list_entries(&self) -> Result<Vec<Entry>> {
        delegate!(self, s => s.list_entries())
    }
    async fn list_entries_by_parent(&self, parent: &SpiffeId) -> Result<Vec<Entry>> {
        delegate!(self, s => s.list_entries_by_parent(parent))
    }
    async fn upsert_node(&self, node: &Node) -> Result<()> {
        delegate!(self, s => s.upsert_node(node))
    }
    async fn get_node(&self, id: &SpiffeId) -> Result<Option<Node>> {
        delegate!(self, s => s.get_node(id))
    }
    async fn list_nodes(&self) -> Result<Vec<Node>> {
        delegate!(self, s => s.list_nodes())
    }
    async fn set_node_svid(
        &self,
        id: &SpiffeId,
        presented_serial: &str,
        serial: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<Node> {
        delegate!(self, s => s.set_node_svid(id, presented_serial, serial, expires_at, now))
    }
    async fn set_node_holdings(&self, id: &SpiffeId, h: &NodeHoldings) -> Result<()> {
        delegate!(self, s => s.set_node_holdings(id, h))
    }
    async fn set_node_banned(
        &self,
        id: &SpiffeId,
        banned: bool,
        now: i64,
        a: AuditFn<'_, Node>,
    ) -> Result<Node> {
        delegate!(self, s => s.set_node_banned(id, banned, now, a))
    }
    async fn promote_node_serial(&self, id: &SpiffeId, serial: &str) -> Result<()> {
        delegate!(self, s => s.promote_node_serial(id, serial))
    }
    async fn record_superseded_svid(
        &self,
        id: &SpiffeId,
        now: i64,
        a: AuditFn<'_, Node>,
    ) -> Result<Node> {
        delegate!(self, s => s.record_superseded_svid(id, now, a))
    }
    async fn delete_node(&self, id: &SpiffeId, a: AuditFn<'_, Node>) -> Result<Node> {
        delegate!(self, s => s.delete_node(id, a))
    }
    async fn create_join_token(
        &self,
        hash: &str,
        token: &JoinToken,
        now: i64,
        a: AuditFn<'_, ()>,
    ) -> Result<()> {
        delegate!(self, s => s.create_join_token(hash, token, now, a))
    }
    async fn consume_join_token(&self, hash: &str) -> Result<Option<JoinToken>> {
        delegate!(self, s => s.consume_join_token(hash))
    }
    async fn record_attestation_token(
        &self,
        replay_key: &str,
        attestor: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool> {
        delegate!(self, s => s.record_attestation_token(replay_key, attestor, expires_at, now))
    }
    async fn get_bundle(&self, td: &str) -> Result<Option<StoredBundle>> {
        delegate!(self, s => s.get_bundle(td))
    }
    async fn put_bundle(
        &self,
        td: &str,
        document: &str,
        now: i64,
        a: AuditFn<'_, BundlePut>,
    ) -> Result<BundlePut> {
        delegate!(self, s => s.put_bundle(td, document, now, a))
    }
    async fn register_server(
        &self,
        server: &ServerRecord,
        a: AuditFn<'_, ServerRegistration>,
    ) -> Result<ServerRegistration> {
        delegate!(self, s => s.register_server(server, a))
    }
    async fn list_servers(&self) -> Result<Vec<ServerRecord>> {
        delegate!(self, s => s.list_servers())
    }
    async fn deregister_server(
        &self,
        name: &str,
        now: i64,
        a: AuditFn<'_, ServerRecord>,
    ) -> Result<ServerRecord> {
        delegate!(self, s => s.deregister_server(name, now, a))
    }
    async fn insert_sealed_key(&self, key: &SealedKey) -> Result<SealedKey> {
        delegate!(self, s => s.insert_sealed_key(key))
    }
    async fn get_sealed_key(&self, name: &str) -> Result<Option<SealedKey>> {
        delegate!(self, s => s.get_sealed_key(name))
    }
    async fn change_revision(&self) -> Result<i64> {
        delegate!(self, s => s.change_revision())
    }
    async fn changes_since(&self, after: i64, limit: i64) -> Result<Vec<Change>> {
        delegate!(self, s => s.changes_since(after, limit))
    }
    async fn prune_changes(&self, keep: i64) -> Result<u64> {
        delegate!(self, s => s.prune_changes(keep))
    }
    async fn append_audit(
        &self,
        events: &[lanyard_audit::Event],
    ) -> Result<Vec<lanyard_audit::Record>> {
        delegate!(self, s => s.append_audit(events))
    }
    async fn audit_records(&self) -> Result<Vec<lanyard_audit::Record>> {
        delegate!(self, s => s.audit_records())
    }

    async fn audit_chain(&self) -> Result<lanyard_audit::Chain> {
        delegate!(self, s => s.audit_chain())
    }
    async fn put_audit_checkpoint(&self, c: &lanyard_audit::Checkpoint) -> Result<()> {
        delegate!(self, s => s.put_audit_checkpoint(c))
    }
    async fn audit_checkpoints(&self) -> Result<Vec<lanyard_audit::Checkpoint>> {
        delegate!(self, s => s.audit_checkpoints())
    }
    async fn put_policy(
        &self,
        kind: &str,
        body: &str,
        by: &str,
        now: i64,
        a: AuditFn<'_, StoredPolicy>,
    ) -> Result<StoredPolicy> {
        delegate!(self, s => s.put_policy(kind, body, by, now, a))
    }
    async fn get_policy(&self, kind: &str) -> Result<Option<StoredPolicy>> {
        delegate!(self, s => s.get_policy(kind))
    }
    async fn revoke_jwt(&self, r: &RevokedJwt, a: AuditFn<'_, RevokedJwt>) -> Result<RevokedJwt> {
        delegate!(self, s => s.revoke_jwt(r, a))
    }
    async fn revoked_jwts(&self, now: i64) -> Result<Vec<RevokedJwt>> {
        delegate!(self, s => s.revoked_jwts(now))
    }
    async fn create_exception(
        &self,
        e: &Exception,
        a: AuditFn<'_, Exception>,
    ) -> Result<Exception> {
        delegate!(self, s => s.create_exception(e, a))
    }
    async fn get_exception(&self, name: &str) -> Result<Option<Exception>> {
        delegate!(self, s => s.get_exception(name))
    }
    async fn list_exceptions(&self) -> Result<Vec<Exception>> {
        delegate!(self, s => s.list_exceptions())
    }
    async fn revoke_exception(
        &self,
        name: &str,
        now: i64,
        a: AuditFn<'_, Exception>,
    ) -> Result<Exception> {
        delegate!(self, s => s.revoke_exception(name, now, a))
    }
    async fn identity_activity(&self) -> Result<Vec<Activity>> {
        delegate!(self, s => s.identity_activity())
    }
}
