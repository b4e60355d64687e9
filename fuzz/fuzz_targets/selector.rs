#![no_main]
//! Selector parsing: never panics; anything accepted round-trips exactly.

use lanyard_core::Selector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sel) = Selector::new(s) {
        assert_eq!(sel.to_string(), s);
        assert_eq!(Selector::new(&sel.to_string()).expect("round trip"), sel);
    }
});
