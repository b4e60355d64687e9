#![no_main]
//! Cedar policy text of both kinds: compiling never panics; a set that compiles names
//! its policies and decides a fixed request of its kind without panicking.

use lanyard_policy::{
    AuthzRequest, Caller, CompiledPolicies, EntryFacts, PolicyKind, RegistrationAction,
    RegistrationRequest, WorkloadFacts,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for kind in [PolicyKind::Registration, PolicyKind::Authz] {
        let Ok(p) = CompiledPolicies::compile(kind, text) else {
            continue;
        };
        let _ = p.policy_ids();
        match kind {
            PolicyKind::Registration => {
                let _ = p.evaluate_registration(&RegistrationRequest {
                    caller: Caller::Local { uid: 0 },
                    action: RegistrationAction::Create,
                    entry: EntryFacts {
                        spiffe_id: "spiffe://example.org/prod/web".to_string(),
                        selectors: vec!["unix:uid:0".to_string()],
                        ..Default::default()
                    },
                });
            }
            PolicyKind::Authz => {
                for action in p.actions().iter().map(String::as_str).chain(["act_for", "read"]) {
                    let _ = p.evaluate_authz(&AuthzRequest::new(
                        WorkloadFacts::unregistered("spiffe://example.org/web"),
                        action,
                        "r",
                    ));
                }
            }
        }
    }
});
