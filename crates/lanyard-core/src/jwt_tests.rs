//! JWT-SVID tests. Tokens are built and signed here with aws-lc-rs, including the
//! malicious ones (alg none, HMAC key confusion, lying headers).

use super::*;
use crate::bundle::{Bundle, JwtAuthority};
use crate::clock::FakeClock;
use crate::id::TrustDomain;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
    ECDSA_P521_SHA512_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256,
    RsaEncoding, RsaKeyPair,
};
use proptest::prelude::*;
use serde_json::json;

const NOW: i64 = 1_800_000_000;

enum Key {
    Ec(EcdsaKeyPair, &'static str),
    Rsa(RsaKeyPair),
}

impl Key {
    fn ec(alg: &'static aws_lc_rs::signature::EcdsaSigningAlgorithm, crv: &'static str) -> Self {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Key::Ec(EcdsaKeyPair::from_pkcs8(alg, doc.as_ref()).unwrap(), crv)
    }
    fn p256() -> Self {
        Self::ec(&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256")
    }
    fn rsa() -> Self {
        Key::Rsa(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap())
    }
    fn jwk(&self) -> PublicJwk {
        match self {
            Key::Ec(k, crv) => {
                let p = k.public_key().as_ref();
                let n = (p.len() - 1) / 2;
                PublicJwk::Ec {
                    crv: (*crv).to_string(),
                    x: URL_SAFE_NO_PAD.encode(&p[1..=n]),
                    y: URL_SAFE_NO_PAD.encode(&p[1 + n..]),
                }
            }
            Key::Rsa(k) => {
                let pk = k.public_key();
                let n: Vec<u8> = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(pk).n;
                PublicJwk::Rsa {
                    n: URL_SAFE_NO_PAD.encode(&n),
                    e: URL_SAFE_NO_PAD.encode([1u8, 0, 1]),
                }
            }
        }
    }
    fn sign(&self, input: &[u8], pss: bool) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Key::Ec(k, _) => k.sign(&rng, input).unwrap().as_ref().to_vec(),
            Key::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                let enc: &'static dyn RsaEncoding = if pss {
                    &RSA_PSS_SHA256
                } else {
                    &RSA_PKCS1_SHA256
                };
                k.sign(enc, &rng, input, &mut sig).unwrap();
                sig
            }
        }
    }
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn token(key: &Key, header: Value, claims: Value) -> String {
    let pss = header["alg"].as_str().is_some_and(|a| a.starts_with("PS"));
    let input = format!("{}.{}", b64(&header), b64(&claims));
    let sig = key.sign(input.as_bytes(), pss);
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn claims() -> Value {
    json!({"sub": "spiffe://example.org/web", "aud": ["db"], "exp": NOW + 300, "iat": NOW, "iss": "https://example.org"})
}

fn header(alg: &str) -> Value {
    json!({"alg": alg, "kid": "k1", "typ": "JWT"})
}

fn bundles(key: &Key) -> BundleSet {
    let mut b = Bundle::new(TrustDomain::new("example.org").unwrap());
    b.add_jwt_authority(JwtAuthority::new("k1", key.jwk()).unwrap());
    [b].into_iter().collect()
}

fn clock() -> FakeClock {
    FakeClock::at(NOW)
}

fn validate(t: &str, b: &BundleSet) -> Result<JwtSvid, JwtError> {
    JwtSvid::validate(t, &["db"], b, &clock())
}

#[test]
fn valid_tokens_of_every_family() {
    for (alg, key) in [
        ("ES256", Key::p256()),
        ("ES384", Key::ec(&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384")),
        ("ES512", Key::ec(&ECDSA_P521_SHA512_FIXED_SIGNING, "P-521")),
        ("RS256", Key::rsa()),
        ("PS256", Key::rsa()),
    ] {
        let t = token(&key, header(alg), claims());
        let svid = validate(&t, &bundles(&key)).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/web");
        assert_eq!(svid.audience(), ["db"]);
        assert_eq!(svid.expiry(), NOW + 300);
        assert_eq!(svid.issued_at(), Some(NOW));
        assert_eq!(svid.issuer(), Some("https://example.org"));
        assert_eq!(svid.kid(), "k1");
        assert_eq!(svid.alg(), alg);
        assert_eq!(svid.token(), t);
    }
}

#[test]
fn audience_forms() {
    let key = Key::p256();
    let b = bundles(&key);
    let mut c = claims();
    c["aud"] = json!("db");
    validate(&token(&key, header("ES256"), c.clone()), &b).unwrap();
    c["aud"] = json!(["x", "db"]);
    validate(&token(&key, header("ES256"), c.clone()), &b).unwrap();
    c["aud"] = json!(["x"]);
    assert!(matches!(
        validate(&token(&key, header("ES256"), c.clone()), &b),
        Err(JwtError::AudienceMismatch { .. })
    ));
    c["aud"] = json!([]);
    assert_eq!(
        validate(&token(&key, header("ES256"), c.clone()), &b),
        Err(JwtError::BadAud)
    );
    c["aud"] = json!("");
    assert_eq!(
        validate(&token(&key, header("ES256"), c.clone()), &b),
        Err(JwtError::BadAud)
    );
    c["aud"] = json!([1]);
    assert_eq!(
        validate(&token(&key, header("ES256"), c.clone()), &b),
        Err(JwtError::BadAud)
    );
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        validate(&token(&key, header("ES256"), c), &b),
        Err(JwtError::MissingAud)
    );
    let t = token(&key, header("ES256"), claims());
    assert_eq!(
        JwtSvid::validate(&t, &[], &b, &clock()),
        Err(JwtError::NoExpectedAudience)
    );
}

#[test]
fn typ_and_kid_and_crit() {
    let key = Key::p256();
    let b = bundles(&key);
    for typ in [Some("JWT"), Some("JOSE"), None] {
        let mut h = header("ES256");
        match typ {
            Some(t) => h["typ"] = json!(t),
            None => {
                h.as_object_mut().unwrap().remove("typ");
            }
        }
        validate(&token(&key, h, claims()), &b).unwrap_or_else(|e| panic!("{typ:?}: {e}"));
    }
    let mut h = header("ES256");
    h["typ"] = json!("at+jwt");
    assert_eq!(
        validate(&token(&key, h, claims()), &b),
        Err(JwtError::BadTyp("at+jwt".into()))
    );
    let mut h = header("ES256");
    h.as_object_mut().unwrap().remove("kid");
    assert_eq!(
        validate(&token(&key, h, claims()), &b),
        Err(JwtError::MissingKid)
    );
    let mut h = header("ES256");
    h["kid"] = json!("other");
    assert!(matches!(
        validate(&token(&key, h, claims()), &b),
        Err(JwtError::UnknownKid { .. })
    ));
    let mut h = header("ES256");
    h["crit"] = json!(["exp"]);
    assert_eq!(validate(&token(&key, h, claims()), &b), Err(JwtError::Crit));
}

#[test]
fn forbidden_algorithms() {
    let key = Key::p256();
    let b = bundles(&key);
    // alg none, with and without a signature.
    let input = format!(
        "{}.{}",
        b64(&json!({"alg": "none", "kid": "k1"})),
        b64(&claims())
    );
    assert_eq!(
        validate(&format!("{input}."), &b),
        Err(JwtError::AlgNotAllowed("none".into()))
    );
    assert_eq!(
        validate(&format!("{input}.AAAA"), &b),
        Err(JwtError::AlgNotAllowed("none".into()))
    );
    // HS256 keyed with the public key bytes: the classic key-confusion attack.
    let pub_bytes = match &key {
        Key::Ec(k, _) => k.public_key().as_ref().to_vec(),
        Key::Rsa(_) => unreachable!(),
    };
    let input = format!(
        "{}.{}",
        b64(&json!({"alg": "HS256", "kid": "k1", "typ": "JWT"})),
        b64(&claims())
    );
    let hmac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &pub_bytes);
    let tag = aws_lc_rs::hmac::sign(&hmac_key, input.as_bytes());
    let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
    assert_eq!(
        validate(&forged, &b),
        Err(JwtError::AlgNotAllowed("HS256".into()))
    );
    for alg in ["EdDSA", "HS384", "HS512", "RS1", "es256"] {
        let t = token(&key, header(alg), claims());
        assert_eq!(
            validate(&t, &b),
            Err(JwtError::AlgNotAllowed(alg.into())),
            "{alg}"
        );
    }
    let mut h = header("ES256");
    h.as_object_mut().unwrap().remove("alg");
    assert_eq!(
        validate(&token(&key, h, claims()), &b),
        Err(JwtError::MissingAlg)
    );
}

#[test]
fn header_must_match_the_key() {
    // ES256 header over a P-384 key.
    let p384 = Key::ec(&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384");
    let t = token(&p384, header("ES256"), claims());
    assert!(matches!(
        validate(&t, &bundles(&p384)),
        Err(JwtError::KeyMismatch { .. })
    ));
    // RS256 header over an EC key, and ES256 over RSA.
    let ec = Key::p256();
    let rsa = Key::rsa();
    let t = token(&rsa, header("RS256"), claims());
    assert!(matches!(
        validate(&t, &bundles(&ec)),
        Err(JwtError::KeyMismatch { .. })
    ));
    let t = token(&ec, header("ES256"), claims());
    assert!(matches!(
        validate(&t, &bundles(&rsa)),
        Err(JwtError::KeyMismatch { .. })
    ));
}

#[test]
fn time_rules_use_the_clock() {
    let key = Key::p256();
    let b = bundles(&key);
    let t = token(&key, header("ES256"), claims());
    let c = clock();
    c.set(NOW + 299);
    JwtSvid::validate(&t, &["db"], &b, &c).unwrap();
    c.set(NOW + 300);
    assert_eq!(
        JwtSvid::validate(&t, &["db"], &b, &c),
        Err(JwtError::Expired {
            exp: NOW + 300,
            now: NOW + 300
        }),
        "exp == now is expired"
    );
    let mut cl = claims();
    cl["nbf"] = json!(NOW + 60);
    let t = token(&key, header("ES256"), cl);
    assert!(matches!(
        validate(&t, &b),
        Err(JwtError::NotYetValid { .. })
    ));
    let mut cl = claims();
    cl.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        validate(&token(&key, header("ES256"), cl), &b),
        Err(JwtError::MissingExp)
    );
    let mut cl = claims();
    cl["exp"] = json!("tomorrow");
    assert_eq!(
        validate(&token(&key, header("ES256"), cl), &b),
        Err(JwtError::BadTime("exp"))
    );
}

#[test]
fn signature_failures() {
    let key = Key::p256();
    let b = bundles(&key);
    let t = token(&key, header("ES256"), claims());
    // Flip one bit of the signature.
    let (input, sig) = t.rsplit_once('.').unwrap();
    let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
    raw[5] ^= 1;
    let bad = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&raw));
    assert_eq!(validate(&bad, &b), Err(JwtError::BadSignature("k1".into())));
    // Change a claim after signing.
    let mut c2 = claims();
    c2["sub"] = json!("spiffe://example.org/admin");
    let (h, _) = input.split_once('.').unwrap();
    let tampered = format!("{h}.{}.{sig}", b64(&c2));
    assert_eq!(
        validate(&tampered, &b),
        Err(JwtError::BadSignature("k1".into()))
    );
    // Signed by another key that claims the same kid.
    let other = Key::p256();
    let t = token(&other, header("ES256"), claims());
    assert_eq!(validate(&t, &b), Err(JwtError::BadSignature("k1".into())));
}

