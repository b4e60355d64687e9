//! The datastore conformance suite: the same checks against SQLite and PostgreSQL.
//!
//! PostgreSQL comes from `LANYARD_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each run creates and drops its own
//! database. `scripts/test` makes sure a server is running.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lanyard_core::{Selector, SpiffeId};
use lanyard_store::{
    AnyStore, AuthorityKind, BundlePut, ChangeKind, EntrySpec, EntryUpdate, Heard, JoinToken, Node,
    PgStore, PublishedAuthority, REPLAY_PRUNE_BATCH, RevokedJwt, SealedKey, ServerRecord,
    ServerRegistration, SqliteStore, Store, StoreError,
};
mod common;
use common::{drop_pg_db, fresh_pg_db};

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

/// No evidence-log events for a change.
fn none<T>(_: &T) -> Vec<lanyard_audit::Event> {
    Vec::new()
}

fn sel(s: &str) -> Selector {
    Selector::new(s).unwrap()
}

fn spec(path: &str) -> EntrySpec {
    EntrySpec {
        spiffe_id: id(&format!("spiffe://example.org{path}")),
        parent_id: id("spiffe://example.org/agent/a1"),
        selectors: vec![sel("unix:uid:1000"), sel("unix:gid:100")],
        owner: "team-a".into(),
        environment: Some("prod".into()),
        x509_ttl: 3600,
        jwt_ttl: 0,
        dns_names: vec!["web.local".into()],
        hint: Some("web".into()),
        admin: false,
        downstream: false,
        expires_at: Some(1_900_000_000),
        federates_with: vec![],
    }
}

