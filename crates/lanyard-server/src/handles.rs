//! Narrow handles on the server's state. Each listener's service holds only the
//! handles it touches, so its signature shows what it may read or change:
//!
//! - [`Authority`]: the CA (signing keys, rotation slots, the key file) and the
//!   server's own TLS SVID.
//! - [`Publication`]: the trust bundle as published to agents and TLS verifiers,
//!   with its sequence, and the federated bundles.
//! - [`AuditSink`]: stamps evidence events and appends them to the tamper-evident
//!   log (group commit), and signs checkpoints.
//! - [`PolicyCache`]: compiled policy sets by kind and stored version.
//! - [`Changes`]: the change signal that wakes pushed streams and invalidates
//!   caches.
//! - [`Entries`]: the in-memory registration entry index ([`crate::entries`]).
//!
//! Operations that span several handles (CA rotation, taint, bundle publication)
//! live on [`crate::state::Shared`], which the rotation task and `lanyard ca` use.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use lanyard_audit::evidence::CaKeyStep;
use lanyard_audit::{AuditKey, Event, EventKind, Outcome};
use lanyard_authz::Unavailable;
use lanyard_ca::{CaSlot, CertificateAuthority, SlotRecord};
use lanyard_core::{Bundle, Clock, SpiffeId};
use lanyard_policy::{CompiledPolicies, PolicyKind};
use lanyard_store::{AnyStore, AuditQueue, Entry, Node, Store};
use tokio::sync::watch;

use crate::entries::{EntryCache, EntryIndex};
use crate::state::{ServerError, write_private};
use crate::tls::{SharedBundles, SvidResolver, certified_key};

/// The CA and the server's own X509-SVID.
pub struct Authority {
    ca: RwLock<CertificateAuthority>,
    keystore: PathBuf,
    server_id: SpiffeId,
    server_tls: Arc<SvidResolver>,
    /// Issued-at and expiry of the server's current SVID.
    server_svid: RwLock<(i64, i64)>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// `server_svid`: the issued-at and expiry of the SVID `server_tls` serves.
    pub fn new(
        ca: CertificateAuthority,
        keystore: PathBuf,
        server_id: SpiffeId,
        server_tls: Arc<SvidResolver>,
        server_svid: (i64, i64),
    ) -> Self {
        Self {
            ca: RwLock::new(ca),
            keystore,
            server_id,
            server_tls,
            server_svid: RwLock::new(server_svid),
        }
    }

    /// Read access to the CA.
    pub fn read(&self) -> Result<RwLockReadGuard<'_, CertificateAuthority>, ServerError> {
        self.ca.read().map_err(|_| ServerError::Poisoned("CA"))
    }

    /// Write access to the CA (rotation, taint): persist with [`Self::save_keys`].
    pub fn write(&self) -> Result<RwLockWriteGuard<'_, CertificateAuthority>, ServerError> {
        self.ca.write().map_err(|_| ServerError::Poisoned("CA"))
    }

    /// The server's SPIFFE ID.
    pub fn server_id(&self) -> &SpiffeId {
        &self.server_id
    }

    /// The resolver the server's TLS listeners present.
    pub fn server_tls(&self) -> Arc<SvidResolver> {
        self.server_tls.clone()
    }

    /// Persist the CA's slots to the key file (mode 0600).
    pub fn save_keys(&self) -> Result<(), ServerError> {
        let records: Vec<SlotRecord> = {
            let ca = self.read()?;
            ca.slots().iter().map(CaSlot::to_record).collect()
        };
        let json = serde_json::to_vec_pretty(&records).map_err(|e| ServerError::Encode {
            what: "the CA key file",
            reason: e.to_string(),
        })?;
        write_private(&self.keystore, &json)
    }

    /// Whether the server's SVID is renewed at `now`: past half its life.
    pub fn server_svid_due(&self, now: i64) -> bool {
        let (issued, expiry) = self.server_svid.read().map(|g| *g).unwrap_or((0, 0));
        now >= issued + (expiry - issued) / 2
    }

    /// Mint a new server SVID from the current signing key and serve it.
    pub fn renew_server_svid(&self, now: i64) -> Result<(), ServerError> {
        let (key, minted) = {
            let ca = self.read()?;
            crate::state::mint_server_svid(&ca, &self.server_id, now)?
        };
        self.server_tls
            .set(certified_key(&minted.chain, key.pkcs8_der())?);
        if let Ok(mut g) = self.server_svid.write() {
            *g = (now, minted.not_after);
        }
        Ok(())
    }
}

