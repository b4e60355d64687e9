//! The agent's cache: entries authorized for this agent, the trust bundle, and the
//! X509-SVIDs (with their private keys) and JWT-SVIDs minted for those entries.
//! Every change bumps a watch counter that drives the Workload API streams.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use lanyard_core::{Bundle, BundleSet, Selector, SpiffeId, TrustDomain};
use lanyard_proto::node as pb;
use tokio::sync::watch;

use crate::lifecycle::{self, SvidPlan};
use crate::sync_update::SyncState;

/// An entry as the agent serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedEntry {
    pub id: String,
    pub spiffe_id: SpiffeId,
    pub selectors: Vec<Selector>,
    pub hint: String,
    pub x509_ttl: u64,
    pub jwt_ttl: u64,
    pub expires_at: i64,
    pub revision: i64,
    /// For agent-local authorization facts.
    pub owner: String,
    pub environment: String,
}

impl CachedEntry {
    /// A workload matches when it has every selector of the entry.
    pub fn matches(&self, workload: &[Selector], now: i64) -> bool {
        (self.expires_at == 0 || self.expires_at > now)
            && !self.selectors.is_empty()
            && self.selectors.iter().all(|s| workload.contains(s))
    }
}

/// An X509-SVID and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedSvid {
    pub spiffe_id: SpiffeId,
    pub chain: Vec<Vec<u8>>,
    pub key_pkcs8: Vec<u8>,
    pub issued_at: i64,
    pub expires_at: i64,
    /// When to rotate: about half the lifetime, with jitter.
    pub rotate_at: i64,
    pub entry_revision: i64,
    /// Certificate serial (hex) and the server's issuance event, for delivery evidence.
    pub serial: String,
    pub event_id: String,
    /// Subject Key Identifier (hex) of the CA that signed it (the leaf's AKI).
    pub authority: String,
}

/// A cached JWT-SVID.
#[derive(Debug, Clone)]
pub struct CachedJwt {
    pub token: String,
    pub issued_at: i64,
    pub expires_at: i64,
    pub jti: String,
    pub event_id: String,
    /// Key id of the signing key.
    pub kid: String,
}

#[derive(Debug, Default)]
struct Inner {
    entries: Vec<CachedEntry>,
    bundle: Option<Bundle>,
    bundle_sequence: u64,
    federated: Vec<Bundle>,
    svids: HashMap<String, CachedSvid>,
    jwts: HashMap<(String, Vec<String>), CachedJwt>,
    /// Revoked JWT-SVID ids, as the server distributes them.
    revoked_jtis: std::collections::HashSet<String>,
    /// Tainted CA keys (Subject Key Identifiers and JWT key ids).
    tainted: std::collections::HashSet<String>,
}

/// How the agent's sessions with the server are going, for callers that wait on
/// them (one-shot mode waits until the first entry-stream update is applied).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The agent's SPIFFE ID, once it holds an agent SVID.
    pub agent_id: Option<SpiffeId>,
    /// Entry-stream updates applied (and their SVIDs minted) since the agent started.
    pub updates: u64,
    /// How the last failed session failed.
    pub last_failure: Option<SessionFailure>,
}

/// A session's failure as the server (or the agent itself) reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFailure {
    pub code: tonic::Code,
    pub message: String,
    /// Whether it failed during node attestation.
    pub attesting: bool,
}

/// Shared agent state.
#[derive(Debug)]
pub struct AgentState {
    pub trust_domain: TrustDomain,
    inner: RwLock<Inner>,
    changes: watch::Sender<u64>,
    progress: watch::Sender<Progress>,
    /// The trust bundles used to verify the server (and to validate JWT-SVIDs).
    pub bundles: Arc<RwLock<BundleSet>>,
    /// Runtime authorization for agent-local decisions, as the server syncs it.
    pub authz: crate::authz::SyncedAuthz,
}

