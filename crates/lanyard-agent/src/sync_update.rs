//! The protobuf edge of the server's pushed state: a `pb::SyncUpdate` becomes a
//! [`SyncState`] here, once, before anything in the agent uses it. Parts the server
//! should never send (an entry with a bad SPIFFE ID or selector, a bundle that does
//! not parse) are left out and listed in [`SyncState::rejected`] with what they
//! were and why, so the session logs them instead of dropping them in silence.

use std::collections::{HashMap, HashSet};

use lanyard_core::{Bundle, Selector, SpiffeId, TrustDomain};
use lanyard_proto::node as pb;

use crate::state::CachedEntry;

/// Something in an update that was left out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("entry {id:?}: {reason}")]
    Entry { id: String, reason: String },
    #[error("the trust bundle: {0}")]
    Bundle(String),
    #[error("the federated bundle of {trust_domain:?}: {reason}")]
    Federated {
        trust_domain: String,
        reason: String,
    },
}

impl TryFrom<&pb::RegistrationEntry> for CachedEntry {
    type Error = Rejected;

    fn try_from(e: &pb::RegistrationEntry) -> Result<Self, Rejected> {
        let bad = |reason: String| Rejected::Entry {
            id: e.id.clone(),
            reason,
        };
        let spiffe_id =
            SpiffeId::new(&e.spiffe_id).map_err(|err| bad(format!("spiffe_id: {err}")))?;
        let selectors = e
            .selectors
            .iter()
            .map(|s| Selector::new(s).map_err(|err| bad(format!("selector {s:?}: {err}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            id: e.id.clone(),
            spiffe_id,
            selectors,
            hint: e.hint.clone(),
            x509_ttl: e.x509_ttl_seconds,
            jwt_ttl: e.jwt_ttl_seconds,
            expires_at: e.expires_at,
            revision: e.revision,
            owner: e.owner.clone(),
            environment: e.environment.clone(),
        })
    }
}

/// The public key that signs task tokens, as synced (the JWK is parsed where it is
/// used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedTokenKey {
    pub kid: String,
    pub jwk: String,
}

/// What the agent decides runtime authorization with. Absent when the server sends
/// no issuer (a server older than agent-local decisions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedAuthzState {
    pub policy: String,
    pub policy_version: i64,
    pub issuer: String,
    pub token_key: Option<SyncedTokenKey>,
}

/// One pushed update in domain form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    pub entries: Vec<CachedEntry>,
    pub bundle: Option<Bundle>,
    pub bundle_sequence: u64,
    /// Sorted by trust domain.
    pub federated: Vec<Bundle>,
    pub revoked_jtis: HashSet<String>,
    pub tainted_authorities: HashSet<String>,
    pub authz: Option<SyncedAuthzState>,
    /// What was left out, and why.
    pub rejected: Vec<Rejected>,
}

impl SyncState {
    /// Convert an update for an agent of `trust_domain`.
    pub fn from_pb(u: &pb::SyncUpdate, trust_domain: &TrustDomain) -> Self {
        let mut rejected = Vec::new();
        let mut entries = Vec::with_capacity(u.entries.len());
        for e in &u.entries {
            match CachedEntry::try_from(e) {
                Ok(c) => entries.push(c),
                Err(r) => rejected.push(r),
            }
        }
        let bundle = if u.bundle.is_empty() {
            None
        } else {
            match Bundle::parse(trust_domain.clone(), u.bundle.as_bytes()) {
                Ok(b) => Some(b),
                Err(e) => {
                    rejected.push(Rejected::Bundle(e.to_string()));
                    None
                }
            }
        };
        let mut federated = Vec::new();
        for (td, doc) in &u.federated_bundles {
            let parsed = TrustDomain::new(td)
                .map_err(|e| e.to_string())
                .and_then(|t| Bundle::parse(t, doc.as_bytes()).map_err(|e| e.to_string()));
            match parsed {
                Ok(b) => federated.push(b),
                Err(reason) => rejected.push(Rejected::Federated {
                    trust_domain: td.clone(),
                    reason,
                }),
            }
        }
        federated.sort_by(|a, b| a.trust_domain().cmp(b.trust_domain()));
        let authz = (!u.jwt_issuer.is_empty()).then(|| SyncedAuthzState {
            policy: u.authz_policy.clone(),
            policy_version: u.authz_policy_version,
            issuer: u.jwt_issuer.clone(),
            token_key: u.token_key.as_ref().map(|k| SyncedTokenKey {
                kid: k.kid.clone(),
                jwk: k.jwk.clone(),
            }),
        });
        Self {
            entries,
            bundle,
            bundle_sequence: u.bundle_sequence,
            federated,
            revoked_jtis: u.revoked_jtis.iter().cloned().collect(),
            tainted_authorities: u.tainted_authorities.iter().cloned().collect(),
            authz,
            rejected,
        }
    }
}

