//! CA rotation and minting tests; SVIDs are checked with lanyard-core's validators.

use std::time::Duration;

use lanyard_core::{BundleSet, FakeClock, SpiffeId, TrustDomain, X509Svid};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData};

use crate::*;

const T0: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

fn ca_with(alg: KeyAlgorithm) -> CertificateAuthority {
    let mut cfg = CaConfig::new(td());
    cfg.key_algorithm = alg;
    let mut ca = CertificateAuthority::new(cfg, None, vec![]).unwrap();
    ca.tick(T0).unwrap();
    ca
}

fn csr() -> (Vec<u8>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let req = CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    (req.der().to_vec(), key)
}

fn bundles(ca: &CertificateAuthority) -> BundleSet {
    [ca.bundle().unwrap()].into_iter().collect()
}

#[test]
fn rotation_prepares_activates_retires_and_removes() {
    let mut ca = CertificateAuthority::new(CaConfig::new(td()), None, vec![]).unwrap();
    let ev = ca.tick(T0).unwrap();
    assert!(matches!(
        ev.as_slice(),
        [CaEvent::Prepared { .. }, CaEvent::Activated { .. }]
    ));
    let first = ca.active().unwrap().id().to_string();
    assert_eq!(ca.bundle().unwrap().x509_authorities().len(), 1);
    assert_eq!(ca.bundle().unwrap().jwt_authorities().count(), 1);

    // Nothing happens before half the lifetime.
    assert!(ca.tick(T0 + DAY / 2 - 60).unwrap().is_empty());

    // At half: a successor is published but does not sign.
    let ev = ca.tick(T0 + DAY / 2).unwrap();
    assert!(
        matches!(ev.as_slice(), [CaEvent::Prepared { .. }]),
        "{ev:?}"
    );
    assert_eq!(ca.bundle().unwrap().x509_authorities().len(), 2);
    assert_eq!(ca.bundle().unwrap().jwt_authorities().count(), 2);
    assert_eq!(ca.active().unwrap().id(), first);
    let m = ca
        .mint_x509_svid(
            &id("spiffe://example.org/w"),
            SubjectKey::Csr(&csr().0),
            None,
            &[],
            T0 + DAY * 5 / 6 - 60,
        )
        .unwrap();
    assert_eq!(m.slot, first, "the prepared slot signs nothing");

    // At five sixths: the prepared slot takes over, the old one is retired but published.
    let ev = ca.tick(T0 + DAY * 5 / 6).unwrap();
    assert!(
        matches!(
            ev.as_slice(),
            [CaEvent::Retired { .. }, CaEvent::Activated { .. }]
        ),
        "{ev:?}"
    );
    assert_ne!(ca.active().unwrap().id(), first);
    assert_eq!(ca.bundle().unwrap().x509_authorities().len(), 2);
    let old = ca.slots().iter().find(|s| s.id() == first).unwrap();
    assert_eq!(old.state(), SlotState::Retired);

    // An SVID minted by the old slot just before the switch still verifies after it.
    let clock = FakeClock::at(T0 + DAY * 5 / 6 + 60);
    let b = bundles(&ca);
    X509Svid::validate(m.chain.clone(), &b, &clock).unwrap();

    // The retired slot leaves the bundle only when its certificate has expired.
    let old_not_after = old.not_after();
    let old_cert = old.x509_cert_der().to_vec();
    assert!(
        ca.tick(old_not_after - 1)
            .unwrap()
            .iter()
            .all(|e| !matches!(e, CaEvent::Removed { .. }))
    );
    let ev = ca.tick(old_not_after).unwrap();
    assert!(
        ev.contains(&CaEvent::Removed {
            slot: first.clone()
        }),
        "{ev:?}"
    );
    let bundle = ca.bundle().unwrap();
    assert!(
        bundle
            .x509_authorities()
            .iter()
            .all(|a| a.der() != old_cert.as_slice())
    );
    assert!(ca.slots().iter().all(|s| s.id() != first));
}

#[test]
fn server_down_for_days_gets_a_fresh_active_slot() {
    let mut ca = ca_with(KeyAlgorithm::EcP256);
    let first = ca.active().unwrap().id().to_string();
    let ev = ca.tick(T0 + 3 * DAY).unwrap();
    assert!(ev.contains(&CaEvent::Removed { slot: first }));
    assert!(ca.active().is_some());
    assert_eq!(ca.slots().len(), 1);
}