/// The published trust bundle (with its sequence).
#[derive(Debug, Clone, Default)]
pub struct PublishedBundle {
    pub sequence: u64,
    pub document: String,
    pub bundle: Option<Bundle>,
}

/// The trust bundle as published, the set TLS verifiers trust, and federation.
#[derive(Debug)]
pub struct Publication {
    bundles: SharedBundles,
    published: RwLock<PublishedBundle>,
    /// Federated trust domains' bundles (name -> SPIFFE bundle JSON).
    federated: BTreeMap<String, String>,
    /// Tainted authorities of every live server (SKIs and JWT key ids).
    tainted: RwLock<Vec<String>>,
}

impl Publication {
    pub fn new(federated: BTreeMap<String, String>) -> Self {
        Self {
            bundles: Arc::new(RwLock::new(lanyard_core::BundleSet::new())),
            published: RwLock::new(PublishedBundle::default()),
            federated,
            tainted: RwLock::new(Vec::new()),
        }
    }

    /// Tainted authorities of every server sharing the datastore (SKIs and JWT key
    /// ids): agents re-mint what they signed.
    pub fn tainted(&self) -> Vec<String> {
        self.tainted.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Replace the tainted list; true when it changed.
    pub fn set_tainted(&self, ids: Vec<String>) -> bool {
        match self.tainted.write() {
            Ok(mut t) if *t != ids => {
                *t = ids;
                true
            }
            _ => false,
        }
    }

    /// The bundle document agents are sent, with its sequence.
    pub fn published(&self) -> PublishedBundle {
        self.published.read().map(|b| b.clone()).unwrap_or_default()
    }

    /// The trust bundles TLS verifiers check peers against (shared, updated in place).
    pub fn bundles(&self) -> &SharedBundles {
        &self.bundles
    }

    /// Federated trust domains' bundles (name -> SPIFFE bundle JSON).
    pub fn federated(&self) -> &BTreeMap<String, String> {
        &self.federated
    }

    /// Make `bundle` (sequence `sequence`, document `document`) the published one;
    /// true when the sequence changed.
    pub fn set(
        &self,
        bundle: Bundle,
        with_seq: Bundle,
        sequence: u64,
        document: String,
    ) -> Result<bool, ServerError> {
        if let Ok(mut b) = self.bundles.write() {
            b.insert(bundle);
        }
        let mut p = self
            .published
            .write()
            .map_err(|_| ServerError::Poisoned("bundle"))?;
        let changed = p.sequence != sequence;
        *p = PublishedBundle {
            sequence,
            document,
            bundle: Some(with_seq),
        };
        Ok(changed)
    }
}

/// Where evidence goes: stamped here, appended to the log by group commit.
pub struct AuditSink {
    queue: AuditQueue,
    key: AuditKey,
    server_name: String,
    clock: Arc<dyn Clock>,
    store: AnyStore,
    checkpoint_file: Option<PathBuf>,
    /// Head of the log at the last checkpoint.
    last_checkpoint: Mutex<Option<u64>>,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl AuditSink {
    /// Start the group-commit queue on `store`; `server_name` names this server in
    /// events; checkpoints are signed with `key` and, when `checkpoint_file` is set,
    /// also appended there.
    pub fn start(
        store: AnyStore,
        key: AuditKey,
        server_name: String,
        clock: Arc<dyn Clock>,
        checkpoint_file: Option<PathBuf>,
    ) -> Self {
        Self {
            queue: AuditQueue::start(store.clone(), 256),
            key,
            server_name,
            clock,
            store,
            checkpoint_file,
            last_checkpoint: Mutex::new(None),
        }
    }

    /// A new audit event of `kind`, stamped with id, time, schema version and server.
    pub fn event(&self, kind: EventKind, outcome: Outcome) -> Event {
        let mut raw = [0u8; 16];
        let _ = aws_lc_rs::rand::fill(&mut raw);
        let millis = self
            .clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Event::new(
            hex::encode(raw),
            millis,
            kind,
            outcome,
            self.server_name.clone(),
        )
    }

    /// The audit event for a CA rotation step.
    pub fn ca_event(&self, e: &lanyard_ca::CaEvent) -> Event {
        use lanyard_ca::CaEvent;
        let (kind, slot) = match e {
            CaEvent::Prepared { slot, .. } => (EventKind::CaKeyPrepared, slot),
            CaEvent::Activated { slot } => (EventKind::CaKeyActivated, slot),
            CaEvent::Retired { slot } | CaEvent::Removed { slot } => {
                (EventKind::CaKeyRetired, slot)
            }
            CaEvent::Tainted { slot } => (EventKind::CaKeyTainted, slot),
        };
        self.event(kind, Outcome::Success)
            .with(CaKeyStep::new(slot))
    }

    /// Append events to the evidence log (group commit: concurrent callers share one
    /// transaction); callers hand out nothing until this returns Ok, which is after
    /// the commit.
    pub async fn record(&self, events: Vec<Event>) -> Result<(), ServerError> {
        self.queue.append(events).await?;
        Ok(())
    }

    /// Sign a checkpoint if the log grew since the last one; also append it to the
    /// external checkpoint file when configured.
    pub async fn checkpoint(&self) -> Result<(), ServerError> {
        let chain = self.store.audit_chain().await?;
        let done = self.last_checkpoint.lock().map(|g| *g).unwrap_or(None);
        if done == Some(chain.next_seq) || chain.next_seq == 0 {
            return Ok(());
        }
        let cp = self.key.checkpoint(&chain, self.clock.unix_seconds())?;
        self.store.put_audit_checkpoint(&cp).await?;
        if let Some(path) = &self.checkpoint_file {
            use std::io::Write as _;
            let line = serde_json::to_string(&cp).map_err(|e| ServerError::Encode {
                what: "the audit checkpoint",
                reason: e.to_string(),
            })?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| ServerError::io("cannot append to", path, e))?;
            writeln!(f, "{line}").map_err(|e| ServerError::io("cannot append to", path, e))?;
            f.sync_all()
                .map_err(|e| ServerError::io("cannot sync", path, e))?;
        }
        if let Ok(mut g) = self.last_checkpoint.lock() {
            *g = Some(chain.next_seq);
        }
        Ok(())
    }
}

/// Whether the datastore answers, as a background probe last saw it (every
/// [`DatastoreHealth::INTERVAL`], each probe bounded by [`DatastoreHealth::TIMEOUT`]).
/// `/ready` and the admin API read it instead of waiting on a database that is
/// away, so they answer at once with the cause.
#[derive(Debug, Default)]
pub struct DatastoreHealth {
    down: RwLock<Option<String>>,
}

impl DatastoreHealth {
    /// Time between probes.
    pub const INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
    /// Longest a probe waits for the database.
    pub const TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

