//! Lanyard's datastore: one [`Store`] trait, two backends (SQLite, embedded and the
//! default; PostgreSQL, for several servers sharing one database), per-dialect
//! migrations, and a conformance suite (`tests/conformance.rs`) that runs unchanged
//! against both.
//!
//! Every method that changes state returns only after the change is committed:
//! SQLite runs in WAL mode with `synchronous=FULL`, PostgreSQL with its default
//! synchronous commit.

use std::future::Future;

use lanyard_core::{Selector, SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};

mod group;
mod sql;

pub use group::AuditQueue;
pub use sql::{AnyStore, CHANGE_CHANNEL, ChangeListener, Heard, PgStore, SqliteStore};

/// Errors of the datastore; each says what happened in terms of Lanyard objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Duplicate(String),
    #[error("no {what} with id {id:?}")]
    NotFound { what: &'static str, id: String },
    #[error(
        "the {what} {id:?} was changed concurrently (revision {actual}, expected {expected}); re-read it and retry"
    )]
    Conflict {
        what: &'static str,
        id: String,
        expected: i64,
        actual: i64,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(String),
    /// The database cannot be reached (connection refused or lost, pool timed out,
    /// server shutting down): retry later.
    #[error("the datastore is unreachable: {0}")]
    Unavailable(String),
    #[error("cannot open the datastore: {0}")]
    Open(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What an admin asks for when creating or updating a registration entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntrySpec {
    pub spiffe_id: SpiffeId,
    pub parent_id: SpiffeId,
    pub selectors: Vec<Selector>,
    pub owner: String,
    pub environment: Option<String>,
    /// Seconds; 0 means the server default.
    pub x509_ttl: u64,
    /// Seconds; 0 means the server default.
    pub jwt_ttl: u64,
    pub dns_names: Vec<String>,
    pub hint: Option<String>,
    pub admin: bool,
    pub downstream: bool,
    /// Unix seconds after which the entry issues nothing.
    pub expires_at: Option<i64>,
    /// Trust domains whose bundles this identity receives (stored and shown;
    /// not yet enforced).
    #[serde(default)]
    pub federates_with: Vec<TrustDomain>,
}

impl EntrySpec {
    /// Selectors sorted and de-duplicated: the canonical form that is stored, so that
    /// the same set in another order is recognized as a duplicate.
    pub fn canonical_selectors(&self) -> Vec<Selector> {
        let mut s = self.selectors.clone();
        s.sort();
        s.dedup();
        s
    }
}

/// One change of a batch update: entry `id` gets `spec` (all fields replaced),
/// refused if it is no longer at `expected_revision` (when given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryUpdate {
    pub id: String,
    pub spec: EntrySpec,
    pub expected_revision: Option<i64>,
}

/// The outcome of a batch, one per input in input order: the stored (or deleted)
/// entry, or why that one was not written (`Duplicate`, `NotFound`, `Conflict`).
/// A database failure fails the whole batch instead (nothing is written).
pub type BatchOutcome = Vec<Result<Entry>>;

/// A stored registration entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    #[serde(flatten)]
    pub spec: EntrySpec,
    /// Starts at 1, incremented by every update.
    pub revision: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An attested node (agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub spiffe_id: SpiffeId,
    pub attestation_type: String,
    pub selectors: Vec<Selector>,
    /// Serial (hex) of the agent SVID currently issued to it.
    pub serial: String,
    /// Expiry of that SVID.
    pub expires_at: i64,
    pub banned: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// What the agent last reported holding (for CA taint).
    #[serde(default)]
    pub holdings: NodeHoldings,
    /// Serial of the agent SVID before the last renewal ("" when none): accepted
    /// until the agent first presents `serial`, then cleared.
    #[serde(default)]
    pub previous_serial: String,
    /// How often an agent SVID that is neither `serial` nor `previous_serial` was
    /// presented (a copied agent SVID: a possible clone), and when last.
    #[serde(default)]
    pub superseded_count: i64,
    #[serde(default)]
    pub superseded_at: Option<i64>,
}

/// The CA certificates that signed SVIDs an agent holds: Subject Key Identifier
/// (hex) -> latest expiry (unix seconds) of such an SVID; as of `reported_at`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHoldings {
    pub reported_at: i64,
    pub authorities: std::collections::BTreeMap<String, i64>,
}

