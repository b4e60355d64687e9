//! The in-memory entry index: which registration entries an agent may serve,
//! answered without a datastore query.
//!
//! An agent may serve the entries whose parent is the agent itself, or a node
//! alias it matches (an entry whose parent is the server and whose selectors are
//! all among the agent's node selectors). [`EntryIndex::authorized`] is that rule
//! as a pure function over the index; [`EntryCache`] keeps the index of the
//! current entry set, brought up to date when this server is told of a change and
//! at least every [`REFRESH`], failing closed when it cannot be read for longer than
//! [`MAX_STALE`]. It is read in full once; afterwards it follows the change feed:
//! only the entries named by changes since the revision it was built at are read
//! again ([`EntryIndex::apply`]), so a change costs one feed read and one read per
//! changed entry, whatever the number of entries and agents.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lanyard_authz::Unavailable;
use lanyard_core::{Selector, SpiffeId};
use lanyard_store::{AnyStore, Entry, Store};

use crate::fresh::{FreshCache, MAX_STALE};

/// How often the index is re-read from the datastore without a local change.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Changes read from the feed at once; more means the index is far behind and is
/// read in full instead.
const FEED_PAGE: i64 = 1000;

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

    /// Pure: the index after `updates` (entry id -> its current row, `None` when it
    /// was deleted). Entries stay ordered by SPIFFE ID then id, as a full read
    /// returns them.
    pub fn apply(&self, updates: HashMap<String, Option<Entry>>, server_id: &SpiffeId) -> Self {
        let mut updates = updates;
        let mut entries: Vec<Entry> = self
            .entries
            .iter()
            .filter_map(|e| match updates.remove(&e.id) {
                None => Some(e.clone()),
                Some(new) => new,
            })
            .collect();
        entries.extend(updates.into_values().flatten());
        // Each key rendered once, not twice per comparison.
        entries.sort_by_cached_key(|e| (e.spec.spiffe_id.to_string(), e.id.clone()));
        Self::build(entries, server_id)
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

/// The index of the current entry set: (this server's change counter, the index,
/// the change-feed revision it reflects — every change up to it).
pub type Indexed = (u64, Arc<EntryIndex>, i64);

/// The index of the current entry set, by the change counter it was built at.
pub struct EntryCache {
    cache: FreshCache<Indexed>,
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
    /// The index as of change `version` (this server's change counter): brought up
    /// to date when it predates it or is older than [`REFRESH`].
    pub async fn get(
        &self,
        store: &AnyStore,
        server_id: &SpiffeId,
        version: u64,
    ) -> Result<Arc<Indexed>, Unavailable> {
        self.cache
            .update_where(
                |(v, _, _)| *v == version,
                |last| async move {
                    let followed = match last {
                        Some(l) => follow(store, &l.1, l.2, server_id).await?,
                        None => None,
                    };
                    let (index, revision) = match followed {
                        Some(f) => f,
                        None => full_read(store, server_id).await?,
                    };
                    Ok::<_, lanyard_store::StoreError>(Arc::new((version, index, revision)))
                },
            )
            .await
    }
}

/// Every entry, with the feed revision read first (a change committed meanwhile is
/// both in the read and replayed later, harmlessly).
async fn full_read(
    store: &AnyStore,
    server_id: &SpiffeId,
) -> Result<(Arc<EntryIndex>, i64), lanyard_store::StoreError> {
    let revision = store.change_revision().await?;
    let all = store.list_entries().await?;
    Ok((Arc::new(EntryIndex::build(all, server_id)), revision))
}

/// The index after the changes since `revision`; `None`: too far behind (read in
/// full instead).
async fn follow(
    store: &AnyStore,
    index: &Arc<EntryIndex>,
    revision: i64,
    server_id: &SpiffeId,
) -> Result<Option<(Arc<EntryIndex>, i64)>, lanyard_store::StoreError> {
    let changes = store.changes_since(revision, FEED_PAGE).await?;
    if i64::try_from(changes.len()).unwrap_or(FEED_PAGE) >= FEED_PAGE {
        return Ok(None);
    }
    let Some(newest) = changes.last().map(|c| c.revision) else {
        return Ok(Some((index.clone(), revision)));
    };
    let mut updates = HashMap::new();
    for c in changes
        .iter()
        .filter(|c| c.kind == lanyard_store::ChangeKind::Entry)
    {
        if !updates.contains_key(&c.key) {
            updates.insert(c.key.clone(), store.get_entry(&c.key).await?);
        }
    }
    if updates.is_empty() {
        // Other kinds of change only: the same entries.
        return Ok(Some((index.clone(), newest)));
    }
    Ok(Some((Arc::new(index.apply(updates, server_id)), newest)))
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
    fn applying_changes_equals_indexing_the_new_set() {
        let server = id("/lanyard/server");
        let agent = id("/agent");
        let a = entry("a", "/agent", "/web", &["unix:uid:1"], None);
        let b = entry("b", "/agent", "/db", &["unix:uid:2"], None);
        let c = entry("c", "/agent", "/api", &["unix:uid:3"], None);
        let index = EntryIndex::build(vec![b.clone(), a.clone()], &server);
        let mut b2 = b.clone();
        b2.spec.selectors = vec!["unix:uid:9".parse().unwrap()];
        b2.revision = 2;
        let updates: HashMap<String, Option<Entry>> = [
            ("a".to_string(), None),
            ("b".to_string(), Some(b2.clone())),
            ("c".to_string(), Some(c.clone())),
            // A change to an entry that is gone again: nothing.
            ("gone".to_string(), None),
        ]
        .into();
        let applied = index.apply(updates, &server);
        // Ordered by SPIFFE ID then id, as a full read is.
        assert_eq!(names(applied.entries()), ["c", "b"]);
        assert_eq!(applied.entries()[1].revision, 2);
        let fresh = EntryIndex::build(vec![c, b2], &server);
        assert_eq!(
            names(&applied.authorized(&agent, &[], 0)),
            names(&fresh.authorized(&agent, &[], 0))
        );
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