/// Pure: the entry set after a delta (`SyncUpdate.delta`): `current` without the
/// `removed` ids and without entries whose new version was `rejected` (unusable: the
/// old version must not be served either), with `changed` added or replacing the
/// entry of the same id. Order: current order, new entries at the end.
pub fn merge_delta(
    current: Vec<CachedEntry>,
    changed: Vec<CachedEntry>,
    removed: &[String],
    rejected: &[String],
) -> Vec<CachedEntry> {
    let gone: HashSet<&str> = removed.iter().chain(rejected).map(String::as_str).collect();
    let mut by_id: HashMap<String, CachedEntry> =
        changed.into_iter().map(|e| (e.id.clone(), e)).collect();
    let mut out: Vec<CachedEntry> = current
        .into_iter()
        .filter(|e| !gone.contains(e.id.as_str()))
        .map(|e| by_id.remove(&e.id).unwrap_or(e))
        .collect();
    let mut added: Vec<CachedEntry> = by_id.into_values().collect();
    added.sort_by(|a, b| a.id.cmp(&b.id));
    out.extend(added);
    out
}

impl SyncState {
    /// Ids of entries left out of this update as unusable.
    pub fn rejected_entry_ids(&self) -> Vec<String> {
        self.rejected
            .iter()
            .filter_map(|r| match r {
                Rejected::Entry { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, spiffe: &str, selectors: &[&str]) -> pb::RegistrationEntry {
        pb::RegistrationEntry {
            id: id.into(),
            spiffe_id: spiffe.into(),
            selectors: selectors.iter().map(|s| s.to_string()).collect(),
            revision: 1,
            owner: "team-a".into(),
            ..Default::default()
        }
    }

    fn cached(id: &str, rev: i64) -> CachedEntry {
        let mut e = entry(id, &format!("spiffe://example.org/{id}"), &["unix:uid:1"]);
        e.revision = rev;
        CachedEntry::try_from(&e).unwrap()
    }

    #[test]
    fn a_delta_adds_replaces_and_removes_entries() {
        let current = vec![cached("a", 1), cached("b", 1), cached("c", 1)];
        let merged = merge_delta(
            current.clone(),
            vec![cached("b", 2), cached("d", 1)],
            &["c".to_string()],
            &[],
        );
        assert_eq!(merged, vec![cached("a", 1), cached("b", 2), cached("d", 1)]);
        // A changed entry that does not parse any more is dropped, not kept at its
        // old version.
        let merged = merge_delta(current.clone(), vec![], &[], &["a".to_string()]);
        assert_eq!(merged, vec![cached("b", 1), cached("c", 1)]);
        // An empty delta changes nothing.
        assert_eq!(merge_delta(current.clone(), vec![], &[], &[]), current);
    }

    #[test]
    fn malformed_parts_are_named_not_dropped_in_silence() {
        let td = TrustDomain::new("example.org").unwrap();
        let u = pb::SyncUpdate {
            entries: vec![
                entry("good", "spiffe://example.org/web", &["unix:uid:1"]),
                entry("bad-id", "web", &["unix:uid:1"]),
                entry("bad-selector", "spiffe://example.org/db", &["nocolon"]),
            ],
            bundle: "not json".into(),
            federated_bundles: [("Bad TD".to_string(), "{}".to_string())].into(),
            revoked_jtis: vec!["j1".into()],
            jwt_issuer: "https://example.org".into(),
            authz_policy_version: 3,
            ..Default::default()
        };
        let s = SyncState::from_pb(&u, &td);
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.entries[0].id, "good");
        assert_eq!(s.entries[0].owner, "team-a");
        let why: Vec<String> = s.rejected.iter().map(ToString::to_string).collect();
        assert_eq!(why.len(), 4, "{why:?}");
        assert!(
            why[0].starts_with("entry \"bad-id\": spiffe_id:"),
            "{why:?}"
        );
        assert!(
            why[1].starts_with("entry \"bad-selector\": selector \"nocolon\""),
            "{why:?}"
        );
        assert!(why[2].starts_with("the trust bundle:"), "{why:?}");
        assert!(
            why[3].starts_with("the federated bundle of \"Bad TD\""),
            "{why:?}"
        );
        assert!(s.bundle.is_none());
        assert!(s.revoked_jtis.contains("j1"));
        assert_eq!(s.authz.as_ref().map(|a| a.policy_version), Some(3));
    }

    #[test]
    fn a_server_without_an_issuer_sends_no_authz_state() {
        let td = TrustDomain::new("example.org").unwrap();
        let s = SyncState::from_pb(&pb::SyncUpdate::default(), &td);
        assert!(s.authz.is_none() && s.rejected.is_empty() && s.bundle.is_none());
    }
}
