#![no_main]
//! JWK Set parsing: never panics; every usable key fits the algorithm it is
//! restricted to, and looking keys up by their own kid finds a key.

use lanyard_nodeattest::Jwks;
use lanyard_nodeattest::jwks::KeyLookup;
use lanyard_nodeattest::jws::Algorithm;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(jwks) = Jwks::parse(data) else {
        return;
    };
    for k in jwks.keys() {
        if let Some(alg) = k.alg {
            assert!(k.key.fits(alg));
        }
        for alg in Algorithm::ALL {
            if let KeyLookup::Found(found) = jwks.find(k.kid.as_deref(), alg) {
                assert!(found.allows(alg));
            }
        }
    }
});
