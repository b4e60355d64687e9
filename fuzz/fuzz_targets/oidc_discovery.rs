#![no_main]
//! OIDC discovery document parsing: never panics; an accepted document is for the
//! expected issuer and its jwks_uri is https (loopback http is not enabled here).

use lanyard_nodeattest::DiscoveryDocument;
use lanyard_nodeattest::discovery::UrlPolicy;
use libfuzzer_sys::fuzz_target;

const ISSUER: &str = "https://token.actions.githubusercontent.com";

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = DiscoveryDocument::parse(data, ISSUER, UrlPolicy::HttpsOnly) {
        assert_eq!(d.issuer, ISSUER);
        assert!(d.jwks_uri.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("https://")));
    }
    let _ = DiscoveryDocument::parse(data, ISSUER, UrlPolicy::AllowInsecureLoopback);
});