async fn entries<S: Store>(s: &S) {
    let e = s.create_entry(&spec("/web"), 100, &none).await.unwrap();
    assert_eq!(e.revision, 1);
    assert_eq!(e.created_at, 100);
    assert_eq!(e.id.len(), 32);
    // Selectors are stored canonically (sorted).
    assert_eq!(
        e.spec.selectors,
        vec![sel("unix:gid:100"), sel("unix:uid:1000")]
    );
    assert_eq!(s.get_entry(&e.id).await.unwrap().unwrap(), e);

    // The same identity with the same selectors in another order is a duplicate.
    let mut dup = spec("/web");
    dup.selectors.reverse();
    let err = s.create_entry(&dup, 101, &none).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate(_)), "{err:?}");
    // Different selectors are another entry.
    let mut other = spec("/web");
    other.selectors = vec![sel("unix:uid:0")];
    let e2 = s.create_entry(&other, 102, &none).await.unwrap();
    assert_ne!(e2.id, e.id);

    // Update with and without revision checks.
    let mut changed = spec("/web");
    changed.owner = "team-b".into();
    changed.environment = None;
    changed.hint = None;
    changed.expires_at = None;
    changed.admin = true;
    let u = s
        .update_entry(&e.id, &changed, Some(1), 200, &none)
        .await
        .unwrap();
    assert_eq!(u.revision, 2);
    assert_eq!(u.spec.owner, "team-b");
    assert_eq!(u.spec.environment, None);
    assert!(u.spec.admin);
    assert_eq!(u.created_at, 100);
    assert_eq!(u.updated_at, 200);
    let err = s
        .update_entry(&e.id, &changed, Some(1), 201, &none)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { actual: 2, .. }),
        "{err:?}"
    );
    let u3 = s
        .update_entry(&e.id, &changed, None, 202, &none)
        .await
        .unwrap();
    assert_eq!(u3.revision, 3);
    let err = s
        .update_entry("nope", &changed, None, 203, &none)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    // Updating into a duplicate of another entry is refused and changes nothing.
    let err = s
        .update_entry(&e2.id, &changed, None, 204, &none)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Duplicate(_)), "{err:?}");
    assert_eq!(s.get_entry(&e2.id).await.unwrap().unwrap(), e2);

    // Listing.
    let e3 = s.create_entry(&spec("/db"), 300, &none).await.unwrap();
    let all = s.list_entries().await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].id, e3.id, "ordered by SPIFFE ID");
    let by_parent = s
        .list_entries_by_parent(&id("spiffe://example.org/agent/a1"))
        .await
        .unwrap();
    assert_eq!(by_parent.len(), 3);
    assert!(
        s.list_entries_by_parent(&id("spiffe://example.org/agent/zz"))
            .await
            .unwrap()
            .is_empty()
    );

    // Delete returns what was deleted; a second delete is NotFound.
    let d = s.delete_entry(&e3.id, &none).await.unwrap();
    assert_eq!(d, e3);
    assert!(matches!(
        s.delete_entry(&e3.id, &none).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(s.get_entry(&e3.id).await.unwrap().is_none());
    assert_eq!(s.list_entries().await.unwrap().len(), 2);
}

async fn nodes<S: Store>(s: &S) {
    let agent = id("spiffe://example.org/lanyard/agent/join_token/abc");
    let n = Node {
        spiffe_id: agent.clone(),
        attestation_type: "join_token".into(),
        selectors: vec![sel("join_token:abc")],
        serial: "01".into(),
        expires_at: 1000,
        banned: false,
        created_at: 10,
        updated_at: 10,
        holdings: Default::default(),
        previous_serial: String::new(),
        superseded_count: 0,
        superseded_at: None,
    };
    s.upsert_node(&n).await.unwrap();
    assert_eq!(s.get_node(&agent).await.unwrap().unwrap(), n);
    let held = lanyard_store::NodeHoldings {
        reported_at: 15,
        authorities: [("ab12".to_string(), 900)].into_iter().collect(),
    };
    s.set_node_holdings(&agent, &held).await.unwrap();
    assert_eq!(s.get_node(&agent).await.unwrap().unwrap().holdings, held);
    assert!(matches!(
        s.set_node_holdings(&id("spiffe://example.org/ghost"), &held)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    s.set_node_holdings(&agent, &Default::default())
        .await
        .unwrap();
    let r = s.set_node_svid(&agent, "01", "02", 2000, 20).await.unwrap();
    assert_eq!(
        (r.serial.as_str(), r.expires_at, r.updated_at, r.created_at),
        ("02", 2000, 20, 10)
    );
    // The serial before the renewal stays accepted until the new one is presented.
    assert_eq!(r.previous_serial, "01");
    s.promote_node_serial(&agent, "01").await.unwrap();
    assert_eq!(
        s.get_node(&agent).await.unwrap().unwrap().previous_serial,
        "01"
    );
    s.promote_node_serial(&agent, "02").await.unwrap();
    assert_eq!(
        s.get_node(&agent).await.unwrap().unwrap().previous_serial,
        ""
    );
    let c = s.record_superseded_svid(&agent, 25, &none).await.unwrap();
    assert_eq!((c.superseded_count, c.superseded_at), (1, Some(25)));
    let c = s.record_superseded_svid(&agent, 26, &none).await.unwrap();
    assert_eq!((c.superseded_count, c.superseded_at), (2, Some(26)));
    assert!(matches!(
        s.record_superseded_svid(&id("spiffe://example.org/ghost"), 1, &none)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let b = s.set_node_banned(&agent, true, 30, &none).await.unwrap();
    assert!(b.banned);
    // Re-attestation (upsert) does not lift a ban.
    s.upsert_node(&Node {
        serial: "03".into(),
        updated_at: 40,
        ..n.clone()
    })
    .await
    .unwrap();
    let again = s.get_node(&agent).await.unwrap().unwrap();
    assert!(again.banned, "a ban survives re-attestation");
    assert_eq!(again.serial, "03");
    assert_eq!(again.created_at, 10);
    assert_eq!(s.list_nodes().await.unwrap().len(), 1);
    let evicted = s.delete_node(&agent, &none).await.unwrap();
    assert_eq!(evicted.spiffe_id, agent);
    assert!(s.get_node(&agent).await.unwrap().is_none());
    let ghost = id("spiffe://example.org/ghost");
    assert!(matches!(
        s.delete_node(&ghost, &none).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.set_node_banned(&ghost, true, 1, &none).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.set_node_svid(&ghost, "0", "1", 1, 1).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn join_tokens<S: Store>(s: &S) {
    let t = JoinToken {
        spiffe_id: Some(id("spiffe://example.org/node/1")),
        expires_at: 600,
    };
    s.create_join_token("h1", &t, 0, &none).await.unwrap();
    assert!(matches!(
        s.create_join_token("h1", &t, 0, &none).await,
        Err(StoreError::Duplicate(_))
    ));
    s.create_join_token(
        "h2",
        &JoinToken {
            spiffe_id: None,
            expires_at: 600,
        },
        0,
        &none,
    )
    .await
    .unwrap();
    assert_eq!(s.consume_join_token("h1").await.unwrap(), Some(t));
    assert_eq!(
        s.consume_join_token("h1").await.unwrap(),
        None,
        "single use"
    );
    assert_eq!(
        s.consume_join_token("h2").await.unwrap().unwrap().spiffe_id,
        None
    );
    assert_eq!(s.consume_join_token("unknown").await.unwrap(), None);
}

async fn concurrent_token_use_succeeds_once<S: Store + Clone + 'static>(s: &S) {
    s.create_join_token(
        "race",
        &JoinToken {
            spiffe_id: None,
            expires_at: 600,
        },
        0,
        &none,
    )
    .await
    .unwrap();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            s.consume_join_token("race").await.unwrap().is_some()
        }));
    }
    let mut wins = 0;
    for h in handles {
        if h.await.unwrap() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1, "a join token is consumed exactly once");
}

/// A replay key as the server computes it (hex SHA-256); any string works.
fn replay_key(tag: &str) -> String {
    format!("{tag:0>64}")
}

async fn attestation_replays<S: Store>(s: &S) {
    let k1 = replay_key("a1");
    assert!(
        s.record_attestation_token(&k1, "github", 1000, 100)
            .await
            .unwrap(),
        "first use is recorded"
    );
    assert!(
        !s.record_attestation_token(&k1, "github", 1000, 101)
            .await
            .unwrap(),
        "second use is a replay"
    );
    // The key alone decides: another attestor or another expiry is still a replay,
    // up to the last second of the token's lifetime.
    assert!(
        !s.record_attestation_token(&k1, "gitlab", 5000, 999)
            .await
            .unwrap()
    );
    let k2 = replay_key("b2");
    assert!(
        s.record_attestation_token(&k2, "github", 1000, 102)
            .await
            .unwrap(),
        "another token is its own first use"
    );
    // Once the token has expired (now >= expires_at) the key is free again, with the
    // new lifetime: a replay of the new use is refused.
    assert!(
        s.record_attestation_token(&k1, "github", 3000, 1000)
            .await
            .unwrap(),
        "an expired record does not block the key"
    );
    assert!(
        !s.record_attestation_token(&k1, "github", 3000, 2999)
            .await
            .unwrap(),
        "the replaced record carries the new expiry"
    );
    assert!(
        s.record_attestation_token(&k2, "github", 4000, 1500)
            .await
            .unwrap()
    );
}

/// Concurrent uses of one token (as from several servers): exactly one is accepted,
/// both for a new key and for a key whose earlier record has expired.
async fn concurrent_attestation_replays<S: Store + Clone + 'static>(s: &S) {
    async fn race<S: Store + Clone + 'static>(s: &S, key: &str, now: i64) -> usize {
        let mut handles = Vec::new();
        for _ in 0..12 {
            let s = s.clone();
            let key = key.to_string();
            handles.push(tokio::spawn(async move {
                s.record_attestation_token(&key, "k8s_psat", now + 600, now)
                    .await
                    .unwrap()
            }));
        }
        let mut wins = 0;
        for h in handles {
            if h.await.unwrap() {
                wins += 1;
            }
        }
        wins
    }
    for round in 0..4 {
        let key = replay_key(&format!("race{round}"));
        assert_eq!(race(s, &key, 10_000).await, 1, "new key, round {round}");
        assert_eq!(race(s, &key, 10_600).await, 1, "expired key, round {round}");
        assert_eq!(race(s, &key, 10_601).await, 0, "live key, round {round}");
    }
}

/// Expired records are deleted by later calls, oldest first and at most
/// `REPLAY_PRUNE_BATCH` per call; live ones stay. `rows` runs a statement and
/// returns how many rows it returned.
async fn attestation_replay_pruning<S, F, Fut>(s: &S, rows: F)
where
    S: Store,
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    const T: i64 = 1_000_000;
    let all = || rows("SELECT replay_key FROM attestation_replays".to_string());
    // Everything recorded before expires before T: this call prunes it.
    assert!(
        s.record_attestation_token(&replay_key("p0"), "test", T + 1, T)
            .await
            .unwrap()
    );
    assert_eq!(all().await, 1, "expired records are pruned");
    // More expired records than one call prunes, expiring at T+2, T+3 and T+4.
    let batch = usize::try_from(REPLAY_PRUNE_BATCH).unwrap();
    let n = batch + 5;
    let values: Vec<String> = (0..n)
        .map(|i| format!("('old-{i:04}', 'test', {}, {T})", T + 2 + (i % 3) as i64))
        .collect();
    rows(format!(
        "INSERT INTO attestation_replays (replay_key, attestor, expires_at, created_at) VALUES {}",
        values.join(",")
    ))
    .await;
    assert_eq!(all().await, n + 1);
    // At T+10 all n+1 are expired: one call deletes the oldest REPLAY_PRUNE_BATCH.
    assert!(
        s.record_attestation_token(&replay_key("p1"), "test", T + 100, T + 10)
            .await
            .unwrap()
    );
    assert_eq!(all().await, n + 1 - batch + 1);
    assert_eq!(
        rows(format!(
            "SELECT replay_key FROM attestation_replays WHERE expires_at = {}",
            T + 4
        ))
        .await,
        n + 1 - batch,
        "the oldest go first"
    );
    // The next call deletes the rest; the live record stays and still counts.
    assert!(
        s.record_attestation_token(&replay_key("p2"), "test", T + 100, T + 11)
            .await
            .unwrap()
    );
    assert_eq!(all().await, 2);
    assert!(
        !s.record_attestation_token(&replay_key("p1"), "test", T + 100, T + 12)
            .await
            .unwrap()
    );
    assert_eq!(all().await, 2);
}