/// A join token as stored (only its hash is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub spiffe_id: Option<SpiffeId>,
    pub expires_at: i64,
}

/// A stored bundle document and its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBundle {
    pub sequence: u64,
    pub document: String,
}

/// The result of [`Store::put_bundle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundlePut {
    /// The stored document's sequence.
    pub sequence: u64,
    /// Whether the document differed from the stored one (and was stored).
    pub changed: bool,
}

/// What kind of object a change in the change feed is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Entry,
    Node,
    Policy,
    DenyList,
    Exception,
    Bundle,
    Server,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 7] = [
        Self::Entry,
        Self::Node,
        Self::Policy,
        Self::DenyList,
        Self::Exception,
        Self::Bundle,
        Self::Server,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Entry => "entry",
            Self::Node => "node",
            Self::Policy => "policy",
            Self::DenyList => "deny_list",
            Self::Exception => "exception",
            Self::Bundle => "bundle",
            Self::Server => "server",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// One committed change in the change feed: other servers on the database read
/// these (woken by PostgreSQL NOTIFY, or after a reconnect) to refresh what they
/// cache. Revisions increase in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: i64,
    pub kind: ChangeKind,
    /// The changed object: entry id, agent SPIFFE ID, policy kind, jti, exception
    /// name, trust domain, server name.
    pub key: String,
    /// The name of the server that wrote it ("" when not known).
    pub origin: String,
}

/// Whether a published authority is an X.509 CA certificate or a JWT key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorityKind {
    X509,
    Jwt,
}

/// One CA certificate or JWT key a server publishes for the trust domain's bundle.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublishedAuthority {
    pub kind: AuthorityKind,
    /// The certificate's Subject Key Identifier (hex), or the JWT key id.
    pub id: String,
    /// `prepared`, `active`, `retired` or `tainted`.
    pub state: String,
    /// Unix seconds after which it is no longer published.
    pub not_after: i64,
    /// The certificate (base64 DER) or the public JWK (JSON).
    pub public: String,
}

/// A server sharing the datastore and what it publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// The server's name (its data dir's `server-id`, as events' `server_id`).
    pub name: String,
    /// Its agent API address, for operators.
    pub address: String,
    pub authorities: Vec<PublishedAuthority>,
    /// The latest `not_after` among its authorities.
    pub expires_at: i64,
    pub started_at: i64,
    /// Its last heartbeat.
    pub seen_at: i64,
    /// Set by `lanyard server deregister`: its authorities leave the bundle.
    pub deregistered_at: Option<i64>,
}

/// The result of [`Store::register_server`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRegistration {
    /// The row as stored (a deregistered server stays deregistered).
    pub record: ServerRecord,
    /// The server had no row before.
    pub joined: bool,
    /// Its authorities differ from the stored ones (and were stored).
    pub authorities_changed: bool,
}

/// A key every server needs (secrets-sealing, token-signing, audit checkpoint),
/// sealed under the servers' key-encryption key; the datastore never sees it in
/// the clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKey {
    /// `secrets`, `token-signing`, `audit/<server>`.
    pub name: String,
    /// base64url(nonce || ciphertext || tag), the name as associated data.
    pub sealed: String,
    /// Which key-encryption key sealed it (first 8 bytes of its SHA-256, hex).
    pub kek_id: String,
    pub created_at: i64,
}

/// A stored policy set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPolicy {
    /// `registration` or `authz`.
    pub kind: String,
    /// Cedar text.
    pub body: String,
    /// Starts at 1, incremented by every change.
    pub version: i64,
    pub updated_at: i64,
    pub updated_by: String,
}

/// A revoked JWT-SVID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedJwt {
    pub jti: String,
    pub spiffe_id: Option<String>,
    /// Kept on the deny-list until then (the token's own expiry).
    pub expires_at: i64,
    pub revoked_at: i64,
    pub reason: String,
}

/// A time-boxed exception for a legacy static secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exception {
    pub name: String,
    pub owner: String,
    pub justification: String,
    /// Identities the secret may be released to.
    pub allowed: Vec<SpiffeId>,
    pub expires_at: i64,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
    /// The sealed secret (base64url nonce || ciphertext || tag); never logged.
    #[serde(skip_serializing)]
    pub sealed: String,
}