    /// Why the datastore is unreachable, if the last probe failed.
    pub fn down_cause(&self) -> Option<String> {
        self.down.read().map(|d| d.clone()).unwrap_or_else(|_| {
            Some("the datastore health state is unreadable (lock poisoned)".into())
        })
    }

    /// Record a probe's outcome; whether it changed the state.
    pub fn record(&self, outcome: Result<(), String>) -> bool {
        let Ok(mut d) = self.down.write() else {
            return false;
        };
        let next = outcome.err();
        let changed = d.is_some() != next.is_some();
        *d = next;
        changed
    }

    /// Probe `store` once and record it, logging transitions.
    pub async fn probe(&self, store: &AnyStore) {
        let outcome = store.ping(Self::TIMEOUT).await.map_err(|e| e.to_string());
        let cause = outcome.clone().err();
        if self.record(outcome) {
            match cause {
                Some(c) => {
                    tracing::error!(cause = %c, "datastore unreachable: admin calls fail fast and /ready answers 503 until it is back; agents keep serving cached SVIDs")
                }
                None => tracing::info!("datastore reachable again"),
            }
        }
    }
}

/// Compiled policy sets by kind, with the stored version each came from.
#[derive(Debug, Default)]
pub struct PolicyCache {
    sets: RwLock<HashMap<PolicyKind, (i64, CompiledPolicies)>>,
}

impl PolicyCache {
    /// The compiled set of `kind` if the cache holds stored version `version`.
    pub fn get(&self, kind: PolicyKind, version: i64) -> Option<CompiledPolicies> {
        let sets = self.sets.read().ok()?;
        let (v, p) = sets.get(&kind)?;
        (*v == version).then(|| p.clone())
    }

    /// The stored version of `kind` the cache holds, if any.
    pub fn version(&self, kind: PolicyKind) -> Option<i64> {
        self.sets.read().ok()?.get(&kind).map(|(v, _)| *v)
    }