#[test]
fn minted_x509_svids_follow_the_spec_and_verify() {
    for alg in [
        KeyAlgorithm::EcP256,
        KeyAlgorithm::EcP384,
        KeyAlgorithm::Rsa2048,
    ] {
        let ca = ca_with(alg);
        let (req, _) = csr();
        let m = ca
            .mint_x509_svid(
                &id("spiffe://example.org/ns/web"),
                SubjectKey::Csr(&req),
                None,
                &["web.local".into()],
                T0,
            )
            .unwrap();
        assert_eq!(m.chain.len(), 1);
        assert_eq!(m.not_after, T0 + 3600, "default X509-SVID TTL is 1h");
        let svid = X509Svid::validate(m.chain.clone(), &bundles(&ca), &FakeClock::at(T0)).unwrap();
        assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/ns/web");
        assert_eq!(svid.serial(), m.serial);
        // Every rule, SHOULD rules included, passes on our leaves and CA certificates.
        let report = lanyard_core::x509::rule_report(&m.chain[0], true).unwrap();
        assert!(report.iter().all(|c| c.passed), "{alg}: {report:?}");
        let ca_report =
            lanyard_core::x509::rule_report(ca.active().unwrap().x509_cert_der(), false).unwrap();
        assert!(ca_report.iter().all(|c| c.passed), "{alg}: {ca_report:?}");
    }
}

#[test]
fn svid_ttl_never_outlives_the_ca() {
    let ca = ca_with(KeyAlgorithm::EcP256);
    let ca_end = ca.active().unwrap().not_after();
    let m = ca
        .mint_x509_svid(
            &id("spiffe://example.org/w"),
            SubjectKey::Csr(&csr().0),
            Some(Duration::from_secs(10 * 86_400)),
            &[],
            T0,
        )
        .unwrap();
    assert_eq!(m.not_after, ca_end);
    let j = ca
        .mint_jwt_svid(
            &id("spiffe://example.org/w"),
            &["aud".into()],
            Some(Duration::from_secs(10 * 86_400)),
            T0,
        )
        .unwrap();
    assert_eq!(j.expiry, ca_end);
}

#[test]
fn public_key_subjects_are_accepted() {
    let ca = ca_with(KeyAlgorithm::EcP256);
    let key = KeyPair::generate().unwrap();
    let m = ca
        .mint_x509_svid(
            &id("spiffe://example.org/w"),
            SubjectKey::PublicKey(&key.subject_public_key_info()),
            None,
            &[],
            T0,
        )
        .unwrap();
    X509Svid::validate(m.chain, &bundles(&ca), &FakeClock::at(T0)).unwrap();
}

#[test]
fn bad_requests_are_refused() {
    let ca = ca_with(KeyAlgorithm::EcP256);
    let (mut req, _) = csr();
    let n = req.len();
    req[n - 5] ^= 0xff; // break the CSR's signature
    let e = ca.mint_x509_svid(
        &id("spiffe://example.org/w"),
        SubjectKey::Csr(&req),
        None,
        &[],
        T0,
    );
    assert!(matches!(e, Err(CaError::BadCsr(_))), "{e:?}");
    let e = ca.mint_x509_svid(
        &id("spiffe://example.org/w"),
        SubjectKey::Csr(b"junk"),
        None,
        &[],
        T0,
    );
    assert!(matches!(e, Err(CaError::BadCsr(_))), "{e:?}");
    let e = ca.mint_x509_svid(
        &id("spiffe://other.org/w"),
        SubjectKey::Csr(&csr().0),
        None,
        &[],
        T0,
    );
    assert!(matches!(e, Err(CaError::ForeignId { .. })), "{e:?}");
    let e = ca.mint_x509_svid(
        &id("spiffe://example.org"),
        SubjectKey::Csr(&csr().0),
        None,
        &[],
        T0,
    );
    assert!(matches!(e, Err(CaError::RootId(_))), "{e:?}");
    let e = ca.mint_x509_svid(
        &id("spiffe://example.org/w"),
        SubjectKey::Csr(&csr().0),
        None,
        &["bad name!".into()],
        T0,
    );
    assert!(matches!(e, Err(CaError::BadDnsName(_))), "{e:?}");
    let e = ca.mint_jwt_svid(&id("spiffe://example.org/w"), &[], None, T0);
    assert_eq!(e, Err(CaError::EmptyAudience));
    let empty = CertificateAuthority::new(CaConfig::new(td()), None, vec![]).unwrap();
    let e = empty.mint_jwt_svid(&id("spiffe://example.org/w"), &["a".into()], None, T0);
    assert_eq!(e, Err(CaError::NoActiveSlot));
    let mut cfg = CaConfig::new(td());
    cfg.x509_svid_ttl = Duration::from_secs(2 * 86_400);
    assert!(matches!(
        CertificateAuthority::new(cfg, None, vec![]),
        Err(CaError::Config(_))
    ));
}