/// What the evidence log says an identity last did.
#[derive(Debug, Clone, PartialEq)]
pub struct Activity {
    pub subject: String,
    /// Unix milliseconds of the newest X509-SVID or JWT-SVID issuance.
    pub last_issued_ms: Option<i64>,
    /// The newest `workload_svid_delivered` event.
    pub last_delivery: Option<lanyard_audit::Event>,
}

/// Expired rows of used node-attestation tokens that one
/// [`Store::record_attestation_token`] call deletes at most.
pub const REPLAY_PRUNE_BATCH: i64 = 1000;

/// Builds the evidence-log events for a state change from its result. The store
/// appends them in the same transaction as the change, so a change is never stored
/// without its record (nor a record without its change). Called again if the
/// transaction is retried.
pub type AuditFn<'a, T> = &'a (dyn Fn(&T) -> Vec<lanyard_audit::Event> + Send + Sync);

/// The datastore. Implemented by [`SqliteStore`], [`PgStore`] and [`AnyStore`].
pub trait Store: Send + Sync {
    /// Store a new entry; refuses an identical (SPIFFE ID, parent, selectors) entry.
    fn create_entry(
        &self,
        spec: &EntrySpec,
        now: i64,
        audit: AuditFn<'_, Entry>,
    ) -> impl Future<Output = Result<Entry>> + Send;

    /// Replace an entry's fields. With `expected_revision`, refuses if the entry has
    /// changed since that revision.
    fn update_entry(
        &self,
        id: &str,
        spec: &EntrySpec,
        expected_revision: Option<i64>,
        now: i64,
        audit: AuditFn<'_, Entry>,
    ) -> impl Future<Output = Result<Entry>> + Send;

    /// Delete an entry, returning what was deleted.
    fn delete_entry(
        &self,
        id: &str,
        audit: AuditFn<'_, Entry>,
    ) -> impl Future<Output = Result<Entry>> + Send;

    /// Store new entries in one transaction. Each spec is decided on its own: one
    /// that duplicates a stored entry (or an earlier one of the batch) is reported
    /// as `Duplicate` in its place and the rest are still written. `audit` gets the
    /// outcome and returns the events of the written entries (one each), appended
    /// in the same transaction.
    fn create_entries(
        &self,
        specs: &[EntrySpec],
        now: i64,
        audit: AuditFn<'_, BatchOutcome>,
    ) -> impl Future<Output = Result<BatchOutcome>> + Send;

    /// Replace entries' fields in one transaction; per entry `NotFound`,
    /// `Conflict` (revision) or `Duplicate` (it would collide with another entry),
    /// the rest written. Events as for [`Store::create_entries`].
    fn update_entries(
        &self,
        updates: &[EntryUpdate],
        now: i64,
        audit: AuditFn<'_, BatchOutcome>,
    ) -> impl Future<Output = Result<BatchOutcome>> + Send;

    /// Delete entries in one transaction, returning what was deleted; an unknown
    /// id is `NotFound` in its place. Events as for [`Store::create_entries`].
    fn delete_entries(
        &self,
        ids: &[String],
        audit: AuditFn<'_, BatchOutcome>,
    ) -> impl Future<Output = Result<BatchOutcome>> + Send;

    fn get_entry(&self, id: &str) -> impl Future<Output = Result<Option<Entry>>> + Send;

    /// All entries, ordered by SPIFFE ID then id.
    fn list_entries(&self) -> impl Future<Output = Result<Vec<Entry>>> + Send;

    /// Entries whose parent is `parent`.
    fn list_entries_by_parent(
        &self,
        parent: &SpiffeId,
    ) -> impl Future<Output = Result<Vec<Entry>>> + Send;

    /// Record a freshly attested node (or re-attestation of a known one).
    fn upsert_node(&self, node: &Node) -> impl Future<Output = Result<()>> + Send;

    fn get_node(&self, id: &SpiffeId) -> impl Future<Output = Result<Option<Node>>> + Send;

    fn list_nodes(&self) -> impl Future<Output = Result<Vec<Node>>> + Send;

