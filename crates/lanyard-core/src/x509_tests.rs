//! X509-SVID rule and path tests. Every certificate is generated here with rcgen.

use super::*;
use crate::bundle::{Bundle, X509Authority};
use crate::clock::FakeClock;
use ::time::OffsetDateTime;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

const NOW: i64 = 1_800_000_000;

fn ts(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: Vec<u8>,
}

impl Ca {
    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

fn ca_params(name: &str, uri: Option<&str>) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap_or_default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if let Some(u) = uri {
        p.subject_alt_names = vec![SanType::URI(u.try_into().unwrap_or_else(|_| panic!("uri")))];
    }
    p.not_before = ts(NOW - 3600);
    p.not_after = ts(NOW + 86_400);
    p
}

fn root(name: &str) -> Ca {
    root_with(ca_params(name, Some("spiffe://example.org")))
}

fn root_with(params: CertificateParams) -> Ca {
    let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
    Ca {
        der: cert.der().to_vec(),
        params,
        key,
    }
}

fn intermediate(parent: &Ca, params: CertificateParams) -> Ca {
    let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let cert = params
        .signed_by(&key, &parent.issuer())
        .unwrap_or_else(|e| panic!("{e}"));
    Ca {
        der: cert.der().to_vec(),
        params,
        key,
    }
}

fn leaf_params(id: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap_or_default();
    p.distinguished_name.push(DnType::OrganizationName, "SPIRE");
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.subject_alt_names = vec![SanType::URI(
        id.try_into().unwrap_or_else(|_| panic!("uri")),
    )];
    p.not_before = ts(NOW - 60);
    p.not_after = ts(NOW + 3600);
    p
}

fn leaf(issuer: &Ca, params: CertificateParams) -> Vec<u8> {
    let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    params
        .signed_by(&key, &issuer.issuer())
        .unwrap_or_else(|e| panic!("{e}"))
        .der()
        .to_vec()
}

fn bundles(roots: &[&Ca]) -> BundleSet {
    let td = TrustDomain::new("example.org").unwrap_or_else(|e| panic!("{e}"));
    let mut b = Bundle::new(td);
    for r in roots {
        b.add_x509_authority(
            X509Authority::from_der(r.der.clone()).unwrap_or_else(|e| panic!("{e}")),
        );
    }
    [b].into_iter().collect()
}

fn clock() -> FakeClock {
    FakeClock::at(NOW)
}

fn violated(res: Result<X509Svid, X509Error>) -> Rule {
    match res {
        Err(X509Error::RuleViolated { rule, .. }) => rule,
        other => panic!("expected a rule violation, got {other:?}"),
    }
}

#[test]
fn valid_leaf_from_root() {
    let ca = root("root");
    let der = leaf(&ca, leaf_params("spiffe://example.org/web"));
    let svid = X509Svid::validate(vec![der.clone()], &bundles(&[&ca]), &clock())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/web");
    assert_eq!(svid.not_after(), NOW + 3600);
    assert!(!svid.serial().is_empty());
    // Every rule passes, SHOULD rules included.
    let report = rule_report(&der, true).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.iter().all(|c| c.passed), "{report:?}");
    let ca_report = rule_report(&ca.der, false).unwrap_or_else(|e| panic!("{e}"));
    assert!(ca_report.iter().all(|c| c.passed), "{ca_report:?}");
}

#[test]
fn valid_leaf_through_intermediates() {
    let ca = root("root");
    let mid1 = intermediate(&ca, ca_params("mid1", Some("spiffe://example.org")));
    let mid2 = intermediate(&mid1, ca_params("mid2", None));
    let der = leaf(&mid2, leaf_params("spiffe://example.org/a/b"));
    let chain = vec![der.clone(), mid2.der.clone(), mid1.der.clone()];
    X509Svid::validate(chain, &bundles(&[&ca]), &clock()).unwrap_or_else(|e| panic!("{e}"));
    // Order of intermediates does not matter.
    let chain = vec![der.clone(), mid1.der.clone(), mid2.der.clone()];
    X509Svid::validate(chain.clone(), &bundles(&[&ca]), &clock()).unwrap_or_else(|e| panic!("{e}"));
    // Concatenated DER (Workload API encoding) splits back into the chain.
    let concat: Vec<u8> = chain.concat();
    let svid = X509Svid::parse_concatenated(&concat).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(svid.chain().len(), 3);
    // Missing intermediate: the issuer cannot be found.
    let res = X509Svid::validate(vec![der, mid2.der.clone()], &bundles(&[&ca]), &clock());
    assert!(
        matches!(res, Err(X509Error::UnknownIssuer { index: 1, .. })),
        "{res:?}"
    );
}

