#![no_main]
//! SPIFFE ID and trust-domain parsing: never panics; anything accepted round-trips
//! exactly and satisfies the spec's length limits.

use lanyard_core::{SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::new(s) {
        assert_eq!(id.to_string(), s);
        assert!(s.len() <= 2048);
        assert!(id.trust_domain().name().len() <= 255);
        assert!(!id.path().ends_with('/'));
        let again = SpiffeId::new(&id.to_string()).expect("round trip");
        assert_eq!(again, id);
    }
    if let Ok(td) = TrustDomain::new(s) {
        assert!(!td.name().is_empty() && td.name().len() <= 255);
        assert_eq!(TrustDomain::new(td.name()).expect("round trip"), td);
    }
});
