#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};

use super::pkcs7::build;
use super::*;

const DOC: &str = include_str!("testdata/document.json");
const OPENSSL_RSA2048_CERT: &str = include_str!("testdata/rsa2048_cert.pem");
const OPENSSL_RSA2048: &str = include_str!("testdata/rsa2048.b64");
const OPENSSL_RSA2048_STREAM: &str = include_str!("testdata/rsa2048_stream.b64");
const OPENSSL_RSA1024_CERT: &str = include_str!("testdata/rsa1024_cert.pem");
const OPENSSL_SIGNATURE_1024: &str = include_str!("testdata/signature1024.b64");

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

/// A self-signed certificate for the shared test RSA key (as AWS's certificates are).
fn test_cert(pkcs8: &[u8]) -> String {
    let kp = rcgen::KeyPair::try_from(pkcs8).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Test AWS");
    params.self_signed(&kp).unwrap().pem()
}

fn sign(pkcs8: &[u8], msg: &[u8]) -> Vec<u8> {
    let k = RsaKeyPair::from_pkcs8(pkcs8).unwrap();
    let mut sig = vec![0; k.public_modulus_len()];
    k.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut sig)
        .unwrap();
    sig
}

fn config(cert_pem: &str, region: Option<&str>) -> AwsIidConfig {
    AwsIidConfig::new(
        &["123456789012"],
        vec![AwsCertificate::from_pem(cert_pem, region).unwrap()],
    )
    .unwrap()
}

fn signature_evidence(doc: &str, sig: &[u8]) -> IidEvidence {
    IidEvidence {
        document: doc.to_string(),
        signature: Some(STANDARD.encode(sig)),
        rsa2048: None,
    }
}

#[test]
fn parses_the_document_aws_documents() {
    let d = InstanceIdentityDocument::parse(DOC.as_bytes()).unwrap();
    assert_eq!(d.account_id, "123456789012");
    assert_eq!(d.region, "us-west-2");
    assert_eq!(d.instance_id, "i-0b22a22eec53b9321");
    assert_eq!(d.image_id.as_deref(), Some("ami-5fb8c835"));
    assert_eq!(d.instance_type.as_deref(), Some("t2.micro"));
    assert_eq!(d.availability_zone.as_deref(), Some("us-west-2b"));
    assert_eq!(d.private_ip.as_deref(), Some("10.158.112.84"));
    assert_eq!(d.billing_products, None);
    for (field, bad) in [
        ("accountId", "12345"),
        ("accountId", "12345678901x"),
        ("region", "US-WEST-2"),
        ("region", "us/west"),
        ("instanceId", "x-123"),
        ("instanceId", "i-../.."),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(DOC).unwrap();
        v[field] = serde_json::json!(bad);
        let e = InstanceIdentityDocument::parse(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.reason(), "bad_document", "{field}={bad}");
        assert!(e.is_malformed());
    }
    assert!(InstanceIdentityDocument::parse(b"{}").is_err());
    assert!(InstanceIdentityDocument::parse(&vec![b' '; MAX_DOCUMENT_BYTES + 1]).is_err());
}

#[test]
fn signature_form_with_a_2048_bit_key() {
    let pkcs8 = crate::testutil::rsa_pkcs8();
    let cfg = config(&test_cert(pkcs8), Some("us-west-2"));
    let ev = signature_evidence(DOC, &sign(pkcs8, DOC.as_bytes()));
    let a = verify(&ev, &cfg, &td()).unwrap();
    assert_eq!(a.form, SignatureForm::Signature);
    assert_eq!(
        a.agent_id.to_string(),
        "spiffe://example.org/lanyard/agent/aws_iid/123456789012/us-west-2/i-0b22a22eec53b9321"
    );
    let sel: Vec<String> = a.selectors.iter().map(ToString::to_string).collect();
    assert_eq!(
        sel,
        [
            "aws_iid:account:123456789012",
            "aws_iid:az:us-west-2b",
            "aws_iid:image:id:ami-5fb8c835",
            "aws_iid:instance:id:i-0b22a22eec53b9321",
            "aws_iid:instance:type:t2.micro",
            "aws_iid:region:us-west-2",
        ]
    );

    // One changed byte (even whitespace) breaks the signature.
    let altered = DOC.replace("t2.micro", "t2.large");
    let e = verify(
        &signature_evidence(&altered, &sign(pkcs8, DOC.as_bytes())),
        &cfg,
        &td(),
    )
    .unwrap_err();
    assert_eq!(e, IidRefusal::BadSignature);
    assert_eq!(e.reason(), "bad_signature");
    let e = verify(
        &signature_evidence(&format!("{DOC} "), &sign(pkcs8, DOC.as_bytes())),
        &cfg,
        &td(),
    )
    .unwrap_err();
    assert_eq!(e, IidRefusal::BadSignature);
    // Signed by another key.
    let other = crate::testutil::rsa_pkcs8_other();
    let e = verify(
        &signature_evidence(DOC, &sign(other, DOC.as_bytes())),
        &cfg,
        &td(),
    )
    .unwrap_err();
    assert_eq!(e, IidRefusal::BadSignature);
}

