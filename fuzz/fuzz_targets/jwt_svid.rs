#![no_main]
//! JWT-SVID parsing and validation: never panics; nothing validates against an empty
//! bundle set; an accepted header always names an allowed algorithm and a key.

use lanyard_core::jwt::ALLOWED_ALGS;
use lanyard_core::{BundleSet, FakeClock, JwtSvid};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(svid) = JwtSvid::parse_insecure(s) {
        assert!(ALLOWED_ALGS.contains(&svid.alg()));
        assert!(!svid.kid().is_empty());
        assert!(!svid.audience().is_empty());
        assert!(!svid.spiffe_id().is_root());
    }
    let clock = FakeClock::at(1_800_000_000);
    assert!(JwtSvid::validate(s, &["a"], &BundleSet::new(), &clock).is_err());
});