#[test]
fn slots_survive_a_round_trip_through_records() {
    let mut ca = ca_with(KeyAlgorithm::EcP256);
    ca.tick(T0 + DAY / 2).unwrap();
    let records: Vec<SlotRecord> = ca.slots().iter().map(CaSlot::to_record).collect();
    let json = serde_json::to_string(&records).unwrap();
    let back: Vec<SlotRecord> = serde_json::from_str(&json).unwrap();
    let slots = back
        .iter()
        .map(CaSlot::from_record)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let restored = CertificateAuthority::new(CaConfig::new(td()), None, slots).unwrap();
    assert_eq!(restored.bundle().unwrap(), ca.bundle().unwrap());
    assert_eq!(restored.active().unwrap().id(), ca.active().unwrap().id());
    // A record whose key does not match its certificate is refused.
    let mut bad = records[0].clone();
    bad.x509_key_pkcs8 = records[1].x509_key_pkcs8.clone();
    assert!(matches!(
        CaSlot::from_record(&bad),
        Err(CaError::BadRecord(_))
    ));
    assert!(serde_json::from_str::<SlotRecord>(r#"{"id":"x","surprise":1}"#).is_err());
}

#[test]
fn upstream_ca_makes_our_ca_an_intermediate() {
    let up_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "Corp Root");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = time::OffsetDateTime::from_unix_timestamp(T0 - DAY).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(T0 + 365 * DAY).unwrap();
    let root = p.self_signed(&up_key).unwrap().der().to_vec();
    let key = SigningKey::from_pkcs8(KeyAlgorithm::EcP256, &up_key.serialize_der()).unwrap();
    let upstream = UpstreamCa::new(vec![root.clone()], key).unwrap();
    let mut ca = CertificateAuthority::new(CaConfig::new(td()), Some(upstream), vec![]).unwrap();
    ca.tick(T0).unwrap();
    let bundle = ca.bundle().unwrap();
    assert_eq!(bundle.x509_authorities().len(), 1);
    assert_eq!(bundle.x509_authorities()[0].der(), root.as_slice());
    let m = ca
        .mint_x509_svid(
            &id("spiffe://example.org/w"),
            SubjectKey::Csr(&csr().0),
            None,
            &[],
            T0,
        )
        .unwrap();
    assert_eq!(m.chain.len(), 2, "leaf and our intermediate");
    X509Svid::validate(m.chain, &bundles(&ca), &FakeClock::at(T0)).unwrap();

    // An upstream key that does not match its certificate is refused.
    let other = SigningKey::generate(KeyAlgorithm::EcP256).unwrap();
    assert!(matches!(
        UpstreamCa::new(vec![root], other),
        Err(CaError::Upstream(_))
    ));
}

#[test]
fn jwt_svids_carry_the_required_header_and_claims() {
    use base64::Engine;
    let ca = ca_with(KeyAlgorithm::EcP256);
    let j = ca
        .mint_jwt_svid(
            &id("spiffe://example.org/w"),
            &["a".into(), "b".into()],
            None,
            T0,
        )
        .unwrap();
    assert_eq!(j.expiry, T0 + 300, "default JWT-SVID TTL is 5m");
    let parts: Vec<&str> = j.token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let dec = |s: &str| -> serde_json::Value {
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .unwrap(),
        )
        .unwrap()
    };
    let h = dec(parts[0]);
    let c = dec(parts[1]);
    assert_eq!(h["alg"], "ES256");
    assert_eq!(h["typ"], "JWT");
    assert_eq!(h["kid"], j.kid.as_str());
    assert_eq!(c["sub"], "spiffe://example.org/w");
    assert_eq!(c["aud"], serde_json::json!(["a", "b"]));
    assert_eq!(c["exp"], T0 + 300);
    assert_eq!(c["iat"], T0);
    assert_eq!(c["iss"], "https://example.org");
    assert_eq!(c["jti"], j.jti.as_str());
}

