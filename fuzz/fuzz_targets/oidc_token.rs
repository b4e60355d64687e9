#![no_main]
//! Compact JWS decoding for node attestation tokens (no verification): never panics;
//! an accepted token names an accepted asymmetric algorithm and splits back into
//! exactly its signing input and signature; nothing verifies against an empty JWKS.

use lanyard_core::FakeClock;
use lanyard_nodeattest::jws::Algorithm;
use lanyard_nodeattest::{Jwks, TokenPolicy, UnverifiedToken, verify_token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = UnverifiedToken::parse(s) {
        assert!(Algorithm::ALL.contains(&t.header().alg));
        assert_eq!(format!("{}.{}", t.signing_input(), t.signature_b64()), t.token());
        let _ = t.issuer();
    }
    let policy = TokenPolicy::new("https://issuer.example", "lanyard-server").expect("static policy");
    let clock = FakeClock::at(1_800_000_000);
    assert!(verify_token(s, &policy, &Jwks::default(), &clock).is_err());
});
