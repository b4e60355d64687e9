#![no_main]
//! The Workload API socket's HTTP/2 shim parses frames and HPACK blocks from any
//! local process: it must never panic, whatever bytes arrive after the preface.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    input.extend_from_slice(data);
    rt.block_on(async {
        let mut out = Vec::new();
        let _ = lanyard_agent::h2shim::rewrite(&mut input.as_slice(), &mut out).await;
    });
});