    /// Record the agent SVID just issued to a node (renewal) to a caller that
    /// presented `presented_serial`, which stays accepted as `previous_serial` until
    /// the new one is seen.
    fn set_node_svid(
        &self,
        id: &SpiffeId,
        presented_serial: &str,
        serial: &str,
        expires_at: i64,
        now: i64,
    ) -> impl Future<Output = Result<Node>> + Send;

    /// The agent presented its current SVID: stop accepting the previous one.
    fn promote_node_serial(
        &self,
        id: &SpiffeId,
        serial: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// A superseded agent SVID was presented: count it, with its event.
    fn record_superseded_svid(
        &self,
        id: &SpiffeId,
        now: i64,
        audit: AuditFn<'_, Node>,
    ) -> impl Future<Output = Result<Node>> + Send;

    /// Record what an agent reported holding.
    fn set_node_holdings(
        &self,
        id: &SpiffeId,
        holdings: &NodeHoldings,
    ) -> impl Future<Output = Result<()>> + Send;

    fn set_node_banned(
        &self,
        id: &SpiffeId,
        banned: bool,
        now: i64,
        audit: AuditFn<'_, Node>,
    ) -> impl Future<Output = Result<Node>> + Send;

    /// Forget a node (evict): it must attest again.
    fn delete_node(
        &self,
        id: &SpiffeId,
        audit: AuditFn<'_, Node>,
    ) -> impl Future<Output = Result<Node>> + Send;

    /// Store a join token by its hash.
    fn create_join_token(
        &self,
        token_hash: &str,
        token: &JoinToken,
        now: i64,
        audit: AuditFn<'_, ()>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Atomically remove and return a join token: a token can be consumed once.
    fn consume_join_token(
        &self,
        token_hash: &str,
    ) -> impl Future<Output = Result<Option<JoinToken>>> + Send;

    /// Record that the node-attestation token identified by `replay_key` (the hex
    /// SHA-256 the caller computes from it; the token itself is never stored) was
    /// used by `attestor` (the attestor's name, kept for operators), and say whether
    /// this is its first use within its lifetime.
    ///
    /// Returns `true` when the token was recorded (no row for the key, or only one
    /// whose `expires_at <= now`, which is replaced): the caller may accept it.
    /// Returns `false` when a live row (`expires_at > now`) already exists: a replay,
    /// which the caller refuses. The check and the record are one atomic statement,
    /// so of any number of concurrent callers with the same key, on one server or on
    /// several sharing a PostgreSQL database, exactly one gets `true`; `true` is
    /// returned only after the record is committed. An error records nothing and
    /// says nothing about the token (the caller refuses it: fail closed).
    ///
    /// `expires_at` is the token's own expiry (unix seconds): the row is kept until
    /// then, so the caller must have refused tokens already expired at `now` (a row
    /// with `expires_at <= now` protects nothing). `replay_key` must be non-empty;
    /// the store does not validate it (an empty key would make every such token a
    /// replay of the first, which fails closed).
    ///
    /// Each call also deletes up to [`REPLAY_PRUNE_BATCH`] expired rows (oldest
    /// first); pruning that loses a race with another server's pruning is skipped.
    fn record_attestation_token(
        &self,
        replay_key: &str,
        attestor: &str,
        expires_at: i64,
        now: i64,
    ) -> impl Future<Output = Result<bool>> + Send;

    fn get_bundle(
        &self,
        trust_domain: &str,
    ) -> impl Future<Output = Result<Option<StoredBundle>>> + Send;

    /// Store `document` as the trust domain's bundle if it differs from the stored
    /// one: the sequence then increases by one (starting at 1) and the change enters
    /// the change feed. Servers that compute the same document concurrently store it
    /// once. `audit` sees whether it changed.
    fn put_bundle(
        &self,
        trust_domain: &str,
        document: &str,
        now: i64,
        audit: AuditFn<'_, BundlePut>,
    ) -> impl Future<Output = Result<BundlePut>> + Send;

    /// Publish a server's authorities and heartbeat (insert or update by name). A
    /// deregistered server's row keeps its old authorities and stays deregistered.
    /// A change of authorities enters the change feed.
    fn register_server(
        &self,
        server: &ServerRecord,
        audit: AuditFn<'_, ServerRegistration>,
    ) -> impl Future<Output = Result<ServerRegistration>> + Send;

    /// Every server that ever registered, by name.
    fn list_servers(&self) -> impl Future<Output = Result<Vec<ServerRecord>>> + Send;

    /// Mark a server deregistered (its authorities leave the bundle). Unknown:
    /// `NotFound`; already deregistered: `Duplicate`.
    fn deregister_server(
        &self,
        name: &str,
        now: i64,
        audit: AuditFn<'_, ServerRecord>,
    ) -> impl Future<Output = Result<ServerRecord>> + Send;

    /// Store a sealed key unless one of that name exists; returns the stored one
    /// (the first writer's, when servers race).
    fn insert_sealed_key(&self, key: &SealedKey) -> impl Future<Output = Result<SealedKey>> + Send;

    fn get_sealed_key(&self, name: &str) -> impl Future<Output = Result<Option<SealedKey>>> + Send;

    /// The newest revision of the change feed (0 when empty).
    fn change_revision(&self) -> impl Future<Output = Result<i64>> + Send;

    /// Changes after revision `after`, oldest first, at most `limit`.
    fn changes_since(
        &self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Change>>> + Send;

    /// Delete all but the newest `keep` changes; returns how many were deleted.
    fn prune_changes(&self, keep: i64) -> impl Future<Output = Result<u64>> + Send;

    /// Append events to the evidence log, chained after the last stored record, in
    /// one transaction (concurrent appenders retry). Returns the stored records.
    fn append_audit(
        &self,
        events: &[lanyard_audit::Event],
    ) -> impl Future<Output = Result<Vec<lanyard_audit::Record>>> + Send;

    /// Every record of the evidence log, in sequence order.
    fn audit_records(&self) -> impl Future<Output = Result<Vec<lanyard_audit::Record>>> + Send;

    /// The writer's view of the log (next sequence number and head hash) without
    /// reading the records: what checkpoints sign.
    fn audit_chain(&self) -> impl Future<Output = Result<lanyard_audit::Chain>> + Send;

    fn put_audit_checkpoint(
        &self,
        checkpoint: &lanyard_audit::Checkpoint,
    ) -> impl Future<Output = Result<()>> + Send;

    fn audit_checkpoints(
        &self,
    ) -> impl Future<Output = Result<Vec<lanyard_audit::Checkpoint>>> + Send;

    /// Replace the policy set of `kind` (version increases by one).
    fn put_policy(
        &self,
        kind: &str,
        body: &str,
        updated_by: &str,
        now: i64,
        audit: AuditFn<'_, StoredPolicy>,
    ) -> impl Future<Output = Result<StoredPolicy>> + Send;

    fn get_policy(&self, kind: &str) -> impl Future<Output = Result<Option<StoredPolicy>>> + Send;

    /// Put a jti on the deny-list; a jti already there is a `Duplicate`.
    fn revoke_jwt(
        &self,
        r: &RevokedJwt,
        audit: AuditFn<'_, RevokedJwt>,
    ) -> impl Future<Output = Result<RevokedJwt>> + Send;

    /// Revoked JWTs that have not expired yet at `now`.
    fn revoked_jwts(&self, now: i64) -> impl Future<Output = Result<Vec<RevokedJwt>>> + Send;

    /// Store a new exception; an existing name is a `Duplicate`.
    fn create_exception(
        &self,
        e: &Exception,
        audit: AuditFn<'_, Exception>,
    ) -> impl Future<Output = Result<Exception>> + Send;

    fn get_exception(&self, name: &str) -> impl Future<Output = Result<Option<Exception>>> + Send;

    /// All exceptions, by name.
    fn list_exceptions(&self) -> impl Future<Output = Result<Vec<Exception>>> + Send;

    /// Mark an exception revoked (it releases nothing afterwards).
    fn revoke_exception(
        &self,
        name: &str,
        now: i64,
        audit: AuditFn<'_, Exception>,
    ) -> impl Future<Output = Result<Exception>> + Send;

    /// Per identity: newest issuance and newest delivery to a workload, from the
    /// evidence log.
    fn identity_activity(&self) -> impl Future<Output = Result<Vec<Activity>>> + Send;
}

/// A random identifier (32 hex characters) for new entries.
pub fn new_id() -> Result<String> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|e| StoreError::Database(format!("random: {e}")))?;
    Ok(hex::encode(b))
}