async fn bundles<S: Store>(s: &S) {
    assert!(s.get_bundle("example.org").await.unwrap().is_none());
    let put = |doc: &'static str, now| s.put_bundle("example.org", doc, now, &none);
    assert_eq!(
        put("{\"keys\":[]}", 1).await.unwrap(),
        BundlePut {
            sequence: 1,
            changed: true
        }
    );
    let rev = s.change_revision().await.unwrap();
    // The same document again: nothing stored, no change in the feed.
    assert_eq!(
        put("{\"keys\":[]}", 2).await.unwrap(),
        BundlePut {
            sequence: 1,
            changed: false
        }
    );
    assert_eq!(s.change_revision().await.unwrap(), rev);
    assert_eq!(
        put("{\"keys\":[1]}", 2).await.unwrap(),
        BundlePut {
            sequence: 2,
            changed: true
        }
    );
    let feed = s.changes_since(rev, 10).await.unwrap();
    assert_eq!(feed.len(), 1);
    assert_eq!(
        (feed[0].kind, feed[0].key.as_str()),
        (ChangeKind::Bundle, "example.org")
    );
    assert_eq!(
        s.put_bundle("other.org", "{}", 2, &none)
            .await
            .unwrap()
            .sequence,
        1
    );
    let b = s.get_bundle("example.org").await.unwrap().unwrap();
    assert_eq!(b.sequence, 2);
    assert_eq!(b.document, "{\"keys\":[1]}");
}

fn authority(id: &str, not_after: i64) -> PublishedAuthority {
    PublishedAuthority {
        kind: AuthorityKind::X509,
        id: id.to_string(),
        state: "active".to_string(),
        not_after,
        public: "MIIB".to_string(),
    }
}

fn server(name: &str, authorities: Vec<PublishedAuthority>, now: i64) -> ServerRecord {
    ServerRecord {
        name: name.to_string(),
        address: "127.0.0.1:8081".to_string(),
        expires_at: authorities.iter().map(|a| a.not_after).max().unwrap_or(0),
        authorities,
        started_at: now,
        seen_at: now,
        deregistered_at: None,
    }
}

/// Servers publish their authorities; a change of authorities (not a heartbeat)
/// enters the change feed; a deregistered server stays out.
async fn servers<S: Store>(s: &S) {
    assert!(s.list_servers().await.unwrap().is_empty());
    let rev = s.change_revision().await.unwrap();
    let joined = |r: &ServerRegistration| {
        if r.joined {
            vec![audit_event(900)]
        } else {
            vec![]
        }
    };
    let a = s
        .register_server(&server("a", vec![authority("k1", 500)], 100), &joined)
        .await
        .unwrap();
    assert!(a.joined && a.authorities_changed);
    assert_eq!(a.record.deregistered_at, None);
    // A heartbeat: no change, no event.
    let audit_len = s.audit_records().await.unwrap().len();
    let again = s
        .register_server(&server("a", vec![authority("k1", 500)], 110), &joined)
        .await
        .unwrap();
    assert!(!again.joined && !again.authorities_changed);
    assert_eq!(s.audit_records().await.unwrap().len(), audit_len);
    // A rotation: a new authority.
    let rotated = s
        .register_server(
            &server("a", vec![authority("k1", 500), authority("k2", 900)], 120),
            &joined,
        )
        .await
        .unwrap();
    assert!(rotated.authorities_changed);
    s.register_server(&server("b", vec![authority("k3", 700)], 130), &joined)
        .await
        .unwrap();
    let listed = s.list_servers().await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(listed[0].authorities.len(), 2);
    assert_eq!(listed[0].expires_at, 900);
    assert_eq!(listed[0].seen_at, 120);
    let feed = s.changes_since(rev, 100).await.unwrap();
    assert_eq!(
        feed.iter()
            .map(|c| (c.kind, c.key.as_str()))
            .collect::<Vec<_>>(),
        [
            (ChangeKind::Server, "a"),
            (ChangeKind::Server, "a"),
            (ChangeKind::Server, "b")
        ]
    );
    // Deregistration: recorded with its event; a second one and an unknown name
    // are clear errors.
    let gone = s
        .deregister_server("b", 140, &|_| vec![audit_event(901)])
        .await
        .unwrap();
    assert_eq!(gone.deregistered_at, Some(140));
    assert!(matches!(
        s.deregister_server("b", 141, &none).await,
        Err(StoreError::Duplicate(m)) if m.contains("already deregistered")
    ));
    assert!(matches!(
        s.deregister_server("nope", 141, &none).await,
        Err(StoreError::NotFound { what: "server", .. })
    ));
    // A deregistered server that is still running keeps its heartbeat only.
    let back = s
        .register_server(&server("b", vec![authority("k4", 800)], 150), &joined)
        .await
        .unwrap();
    assert!(!back.joined && !back.authorities_changed);
    assert_eq!(back.record.deregistered_at, Some(140));
    let b = s
        .list_servers()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.name == "b")
        .unwrap();
    assert_eq!(b.authorities, vec![authority("k3", 700)]);
    assert_eq!((b.seen_at, b.deregistered_at), (150, Some(140)));
}

