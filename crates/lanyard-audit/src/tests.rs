//! Tamper tests: modify, delete in the middle, delete the newest, reorder, forge.

use super::*;

fn event(i: u64) -> Event {
    let mut evidence = BTreeMap::new();
    evidence.insert("serial".to_string(), Value::String(format!("{i:032x}")));
    evidence.insert(
        "selectors".to_string(),
        serde_json::json!(["unix:uid:1000", "unix:gid:100"]),
    );
    Event {
        version: SCHEMA_VERSION,
        id: format!("ev-{i}"),
        time: 1_800_000_000_000 + i as i64,
        kind: EventKind::X509SvidIssued,
        actor: Some("spiffe://example.org/lanyard/agent/a".into()),
        subject: Some("spiffe://example.org/web".into()),
        evidence,
        policy_ids: vec![],
        decision: None,
        outcome: Outcome::Success,
        reason: None,
        owner: Some("team-a".into()),
        trace_id: Some("t1".into()),
        parent_id: None,
        server_id: "s1".into(),
    }
}

fn log(n: u64) -> (Vec<Record>, Chain) {
    let mut chain = Chain::default();
    let records = (0..n).map(|i| chain.append(event(i)).unwrap()).collect();
    (records, chain)
}

#[test]
fn intact_log_verifies_with_checkpoints() {
    let (key, pkcs8) = AuditKey::generate().unwrap();
    let (records, chain) = log(10);
    let cp = key.checkpoint(&chain, 5).unwrap();
    let s = verify(&records, &[cp], &key.public_key()).unwrap();
    assert_eq!(s.events, 10);
    assert_eq!(s.checkpoints, 1);
    assert_eq!(s.head, chain.head);
    // The key reloads from storage with the same id.
    assert_eq!(AuditKey::from_pkcs8(&pkcs8).unwrap().id(), key.id());
    // Resuming after the last record continues the same chain.
    let mut resumed = Chain::after(records.last());
    let mut more = records.clone();
    more.push(resumed.append(event(10)).unwrap());
    verify(&more, &[], &key.public_key()).unwrap();
    assert!(verify(&[], &[], &key.public_key()).is_ok());
}

#[test]
fn checkpoints_of_several_servers_verify_each_with_its_pinned_key() {
    let (a, _) = AuditKey::generate().unwrap();
    let (b, _) = AuditKey::generate().unwrap();
    let (other, _) = AuditKey::generate().unwrap();
    let (records, chain) = log(6);
    let cps = vec![
        a.checkpoint(&chain, 5).unwrap(),
        b.checkpoint(&chain, 6).unwrap(),
    ];
    let keys = vec![a.public_key().to_vec(), b.public_key().to_vec()];
    let s = verify_with_keys(&records, &cps, &keys).unwrap();
    assert_eq!(s.checkpoints, 2);
    assert_eq!(key_id(&a.public_key()), a.id());
    // A server whose key is not pinned: named, refused.
    let pinned = vec![keys[0].clone(), other.public_key().to_vec()];
    let e = verify_with_keys(&records, &cps, &pinned).unwrap_err();
    assert_eq!(
        e,
        VerifyError::UnknownKey {
            size: 6,
            key_id: b.id().to_string()
        }
    );
    assert!(e.to_string().contains("--public-key"), "{e}");
    // One pinned key checks every checkpoint with it (b's fails).
    assert!(matches!(
        verify(&records, &cps, &a.public_key()),
        Err(VerifyError::BadCheckpoint { size: 6, .. })
    ));
    // A checkpoint naming a's key but signed by another key is forged.
    let mut forged = other.checkpoint(&chain, 7).unwrap();
    forged.key_id = a.id().to_string();
    assert!(matches!(
        verify_with_keys(&records, &[forged], &keys),
        Err(VerifyError::BadCheckpoint { .. })
    ));
}

#[test]
fn a_modified_record_is_named() {
    let (key, _) = AuditKey::generate().unwrap();
    let (mut records, _) = log(6);
    records[3].event.subject = Some("spiffe://example.org/admin".into());
    assert_eq!(
        verify(&records, &[], &key.public_key()),
        Err(VerifyError::Modified { seq: 3 })
    );
    // Re-hashing the modified record breaks the next link instead.
    let (mut records, _) = log(6);
    records[3].event.outcome = Outcome::Denied;
    records[3].hash = record_hash(3, &records[3].prev_hash, &records[3].event).unwrap();
    assert_eq!(
        verify(&records, &[], &key.public_key()),
        Err(VerifyError::BrokenLink { seq: 4, prev: 3 })
    );
}

