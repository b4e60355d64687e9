#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use lanyard_core::FakeClock;
use serde_json::{Value, json};

use super::*;
use crate::claims::{ClaimRequirement, ClaimSelector};
use crate::testutil::{TestKey, jwks_doc, sign_token, unsigned_token};

const ISS: &str = "https://issuer.example";
const AUD: &str = "lanyard-server";
const NOW: i64 = 1_800_000_000;

fn clock() -> FakeClock {
    FakeClock::at(NOW)
}

fn claims() -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "repo:acme/api", "exp": NOW + 300,
           "iat": NOW - 10, "nbf": NOW - 10, "jti": "j-1",
           "repository": "acme/api", "repository_owner": "acme", "ref": "refs/heads/main",
           "run_id": "99", "ref_protected": "true"})
}

fn policy() -> TokenPolicy {
    TokenPolicy::new(ISS, AUD).unwrap()
}

fn jwks(keys: &[Value]) -> Jwks {
    Jwks::parse(&jwks_doc(keys)).unwrap()
}

fn with(mut c: Value, k: &str, v: Value) -> Value {
    c[k] = v;
    c
}

fn without(mut c: Value, k: &str) -> Value {
    c.as_object_mut().unwrap().remove(k);
    c
}

fn rsa_setup() -> (TestKey, Jwks) {
    let k = TestKey::rsa();
    let j = jwks(&[k.jwk(Some("k1"), None)]);
    (k, j)
}

fn verify(tok: &str, j: &Jwks) -> Result<VerifiedToken, TokenRefusal> {
    verify_token(tok, &policy(), j, &clock())
}

#[test]
fn every_accepted_algorithm_verifies() {
    let cases = [
        (TestKey::rsa(), "RS256"),
        (TestKey::rsa(), "PS256"),
        (TestKey::p256(), "ES256"),
        (TestKey::p384(), "ES384"),
        (TestKey::ed25519(), "EdDSA"),
    ];
    for (key, alg) in cases {
        let j = jwks(&[key.jwk(Some("k1"), Some(alg))]);
        let t = sign_token(
            &key,
            &json!({"alg": alg, "kid": "k1", "typ": "JWT"}),
            &claims(),
        );
        let v = verify(&t, &j).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(v.header().alg.name(), alg);
        assert_eq!(v.issuer(), ISS);
        assert_eq!(v.subject(), Some("repo:acme/api"));
        assert_eq!(v.jti(), Some("j-1"));
        assert_eq!(v.audience(), [AUD]);
        assert_eq!(v.expires_at(), NOW + 300);
        assert_eq!(v.issued_at(), Some(NOW - 10));
        assert_eq!(v.token(), t);
    }
}

#[test]
fn tokens_minted_by_jsonwebtoken_verify() {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let p = kp.public_key().as_ref();
    let j = jwks(&[json!({"kty":"EC","crv":"P-256","kid":"jt",
        "x": crate::testutil::b64(&p[1..33]), "y": crate::testutil::b64(&p[33..])})]);
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some("jt".into());
    let t = jsonwebtoken::encode(
        &h,
        &claims(),
        &jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
    )
    .unwrap();
    verify(&t, &j).unwrap();
}