#[test]
fn subject_rules() {
    let key = Key::p256();
    let b = bundles(&key);
    let mut c = claims();
    c["sub"] = json!("not-a-spiffe-id");
    assert!(matches!(
        validate(&token(&key, header("ES256"), c.clone()), &b),
        Err(JwtError::BadSub(_))
    ));
    c["sub"] = json!("spiffe://example.org");
    assert!(matches!(
        validate(&token(&key, header("ES256"), c.clone()), &b),
        Err(JwtError::RootSub(_))
    ));
    c["sub"] = json!("spiffe://other.org/web");
    assert_eq!(
        validate(&token(&key, header("ES256"), c.clone()), &b),
        Err(JwtError::NoBundle("other.org".into()))
    );
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        validate(&token(&key, header("ES256"), c), &b),
        Err(JwtError::MissingSub)
    );
}

#[test]
fn malformed_tokens() {
    let key = Key::p256();
    let t = token(&key, header("ES256"), claims());
    assert_eq!(
        JwtSvid::parse_insecure("a.b"),
        Err(JwtError::Parts { parts: 2 })
    );
    assert_eq!(
        JwtSvid::parse_insecure(&format!("{t}.x")),
        Err(JwtError::Parts { parts: 4 })
    );
    assert!(matches!(
        JwtSvid::parse_insecure("!!.b.c"),
        Err(JwtError::Base64 { part: "header", .. })
    ));
    let arr = format!("{}.{}.AA", b64(&header("ES256")), b64(&json!([1, 2])));
    assert!(matches!(
        JwtSvid::parse_insecure(&arr),
        Err(JwtError::Json { part: "claims", .. })
    ));
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(
        JwtSvid::parse_insecure(&long),
        Err(JwtError::TooLong {
            len: MAX_TOKEN_LEN + 1
        })
    );
    assert!(JwtSvid::parse_insecure(&t).is_ok());
    // Error messages say what to do.
    assert!(JwtError::MissingKid.to_string().contains("bundle"));
}

proptest! {
    #[test]
    fn parse_never_panics(s in "\\PC{0,300}") {
        let _ = JwtSvid::parse_insecure(&s);
    }

    #[test]
    fn mutations_never_validate_with_another_identity(pos in 0usize..400, byte in any::<u8>()) {
        let key = Key::p256();
        let b = bundles(&key);
        let t = token(&key, header("ES256"), claims());
        let mut bytes = t.into_bytes();
        let i = pos % bytes.len();
        bytes[i] = byte;
        if let Ok(s) = String::from_utf8(bytes)
            && let Ok(svid) = validate(&s, &b)
        {
            prop_assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/web");
        }
    }
}