#[test]
fn leaf_uri_san_rules() {
    let ca = root("root");
    let b = bundles(&[&ca]);
    let mut p = leaf_params("spiffe://example.org/web");
    p.subject_alt_names = vec![SanType::DnsName(
        "web".try_into().unwrap_or_else(|_| panic!()),
    )];
    assert_eq!(
        violated(X509Svid::validate(vec![leaf(&ca, p)], &b, &clock())),
        Rule::LeafSingleUriSan
    );

    let mut p = leaf_params("spiffe://example.org/web");
    p.subject_alt_names.push(SanType::URI(
        "spiffe://example.org/db"
            .try_into()
            .unwrap_or_else(|_| panic!()),
    ));
    assert_eq!(
        violated(X509Svid::validate(vec![leaf(&ca, p)], &b, &clock())),
        Rule::LeafSingleUriSan
    );

    let p = leaf_params("https://example.org/web");
    assert_eq!(
        violated(X509Svid::validate(vec![leaf(&ca, p)], &b, &clock())),
        Rule::LeafSpiffeIdValid
    );

    let p = leaf_params("spiffe://example.org/a/../b");
    assert_eq!(
        violated(X509Svid::validate(vec![leaf(&ca, p)], &b, &clock())),
        Rule::LeafSpiffeIdValid
    );

    let p = leaf_params("spiffe://example.org");
    assert_eq!(
        violated(X509Svid::validate(vec![leaf(&ca, p)], &b, &clock())),
        Rule::LeafSpiffeIdHasPath
    );

    // DNS SANs beside the one URI SAN are fine.
    let mut p = leaf_params("spiffe://example.org/web");
    p.subject_alt_names.push(SanType::DnsName(
        "web.local".try_into().unwrap_or_else(|_| panic!()),
    ));
    X509Svid::validate(vec![leaf(&ca, p)], &b, &clock()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn leaf_constraint_and_usage_rules() {
    let ca = root("root");
    let b = bundles(&[&ca]);
    let check =
        |p: CertificateParams| violated(X509Svid::validate(vec![leaf(&ca, p)], &b, &clock()));

    let mut p = leaf_params("spiffe://example.org/w");
    p.is_ca = IsCa::NoCa;
    assert_eq!(check(p), Rule::LeafBasicConstraintsPresent);

    let mut p = leaf_params("spiffe://example.org/w");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    assert_eq!(check(p), Rule::LeafNotCa);

    let mut p = leaf_params("spiffe://example.org/w");
    p.key_usages = vec![];
    assert_eq!(check(p), Rule::KeyUsagePresent);

    let mut p = leaf_params("spiffe://example.org/w");
    p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    assert_eq!(check(p), Rule::LeafDigitalSignature);

    let mut p = leaf_params("spiffe://example.org/w");
    p.key_usages.push(KeyUsagePurpose::KeyCertSign);
    assert_eq!(check(p), Rule::LeafNoKeyCertSign);

    let mut p = leaf_params("spiffe://example.org/w");
    p.key_usages.push(KeyUsagePurpose::CrlSign);
    assert_eq!(check(p), Rule::LeafNoCrlSign);

    let mut p = leaf_params("spiffe://example.org/w");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    assert_eq!(check(p), Rule::LeafEkuUsable);

    let mut p = leaf_params("spiffe://example.org/w");
    let mut ext =
        CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![0x05, 0x00]);
    ext.set_criticality(true);
    p.custom_extensions = vec![ext];
    assert_eq!(check(p), Rule::NoUnknownCriticalExtension);

    // A non-critical unknown extension is fine.
    let mut p = leaf_params("spiffe://example.org/w");
    p.custom_extensions = vec![CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 99999, 2],
        vec![0x05, 0x00],
    )];
    X509Svid::validate(vec![leaf(&ca, p)], &b, &clock()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn missing_eku_is_only_a_should() {
    let ca = root("root");
    let mut p = leaf_params("spiffe://example.org/w");
    p.extended_key_usages = vec![];
    let der = leaf(&ca, p);
    X509Svid::validate(vec![der.clone()], &bundles(&[&ca]), &clock())
        .unwrap_or_else(|e| panic!("{e}"));
    let report = rule_report(&der, true).unwrap_or_else(|e| panic!("{e}"));
    let failed: Vec<Rule> = report
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.rule)
        .collect();
    assert_eq!(
        failed,
        vec![Rule::LeafEkuServerAuth, Rule::LeafEkuClientAuth]
    );
    assert!(failed.iter().all(|r| r.severity() == Severity::Should));
}

