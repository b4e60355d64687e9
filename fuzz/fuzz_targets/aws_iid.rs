#![no_main]
//! AWS instance identity evidence: the agent's JSON payload, the identity document
//! and the PKCS #7 (rsa2048) signature: never panics; anything admitted carries an
//! agent ID under /lanyard/agent/aws_iid/ and an allowed account.

use lanyard_core::TrustDomain;
use lanyard_nodeattest::aws_iid::{
    self, AwsCertificate, AwsIidConfig, IidEvidence, InstanceIdentityDocument, SignedData,
};
use libfuzzer_sys::fuzz_target;

const CERT: &str =
    include_str!("../../crates/lanyard-nodeattest/src/aws_iid/testdata/rsa2048_cert.pem");

fuzz_target!(|data: &[u8]| {
    let _ = InstanceIdentityDocument::parse(data);
    if let Ok(sd) = SignedData::parse(data) {
        let _ = sd.content();
    }
    let Ok(evidence) = IidEvidence::parse(data) else {
        return;
    };
    let cert = AwsCertificate::from_pem(CERT, None).expect("test certificate");
    let mut config = AwsIidConfig::new(&["123456789012"], vec![cert]).expect("static config");
    config.allow_rsa1024_signature = true;
    let td = TrustDomain::new("example.org").expect("static trust domain");
    if let Ok(a) = aws_iid::verify(&evidence, &config, &td) {
        assert!(a.agent_id.path().starts_with("/lanyard/agent/aws_iid/123456789012/"));
        assert_eq!(a.document.account_id, "123456789012");
    }
});
