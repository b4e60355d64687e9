//! In-process authz decisions next to Cedar's raw `Authorizer::is_authorized` on
//! the same compiled set, request and entities (built once), in the same run so
//! the ratios are meaningful on a noisy machine. The set is `lanyard bench
//! authz`'s: the shipped two forbids and eight permits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use lanyard_policy::{
    AuthzRequest, CompiledPolicies, PolicyKind, PreparedWorkload, Target, WorkloadFacts,
    bench_authz_policy,
};

const WORKLOAD: &str = "spiffe://bench.example/workload";

fn bench(c: &mut Criterion) {
    let compiled =
        CompiledPolicies::compile(PolicyKind::Authz, &bench_authz_policy(WORKLOAD)).unwrap();
    assert_eq!(compiled.policy_ids().len(), 10);
    let facts = WorkloadFacts {
        spiffe_id: WORKLOAD.to_string(),
        registered: true,
        owner: "dev".to_string(),
        environment: "dev".to_string(),
        selectors: vec!["unix:uid:1000".to_string()],
    };
    let mut req = AuthzRequest::new(facts.clone(), "read", "o-1");
    req.target = Target::Resource {
        id: "o-1".to_string(),
        kind: "orders".to_string(),
        properties: Default::default(),
    };
    req.context
        .insert("ip".to_string(), serde_json::json!("10.0.0.1"));
    let raw = compiled.raw_baseline(&req).unwrap();
    assert!(raw.is_authorized());
    assert!(compiled.evaluate_authz(&req).unwrap().allowed);
    let prepared = PreparedWorkload::new(facts).unwrap();
    let mut bare = req.clone();
    bare.principal = WorkloadFacts::default();
    assert!(
        compiled
            .evaluate_authz_prepared(&prepared, &bare)
            .unwrap()
            .allowed
    );

    let mut g = c.benchmark_group("authz");
    g.bench_function("raw_cedar_is_authorized", |b| {
        b.iter(|| black_box(raw.is_authorized()))
    });
    g.bench_function("evaluate_authz", |b| {
        b.iter(|| black_box(compiled.evaluate_authz(black_box(&req)).unwrap()))
    });
    g.bench_function("evaluate_authz_prepared", |b| {
        b.iter(|| {
            black_box(
                compiled
                    .evaluate_authz_prepared(&prepared, black_box(&bare))
                    .unwrap(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
