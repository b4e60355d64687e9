//! End-to-end tests of the offline inspection commands against the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lanyard_core::{Bundle, JwtAuthority, PublicJwk, TrustDomain, X509Authority};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};

fn lanyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(args)
        .output()
        .expect("run lanyard")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: Vec<u8>,
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn make_ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "test root");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names = vec![SanType::URI("spiffe://example.org".try_into().unwrap())];
    p.not_before = now() - time::Duration::hours(1);
    p.not_after = now() + time::Duration::hours(24);
    let der = p.self_signed(&key).unwrap().der().to_vec();
    Ca {
        params: p,
        key,
        der,
    }
}

fn leaf_params(id: &str, hours: i64) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    p.not_before = now() - time::Duration::minutes(5);
    p.not_after = now() + time::Duration::hours(hours);
    p
}

fn sign(ca: &Ca, p: &CertificateParams) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    p.signed_by(&key, &Issuer::from_params(&ca.params, &ca.key))
        .unwrap()
        .der()
        .to_vec()
}

fn pem(ders: &[&[u8]]) -> String {
    ders.iter()
        .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.to_vec())))
        .collect()
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn bundle_json(ca: &Ca) -> String {
    let mut b = Bundle::new(TrustDomain::new("example.org").unwrap());
    b.add_x509_authority(X509Authority::from_der(ca.der.clone()).unwrap());
    let jwk = PublicJwk::from_spki_der(&ca.key.subject_public_key_info()).unwrap();
    b.add_jwt_authority(JwtAuthority::new("key-1", jwk).unwrap());
    b.set_sequence(42);
    b.set_refresh_hint(300);
    b.to_json().unwrap()
}

#[test]
fn version() {
    let o = lanyard(&["--version"]);
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("lanyard "), "{}", stdout(&o));
}

