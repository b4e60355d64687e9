#![no_main]
//! SPIFFE bundle (JWK Set) parsing: never panics; a parsed bundle serializes and parses
//! back to the same bundle (apart from ignored keys, which are dropped).

use lanyard_core::{Bundle, TrustDomain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::new("example.org").expect("static trust domain");
    if let Ok(bundle) = Bundle::parse(td.clone(), data) {
        let json = bundle.to_json().expect("serialize a parsed bundle");
        let back = Bundle::parse(td, json.as_bytes()).expect("reparse");
        assert_eq!(back.x509_authorities(), bundle.x509_authorities());
        assert_eq!(
            back.jwt_authorities().collect::<Vec<_>>(),
            bundle.jwt_authorities().collect::<Vec<_>>()
        );
        assert_eq!(back.sequence(), bundle.sequence());
        assert_eq!(back.refresh_hint(), bundle.refresh_hint());
    }
});
