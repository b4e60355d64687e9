#![no_main]
//! What the workload attestors parse from outside the agent: `/proc/PID/cgroup`
//! text (the first line of input), a kubelet PodList and a Docker inspect answer
//! (the rest, as JSON): never panics; a container ID found is 64 lowercase hex
//! digits, and every selector produced has the attestor's type.

use lanyard_agent::{cgroup, docker, k8s};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (cg, json) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(f) = cgroup::parse(cg) {
        if let Some(c) = &f.container {
            assert_eq!(c.id.len(), 64);
            assert!(c.id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
    }
    let id = "0".repeat(64);
    if let Ok(k8s::PodLookup::Found(s)) = k8s::pod_selectors(json.as_bytes(), "u", &id) {
        assert!(s.iter().all(|x| x.kind() == "k8s"));
    }
    if let Ok(s) = docker::container_selectors(json.as_bytes(), &id, &["A".to_string()]) {
        assert!(s.iter().all(|x| x.kind() == "docker"));
    }
});