impl AgentState {
    pub fn new(trust_domain: TrustDomain, bundle: Option<Bundle>) -> Self {
        let (changes, _) = watch::channel(0);
        let set: BundleSet = bundle.iter().cloned().collect();
        Self {
            trust_domain,
            inner: RwLock::new(Inner {
                bundle,
                ..Inner::default()
            }),
            changes,
            progress: watch::channel(Progress::default()).0,
            bundles: Arc::new(RwLock::new(set)),
            authz: crate::authz::SyncedAuthz::default(),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// How the sessions are going (see [`Progress`]).
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    pub(crate) fn note_agent_id(&self, id: &SpiffeId) {
        self.progress.send_if_modified(|p| {
            let changed = p.agent_id.as_ref() != Some(id);
            p.agent_id = Some(id.clone());
            changed
        });
    }

    pub(crate) fn note_update(&self) {
        self.progress
            .send_modify(|p| p.updates = p.updates.saturating_add(1));
    }

    pub(crate) fn note_failure(&self, failure: SessionFailure) {
        self.progress
            .send_modify(|p| p.last_failure = Some(failure));
    }

    fn notify(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Apply a pushed update from the server (see [`SyncState::from_pb`]); parts
    /// it rejected are logged. Returns true if anything changed.
    pub fn apply_sync(&self, update: &pb::SyncUpdate) -> bool {
        let mut state = SyncState::from_pb(update, &self.trust_domain);
        for r in &state.rejected {
            tracing::error!(rejected = %r, "the server sent something unusable; it is left out");
        }
        if update.delta {
            // Entries changed since the last update: merge into what is held. (A
            // poisoned lock leaves nothing to merge into: serve nothing rather than
            // a partial set presented as whole.)
            let current = self
                .inner
                .read()
                .map(|i| i.entries.clone())
                .unwrap_or_default();
            let rejected = state.rejected_entry_ids();
            state.entries = crate::sync_update::merge_delta(
                current,
                std::mem::take(&mut state.entries),
                &update.removed_entry_ids,
                &rejected,
            );
        }
        self.apply(state)
    }

    /// Apply an update in domain form. Returns true if anything changed.
    pub fn apply(&self, update: SyncState) -> bool {
        self.authz.apply(&update);
        let SyncState {
            entries,
            bundle,
            bundle_sequence,
            federated,
            revoked_jtis: revoked,
            tainted_authorities: tainted,
            ..
        } = update;
        let mut changed = false;
        if let Ok(mut inner) = self.inner.write() {
            if inner.revoked_jtis != revoked {
                // A cached token that was revoked is never handed out again.
                inner.jwts.retain(|_, j| !revoked.contains(&j.jti));
                inner.revoked_jtis = revoked;
                changed = true;
            }
            if inner.tainted != tainted {
                // Tokens signed by a tainted key are minted again on next request.
                inner.jwts.retain(|_, j| !tainted.contains(&j.kid));
                inner.tainted = tainted;
                changed = true;
            }
            if inner.entries != entries {
                // SVIDs of removed or changed entries go at once.
                let keep: HashMap<&str, i64> = entries
                    .iter()
                    .map(|e| (e.id.as_str(), e.revision))
                    .collect();
                inner
                    .svids
                    .retain(|id, s| keep.get(id.as_str()) == Some(&s.entry_revision));
                let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
                inner.jwts.retain(|(id, _), _| ids.contains(id));
                inner.entries = entries;
                changed = true;
            }
            if inner.federated != federated {
                if let Ok(mut set) = self.bundles.write() {
                    for old in &inner.federated {
                        set.remove(old.trust_domain());
                    }
                    for b in &federated {
                        set.insert(b.clone());
                    }
                }
                inner.federated = federated;
                changed = true;
            }
            if let Some(b) = bundle
                && (inner.bundle.as_ref() != Some(&b) || inner.bundle_sequence != bundle_sequence)
            {
                if let Ok(mut set) = self.bundles.write() {
                    set.insert(b.clone());
                }
                inner.bundle = Some(b);
                inner.bundle_sequence = bundle_sequence;
                changed = true;
            }
        }
        if changed {
            self.notify();
        }
        changed
    }

    /// Drop everything (the agent was banned or evicted).
    pub fn clear_identities(&self) {
        if let Ok(mut inner) = self.inner.write() {
            inner.entries.clear();
            inner.svids.clear();
            inner.jwts.clear();
        }
        self.notify();
    }

    /// Whether a CA key (Subject Key Identifier) is tainted.
    pub fn is_tainted(&self, authority: &str) -> bool {
        self.inner
            .read()
            .map(|g| g.tainted.contains(authority))
            .unwrap_or(false)
    }

    /// CA keys the cached SVIDs depend on: authority -> latest expiry.
    pub fn holdings(&self) -> std::collections::BTreeMap<String, i64> {
        let mut out = std::collections::BTreeMap::new();
        if let Ok(g) = self.inner.read() {
            for s in g.svids.values() {
                let e = out.entry(s.authority.clone()).or_insert(s.expires_at);
                *e = (*e).max(s.expires_at);
            }
        }
        out
    }

    /// Whether the server has revoked the JWT-SVID with this `jti`.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.inner
            .read()
            .map(|g| g.revoked_jtis.contains(jti))
            .unwrap_or(true)
    }

    /// The soonest entry expiry after `now` (unix seconds), if any.
    pub fn next_entry_expiry(&self, now: i64) -> Option<i64> {
        self.inner.read().ok().and_then(|g| {
            g.entries
                .iter()
                .map(|e| e.expires_at)
                .filter(|&t| t > now)
                .min()
        })
    }

    pub fn entries(&self) -> Vec<CachedEntry> {
        self.inner
            .read()
            .map(|i| i.entries.clone())
            .unwrap_or_default()
    }

    /// Bundles of federated trust domains.
    pub fn federated(&self) -> Vec<Bundle> {
        self.inner
            .read()
            .map(|i| i.federated.clone())
            .unwrap_or_default()
    }

    pub fn bundle(&self) -> Option<Bundle> {
        self.inner.read().ok().and_then(|i| i.bundle.clone())
    }

    pub fn svid(&self, entry_id: &str) -> Option<CachedSvid> {
        self.inner
            .read()
            .ok()
            .and_then(|i| i.svids.get(entry_id).cloned())
    }

    /// One reconcile pass at `now`, by the single rule of [`lifecycle::plan`]: drops
    /// the SVIDs (and JWT-SVIDs) that expired, e.g. while the server was unreachable,
    /// and returns the plan, whose `mint` are the entries to mint an SVID for.
    pub fn plan_svids(&self, now: i64) -> SvidPlan {
        let (plan, changed) = match self.inner.write() {
            Ok(mut inner) => {
                let plan = lifecycle::plan(&inner.entries, &inner.svids, &inner.tainted, now);
                for id in &plan.drop {
                    inner.svids.remove(id);
                }
                inner.jwts.retain(|_, j| j.expires_at > now);
                let changed = !plan.drop.is_empty();
                (plan, changed)
            }
            Err(_) => (SvidPlan::default(), false),
        };
        if changed {
            self.notify();
        }
        plan
    }

    pub fn store_svid(&self, entry_id: &str, svid: CachedSvid) {
        if let Ok(mut inner) = self.inner.write() {
            // Only if the entry is still ours.
            if inner.entries.iter().any(|e| e.id == entry_id) {
                inner.svids.insert(entry_id.to_string(), svid);
            }
        }
        self.notify();
    }

    /// Identities of a workload, in entry order: (entry, its current SVID if any).
    pub fn identities(
        &self,
        workload: &[Selector],
        now: i64,
    ) -> Vec<(CachedEntry, Option<CachedSvid>)> {
        let Ok(inner) = self.inner.read() else {
            return Vec::new();
        };
        inner
            .entries
            .iter()
            .filter(|e| e.matches(workload, now))
            .map(|e| {
                (
                    e.clone(),
                    inner
                        .svids
                        .get(&e.id)
                        .filter(|s| !lifecycle::is_expired(s, now))
                        .cloned(),
                )
            })
            .collect()
    }

    pub fn cached_jwt(&self, entry_id: &str, audience: &[String], now: i64) -> Option<CachedJwt> {
        let inner = self.inner.read().ok()?;
        let j = inner.jwts.get(&(entry_id.to_string(), audience.to_vec()))?;
        // Reuse until half of the lifetime has passed.
        (now < j.issued_at + (j.expires_at - j.issued_at) / 2).then(|| j.clone())
    }

    pub fn store_jwt(&self, entry_id: &str, audience: &[String], jwt: CachedJwt) {
        if let Ok(mut inner) = self.inner.write() {
            if inner.jwts.len() > 10_000 {
                inner.jwts.clear();
            }
            inner
                .jwts
                .insert((entry_id.to_string(), audience.to_vec()), jwt);
        }
    }
}
