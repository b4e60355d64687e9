#![no_main]
//! Kubernetes TokenReview responses: never panics; an accepted review names a
//! service account and confirmed the expected audience.

use lanyard_nodeattest::TokenReview;
use lanyard_nodeattest::k8s_psat::interpret_token_review;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(review) = TokenReview::parse(data) else {
        return;
    };
    if let Ok(sa) = interpret_token_review(&review, "lanyard-server") {
        assert!(sa.username.starts_with("system:serviceaccount:"));
        let status = review.status.as_ref().expect("a status");
        assert!(status.authenticated);
        assert!(status.audiences.iter().any(|a| a == "lanyard-server"));
    }
});