/// Sealed keys: the first writer wins, later inserts return the stored one.
async fn sealed_keys<S: Store>(s: &S) {
    assert!(s.get_sealed_key("secrets").await.unwrap().is_none());
    let first = SealedKey {
        name: "secrets".to_string(),
        sealed: "c2VhbGVk".to_string(),
        kek_id: "0011223344556677".to_string(),
        created_at: 5,
    };
    assert_eq!(s.insert_sealed_key(&first).await.unwrap(), first);
    let second = SealedKey {
        sealed: "b3RoZXI".to_string(),
        created_at: 6,
        ..first.clone()
    };
    assert_eq!(s.insert_sealed_key(&second).await.unwrap(), first);
    assert_eq!(s.get_sealed_key("secrets").await.unwrap(), Some(first));
    let audit = SealedKey {
        name: "audit/server-1".to_string(),
        sealed: "YQ".to_string(),
        kek_id: "0011223344556677".to_string(),
        created_at: 7,
    };
    assert_eq!(s.insert_sealed_key(&audit).await.unwrap(), audit);
}

/// Every audited change of what servers cache enters the change feed, in commit
/// order, and pruning keeps the newest.
async fn change_feed<S: Store>(s: &S) {
    let start = s.change_revision().await.unwrap();
    let e = s.create_entry(&spec("/feed"), 1, &none).await.unwrap();
    let mut changed = spec("/feed");
    changed.owner = "team-b".to_string();
    s.update_entry(&e.id, &changed, None, 2, &none)
        .await
        .unwrap();
    s.put_policy(
        "authz",
        "permit(principal, action, resource);",
        "t",
        3,
        &none,
    )
    .await
    .unwrap();
    s.revoke_jwt(
        &RevokedJwt {
            jti: "feed-jti".to_string(),
            spiffe_id: None,
            expires_at: 10_000,
            revoked_at: 4,
            reason: "test".to_string(),
        },
        &none,
    )
    .await
    .unwrap();
    s.delete_entry(&e.id, &none).await.unwrap();
    // A refused change leaves nothing in the feed.
    assert!(s.delete_entry(&e.id, &none).await.is_err());
    let feed = s.changes_since(start, 100).await.unwrap();
    assert_eq!(
        feed.iter()
            .map(|c| (c.kind, c.key.as_str()))
            .collect::<Vec<_>>(),
        [
            (ChangeKind::Entry, e.id.as_str()),
            (ChangeKind::Entry, e.id.as_str()),
            (ChangeKind::Policy, "authz"),
            (ChangeKind::DenyList, "feed-jti"),
            (ChangeKind::Entry, e.id.as_str()),
        ]
    );
    assert!(feed.windows(2).all(|w| w[0].revision < w[1].revision));
    assert_eq!(s.change_revision().await.unwrap(), feed[4].revision);
    // Paging.
    let first = s.changes_since(start, 2).await.unwrap();
    assert_eq!(first, feed[..2]);
    assert_eq!(
        s.changes_since(first[1].revision, 100).await.unwrap(),
        feed[2..]
    );
    // Pruning keeps the newest `keep`.
    s.prune_changes(2).await.unwrap();
    let left = s.changes_since(0, 100).await.unwrap();
    assert_eq!(left, feed[3..]);
    assert_eq!(s.change_revision().await.unwrap(), feed[4].revision);
}

