#![no_main]
//! The token endpoint's form parser (RFC 8693 parameters): never panics; repeated
//! single-valued parameters are refused with invalid_request.

use lanyard_server::exchange::ExchangeForm;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = ExchangeForm::parse(data) {
        assert_eq!(e.code, "invalid_request");
    }
});
