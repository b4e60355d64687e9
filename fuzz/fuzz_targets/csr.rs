#![no_main]
//! CSR parsing and proof-of-possession checking (what the server runs on every
//! attestation and signing request): never panics, and whatever it accepts is a
//! SubjectPublicKeyInfo that the CA can sign.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(spki) = lanyard_ca::verify_csr(data) {
        assert!(!spki.is_empty());
    }
});