#[test]
fn signature_form_with_awss_1024_bit_keys_needs_the_opt_in() {
    let ev = IidEvidence {
        document: DOC.to_string(),
        signature: Some(OPENSSL_SIGNATURE_1024.trim().to_string()),
        rsa2048: None,
    };
    let mut cfg = config(OPENSSL_RSA1024_CERT, None);
    let e = verify(&ev, &cfg, &td()).unwrap_err();
    assert_eq!(e, IidRefusal::WeakKeyNotAllowed { bits: 1024 });
    assert!(e.to_string().contains("allow_rsa1024_signature"), "{e}");
    cfg.allow_rsa1024_signature = true;
    let a = verify(&ev, &cfg, &td()).unwrap();
    assert_eq!(a.form, SignatureForm::Signature);
    assert_eq!(a.document.instance_id, "i-0b22a22eec53b9321");
}

#[test]
fn rsa2048_form_made_by_openssl_verifies() {
    let cfg = config(OPENSSL_RSA2048_CERT, Some("us-west-2"));
    for p7 in [OPENSSL_RSA2048, OPENSSL_RSA2048_STREAM] {
        // With the document beside it, without it, and with PEM armor.
        for (doc, armored) in [(DOC, false), ("", false), (DOC, true)] {
            let p7 = if armored {
                format!("-----BEGIN PKCS7-----\n{p7}\n-----END PKCS7-----\n")
            } else {
                p7.to_string()
            };
            let ev = IidEvidence {
                document: doc.to_string(),
                signature: None,
                rsa2048: Some(p7),
            };
            let a = verify(&ev, &cfg, &td()).unwrap();
            assert_eq!(a.form, SignatureForm::Rsa2048);
            assert_eq!(a.document.account_id, "123456789012");
        }
    }
    // A document beside it that differs from the signed one.
    let ev = IidEvidence {
        document: DOC.replace("t2.micro", "t2.large"),
        signature: None,
        rsa2048: Some(OPENSSL_RSA2048.to_string()),
    };
    assert_eq!(
        verify(&ev, &cfg, &td()).unwrap_err(),
        IidRefusal::DocumentMismatch
    );
    // Another region's certificate only: no certificate for us-west-2.
    let cfg_other = config(OPENSSL_RSA2048_CERT, Some("eu-west-1"));
    let ev = IidEvidence {
        document: String::new(),
        signature: None,
        rsa2048: Some(OPENSSL_RSA2048.to_string()),
    };
    let e = verify(&ev, &cfg_other, &td()).unwrap_err();
    assert_eq!(e.reason(), "no_certificate");
    assert!(e.to_string().contains("us-west-2"));
    // Verified with the wrong key.
    let wrong = config(&test_cert(crate::testutil::rsa_pkcs8()), None);
    let e = verify(&ev, &wrong, &td()).unwrap_err();
    assert_eq!(e, IidRefusal::Pkcs7(Pkcs7Error::BadSignature));
    assert_eq!(e.reason(), "bad_signature");
}

#[test]
fn rsa2048_form_built_here_verifies() {
    let pkcs8 = crate::testutil::rsa_pkcs8();
    let cfg = config(&test_cert(pkcs8), Some("us-west-2"));
    let signer = |m: &[u8]| sign(pkcs8, m);
    let msg = build::signed_data(
        DOC.as_bytes(),
        false,
        Some(build::signed_attrs(DOC.as_bytes())),
        &signer,
    );
    let ev = IidEvidence {
        document: DOC.to_string(),
        signature: None,
        rsa2048: Some(STANDARD.encode(&msg)),
    };
    assert_eq!(
        verify(&ev, &cfg, &td()).unwrap().form,
        SignatureForm::Rsa2048
    );
    // Detached without the document: nothing to verify.
    let ev = IidEvidence {
        document: String::new(),
        ..ev
    };
    assert_eq!(
        verify(&ev, &cfg, &td()).unwrap_err(),
        IidRefusal::Pkcs7(Pkcs7Error::NoContent)
    );
}