#[test]
fn id_check_valid_and_invalid() {
    let o = lanyard(&["id", "check", "spiffe://example.org/ns/web"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o).trim(), "spiffe://example.org/ns/web");

    for (bad, needle) in [
        ("spiffe://example.org/a/", "trailing slash"),
        ("spiffe://Example.org/a", "lowercase"),
        ("spiffe://example.org:443/a", "port"),
        ("spiffe://u@example.org/a", "userinfo"),
        ("spiffe://example.org/a%20b", "percent"),
        ("spiffe://example.org/a?q=1", "query"),
        ("spiffe://example.org/a#f", "fragment"),
        ("spiffe://example.org//a", "empty segment"),
        ("spiffe://example.org/./a", "dot segments"),
        ("SPIFFE://example.org/a", "spiffe://"),
        ("example.org/a", "scheme"),
        ("", "empty"),
    ] {
        let o = lanyard(&["id", "check", bad]);
        assert_eq!(o.status.code(), Some(1), "{bad:?} should be rejected");
        assert!(stdout(&o).is_empty());
        let err = stderr(&o);
        assert!(err.contains(needle), "{bad:?}: {err}");
    }
    let long_td = format!("spiffe://{}/a", "a".repeat(256));
    let o = lanyard(&["id", "check", &long_td]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("255 bytes"), "{}", stderr(&o));

    let o = lanyard(&["id", "check", "--output", "json", "spiffe://example.org/x"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["trust_domain"], "example.org");
    assert_eq!(v["path"], "/x");
}

#[test]
fn svid_inspect_valid_with_and_without_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca();
    let leaf = sign(&ca, &leaf_params("spiffe://example.org/web", 1));
    let svid = write(dir.path(), "svid.pem", &pem(&[&leaf]));
    let bundle = write(dir.path(), "bundle.json", &bundle_json(&ca));
    let bundle_pem = write(dir.path(), "bundle.pem", &pem(&[&ca.der]));

    let o = lanyard(&["svid", "inspect", svid.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("SPIFFE ID:   spiffe://example.org/web"),
        "{out}"
    );
    assert!(out.contains("not verified"), "{out}");
    assert!(
        out.contains("[ok]   the leaf has exactly one URI SAN"),
        "{out}"
    );
    assert!(out.contains("result:      valid X509-SVID"), "{out}");

    for b in [&bundle, &bundle_pem] {
        let o = lanyard(&[
            "svid",
            "inspect",
            svid.to_str().unwrap(),
            "--bundle",
            b.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
        assert!(stdout(&o).contains("verified against the bundle of example.org"));
    }

    let o = lanyard(&[
        "svid",
        "inspect",
        svid.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["chain_verified"], true);
    assert_eq!(v["spiffe_id"], "spiffe://example.org/web");
    assert!(v["certificates"][0]["rules"].as_array().unwrap().len() >= 10);
}

#[test]
fn svid_inspect_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca();
    let other = make_ca();
    let other_bundle = write(dir.path(), "other.pem", &pem(&[&other.der]));

    // Signed by a CA that is not in the bundle.
    let leaf = sign(&ca, &leaf_params("spiffe://example.org/web", 1));
    let svid = write(dir.path(), "svid.pem", &pem(&[&leaf]));
    let o = lanyard(&[
        "svid",
        "inspect",
        svid.to_str().unwrap(),
        "--bundle",
        other_bundle.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("NOT VERIFIED"), "{}", stdout(&o));

    // A CA certificate presented as an SVID.
    let ca_file = write(dir.path(), "ca.pem", &pem(&[&ca.der]));
    let o = lanyard(&["svid", "inspect", ca_file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("[FAIL]"), "{out}");
    assert!(out.contains("fix:"), "{out}");
    assert!(out.contains("INVALID"), "{out}");

    // Expired.
    let mut p = leaf_params("spiffe://example.org/web", 1);
    p.not_before = now() - time::Duration::hours(3);
    p.not_after = now() - time::Duration::hours(2);
    let expired = write(dir.path(), "expired.pem", &pem(&[&sign(&ca, &p)]));
    let o = lanyard(&["svid", "inspect", expired.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("EXPIRED"), "{}", stdout(&o));

    // Two URI SANs.
    let mut p = leaf_params("spiffe://example.org/web", 1);
    p.subject_alt_names
        .push(SanType::URI("spiffe://example.org/db".try_into().unwrap()));
    let two = write(dir.path(), "two.pem", &pem(&[&sign(&ca, &p)]));
    let o = lanyard(&["svid", "inspect", two.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("2 URI SANs"), "{}", stdout(&o));

    // Not PEM at all.
    let junk = write(dir.path(), "junk.pem", "hello");
    let o = lanyard(&["svid", "inspect", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("BEGIN CERTIFICATE"), "{}", stderr(&o));

    // Missing file: the command cannot run.
    let o = lanyard(&[
        "svid",
        "inspect",
        dir.path().join("nope.pem").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read"), "{}", stderr(&o));

    // A bad bundle file is an error naming the problem.
    let bad_bundle = write(
        dir.path(),
        "bad.json",
        r#"{"keys":[{"use":"jwt-svid","kty":"EC"}]}"#,
    );
    let o = lanyard(&[
        "svid",
        "inspect",
        svid.to_str().unwrap(),
        "--bundle",
        bad_bundle.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("kid"), "{}", stderr(&o));
}

#[test]
fn bundle_inspect_valid_and_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca();
    let bundle = write(dir.path(), "bundle.json", &bundle_json(&ca));
    let o = lanyard(&["bundle", "inspect", bundle.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("trust domain:    example.org"), "{out}");
    assert!(out.contains("sequence:        42"), "{out}");
    assert!(out.contains("kid key-1 (EC P-256)"), "{out}");
    assert!(out.contains("valid SPIFFE bundle"), "{out}");

    let o = lanyard(&[
        "bundle",
        "inspect",
        bundle.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["spiffe_sequence"], 42);
    assert_eq!(v["spiffe_refresh_hint"], 300);
    assert_eq!(v["jwt_authorities"][0]["kid"], "key-1");

    for (content, needle) in [
        ("{", "not valid JSON"),
        (r#"{"keys":[{"use":"x509-svid","x5c":[]}]}"#, "exactly one"),
        (
            r#"{"keys":[{"use":"jwt-svid","kty":"EC","crv":"P-256"}]}"#,
            "kid",
        ),
    ] {
        let f = write(dir.path(), "bad.json", content);
        let o = lanyard(&["bundle", "inspect", f.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{content}");
        assert!(stderr(&o).contains(needle), "{content}: {}", stderr(&o));
    }

    // A leaf certificate is not a valid bundle authority.
    let leaf = sign(&ca, &leaf_params("spiffe://example.org/web", 1));
    let mut b = Bundle::new(TrustDomain::new("example.org").unwrap());
    b.add_x509_authority(X509Authority::from_der(leaf).unwrap());
    let f = write(dir.path(), "leafbundle.json", &b.to_json().unwrap());
    let o = lanyard(&["bundle", "inspect", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("not a valid SPIFFE CA"),
        "{}",
        stdout(&o)
    );

    let o = lanyard(&[
        "bundle",
        "inspect",
        "--trust-domain",
        "Bad.Domain",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--trust-domain"), "{}", stderr(&o));
}