/// A state change and its evidence-log event commit together: a refused change leaves
/// no event, concurrent audited changes and plain appends keep one intact chain.
async fn audited_changes<S: Store + Clone + 'static>(s: &S) {
    let before = s.audit_records().await.unwrap().len();
    let ev = |e: &lanyard_store::Entry| {
        let mut ev = audit_event(7);
        ev.id = format!("created-{}", e.id);
        ev.subject = Some(e.spec.spiffe_id.to_string());
        vec![ev]
    };
    let e = s.create_entry(&spec("/audited"), 10, &ev).await.unwrap();
    let created_id = e.id.clone();
    let recs = s.audit_records().await.unwrap();
    assert_eq!(recs.len(), before + 1);
    assert_eq!(recs.last().unwrap().event.id, format!("created-{}", e.id));
    // The chain head without reading the records: what checkpoints sign.
    let chain = s.audit_chain().await.unwrap();
    assert_eq!(chain, lanyard_audit::Chain::after(recs.last()));
    // A duplicate is refused and records nothing.
    assert!(matches!(
        s.create_entry(&spec("/audited"), 11, &ev).await,
        Err(StoreError::Duplicate(_))
    ));
    // A stale revision is refused and records nothing.
    let stale = s
        .update_entry(&e.id, &spec("/audited"), Some(9), 12, &|_| {
            vec![audit_event(8)]
        })
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { actual: 1, .. })),
        "{stale:?}"
    );
    assert!(matches!(
        s.delete_entry("0123456789abcdef0123456789abcdef", &|_| vec![audit_event(
            9
        )])
        .await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.audit_records().await.unwrap().len(), before + 1);
    // Concurrent audited changes and plain appends interleave into one chain.
    let mut handles = Vec::new();
    for t in 0..4u64 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..3u64 {
                let path = format!("/race/{t}/{i}");
                let n = 1000 + t * 10 + i;
                s.create_entry(&spec(&path), 20, &move |_| vec![audit_event(n)])
                    .await
                    .unwrap();
                s.append_audit(&[audit_event(n + 500)]).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let recs = s.audit_records().await.unwrap();
    assert_eq!(recs.len(), before + 1 + 24);
    let mut chain = lanyard_audit::Chain::default();
    for r in &recs {
        let again = chain.append(r.event.clone()).unwrap();
        assert_eq!(
            again.columns, None,
            "a record that was never stored has no columns"
        );
        let stored = lanyard_audit::Record {
            columns: Some(lanyard_audit::IndexColumns::of(&r.event)),
            ..again
        };
        assert_eq!(&stored, r, "record {} does not chain", r.seq);
    } // Leave the entries as the other checks expect them.
    for e in s.list_entries().await.unwrap() {
        if e.spec.spiffe_id.path().starts_with("/race/") || e.id == created_id {
            s.delete_entry(&e.id, &none).await.unwrap();
        }
    }
}

/// Policies, the JWT deny-list, exceptions and identity activity.
async fn governance<S: Store>(s: &S) {
    use lanyard_store::{Exception, RevokedJwt};
    assert_eq!(s.get_policy("registration").await.unwrap(), None);
    let p1 = s
        .put_policy(
            "registration",
            "permit(principal, action, resource);",
            "uid:0",
            5,
            &none,
        )
        .await
        .unwrap();
    assert_eq!(p1.version, 1);
    let p2 = s
        .put_policy(
            "registration",
            "forbid(principal, action, resource);",
            "uid:1",
            6,
            &|p| {
                vec![{
                    let mut e = audit_event(4000);
                    e.evidence.insert("version".into(), p.version.into());
                    e
                }]
            },
        )
        .await
        .unwrap();
    assert_eq!((p2.version, p2.updated_by.as_str()), (2, "uid:1"));
    assert_eq!(
        s.get_policy("registration").await.unwrap().unwrap().body,
        "forbid(principal, action, resource);"
    );
    assert_eq!(s.get_policy("authz").await.unwrap(), None);

    let r = RevokedJwt {
        jti: "j1".into(),
        spiffe_id: Some("spiffe://example.org/w".into()),
        expires_at: 100,
        revoked_at: 10,
        reason: "leaked".into(),
    };
    s.revoke_jwt(&r, &none).await.unwrap();
    assert!(matches!(
        s.revoke_jwt(&r, &none).await,
        Err(StoreError::Duplicate(_))
    ));
    s.revoke_jwt(
        &RevokedJwt {
            jti: "j2".into(),
            expires_at: 50,
            ..r.clone()
        },
        &none,
    )
    .await
    .unwrap();
    assert_eq!(
        s.revoked_jwts(60).await.unwrap(),
        vec![r.clone()],
        "expired revocations are left out"
    );

    let e = Exception {
        name: "legacy-db".into(),
        owner: "team-a".into(),
        justification: "vendor app".into(),
        allowed: vec![id("spiffe://example.org/web")],
        expires_at: 1000,
        created_at: 10,
        created_by: "uid:0".into(),
        revoked_at: None,
        sealed: "c2VhbGVk".into(),
    };
    s.create_exception(&e, &none).await.unwrap();
    assert!(matches!(
        s.create_exception(&e, &none).await,
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(s.get_exception("legacy-db").await.unwrap().unwrap(), e);
    assert_eq!(s.list_exceptions().await.unwrap().len(), 1);
    let revoked = s.revoke_exception("legacy-db", 20, &none).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(20));
    assert_eq!(revoked.sealed, e.sealed);
    assert!(matches!(
        s.revoke_exception("legacy-db", 21, &none).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.revoke_exception("nope", 21, &none).await,
        Err(StoreError::NotFound { .. })
    ));

    let mut issued = audit_event(5000);
    issued.kind = lanyard_audit::EventKind::X509SvidIssued;
    issued.subject = Some("spiffe://example.org/active".into());
    let mut delivered = issued.clone();
    delivered.kind = lanyard_audit::EventKind::WorkloadSvidDelivered;
    delivered.id = "delivery-1".into();
    delivered.time += 5;
    let mut later = delivered.clone();
    later.id = "delivery-2".into();
    later.time += 5;
    s.append_audit(&[issued.clone(), delivered, later])
        .await
        .unwrap();
    let act = s.identity_activity().await.unwrap();
    let a = act
        .iter()
        .find(|a| a.subject == "spiffe://example.org/active")
        .unwrap();
    assert_eq!(a.last_issued_ms, Some(issued.time));
    assert_eq!(a.last_delivery.as_ref().unwrap().id, "delivery-2");
}

/// Batches: one transaction, one event per written entry, per-entry refusals that
/// leave the rest written.
async fn entry_batches<S: Store>(s: &S) {
    let before_entries = s.list_entries().await.unwrap().len();
    let before_events = s.audit_records().await.unwrap().len();
    let ev = |out: &lanyard_store::BatchOutcome| {
        out.iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|e| {
                let mut ev = audit_event(3);
                ev.id = format!("batch-{}-{}", e.id, e.revision);
                ev.subject = Some(e.spec.spiffe_id.to_string());
                ev
            })
            .collect()
    };
    // An existing entry, then a batch with a duplicate of it, a duplicate within
    // the batch, and federated trust domains.
    let existing = s.create_entry(&spec("/batch/0"), 5, &none).await.unwrap();
    let mut fed = spec("/batch/2");
    fed.federates_with = vec![
        lanyard_core::TrustDomain::new("partner.example").unwrap(),
        lanyard_core::TrustDomain::new("spiffe://other.example").unwrap(),
    ];
    let specs = vec![
        spec("/batch/1"),
        spec("/batch/0"),
        fed.clone(),
        spec("/batch/1"),
        spec("/batch/3"),
    ];
    let feed_before = s.changes_since(0, 1_000_000).await.unwrap();
    let out = s.create_entries(&specs, 50, &ev).await.unwrap();
    assert_eq!(out.len(), 5);
    // One change-feed record per written entry, keyed by its id.
    let feed: Vec<_> = s
        .changes_since(feed_before.last().map_or(0, |c| c.revision), 1_000_000)
        .await
        .unwrap();
    let written: Vec<String> = out
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|e| e.id.clone()))
        .collect();
    assert_eq!(
        feed.iter().map(|c| c.key.clone()).collect::<Vec<_>>(),
        written
    );
    assert!(feed.iter().all(|c| c.kind == ChangeKind::Entry));
    assert!(
        out[0].is_ok() && out[2].is_ok() && out[4].is_ok(),
        "{out:?}"
    );
    assert!(
        matches!(out[1], Err(StoreError::Duplicate(_))),
        "{:?}",
        out[1]
    );
    assert!(
        matches!(out[3], Err(StoreError::Duplicate(_))),
        "{:?}",
        out[3]
    );
    let created: Vec<_> = out
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .cloned()
        .collect();
    for e in &created {
        assert_eq!(e.revision, 1);
        assert_eq!(e.created_at, 50);
        assert_eq!(s.get_entry(&e.id).await.unwrap().as_ref(), Some(e));
    }
    let stored_fed = s.get_entry(&created[1].id).await.unwrap().unwrap();
    assert_eq!(stored_fed.spec.federates_with, fed.federates_with);
    assert_eq!(
        s.list_entries().await.unwrap().len(),
        before_entries + 1 + 3
    );
    let recs = s.audit_records().await.unwrap();
    assert_eq!(recs.len(), before_events + 3, "one event per created entry");
    assert_eq!(
        recs[before_events].event.id,
        format!("batch-{}-1", created[0].id)
    );

    // Updates: one applied, one stale, one unknown, one colliding with another.
    let mut changed = spec("/batch/1");
    changed.owner = "team-z".into();
    let updates = vec![
        EntryUpdate {
            id: created[0].id.clone(),
            spec: changed.clone(),
            expected_revision: Some(1),
        },
        EntryUpdate {
            id: created[2].id.clone(),
            spec: spec("/batch/3"),
            expected_revision: Some(7),
        },
        EntryUpdate {
            id: "0123456789abcdef0123456789abcdef".into(),
            spec: spec("/batch/9"),
            expected_revision: None,
        },
        EntryUpdate {
            id: created[2].id.clone(),
            spec: spec("/batch/0"),
            expected_revision: None,
        },
    ];
    let out = s.update_entries(&updates, 60, &ev).await.unwrap();
    let u = out[0].as_ref().unwrap();
    assert_eq!(
        (u.revision, u.updated_at, u.spec.owner.as_str()),
        (2, 60, "team-z")
    );
    assert!(
        matches!(
            out[1],
            Err(StoreError::Conflict {
                expected: 7,
                actual: 1,
                ..
            })
        ),
        "{:?}",
        out[1]
    );
    assert!(
        matches!(out[2], Err(StoreError::NotFound { .. })),
        "{:?}",
        out[2]
    );
    assert!(
        matches!(out[3], Err(StoreError::Duplicate(_))),
        "{:?}",
        out[3]
    );
    assert_eq!(
        s.get_entry(&created[2].id).await.unwrap().unwrap().revision,
        1,
        "a refused update changes nothing"
    );
    assert_eq!(s.audit_records().await.unwrap().len(), before_events + 4);

    // Deletes: known ones deleted and returned, an unknown one reported.
    let ids = vec![
        created[0].id.clone(),
        "0123456789abcdef0123456789abcdef".to_string(),
        created[1].id.clone(),
        created[2].id.clone(),
        existing.id.clone(),
    ];
    let out = s.delete_entries(&ids, &ev).await.unwrap();
    assert_eq!(out[0].as_ref().unwrap().spec.owner, "team-z");
    assert!(
        matches!(out[1], Err(StoreError::NotFound { .. })),
        "{:?}",
        out[1]
    );
    assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 4);
    assert_eq!(s.list_entries().await.unwrap().len(), before_entries);
    assert_eq!(s.audit_records().await.unwrap().len(), before_events + 8);

    // An empty batch is a no-op.
    assert!(s.create_entries(&[], 70, &ev).await.unwrap().is_empty());

    // A batch over several INSERT statements, with a duplicate across them.
    let mut many: Vec<EntrySpec> = (0..150).map(|i| spec(&format!("/bulk/{i}"))).collect();
    many[120] = spec("/bulk/5");
    let out = s.create_entries(&many, 80, &none).await.unwrap();
    assert!(
        matches!(out[120], Err(StoreError::Duplicate(_))),
        "{:?}",
        out[120]
    );
    assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 149);
    let stored = s.list_entries().await.unwrap();
    for e in out.iter().filter_map(|r| r.as_ref().ok()) {
        assert!(stored.contains(e), "{e:?} is not stored as returned");
    }
    let ids: Vec<String> = out
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|e| e.id.clone()))
        .collect();
    let out = s.delete_entries(&ids, &none).await.unwrap();
    assert!(out.iter().all(Result::is_ok));
    assert_eq!(s.list_entries().await.unwrap().len(), before_entries);
}