#[test]
fn ca_rules_on_intermediates() {
    let ca = root("root");
    let b = bundles(&[&ca]);

    // An intermediate that is not a CA.
    let mut p = ca_params("mid", None);
    p.is_ca = IsCa::ExplicitNoCa;
    let mid = intermediate(&ca, p);
    let der = leaf(&mid, leaf_params("spiffe://example.org/w"));
    let res = X509Svid::validate(vec![der, mid.der.clone()], &b, &clock());
    assert!(
        matches!(
            res,
            Err(X509Error::RuleViolated {
                index: 1,
                rule: Rule::CaIsCa,
                ..
            })
        ),
        "{res:?}"
    );

    // An intermediate without keyCertSign.
    let mut p = ca_params("mid", None);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let mid = intermediate(&ca, p);
    let der = leaf(&mid, leaf_params("spiffe://example.org/w"));
    let res = X509Svid::validate(vec![der, mid.der.clone()], &b, &clock());
    assert!(
        matches!(
            res,
            Err(X509Error::RuleViolated {
                rule: Rule::CaKeyCertSign,
                ..
            })
        ),
        "{res:?}"
    );

    // An intermediate whose SPIFFE ID has a path.
    let mid = intermediate(&ca, ca_params("mid", Some("spiffe://example.org/ca")));
    let der = leaf(&mid, leaf_params("spiffe://example.org/w"));
    let res = X509Svid::validate(vec![der, mid.der.clone()], &b, &clock());
    assert!(
        matches!(
            res,
            Err(X509Error::RuleViolated {
                rule: Rule::CaSpiffeIdNoPath,
                ..
            })
        ),
        "{res:?}"
    );

    // An intermediate of another trust domain.
    let mid = intermediate(&ca, ca_params("mid", Some("spiffe://other.org")));
    let der = leaf(&mid, leaf_params("spiffe://example.org/w"));
    let res = X509Svid::validate(vec![der, mid.der.clone()], &b, &clock());
    assert!(
        matches!(res, Err(X509Error::ForeignCa { index: 1, .. })),
        "{res:?}"
    );

    // A leaf used as a CA: its certificate cannot sign others.
    let leaf_as_ca_params = leaf_params("spiffe://example.org/evil");
    let evil = intermediate(&ca, leaf_as_ca_params);
    let der = leaf(&evil, leaf_params("spiffe://example.org/victim"));
    let res = X509Svid::validate(vec![der, evil.der.clone()], &b, &clock());
    assert!(
        matches!(
            res,
            Err(X509Error::RuleViolated {
                index: 1,
                rule: Rule::CaIsCa,
                ..
            })
        ),
        "{res:?}"
    );
}

