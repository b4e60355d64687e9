//! The in-memory entry index: which registration entries an agent may serve,
//! answered without a datastore query.
//!
//! An agent may serve the entries whose parent is the agent itself, or a node
//! alias it matches (an entry whose parent is the server and whose selectors are
//! all among the agent's node selectors). [`EntryIndex::authorized`] is that rule
//! as a pure function over the index; [`EntryCache`] keeps the index of the
//! current entry set, rebuilt when this server changes entries and re-read at
//! least every [`REFRESH`] (changes made through other servers), failing closed
//! when it cannot be read for longer than [`MAX_STALE`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lanyard_authz::Unavailable;
use lanyard_core::{Selector, SpiffeId};
use lanyard_store::{AnyStore, Entry, Store};

use crate::fresh::{FreshCache, MAX_STALE};

/// How often the index is re-read from the datastore without a local change.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Entries by parent, with the node aliases apart.
#[derive(Debug, Default)]
pub struct EntryIndex {
    entries: Vec<Entry>,
    by_parent: HashMap<SpiffeId, Vec<usize>>,
    /// Entries parented by the server with selectors: node aliases.
    aliases: Vec<usize>,
    /// Entries created with `--admin`: their SVIDs may use the admin API.
    admins: Vec<usize>,
}

impl EntryIndex {
    /// Index `entries`; `server_id` is the parent of node aliases.
    pub fn build(entries: Vec<Entry>, server_id: &SpiffeId) -> Self {
        let mut by_parent: HashMap<SpiffeId, Vec<usize>> = HashMap::new();
        let mut aliases = Vec::new();
        let mut admins = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if e.spec.admin {
                admins.push(i);
            }
            by_parent
                .entry(e.spec.parent_id.clone())
                .or_default()
                .push(i);
            if &e.spec.parent_id == server_id && !e.spec.selectors.is_empty() {
                aliases.push(i);
            }
        }
        Self {
            entries,
            by_parent,
            aliases,
            admins,
        }
    }

    /// Every indexed entry, in the order it was read.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// How many entries the index holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `id` is the SPIFFE ID of an admin entry that has not expired at `now`.
    pub fn is_admin(&self, id: &SpiffeId, now: i64) -> bool {
        self.admins.iter().any(|&i| {
            let e = &self.entries[i];
            &e.spec.spiffe_id == id && e.spec.expires_at.is_none_or(|t| t > now)
        })
    }

    /// The entries the agent `node` (with node selectors `selectors`) may serve at
    /// `now`: parented by the agent or by an alias it matches, and not expired. In
    /// the order they were indexed.
    pub fn authorized(&self, node: &SpiffeId, selectors: &[Selector], now: i64) -> Vec<Entry> {
        let have: HashSet<&Selector> = selectors.iter().collect();
        let mut parents: Vec<&SpiffeId> = vec![node];
        for &i in &self.aliases {
            let e = &self.entries[i];
            if e.spec.selectors.iter().all(|s| have.contains(s)) {
                parents.push(&e.spec.spiffe_id);
            }
        }
        let mut picked: Vec<usize> = parents
            .iter()
            .filter_map(|p| self.by_parent.get(*p))
            .flatten()
            .copied()
            .collect();
        picked.sort_unstable();
        picked.dedup();
        picked
            .into_iter()
            .map(|i| &self.entries[i])
            .filter(|e| e.spec.expires_at.is_none_or(|t| t > now))
            .cloned()
            .collect()
    }
}

/// The index of the current entry set, by the change counter it was built at.
pub struct EntryCache {
    cache: FreshCache<(u64, EntryIndex)>,
}

impl std::fmt::Debug for EntryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EntryCache")
    }
}

impl Default for EntryCache {
    fn default() -> Self {
        Self {
            cache: FreshCache::new("registration entries", REFRESH, MAX_STALE),
        }
    }
}

impl EntryCache {
    /// The index as of change `version` (this server's change counter): rebuilt
    /// when it predates it or is older than [`REFRESH`].
    pub async fn get(
        &self,
        store: &AnyStore,
        server_id: &SpiffeId,
        version: u64,
    ) -> Result<Arc<(u64, EntryIndex)>, Unavailable> {
        self.cache
            .get_where(
                |(v, _)| *v == version,
                || async {
                    let all = store.list_entries().await?;
                    Ok::<_, lanyard_store::StoreError>((version, EntryIndex::build(all, server_id)))
                },
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(p: &str) -> SpiffeId {
        SpiffeId::new(&format!("spiffe://example.org{p}")).unwrap()
    }

    fn entry(n: &str, parent: &str, spiffe: &str, selectors: &[&str], exp: Option<i64>) -> Entry {
        let e = lanyard_testkit::entry(n, parent, spiffe, selectors);
        match exp {
            Some(t) => e.expires_at(t).build(),
            None => e.build(),
        }
    }

    fn names(v: &[Entry]) -> Vec<&str> {
        v.iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn an_agent_serves_its_own_children_and_those_of_aliases_it_matches() {
        let server = id("/lanyard/server");
        let agent = id("/lanyard/agent/a");
        let idx = EntryIndex::build(
            vec![
                entry("own", "/lanyard/agent/a", "/web", &["unix:uid:1"], None),
                entry("other", "/lanyard/agent/b", "/db", &["unix:uid:2"], None),
                entry(
                    "alias",
                    "/lanyard/server",
                    "/nodes/k8s",
                    &["k8s_psat:cluster:c1"],
                    None,
                ),
                entry("via-alias", "/nodes/k8s", "/api", &["unix:uid:3"], None),
                entry(
                    "alias2",
                    "/lanyard/server",
                    "/nodes/gpu",
                    &["k8s_psat:cluster:c1", "gpu:yes"],
                    None,
                ),
                entry("via-alias2", "/nodes/gpu", "/train", &["unix:uid:4"], None),
                entry(
                    "expired",
                    "/lanyard/agent/a",
                    "/old",
                    &["unix:uid:5"],
                    Some(50),
                ),
                // An entry parented by the server without selectors is no alias.
                entry("bare", "/lanyard/server", "/nodes/all", &[], None),
                entry("via-bare", "/nodes/all", "/x", &["unix:uid:6"], None),
            ],
            &server,
        );
        assert_eq!(idx.len(), 9);
        let sel = [Selector::new("k8s_psat:cluster:c1").unwrap()];
        assert_eq!(
            names(&idx.authorized(&agent, &sel, 100)),
            ["own", "via-alias"]
        );
        assert_eq!(
            names(&idx.authorized(&agent, &sel, 10)),
            ["own", "via-alias", "expired"]
        );
        let both = [
            Selector::new("k8s_psat:cluster:c1").unwrap(),
            Selector::new("gpu:yes").unwrap(),
        ];
        assert_eq!(
            names(&idx.authorized(&agent, &both, 100)),
            ["own", "via-alias", "via-alias2"]
        );
        assert!(idx.authorized(&id("/lanyard/agent/z"), &[], 100).is_empty());
    }
}
