#![no_main]
//! Runtime authorization requests with arbitrary JSON context, resource properties and
//! names (what AuthZEN and ext_authz callers control): evaluation never panics, and
//! the shipped default policy never allows anything.

use lanyard_policy::{AuthzRequest, CompiledPolicies, PolicyKind, Target, WorkloadFacts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let p = CompiledPolicies::default_for(PolicyKind::Authz).expect("default compiles");
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("x").to_string();
    let mut r = AuthzRequest::new(WorkloadFacts::unregistered(&s("subject")), &s("action"), "r");
    r.target = Target::Resource {
        id: s("resource"),
        kind: s("type"),
        properties: v
            .get("properties")
            .and_then(|x| x.as_object())
            .cloned()
            .unwrap_or_default(),
    };
    r.context = v
        .get("context")
        .and_then(|x| x.as_object())
        .cloned()
        .unwrap_or_default();
    if let Ok(d) = p.evaluate_authz(&r) {
        assert!(!d.allowed, "the default authz policy allowed {v}");
    }
});
