//! The signing path: one X509-SVID from a CSR (verify the CSR, sign the leaf) and one
//! JWT-SVID, next to the raw P-256 operations they are made of, measured in the same
//! run so the ratios are meaningful on a noisy machine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use criterion::{Criterion, criterion_group, criterion_main};
use lanyard_ca::{CaConfig, CertificateAuthority, SubjectKey};
use lanyard_core::{SpiffeId, TrustDomain};

fn bench(c: &mut Criterion) {
    let now = 1_800_000_000;
    let mut ca = CertificateAuthority::new(
        CaConfig::new(TrustDomain::new("example.org").unwrap()),
        None,
        vec![],
    )
    .unwrap();
    ca.tick(now).unwrap();
    let id = SpiffeId::new("spiffe://example.org/web").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();

    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref()).unwrap();
    let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, kp.public_key().as_ref().to_vec());
    let msg = [7u8; 32];
    let sig = kp.sign(&rng, &msg).unwrap();

    let mut g = c.benchmark_group("signing");
    g.bench_function("raw_p256_sign", |b| {
        b.iter(|| kp.sign(&rng, black_box(&msg)).unwrap())
    });
    g.bench_function("raw_p256_verify", |b| {
        b.iter(|| public.verify(black_box(&msg), sig.as_ref()).unwrap())
    });
    g.bench_function("x509_svid_from_csr", |b| {
        b.iter(|| {
            ca.mint_x509_svid(&id, SubjectKey::Csr(black_box(&csr)), None, &[], now)
                .unwrap()
        })
    });
    g.bench_function("jwt_svid", |b| {
        b.iter(|| {
            ca.mint_jwt_svid(&id, &["db".to_string()], None, now)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