async fn suite<S: Store + Clone + 'static>(s: S) {
    entries(&s).await;
    entry_batches(&s).await;
    governance(&s).await;
    audited_changes(&s).await;
    nodes(&s).await;
    join_tokens(&s).await;
    concurrent_token_use_succeeds_once(&s).await;
    attestation_replays(&s).await;
    concurrent_attestation_replays(&s).await;
    bundles(&s).await;
    servers(&s).await;
    change_feed(&s).await;
    sealed_keys(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lanyard.db");
    suite(SqliteStore::open(&path).await.unwrap()).await;
    // Everything acknowledged survives closing and reopening the database.
    let reopened = SqliteStore::open(&path).await.unwrap();
    assert_eq!(reopened.list_entries().await.unwrap().len(), 2);
    assert_eq!(
        reopened
            .get_bundle("example.org")
            .await
            .unwrap()
            .unwrap()
            .sequence,
        2
    );
    // A recorded attestation token is still a replay after reopening.
    assert!(
        !reopened
            .record_attestation_token(&replay_key("race3"), "k8s_psat", 12_000, 11_000)
            .await
            .unwrap()
    );
    // And through the run-time selected store.
    let any = AnyStore::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(any.list_entries().await.unwrap().len(), 2);
    assert!(
        !any.record_attestation_token(&replay_key("race3"), "k8s_psat", 12_000, 11_000)
            .await
            .unwrap()
    );
    let pool = reopened.pool().clone();
    attestation_replay_pruning(&any, |sql| {
        let pool = pool.clone();
        async move {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(&pool)
                .await
                .unwrap()
                .len()
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conformance() {
    let (url, name) = fresh_pg_db().await;
    {
        let store = PgStore::connect(&url).await.unwrap();
        suite(store.clone()).await;
        store.pool().close().await;
        let reopened = PgStore::connect(&url).await.unwrap();
        assert_eq!(reopened.list_entries().await.unwrap().len(), 2);
        let any = AnyStore::open(&url).await.unwrap();
        assert_eq!(any.list_entries().await.unwrap().len(), 2);
        assert!(
            !any.record_attestation_token(&replay_key("race3"), "k8s_psat", 12_000, 11_000)
                .await
                .unwrap(),
            "a recorded attestation token is still a replay after reconnecting"
        );
        let pool = reopened.pool().clone();
        attestation_replay_pruning(&any, |sql| {
            let pool = pool.clone();
            async move {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&pool)
                    .await
                    .unwrap()
                    .len()
            }
        })
        .await;
        reopened.pool().close().await;
        if let AnyStore::Postgres(p) = any {
            p.pool().close().await;
        }
    }
    drop_pg_db(&name).await;
}

/// Two servers on one PostgreSQL database: a change committed through one is
/// announced to the other's listener with its revision, and the feed names its
/// origin; concurrent writers on both get distinct revisions, all in the feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_change_notifications() {
    let (url, name) = fresh_pg_db().await;
    {
        let a = AnyStore::open(&url).await.unwrap().with_origin("server-a");
        let b = AnyStore::open(&url).await.unwrap().with_origin("server-b");
        let mut heard = b.listen_changes().await.unwrap().unwrap();
        let e = a.create_entry(&spec("/notified"), 1, &none).await.unwrap();
        let rev = a.change_revision().await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), heard.next())
            .await
            .expect("no notification within 5 s")
            .unwrap();
        assert_eq!(got, Heard::Revision(rev));
        let feed = b.changes_since(rev - 1, 10).await.unwrap();
        assert_eq!(feed.len(), 1);
        assert_eq!(
            (feed[0].kind, feed[0].key.as_str(), feed[0].origin.as_str()),
            (ChangeKind::Entry, e.id.as_str(), "server-a")
        );
        // A refused change is not announced.
        assert!(a.delete_entry("missing", &none).await.is_err());
        // Concurrent writers through both stores.
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20 {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.spawn(async move {
                s.create_entry(&spec(&format!("/c{i}")), 2, &none)
                    .await
                    .unwrap()
            });
        }
        while tasks.join_next().await.is_some() {}
        let feed = a.changes_since(rev, 100).await.unwrap();
        assert_eq!(feed.len(), 20);
        assert!(feed.windows(2).all(|w| w[0].revision < w[1].revision));
        let mut seen = 0;
        while seen < 20 {
            match tokio::time::timeout(std::time::Duration::from_secs(5), heard.next())
                .await
                .expect("a notification was lost")
                .unwrap()
            {
                Heard::Revision(r) => {
                    assert!(r > rev);
                    seen += 1;
                }
                Heard::Reconnected => panic!("unexpected reconnect"),
            }
        }
        // The listener holds a connection of b's pool until dropped.
        drop(heard);
        for s in [a, b] {
            if let AnyStore::Postgres(p) = s {
                p.pool().close().await;
            }
        }
    }
    drop_pg_db(&name).await;
}