#[test]
fn path_length_constraint() {
    let mut p = ca_params("root", Some("spiffe://example.org"));
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca = root_with(p);
    let mid = intermediate(&ca, ca_params("mid", None));
    let der = leaf(&mid, leaf_params("spiffe://example.org/w"));
    let res = X509Svid::validate(vec![der, mid.der.clone()], &bundles(&[&ca]), &clock());
    assert!(
        matches!(
            res,
            Err(X509Error::PathLenExceeded {
                limit: 0,
                below: 1,
                ..
            })
        ),
        "{res:?}"
    );
    // Directly under the constrained root is fine.
    let der = leaf(&ca, leaf_params("spiffe://example.org/w"));
    X509Svid::validate(vec![der], &bundles(&[&ca]), &clock()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn trust_and_signature_failures() {
    let ca = root("root");
    let other = root("root"); // same subject name, different key
    let der = leaf(&other, leaf_params("spiffe://example.org/w"));
    let res = X509Svid::validate(vec![der], &bundles(&[&ca]), &clock());
    assert!(
        matches!(res, Err(X509Error::UnknownIssuer { index: 0, .. })),
        "{res:?}"
    );

    // An intermediate whose subject matches but whose key did not sign the leaf.
    let mid = intermediate(&ca, ca_params("mid", None));
    let impostor = intermediate(&ca, ca_params("mid", None));
    let der = leaf(&impostor, leaf_params("spiffe://example.org/w"));
    let res = X509Svid::validate(vec![der, mid.der.clone()], &bundles(&[&ca]), &clock());
    assert!(
        matches!(res, Err(X509Error::BadSignature { index: 0, .. })),
        "{res:?}"
    );

    // A tampered leaf: flip a byte inside the signed part.
    let mut der = leaf(&ca, leaf_params("spiffe://example.org/w"));
    let pos = der.len() / 2;
    der[pos] ^= 0x01;
    let res = X509Svid::validate(vec![der], &bundles(&[&ca]), &clock());
    assert!(res.is_err(), "tampered leaf accepted");

    // No bundle for the leaf's trust domain.
    let der = leaf(&ca, leaf_params("spiffe://other.org/w"));
    let res = X509Svid::validate(vec![der], &bundles(&[&ca]), &clock());
    assert!(
        matches!(res, Err(X509Error::NoBundle(ref td)) if td == "other.org"),
        "{res:?}"
    );

    // An empty bundle.
    let der = leaf(&ca, leaf_params("spiffe://example.org/w"));
    let res = X509Svid::validate(vec![der], &bundles(&[]), &clock());
    assert!(matches!(res, Err(X509Error::NoAuthorities(_))), "{res:?}");

    // With both roots in the bundle, the leaf of the second one verifies.
    let der = leaf(&other, leaf_params("spiffe://example.org/w"));
    X509Svid::validate(vec![der], &bundles(&[&ca, &other]), &clock())
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn validity_times_use_the_clock() {
    let ca = root("root");
    let b = bundles(&[&ca]);
    let der = leaf(&ca, leaf_params("spiffe://example.org/w"));
    let c = clock();
    X509Svid::validate(vec![der.clone()], &b, &c).unwrap_or_else(|e| panic!("{e}"));
    c.set(NOW + 3601);
    let res = X509Svid::validate(vec![der.clone()], &b, &c);
    assert!(
        matches!(res, Err(X509Error::Expired { index: 0, .. })),
        "{res:?}"
    );
    c.set(NOW - 120);
    let res = X509Svid::validate(vec![der.clone()], &b, &c);
    assert!(
        matches!(res, Err(X509Error::NotYetValid { index: 0, .. })),
        "{res:?}"
    );

    // Expired intermediate.
    let mut p = ca_params("mid", None);
    p.not_after = ts(NOW - 1);
    let mid = intermediate(&ca, p);
    let der = leaf(&mid, leaf_params("spiffe://example.org/w"));
    let res = X509Svid::validate(vec![der, mid.der.clone()], &b, &clock());
    assert!(
        matches!(res, Err(X509Error::Expired { index: 1, .. })),
        "{res:?}"
    );

    // Expired authority.
    let mut p = ca_params("old-root", Some("spiffe://example.org"));
    p.not_after = ts(NOW - 1);
    let old = root_with(p);
    let der = leaf(&old, leaf_params("spiffe://example.org/w"));
    let res = X509Svid::validate(vec![der], &bundles(&[&old]), &clock());
    assert!(
        matches!(res, Err(X509Error::AuthorityExpired { .. })),
        "{res:?}"
    );
}

#[test]
fn malformed_input() {
    assert_eq!(X509Svid::parse(vec![]), Err(X509Error::EmptyChain));
    let res = X509Svid::parse(vec![b"not a certificate".to_vec()]);
    assert!(
        matches!(res, Err(X509Error::Malformed { index: 0, .. })),
        "{res:?}"
    );
    let ca = root("root");
    let mut der = leaf(&ca, leaf_params("spiffe://example.org/w"));
    der.extend_from_slice(b"trailing");
    let res = X509Svid::parse(vec![der]);
    assert!(matches!(res, Err(X509Error::Malformed { .. })), "{res:?}");
    assert!(matches!(
        split_der_chain(&[0x30, 0x03, 0x01]),
        Err(X509Error::Malformed { .. })
    ));
    assert_eq!(split_der_chain(&[]), Err(X509Error::EmptyChain));
    let too_long = vec![ca.der.clone(); MAX_CHAIN_LEN + 1];
    assert!(matches!(
        X509Svid::parse(too_long),
        Err(X509Error::ChainTooLong { .. })
    ));
    // Error messages say how to fix the problem.
    let mut p = leaf_params("spiffe://example.org/w");
    p.is_ca = IsCa::NoCa;
    let msg = X509Svid::parse(vec![leaf(&ca, p)])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("to fix"), "{msg}");
}

#[test]
fn summary_reports_fields() {
    let ca = root("root");
    let mut p = leaf_params("spiffe://example.org/w");
    p.subject_alt_names.push(SanType::DnsName(
        "w.local".try_into().unwrap_or_else(|_| panic!()),
    ));
    let der = leaf(&ca, p);
    let s = summarize(&der).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.uri_sans, vec!["spiffe://example.org/w"]);
    assert_eq!(s.dns_sans, vec!["w.local"]);
    assert_eq!(s.public_key, "EC P-256");
    assert!(!s.is_ca);
    assert!(is_ca_der(&ca.der));
    assert!(!is_ca_der(&der));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = X509Svid::parse(vec![bytes.clone()]);
            let _ = split_der_chain(&bytes);
            let _ = summarize(&bytes);
        }
    }

    #[test]
    fn mutated_certificates_never_panic_nor_validate_wrongly() {
        let ca = root("root");
        let der = leaf(&ca, leaf_params("spiffe://example.org/w"));
        let b = bundles(&[&ca]);
        let c = clock();
        for i in 0..der.len() {
            for bit in [0x01u8, 0x80] {
                let mut m = der.clone();
                m[i] ^= bit;
                if let Ok(svid) = X509Svid::validate(vec![m.clone()], &b, &c) {
                    // Only changes outside the signed bytes (e.g. in the outer
                    // signature's DER padding) could possibly still verify, and they
                    // must not change the identity.
                    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/w");
                }
            }
        }
    }
}