#[test]
fn minted_jwt_svids_validate_with_the_published_bundle() {
    for alg in [
        KeyAlgorithm::EcP256,
        KeyAlgorithm::EcP384,
        KeyAlgorithm::Rsa2048,
    ] {
        let ca = ca_with(alg);
        let j = ca
            .mint_jwt_svid(&id("spiffe://example.org/w"), &["db".into()], None, T0)
            .unwrap();
        let svid = lanyard_core::JwtSvid::validate(
            &j.token,
            &["db"],
            &bundles(&ca),
            &FakeClock::at(T0 + 1),
        )
        .unwrap();
        assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/w");
        assert_eq!(svid.kid(), j.kid);
        let late = lanyard_core::JwtSvid::validate(
            &j.token,
            &["db"],
            &bundles(&ca),
            &FakeClock::at(j.expiry),
        );
        assert!(late.is_err(), "{alg}");
    }
}

#[test]
fn taint_switches_signing_and_keeps_the_slot_published_until_removed() {
    let mut ca = ca_with(KeyAlgorithm::EcP256);
    let old = ca.active().unwrap().id().to_string();
    let old_ski = lanyard_core::x509::subject_key_id(ca.active().unwrap().x509_cert_der()).unwrap();
    let (req, _) = csr();
    let before = ca
        .mint_x509_svid(
            &id("spiffe://example.org/w"),
            SubjectKey::Csr(&req),
            None,
            &[],
            T0,
        )
        .unwrap();
    assert_eq!(
        lanyard_core::x509::authority_key_id(&before.chain[0]).as_deref(),
        Some(old_ski.as_str()),
        "a leaf names its signing slot"
    );
    let events = ca.taint(&old, T0 + 10).unwrap();
    assert!(matches!(&events[0], CaEvent::Tainted { slot } if slot == &old));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, CaEvent::Activated { .. }))
    );
    let new = ca.active().unwrap().id().to_string();
    assert_ne!(new, old);
    assert!(matches!(
        ca.taint(&old, T0 + 11),
        Err(CaError::AlreadyTainted(_))
    ));
    assert!(matches!(
        ca.taint("nope", T0 + 11),
        Err(CaError::UnknownSlot(_))
    ));
    let (req, _) = csr();
    let after = ca
        .mint_x509_svid(
            &id("spiffe://example.org/w"),
            SubjectKey::Csr(&req),
            None,
            &[],
            T0 + 12,
        )
        .unwrap();
    assert_eq!(after.slot, new);
    // Both still verify while the tainted slot is published.
    assert_eq!(ca.bundle().unwrap().x509_authorities().len(), 2);
    assert_eq!(ca.tainted().len(), 1);
    // Ticking does not bring the tainted slot back.
    ca.tick(T0 + 20).unwrap();
    assert_eq!(
        ca.slots()
            .iter()
            .filter(|s| s.state() == SlotState::Active)
            .count(),
        1
    );
    // The stored form keeps the taint.
    let rec = ca
        .slots()
        .iter()
        .find(|s| s.id() == old)
        .unwrap()
        .to_record();
    assert_eq!(rec.tainted_at, Some(T0 + 10));
    assert_eq!(
        CaSlot::from_record(&rec).unwrap().state(),
        SlotState::Tainted
    );
    assert!(matches!(
        ca.remove_tainted(&old),
        Some(CaEvent::Removed { .. })
    ));
    assert!(ca.remove_tainted(&old).is_none());
    assert_eq!(ca.bundle().unwrap().x509_authorities().len(), 1);
    let set: BundleSet = [ca.bundle().unwrap()].into_iter().collect();
    let clock = FakeClock::at(T0 + 13);
    assert!(X509Svid::validate(before.chain.clone(), &set, &clock).is_err());
    assert!(X509Svid::validate(after.chain.clone(), &set, &clock).is_ok());
}