#[tokio::test]
async fn bad_locations_are_clear_errors() {
    let err = AnyStore::open("postgres://nobody@127.0.0.1:1/x")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Open(_)), "{err:?}");
    let err = SqliteStore::open(std::path::Path::new("/nonexistent-dir/x/lanyard.db"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent-dir"), "{err}");
}

fn audit_event(i: u64) -> lanyard_audit::Event {
    lanyard_audit::Event {
        version: lanyard_audit::SCHEMA_VERSION,
        id: format!("ev-{i}"),
        time: 1_800_000_000_000 + i as i64,
        kind: lanyard_audit::EventKind::EntryCreated,
        actor: Some("uid:0".into()),
        subject: Some(format!("spiffe://example.org/w{i}")),
        evidence: Default::default(),
        policy_ids: vec![],
        decision: None,
        outcome: lanyard_audit::Outcome::Success,
        reason: None,
        owner: Some("team-a".into()),
        trace_id: None,
        parent_id: None,
        server_id: "s1".into(),
    }
}

/// The evidence log in the store: appends chain, concurrent appenders serialize, and
/// tampering with the stored rows directly (modify, delete a middle record, delete the
/// newest records, reorder) is detected by verification.
async fn audit_log<S, F, Fut>(s: &S, exec: F)
where
    S: Store + Clone + 'static,
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use lanyard_audit::{AuditKey, Chain, VerifyError, verify};
    let (key, _) = AuditKey::generate().unwrap();
    let first = s
        .append_audit(&[audit_event(0), audit_event(1)])
        .await
        .unwrap();
    assert_eq!(first.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0, 1]);
    let mut handles = Vec::new();
    for t in 0..6u64 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..4u64 {
                s.append_audit(&[audit_event(100 + t * 10 + i)])
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let records = s.audit_records().await.unwrap();
    assert_eq!(records.len(), 26);
    let chain = Chain::after(records.last());
    let cp = key.checkpoint(&chain, 1).unwrap();
    s.put_audit_checkpoint(&cp).await.unwrap();
    s.put_audit_checkpoint(&cp).await.unwrap(); // idempotent
    let cps = s.audit_checkpoints().await.unwrap();
    assert_eq!(cps, vec![cp.clone()]);
    let summary = verify(&records, &cps, &key.public_key()).unwrap();
    assert_eq!(summary.events, 26);

    // Modify a stored record.
    exec("UPDATE audit_events SET event = REPLACE(event, 'team-a', 'team-b') WHERE seq = 7").await;
    let r = s.audit_records().await.unwrap();
    assert_eq!(
        verify(&r, &cps, &key.public_key()),
        Err(VerifyError::Modified { seq: 7 })
    );
    exec("UPDATE audit_events SET event = REPLACE(event, 'team-b', 'team-a') WHERE seq = 7").await;
    assert!(verify(&s.audit_records().await.unwrap(), &cps, &key.public_key()).is_ok());

    // Edit every other stored column in turn; each edit is named, each undo verifies.
    let edits: [(&str, &str, &str); 6] = [
        (
            "UPDATE audit_events SET time = time + 1 WHERE seq = 5",
            "UPDATE audit_events SET time = time - 1 WHERE seq = 5",
            "time",
        ),
        (
            "UPDATE audit_events SET kind = 'x' || kind WHERE seq = 5",
            "UPDATE audit_events SET kind = SUBSTR(kind, 2) WHERE seq = 5",
            "kind",
        ),
        (
            "UPDATE audit_events SET subject = subject || 'x' WHERE seq = 5",
            "UPDATE audit_events SET subject = SUBSTR(subject, 1, LENGTH(subject) - 1) WHERE seq = 5",
            "subject",
        ),
        (
            "UPDATE audit_events SET subject = NULL WHERE seq = 5",
            "",
            "subject",
        ), // restored from the saved value below
        (
            "UPDATE audit_events SET hash = hash || 'x' WHERE seq = 5",
            "UPDATE audit_events SET hash = SUBSTR(hash, 1, LENGTH(hash) - 1) WHERE seq = 5",
            "hash",
        ),
        (
            "UPDATE audit_events SET prev_hash = prev_hash || 'x' WHERE seq = 5",
            "UPDATE audit_events SET prev_hash = SUBSTR(prev_hash, 1, LENGTH(prev_hash) - 1) WHERE seq = 5",
            "prev_hash",
        ),
    ];
    for (edit, undo, column) in edits {
        let before = s.audit_records().await.unwrap()[5].clone();
        exec(edit).await;
        let r = s.audit_records().await.unwrap();
        let res = verify(&r, &cps, &key.public_key());
        let named = match (&res, column) {
            (
                Err(VerifyError::ColumnMismatch {
                    seq: 5, column: c, ..
                }),
                _,
            ) => *c == column,
            (Err(VerifyError::Modified { seq: 5 }), "hash") => true,
            (Err(VerifyError::BrokenLink { seq: 6, .. }), "hash") => true,
            (Err(VerifyError::BrokenLink { seq: 5, .. }), "prev_hash") => true,
            _ => false,
        };
        assert!(named, "editing {column}: {res:?}");
        if column == "subject" && r[5].columns.as_ref().unwrap().subject.is_none() {
            // Restore the NULLed subject exactly.
            let sql = format!(
                "UPDATE audit_events SET subject = '{}' WHERE seq = 5",
                before.columns.as_ref().unwrap().subject.clone().unwrap()
            );
            exec(Box::leak(sql.into_boxed_str())).await;
        } else {
            exec(undo).await;
        }
        let r = s.audit_records().await.unwrap();
        assert_eq!(r[5], before, "undoing the {column} edit");
        assert!(verify(&r, &cps, &key.public_key()).is_ok());
    }

    // Reorder two records.
    exec("UPDATE audit_events SET seq = -1 WHERE seq = 3").await;
    exec("UPDATE audit_events SET seq = 3 WHERE seq = 9").await;
    exec("UPDATE audit_events SET seq = 9 WHERE seq = -1").await;
    let r = s.audit_records().await.unwrap();
    let res = verify(&r, &cps, &key.public_key());
    assert!(
        matches!(
            res,
            Err(VerifyError::BrokenLink { seq: 3, .. }) | Err(VerifyError::Modified { seq: 3 })
        ),
        "{res:?}"
    );
    exec("UPDATE audit_events SET seq = -1 WHERE seq = 3").await;
    exec("UPDATE audit_events SET seq = 3 WHERE seq = 9").await;
    exec("UPDATE audit_events SET seq = 9 WHERE seq = -1").await;
    assert!(verify(&s.audit_records().await.unwrap(), &cps, &key.public_key()).is_ok());

    // Delete a middle record.
    exec("DELETE FROM audit_events WHERE seq = 12").await;
    let r = s.audit_records().await.unwrap();
    assert_eq!(
        verify(&r, &cps, &key.public_key()),
        Err(VerifyError::Gap {
            expected: 12,
            found: 13
        })
    );

    // Delete the newest records: only the checkpoint can tell.
    exec("DELETE FROM audit_events WHERE seq >= 12").await;
    let r = s.audit_records().await.unwrap();
    assert!(verify(&r, &[], &key.public_key()).is_ok());
    assert_eq!(
        verify(&r, &cps, &key.public_key()),
        Err(VerifyError::Truncated {
            size: 26,
            present: 12
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("a.db")).await.unwrap();
    let pool = store.pool().clone();
    audit_log(&store, |sql| {
        let pool = pool.clone();
        async move {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_audit_log() {
    let (url, name) = fresh_pg_db().await;
    {
        let store = PgStore::connect(&url).await.unwrap();
        let pool = store.pool().clone();
        audit_log(&store, |sql| {
            let pool = pool.clone();
            async move {
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
        })
        .await;
        store.pool().close().await;
    }
    drop_pg_db(&name).await;
}

/// Every migration of `dialect` before 0007 (the schema before entries had
/// `federates_with`), and the folder it reads them from.
async fn migrations_before_0007(dialect: &str) -> (sqlx::migrate::Migrator, tempfile::TempDir) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    let dst = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        let name = f.file_name().into_string().unwrap();
        let version: u32 = name[..4].parse().unwrap();
        if version < 7 {
            std::fs::copy(f.path(), dst.path().join(&name)).unwrap();
        }
    }
    (sqlx::migrate::Migrator::new(dst.path()).await.unwrap(), dst)
}

const OLD_ENTRY: &str = "INSERT INTO entries (id, spiffe_id, parent_id, selectors, owner, revision, created_at, updated_at) \
     VALUES ('0123456789abcdef0123456789abcdef', 'spiffe://example.org/old', 'spiffe://example.org/agent/a1', '[\"unix:uid:1\"]', 'team-old', 1, 5, 5)";

async fn old_entry_reads_back<S: Store>(s: &S) {
    let e = s
        .get_entry("0123456789abcdef0123456789abcdef")
        .await
        .unwrap()
        .unwrap();
    assert!(e.spec.federates_with.is_empty());
    assert_eq!(e.spec.owner, "team-old");
    assert_eq!(e.spec.selectors, vec![sel("unix:uid:1")]);
}

#[tokio::test]
async fn sqlite_entries_written_before_0007_migrate() {
    let (migrations, _dir) = migrations_before_0007("sqlite").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lanyard.db");
    let pool = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    migrations.run(&pool).await.unwrap();
    sqlx::query(OLD_ENTRY).execute(&pool).await.unwrap();
    pool.close().await;
    old_entry_reads_back(&SqliteStore::open(&path).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_entries_written_before_0007_migrate() {
    let (migrations, _dir) = migrations_before_0007("postgres").await;
    let (url, name) = fresh_pg_db().await;
    {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        migrations.run(&pool).await.unwrap();
        sqlx::query(OLD_ENTRY).execute(&pool).await.unwrap();
        pool.close().await;
        let store = PgStore::connect(&url).await.unwrap();
        old_entry_reads_back(&store).await;
        store.pool().close().await;
    }
    drop_pg_db(&name).await;
}
