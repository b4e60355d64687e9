//! Every parser of untrusted input refuses arbitrary and mutated input without
//! panicking (the fuzz targets in `fuzz/` explore the same entry points further).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;

use crate::aws_iid::{InstanceIdentityDocument, SignedData};
use crate::claims::ClaimPattern;
use crate::discovery::{DiscoveryDocument, UrlPolicy, check_url};
use crate::jwks::Jwks;
use crate::jws::UnverifiedToken;
use crate::template::AgentIdTemplate;

const P7: &str = include_str!("aws_iid/testdata/rsa2048.b64");
const P7_STREAM: &str = include_str!("aws_iid/testdata/rsa2048_stream.b64");

fn p7(text: &str) -> Vec<u8> {
    let body: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(body).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn token_parser(s in "\\PC{0,300}", dots in "[A-Za-z0-9_.-]{0,200}") {
        let _ = UnverifiedToken::parse(&s);
        let _ = UnverifiedToken::parse(&dots);
    }

    #[test]
    fn document_parsers(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Jwks::parse(&bytes);
        let _ = DiscoveryDocument::parse(&bytes, "https://i", UrlPolicy::AllowInsecureLoopback);
        let _ = InstanceIdentityDocument::parse(&bytes);
        let _ = crate::aws_iid::IidEvidence::parse(&bytes);
        let _ = SignedData::parse(&bytes);
        let _ = crate::k8s_psat::TokenReview::parse(&bytes);
    }

    #[test]
    fn mutated_pkcs7(pos in 0usize..4096, byte in any::<u8>(), cut in 0usize..4096, stream in any::<bool>()) {
        let mut der = p7(if stream { P7_STREAM } else { P7 });
        let p = pos % der.len();
        der[p] = byte;
        if let Ok(sd) = SignedData::parse(&der) {
            let _ = sd.verify(&[0x30, 0x00], None);
        }
        der.truncate(cut % der.len());
        let _ = SignedData::parse(&der);
    }

    #[test]
    fn templates_urls_and_globs(t in "\\PC{0,80}", g in "[a*/]{0,20}", v in "[ab/]{0,30}") {
        let _ = AgentIdTemplate::parse(&t);
        let _ = AgentIdTemplate::parse(&format!("/lanyard/agent/{t}"));
        let _ = check_url("u", &t, UrlPolicy::AllowInsecureLoopback);
        let _ = ClaimPattern::Glob(g).matches(&v);
    }

    #[test]
    fn json_shaped_jwks(kty in "(RSA|EC|OKP|oct|x)", crv in "(P-256|P-384|Ed25519|P-521|)",
                        n in "[A-Za-z0-9_-]{0,400}", alg in "(RS256|ES256|EdDSA|HS256|none|)") {
        let doc = serde_json::json!({"keys": [{"kty": kty, "crv": crv, "n": n, "e": "AQAB",
            "x": n, "y": n, "alg": alg, "kid": "k"}]});
        let _ = Jwks::parse(doc.to_string().as_bytes());
    }
}

#[test]
fn the_openssl_fixtures_parse() {
    for text in [P7, P7_STREAM] {
        let sd = SignedData::parse(&p7(text)).unwrap();
        assert!(sd.content().is_some());
    }
}
