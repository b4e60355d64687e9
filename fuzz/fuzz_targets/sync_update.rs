#![no_main]
//! A pushed `SyncUpdate` from the server (protobuf bytes) decoded and applied to a
//! fresh agent state: never panics; what was kept are entries with valid IDs and
//! selectors, and everything left out is named in `rejected`.

use lanyard_agent::state::AgentState;
use lanyard_agent::sync_update::SyncState;
use lanyard_core::TrustDomain;
use lanyard_proto::node::SyncUpdate;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(u) = SyncUpdate::decode(data) else {
        return;
    };
    let td = TrustDomain::new("example.org").expect("valid trust domain");
    let s = SyncState::from_pb(&u, &td);
    assert_eq!(
        s.entries.len() + s.rejected.iter().filter(|r| matches!(r, lanyard_agent::sync_update::Rejected::Entry { .. })).count(),
        u.entries.len(),
        "every entry is either kept or named as rejected"
    );
    let state = AgentState::new(td, None);
    state.apply(s);
    let _ = state.entries();
});