#[test]
fn a_removed_middle_record_is_named() {
    let (key, _) = AuditKey::generate().unwrap();
    let (mut records, _) = log(6);
    records.remove(2);
    assert_eq!(
        verify(&records, &[], &key.public_key()),
        Err(VerifyError::Gap {
            expected: 2,
            found: 3
        })
    );
}

#[test]
fn reordering_is_detected() {
    let (key, _) = AuditKey::generate().unwrap();
    let (mut records, _) = log(6);
    records.swap(1, 4);
    assert_eq!(
        verify(&records, &[], &key.public_key()),
        Err(VerifyError::Gap {
            expected: 1,
            found: 4
        })
    );
    // Even with sequence numbers rewritten to look contiguous.
    let (mut records, _) = log(6);
    records.swap(1, 4);
    for (i, r) in records.iter_mut().enumerate() {
        r.seq = i as u64;
    }
    assert!(verify(&records, &[], &key.public_key()).is_err());
}

#[test]
fn removing_the_newest_records_is_caught_by_the_checkpoint() {
    let (key, _) = AuditKey::generate().unwrap();
    let (mut records, chain) = log(8);
    let cp = key.checkpoint(&chain, 9).unwrap();
    records.truncate(5);
    // Without a checkpoint the shorter log looks fine ...
    assert!(verify(&records, &[], &key.public_key()).is_ok());
    // ... with it, the removal is named.
    assert_eq!(
        verify(&records, &[cp], &key.public_key()),
        Err(VerifyError::Truncated {
            size: 8,
            present: 5
        })
    );
}

#[test]
fn forged_or_rewritten_checkpoints_fail() {
    let (key, _) = AuditKey::generate().unwrap();
    let (other, _) = AuditKey::generate().unwrap();
    let (records, chain) = log(4);
    let mut cp = key.checkpoint(&chain, 1).unwrap();
    cp.size = 3;
    assert!(matches!(
        verify(&records, &[cp], &key.public_key()),
        Err(VerifyError::BadCheckpoint { .. })
    ));
    let cp = other.checkpoint(&chain, 1).unwrap();
    assert!(matches!(
        verify(&records, &[cp], &key.public_key()),
        Err(VerifyError::BadCheckpoint { .. })
    ));
    // A whole rewritten log (re-chained from scratch) disagrees with the old checkpoint.
    let cp = key.checkpoint(&chain, 1).unwrap();
    let mut forged_chain = Chain::default();
    let forged: Vec<Record> = (0..4)
        .map(|i| {
            let mut e = event(i);
            e.owner = Some("someone-else".into());
            forged_chain.append(e).unwrap()
        })
        .collect();
    assert_eq!(
        verify(&forged, &[cp], &key.public_key()),
        Err(VerifyError::CheckpointMismatch { seq: 3, size: 4 })
    );
}

#[test]
fn the_encoding_is_canonical_and_the_schema_strict() {
    let a = canonical(&event(1)).unwrap();
    let b = canonical(&serde_json::from_slice::<Event>(&a).unwrap()).unwrap();
    assert_eq!(a, b, "decode + encode is stable");
    let text = String::from_utf8(a).unwrap();
    assert!(text.contains("\"kind\":\"x509_svid_issued\""), "{text}");
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["unexpected"] = Value::Bool(true);
    assert!(
        serde_json::from_value::<Event>(v).is_err(),
        "unknown fields are refused"
    );
}

#[test]
fn stored_index_columns_must_match_the_hashed_event() {
    let (key, _) = AuditKey::generate().unwrap();
    let (mut records, _) = log(4);
    for r in &mut records {
        r.columns = Some(IndexColumns::of(&r.event));
    }
    verify(&records, &[], &key.public_key()).unwrap();
    type Edit = fn(&mut IndexColumns);
    let edits: [(&str, Edit); 4] = [
        ("time", |c| c.time += 1),
        ("kind", |c| c.kind = "entry_deleted".into()),
        ("subject", |c| {
            c.subject = Some("spiffe://example.org/other".into())
        }),
        ("subject", |c| c.subject = None),
    ];
    for (column, edit) in edits {
        let mut tampered = records.clone();
        edit(tampered[2].columns.as_mut().unwrap());
        let e = verify(&tampered, &[], &key.public_key()).unwrap_err();
        assert!(
            matches!(e, VerifyError::ColumnMismatch { seq: 2, column: c, .. } if c == column),
            "{e:?}"
        );
        assert!(e.to_string().contains(column), "{e}");
    }
}