#[test]
fn account_allow_list_and_evidence_shape() {
    let pkcs8 = crate::testutil::rsa_pkcs8();
    let cert = AwsCertificate::from_pem(&test_cert(pkcs8), None).unwrap();
    assert_eq!(cert.bits(), 2048);
    assert_eq!(cert.region(), None);
    let cfg = AwsIidConfig::new(&["000000000000"], vec![cert]).unwrap();
    let ev = signature_evidence(DOC, &sign(pkcs8, DOC.as_bytes()));
    let e = verify(&ev, &cfg, &td()).unwrap_err();
    assert_eq!(e.reason(), "account_not_allowed");
    assert!(e.to_string().contains("123456789012"));

    let e = verify(
        &IidEvidence {
            document: DOC.into(),
            ..Default::default()
        },
        &cfg,
        &td(),
    )
    .unwrap_err();
    assert_eq!(e, IidRefusal::MissingSignature);

    let json = serde_json::to_vec(&ev).unwrap();
    assert_eq!(IidEvidence::parse(&json).unwrap(), ev);
    assert_eq!(
        IidEvidence::parse(b"nope").unwrap_err().reason(),
        "malformed"
    );
    assert!(IidEvidence::parse(&vec![b' '; MAX_EVIDENCE_BYTES + 1]).is_err());
    let bad_b64 = IidEvidence {
        signature: Some("%%%".into()),
        ..ev.clone()
    };
    assert_eq!(
        verify(&bad_b64, &cfg, &td()).unwrap_err().reason(),
        "malformed"
    );
    let bad_p7 = IidEvidence {
        rsa2048: Some(STANDARD.encode(b"not pkcs7")),
        ..ev
    };
    let e = verify(&bad_p7, &cfg, &td()).unwrap_err();
    assert!(e.is_malformed(), "{e:?}");
}

#[test]
fn configuration_is_checked() {
    let pkcs8 = crate::testutil::rsa_pkcs8();
    let cert = AwsCertificate::from_pem(&test_cert(pkcs8), Some("us-east-1")).unwrap();
    assert_eq!(
        AwsIidConfig::new(&[], vec![cert.clone()]).unwrap_err(),
        IidConfigError::NoAccounts
    );
    assert!(matches!(
        AwsIidConfig::new(&["12"], vec![cert.clone()]),
        Err(IidConfigError::BadAccount(_))
    ));
    assert_eq!(
        AwsIidConfig::new(&["123456789012"], vec![]).unwrap_err(),
        IidConfigError::NoCertificates
    );
    assert!(AwsCertificate::from_pem("garbage", None).is_err());
    assert!(AwsCertificate::from_pem(&test_cert(pkcs8), Some("us/east")).is_err());
    // EC certificates are not AWS's.
    let ec = rcgen::KeyPair::generate().unwrap();
    let ec_pem = rcgen::CertificateParams::default()
        .self_signed(&ec)
        .unwrap()
        .pem();
    assert!(AwsCertificate::from_pem(&ec_pem, None).is_err());
    // A region's own certificate wins over region-less ones.
    let generic = AwsCertificate::from_pem(OPENSSL_RSA2048_CERT, None).unwrap();
    let cfg = AwsIidConfig::new(&["123456789012"], vec![generic, cert]).unwrap();
    assert_eq!(cfg.certificates_for("us-east-1").len(), 1);
    assert_eq!(
        cfg.certificates_for("us-east-1")[0].region(),
        Some("us-east-1")
    );
    assert_eq!(cfg.certificates_for("eu-west-1")[0].region(), None);
}

#[test]
fn one_attestation_per_instance() {
    let id = SpiffeId::new(
        "spiffe://example.org/lanyard/agent/aws_iid/123456789012/us-west-2/i-0b22a22eec53b9321",
    )
    .unwrap();
    check_first_attestation(&id, false, false).unwrap();
    check_first_attestation(&id, true, true).unwrap();
    let e = check_first_attestation(&id, true, false).unwrap_err();
    assert_eq!(e.reason(), "already_attested");
    assert!(e.to_string().contains("allow_reattestation"));
}
