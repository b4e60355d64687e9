//! Builders of registration entries and attested nodes, as the datastore holds them.

use lanyard_core::{Selector, SpiffeId};
use lanyard_store::{Entry, EntrySpec, Node, NodeHoldings};

/// `spiffe://example.org{path}`.
pub fn spiffe_id(path: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://{}{path}", crate::TD))
        .unwrap_or_else(|e| panic!("test SPIFFE ID path {path:?}: {e}"))
}

/// An entry with id `id` for `spiffe://example.org{path}`, parented by
/// `spiffe://example.org{parent}`, with the selectors `selectors` (`type:value`).
pub fn entry(id: &str, parent: &str, path: &str, selectors: &[&str]) -> EntryBuilder {
    EntryBuilder(Entry {
        id: id.to_string(),
        spec: EntrySpec {
            spiffe_id: spiffe_id(path),
            parent_id: spiffe_id(parent),
            selectors: selectors
                .iter()
                .map(|s| Selector::new(s).unwrap_or_else(|e| panic!("test selector {s:?}: {e}")))
                .collect(),
            owner: String::new(),
            environment: None,
            x509_ttl: 0,
            jwt_ttl: 0,
            dns_names: vec![],
            hint: None,
            admin: false,
            downstream: false,
            expires_at: None,
            federates_with: vec![],
        },
        revision: 1,
        created_at: 0,
        updated_at: 0,
    })
}

/// An [`Entry`] under construction.
#[derive(Debug, Clone)]
pub struct EntryBuilder(Entry);

impl EntryBuilder {
    /// Its SVIDs may use the admin API.
    pub fn admin(mut self) -> Self {
        self.0.spec.admin = true;
        self
    }
    /// The entry expires at `t` (unix seconds).
    pub fn expires_at(mut self, t: i64) -> Self {
        self.0.spec.expires_at = Some(t);
        self
    }
    pub fn owner(mut self, owner: &str) -> Self {
        self.0.spec.owner = owner.to_string();
        self
    }
    pub fn environment(mut self, env: &str) -> Self {
        self.0.spec.environment = Some(env.to_string());
        self
    }
    pub fn revision(mut self, revision: i64) -> Self {
        self.0.revision = revision;
        self
    }
    pub fn build(self) -> Entry {
        self.0
    }
}

impl From<EntryBuilder> for Entry {
    fn from(b: EntryBuilder) -> Self {
        b.0
    }
}

/// An attested node `spiffe://example.org{path}` whose agent SVID (serial `01`)
/// expires at `expires_at`.
pub fn node(path: &str, expires_at: i64) -> NodeBuilder {
    NodeBuilder(Node {
        spiffe_id: spiffe_id(path),
        attestation_type: "join_token".into(),
        selectors: vec![],
        serial: "01".into(),
        expires_at,
        banned: false,
        created_at: 0,
        updated_at: 0,
        holdings: NodeHoldings::default(),
        previous_serial: String::new(),
        superseded_count: 0,
        superseded_at: None,
    })
}

/// A [`Node`] under construction.
#[derive(Debug, Clone)]
pub struct NodeBuilder(Node);

impl NodeBuilder {
    pub fn banned(mut self) -> Self {
        self.0.banned = true;
        self
    }
    /// Node selectors (`type:value`) from attestation.
    pub fn selectors(mut self, selectors: &[&str]) -> Self {
        self.0.selectors = selectors
            .iter()
            .map(|s| Selector::new(s).unwrap_or_else(|e| panic!("test selector {s:?}: {e}")))
            .collect();
        self
    }
    /// The agent last reported, at `reported_at`, holding SVIDs from these CA keys
    /// (SKI hex, latest expiry).
    pub fn holdings(mut self, reported_at: i64, held: &[(&str, i64)]) -> Self {
        self.0.holdings = NodeHoldings {
            reported_at,
            authorities: held.iter().map(|(k, v)| ((*k).to_string(), *v)).collect(),
        };
        self
    }
    pub fn build(self) -> Node {
        self.0
    }
}

impl From<NodeBuilder> for Node {
    fn from(b: NodeBuilder) -> Self {
        b.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_make_what_the_store_holds() {
        let e = entry("e1", "/agent", "/web", &["unix:uid:1000"])
            .admin()
            .expires_at(9)
            .revision(4)
            .build();
        assert_eq!(e.spec.spiffe_id.to_string(), "spiffe://example.org/web");
        assert_eq!(e.spec.parent_id.path(), "/agent");
        assert!(e.spec.admin);
        assert_eq!((e.spec.expires_at, e.revision), (Some(9), 4));
        let n = node("/lanyard/agent/x", 100)
            .banned()
            .holdings(5, &[("ab", 50)])
            .build();
        assert!(n.banned);
        assert_eq!(n.holdings.authorities.get("ab"), Some(&50));
    }
}
