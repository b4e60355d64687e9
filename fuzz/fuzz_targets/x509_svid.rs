#![no_main]
//! X509-SVID parsing and validation of arbitrary DER chains: never panics, and a chain
//! that validates against the fixed (empty-key) bundle set is impossible.

use lanyard_core::bundle::pem_certificates;
use lanyard_core::x509::{rule_report, split_der_chain, summarize};
use lanyard_core::{BundleSet, FakeClock, X509Svid};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let clock = FakeClock::at(1_800_000_000);
    let _ = summarize(data);
    let _ = rule_report(data, true);
    let _ = rule_report(data, false);
    if let Ok(chain) = split_der_chain(data) {
        if let Ok(svid) = X509Svid::parse(chain.clone()) {
            assert!(!svid.spiffe_id().is_root());
        }
        assert!(X509Svid::validate(chain, &BundleSet::new(), &clock).is_err());
    }
    if let Ok(certs) = pem_certificates(data) {
        let _ = X509Svid::parse(certs);
    }
});