    /// Remember the compiled set of `kind` at stored version `version`.
    pub fn put(&self, kind: PolicyKind, version: i64, compiled: CompiledPolicies) {
        if let Ok(mut sets) = self.sets.write() {
            sets.insert(kind, (version, compiled));
        }
    }
}

/// The change counter: bumped on every change agents or caches must see.
#[derive(Debug, Clone)]
pub struct Changes {
    tx: Arc<watch::Sender<u64>>,
}

impl Default for Changes {
    fn default() -> Self {
        Self {
            tx: Arc::new(watch::channel(0u64).0),
        }
    }
}

impl Changes {
    /// Tell every pushed stream that something changed.
    pub fn notify(&self) {
        self.tx.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The current change counter.
    pub fn version(&self) -> u64 {
        *self.tx.borrow()
    }

    /// A receiver woken on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// The registration entries, indexed, as of the latest change this server knows of.
#[derive(Debug)]
pub struct Entries {
    cache: EntryCache,
    store: AnyStore,
    server_id: SpiffeId,
    changes: Changes,
}

impl Entries {
    pub fn new(store: AnyStore, server_id: SpiffeId, changes: Changes) -> Self {
        Self {
            cache: EntryCache::default(),
            store,
            server_id,
            changes,
        }
    }

    /// The entry index and the change counter it was built at; unavailable when it
    /// cannot be read fresh (fail closed).
    pub async fn current(&self) -> Result<Arc<(u64, EntryIndex)>, Unavailable> {
        self.cache
            .get(&self.store, &self.server_id, self.changes.version())
            .await
    }

    /// The change counter the next [`Self::current`] answers for.
    pub fn version(&self) -> u64 {
        self.changes.version()
    }

    /// [`Self::current`], as a server error.
    pub async fn index(&self) -> Result<Arc<(u64, EntryIndex)>, ServerError> {
        self.current()
            .await
            .map_err(|e| ServerError::Unavailable(e.0))
    }

    /// The entries agent `node` may serve at `now` (see [`EntryIndex::authorized`]).
    pub async fn authorized(&self, node: &Node, now: i64) -> Result<Vec<Entry>, ServerError> {
        Ok(self
            .index()
            .await?
            .1
            .authorized(&node.spiffe_id, &node.selectors, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::TrustDomain;

    #[tokio::test]
    async fn datastore_health_follows_the_probe_and_reports_transitions() {
        let h = DatastoreHealth::default();
        assert_eq!(h.down_cause(), None, "up until a probe says otherwise");
        assert!(!h.record(Ok(())));
        assert!(h.record(Err("connection refused".into())));
        assert_eq!(h.down_cause().as_deref(), Some("connection refused"));
        assert!(!h.record(Err("still refused".into())), "no new transition");
        assert_eq!(h.down_cause().as_deref(), Some("still refused"));
        assert!(h.record(Ok(())));
        // A real probe of a working store.
        let dir = tempfile::tempdir().unwrap();
        let store = AnyStore::open(&dir.path().join("db.sqlite").to_string_lossy())
            .await
            .unwrap();
        h.record(Err("x".into()));
        h.probe(&store).await;
        assert_eq!(h.down_cause(), None);
    }

    #[test]
    fn the_policy_cache_answers_only_for_the_version_it_holds() {
        let cache = PolicyCache::default();
        assert!(cache.get(PolicyKind::Authz, 0).is_none());
        assert_eq!(cache.version(PolicyKind::Authz), None);
        let compiled = CompiledPolicies::default_for(PolicyKind::Authz).unwrap();
        cache.put(PolicyKind::Authz, 3, compiled);
        assert!(cache.get(PolicyKind::Authz, 3).is_some());
        assert!(cache.get(PolicyKind::Authz, 2).is_none());
        assert!(cache.get(PolicyKind::Registration, 3).is_none());
        assert_eq!(cache.version(PolicyKind::Authz), Some(3));
    }

    #[test]
    fn changes_wake_subscribers_and_count() {
        let changes = Changes::default();
        let mut rx = changes.subscribe();
        let other = changes.clone();
        assert_eq!(changes.version(), 0);
        other.notify();
        assert_eq!(changes.version(), 1);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn publication_reports_a_change_only_when_the_sequence_moves() {
        let td = TrustDomain::new("example.org").unwrap();
        let p = Publication::new(BTreeMap::new());
        assert_eq!(p.published().sequence, 0);
        let b = Bundle::new(td.clone());
        assert!(p.set(b.clone(), b.clone(), 1, "doc1".into()).unwrap());
        assert!(!p.set(b.clone(), b.clone(), 1, "doc1".into()).unwrap());
        assert_eq!(p.published().document, "doc1");
        assert!(p.bundles().read().unwrap().get(&td).is_some());
        assert!(p.set(b.clone(), b, 2, "doc2".into()).unwrap());
        assert_eq!(p.published().sequence, 2);
    }
}