#[test]
fn none_and_hmac_are_refused_even_with_an_hmac_key_published() {
    let j = Jwks::parse(br#"{"keys":[{"kty":"oct","kid":"k1","k":"c2VjcmV0"}]}"#).unwrap();
    assert!(j.keys().is_empty());
    for alg in ["none", "HS256", "HS384", "HS512"] {
        let t = unsigned_token(&json!({"alg": alg, "kid": "k1"}), &claims(), "c2ln");
        let e = verify(&t, &j).unwrap_err();
        assert_eq!(e, TokenRefusal::UnsupportedAlgorithm(alg.into()));
        assert_eq!(e.reason(), "unsupported_algorithm");
        assert!(e.to_string().contains("never accepted"), "{e}");
    }
    // alg none with an empty signature is malformed before anything else.
    let t = unsigned_token(&json!({"alg": "none"}), &claims(), "");
    assert!(verify(&t, &j).is_err());
}

#[test]
fn policy_can_restrict_algorithms() {
    let (k, j) = rsa_setup();
    let p = policy().with_algorithms(&[Algorithm::ES256]).unwrap();
    let t = sign_token(&k, &json!({"alg":"RS256","kid":"k1"}), &claims());
    assert_eq!(
        verify_token(&t, &p, &j, &clock()).unwrap_err(),
        TokenRefusal::UnsupportedAlgorithm("RS256".into())
    );
    assert_eq!(
        policy().with_algorithms(&[]).unwrap_err(),
        PolicyError::NoAlgorithms
    );
    assert_eq!(p.algorithms().collect::<Vec<_>>(), [Algorithm::ES256]);
}

#[test]
fn wrong_issuer_is_refused_before_any_key_lookup() {
    let (k, _) = rsa_setup();
    let t = sign_token(
        &k,
        &json!({"alg":"RS256","kid":"unknown"}),
        &with(claims(), "iss", json!("https://evil.example")),
    );
    let e = verify(&t, &Jwks::default()).unwrap_err();
    assert_eq!(
        e,
        TokenRefusal::WrongIssuer {
            want: ISS.into(),
            got: "https://evil.example".into()
        }
    );
    assert!(!e.wants_jwks_refresh());
    assert_eq!(e.reason(), "wrong_issuer");
    let t = sign_token(
        &k,
        &json!({"alg":"RS256","kid":"k1"}),
        &without(claims(), "iss"),
    );
    assert_eq!(
        verify(&t, &Jwks::default()).unwrap_err(),
        TokenRefusal::MissingClaim("iss".into())
    );
    // Trailing-slash differences are different issuers.
    let t = sign_token(
        &k,
        &json!({"alg":"RS256","kid":"k1"}),
        &with(claims(), "iss", json!(format!("{ISS}/"))),
    );
    assert!(matches!(
        verify(&t, &Jwks::default()).unwrap_err(),
        TokenRefusal::WrongIssuer { .. }
    ));
}

#[test]
fn unknown_kid_asks_for_a_refresh() {
    let (k, j) = rsa_setup();
    let t = sign_token(&k, &json!({"alg":"RS256","kid":"k2"}), &claims());
    let e = verify(&t, &j).unwrap_err();
    assert_eq!(
        e,
        TokenRefusal::UnknownKey {
            kid: Some("k2".into())
        }
    );
    assert!(e.wants_jwks_refresh());
    assert!(e.to_string().contains("retry shortly"), "{e}");
    assert!(JwtAttestError::from(e).wants_jwks_refresh());
}

#[test]
fn without_kid_the_single_fitting_key_is_used() {
    let k = TestKey::p256();
    let other = TestKey::rsa();
    let j = jwks(&[k.jwk(None, None), other.jwk(Some("r"), None)]);
    let t = sign_token(&k, &json!({"alg":"ES256"}), &claims());
    verify(&t, &j).unwrap();
    let j2 = jwks(&[k.jwk(Some("a"), None), TestKey::p256().jwk(Some("b"), None)]);
    let e = verify(&t, &j2).unwrap_err();
    assert_eq!(e, TokenRefusal::UnknownKey { kid: None });
    assert!(e.to_string().contains("kid"), "{e}");
}

#[test]
fn a_key_that_does_not_fit_the_algorithm_is_refused() {
    let rsa = TestKey::rsa();
    let j = jwks(&[rsa.jwk(Some("k1"), None)]);
    // An EC-signed token claiming the RSA key's kid.
    let ec = TestKey::p256();
    let t = sign_token(&ec, &json!({"alg":"ES256","kid":"k1"}), &claims());
    let e = verify(&t, &j).unwrap_err();
    assert!(
        matches!(
            e,
            TokenRefusal::KeyMismatch {
                alg: Algorithm::ES256,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.reason(), "key_mismatch");
    // A key restricted to RS256 does not verify PS256.
    let j = jwks(&[rsa.jwk(Some("k1"), Some("RS256"))]);
    let t = sign_token(&rsa, &json!({"alg":"PS256","kid":"k1"}), &claims());
    assert!(matches!(
        verify(&t, &j).unwrap_err(),
        TokenRefusal::KeyMismatch { .. }
    ));
}

#[test]
fn bad_signatures_are_refused() {
    let (_, j) = rsa_setup();
    // Signed by another key under the same kid.
    let t = sign_token(
        &TestKey::rsa_other(),
        &json!({"alg":"RS256","kid":"k1"}),
        &claims(),
    );
    let e = verify(&t, &j).unwrap_err();
    assert_eq!(
        e,
        TokenRefusal::BadSignature {
            kid: Some("k1".into())
        }
    );
    assert_eq!(e.reason(), "bad_signature");
    // Claims altered after signing.
    let (k, j) = rsa_setup();
    let t = sign_token(&k, &json!({"alg":"RS256","kid":"k1"}), &claims());
    let parts: Vec<&str> = t.split('.').collect();
    let forged = unsigned_token(
        &json!({"alg":"RS256","kid":"k1"}),
        &with(claims(), "repository_owner", json!("evil")),
        parts[2],
    );
    assert!(matches!(
        verify(&forged, &j).unwrap_err(),
        TokenRefusal::BadSignature { .. }
    ));
    // RS256 signature presented as PS256 (same key).
    let t = sign_token(&k, &json!({"alg":"RS256","kid":"k1"}), &claims());
    let parts: Vec<&str> = t.split('.').collect();
    let relabeled = unsigned_token(&json!({"alg":"PS256","kid":"k1"}), &claims(), parts[2]);
    assert!(matches!(
        verify(&relabeled, &j).unwrap_err(),
        TokenRefusal::BadSignature { .. }
    ));
}

#[test]
fn time_rules() {
    let (k, j) = rsa_setup();
    let h = json!({"alg":"RS256","kid":"k1"});
    let run = |c: Value| verify(&sign_token(&k, &h, &c), &j);

    let e = run(without(claims(), "exp")).unwrap_err();
    assert_eq!(e, TokenRefusal::MissingClaim("exp".into()));
    assert!(e.to_string().contains("static secret"), "{e}");

    let e = run(with(claims(), "exp", json!(NOW))).unwrap_err();
    assert_eq!(e, TokenRefusal::Expired { exp: NOW, now: NOW });
    assert!(e.to_string().contains("fresh token"), "{e}");

    // 60 s leeway on nbf and iat.
    run(with(claims(), "nbf", json!(NOW + 60))).unwrap();
    let e = run(with(claims(), "nbf", json!(NOW + 61))).unwrap_err();
    assert!(
        matches!(e, TokenRefusal::NotYetValid { claim: "nbf", .. }),
        "{e:?}"
    );
    assert_eq!(e.reason(), "not_yet_valid");
    run(with(claims(), "iat", json!(NOW + 60))).unwrap();
    let e = run(with(claims(), "iat", json!(NOW + 61))).unwrap_err();
    assert!(
        matches!(e, TokenRefusal::NotYetValid { claim: "iat", .. }),
        "{e:?}"
    );

    // Maximum age: 10 min (+ leeway) from iat.
    run(with(claims(), "iat", json!(NOW - 660))).unwrap();
    let e = run(with(claims(), "iat", json!(NOW - 661))).unwrap_err();
    assert_eq!(
        e,
        TokenRefusal::TooOld {
            age: 661,
            max_age: 600
        }
    );
    assert!(e.to_string().contains("fresh token"), "{e}");
    // Without iat, only the lifetime bound applies.
    run(without(claims(), "iat")).unwrap();

    // Maximum lifetime: exp − now ≤ 1 h (+ leeway).
    run(with(claims(), "exp", json!(NOW + 3660))).unwrap();
    let e = run(with(claims(), "exp", json!(NOW + 3661))).unwrap_err();
    assert_eq!(
        e,
        TokenRefusal::LivesTooLong {
            remaining: 3661,
            max_lifetime: 3600
        }
    );
    assert_eq!(e.reason(), "lifetime_too_long");

    // Fractional NumericDates are floored; non-numbers are refused.
    run(with(claims(), "exp", json!(NOW as f64 + 100.7))).unwrap();
    let e = run(with(claims(), "exp", json!("tomorrow"))).unwrap_err();
    assert!(matches!(e, TokenRefusal::BadClaim { .. }));
    assert!(e.is_malformed());

    // Configurable bounds.
    let p = policy()
        .with_max_age(Duration::from_secs(3600))
        .with_max_lifetime(Duration::from_secs(86_400))
        .with_leeway(Duration::ZERO);
    let c = with(
        with(claims(), "iat", json!(NOW - 3000)),
        "exp",
        json!(NOW + 80_000),
    );
    verify_token(&sign_token(&k, &h, &c), &p, &j, &clock()).unwrap();
    let c = with(claims(), "nbf", json!(NOW + 1));
    assert!(verify_token(&sign_token(&k, &h, &c), &p, &j, &clock()).is_err());
    assert_eq!(
        (p.max_age_secs(), p.max_lifetime_secs(), p.leeway_secs()),
        (3600, 86_400, 0)
    );
}

#[test]
fn audience_must_match_exactly() {
    let (k, j) = rsa_setup();
    let h = json!({"alg":"RS256","kid":"k1"});
    let run = |aud: Value| verify(&sign_token(&k, &h, &with(claims(), "aud", aud)), &j);
    run(json!([AUD])).unwrap();
    run(json!(["other", AUD])).unwrap();
    for bad in [
        json!("lanyard-server2"),
        json!(["other"]),
        json!([]),
        json!("LANYARD-SERVER"),
    ] {
        let e = run(bad.clone()).unwrap_err();
        assert!(
            matches!(e, TokenRefusal::WrongAudience { .. }),
            "{bad}: {e:?}"
        );
        assert_eq!(e.reason(), "wrong_audience");
        assert!(
            e.to_string().contains("request the token for audience"),
            "{e}"
        );
    }
    assert!(matches!(
        run(json!(7)).unwrap_err(),
        TokenRefusal::BadClaim { .. }
    ));
    assert!(matches!(
        run(json!([7])).unwrap_err(),
        TokenRefusal::BadClaim { .. }
    ));
    let e = verify(&sign_token(&k, &h, &without(claims(), "aud")), &j).unwrap_err();
    assert_eq!(e, TokenRefusal::MissingClaim("aud".into()));
}

#[test]
fn required_claims_exact_and_glob() {
    let (k, j) = rsa_setup();
    let h = json!({"alg":"RS256","kid":"k1"});
    let p = policy()
        .require(ClaimRequirement::parse("repository_owner", &["acme"]).unwrap())
        .require(ClaimRequirement::parse("ref", &["refs/heads/*"]).unwrap());
    let run = |c: Value| verify_token(&sign_token(&k, &h, &c), &p, &j, &clock());
    run(claims()).unwrap();
    let e = run(with(claims(), "repository_owner", json!("acme-evil"))).unwrap_err();
    assert_eq!(
        e,
        TokenRefusal::ClaimMismatch {
            claim: "repository_owner".into(),
            want: "\"acme\"".into(),
            got: vec!["acme-evil".into()]
        }
    );
    assert_eq!(e.reason(), "claim_mismatch");
    let e = run(with(claims(), "ref", json!("refs/tags/v1"))).unwrap_err();
    assert!(e.to_string().contains("\"refs/heads/*\" (glob)"), "{e}");
    let e = run(without(claims(), "ref")).unwrap_err();
    assert_eq!(e, TokenRefusal::MissingClaim("ref".into()));
    assert!(e.to_string().contains("required claims"), "{e}");
    assert_eq!(p.requirements().len(), 2);
}

#[test]
fn policy_construction_checks_issuer_and_audience() {
    assert!(matches!(
        TokenPolicy::new("", AUD),
        Err(PolicyError::BadIssuer(_))
    ));
    assert!(matches!(
        TokenPolicy::new("https://a b", AUD),
        Err(PolicyError::BadIssuer(_))
    ));
    assert!(matches!(
        TokenPolicy::new(ISS, ""),
        Err(PolicyError::BadAudience(_))
    ));
    let p = policy();
    assert_eq!((p.issuer(), p.audience()), (ISS, AUD));
    assert_eq!(
        (p.leeway_secs(), p.max_age_secs(), p.max_lifetime_secs()),
        (60, 600, 3600)
    );
}

#[test]
fn every_refusal_has_a_distinct_reason_code() {
    let all = [
        TokenRefusal::Malformed(String::new()),
        TokenRefusal::TooLong { len: 0 },
        TokenRefusal::UnsupportedAlgorithm(String::new()),
        TokenRefusal::UnknownKey { kid: None },
        TokenRefusal::KeyMismatch {
            kid: None,
            alg: Algorithm::RS256,
            keys: vec![],
        },
        TokenRefusal::BadSignature { kid: None },
        TokenRefusal::MissingClaim(String::new()),
        TokenRefusal::BadClaim {
            claim: String::new(),
            reason: String::new(),
        },
        TokenRefusal::Expired { exp: 0, now: 0 },
        TokenRefusal::NotYetValid {
            claim: "nbf",
            at: 0,
            now: 0,
            leeway: 0,
        },
        TokenRefusal::TooOld { age: 0, max_age: 0 },
        TokenRefusal::LivesTooLong {
            remaining: 0,
            max_lifetime: 0,
        },
        TokenRefusal::WrongIssuer {
            want: String::new(),
            got: String::new(),
        },
        TokenRefusal::WrongAudience {
            want: String::new(),
            got: vec![],
        },
        TokenRefusal::ClaimMismatch {
            claim: String::new(),
            want: String::new(),
            got: vec![],
        },
    ];
    let codes: std::collections::BTreeSet<&str> = all.iter().map(TokenRefusal::reason).collect();
    assert_eq!(codes.len(), all.len());
    for r in &all {
        assert!(!r.to_string().is_empty());
        assert!(
            r.reason()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_')
        );
    }
}

fn attestor() -> JwtAttestor {
    JwtAttestor::new(
        "github",
        policy(),
        vec![
            ClaimSelector::new("repository", "repository").unwrap(),
            ClaimSelector::new("ref", "ref").unwrap(),
            ClaimSelector::new("environment", "environment").unwrap(),
        ],
        AgentIdTemplate::parse("/lanyard/agent/github/{*repository}/{run_id}").unwrap(),
    )
    .unwrap()
}

#[test]
fn the_jwt_attestor_admits_a_node_with_agent_id_and_selectors() {
    let (k, j) = rsa_setup();
    let td = TrustDomain::new("example.org").unwrap();
    let t = sign_token(&k, &json!({"alg":"RS256","kid":"k1"}), &claims());
    let a = attestor().attest(&t, &j, &td, &clock()).unwrap();
    assert_eq!(
        a.agent_id.to_string(),
        "spiffe://example.org/lanyard/agent/github/acme/api/99"
    );
    let sel: Vec<String> = a.selectors.iter().map(ToString::to_string).collect();
    assert_eq!(
        sel,
        ["github:ref:refs/heads/main", "github:repository:acme/api"]
    );
    assert!(a.skipped.is_empty());
    assert_eq!(a.expires_at(), NOW + 300);
    assert_eq!(a.replay_key(), ReplayKey::for_token(ISS, Some("j-1"), &t));
    assert_eq!(attestor().kind(), "github");
    assert_eq!(attestor().selector_mapping().len(), 3);
    assert_eq!(
        attestor().template().as_str(),
        "/lanyard/agent/github/{*repository}/{run_id}"
    );

    // Template failures are refusals with their own reason.
    let t = sign_token(
        &k,
        &json!({"alg":"RS256","kid":"k1"}),
        &without(claims(), "run_id"),
    );
    let e = attestor().attest(&t, &j, &td, &clock()).unwrap_err();
    assert_eq!(e.reason(), "missing_claim");
    assert!(!e.wants_jwks_refresh());
    let t = sign_token(
        &k,
        &json!({"alg":"RS256","kid":"k1"}),
        &with(claims(), "run_id", json!("../x")),
    );
    let e = attestor().attest(&t, &j, &td, &clock()).unwrap_err();
    assert_eq!(e.reason(), "bad_agent_id_claim");

    // Token refusals pass through.
    let e = attestor().attest("garbage", &j, &td, &clock()).unwrap_err();
    assert_eq!(e.reason(), "malformed");
    assert!(e.is_malformed());
    let t = sign_token(
        &k,
        &json!({"alg":"RS256","kid":"k1"}),
        &with(claims(), "aud", json!("x")),
    );
    assert!(
        !attestor()
            .attest(&t, &j, &td, &clock())
            .unwrap_err()
            .is_malformed()
    );
}

#[test]
fn replayed_tokens_are_caught_by_the_cache() {
    let (k, j) = rsa_setup();
    let td = TrustDomain::new("example.org").unwrap();
    let t = sign_token(&k, &json!({"alg":"RS256","kid":"k1"}), &claims());
    let mut cache = crate::replay::ReplayCache::new(10);
    let a = attestor().attest(&t, &j, &td, &clock()).unwrap();
    cache
        .check_and_insert(a.replay_key(), a.expires_at(), NOW)
        .unwrap();
    let again = attestor().attest(&t, &j, &td, &clock()).unwrap();
    assert!(
        cache
            .check_and_insert(again.replay_key(), again.expires_at(), NOW + 1)
            .is_err()
    );
    // Without a jti, the token's hash is the key.
    let t2 = sign_token(
        &k,
        &json!({"alg":"RS256","kid":"k1"}),
        &without(claims(), "jti"),
    );
    let b = attestor().attest(&t2, &j, &td, &clock()).unwrap();
    assert_eq!(b.replay_key(), ReplayKey::for_token(ISS, None, &t2));
    cache
        .check_and_insert(b.replay_key(), b.expires_at(), NOW)
        .unwrap();
    assert!(
        cache
            .check_and_insert(b.replay_key(), b.expires_at(), NOW)
            .is_err()
    );
}

#[test]
fn attestor_kind_must_be_a_selector_type() {
    let t = AgentIdTemplate::parse("/lanyard/agent/x/{sub}").unwrap();
    assert!(matches!(
        JwtAttestor::new("Bad Kind", policy(), vec![], t.clone()),
        Err(PolicyError::BadKind(_))
    ));
    let a = JwtAttestor::new("jwt", policy(), vec![], t).unwrap();
    let p = policy().require(ClaimRequirement::parse("sub", &["x"]).unwrap());
    assert_eq!(a.with_policy(p).policy().requirements().len(), 1);
}
