//! Test helpers: signing keys, JWKS documents and signed tokens (test builds only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair, RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// A signing key of one of the accepted kinds.
pub enum TestKey {
    Rsa(RsaKeyPair),
    P256(EcdsaKeyPair),
    P384(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

pub fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// The RSA key's PKCS#8 DER (generated once per test binary: RSA keygen is slow).
pub fn rsa_pkcs8() -> &'static [u8] {
    static K: OnceLock<Vec<u8>> = OnceLock::new();
    K.get_or_init(|| {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .unwrap()
            .serialize_der()
    })
}

/// A second, different RSA key.
pub fn rsa_pkcs8_other() -> &'static [u8] {
    static K: OnceLock<Vec<u8>> = OnceLock::new();
    K.get_or_init(|| {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .unwrap()
            .serialize_der()
    })
}

impl TestKey {
    pub fn rsa() -> Self {
        Self::Rsa(RsaKeyPair::from_pkcs8(rsa_pkcs8()).unwrap())
    }
    pub fn rsa_other() -> Self {
        Self::Rsa(RsaKeyPair::from_pkcs8(rsa_pkcs8_other()).unwrap())
    }
    pub fn p256() -> Self {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Self::P256(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap(),
        )
    }
    pub fn p384() -> Self {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        Self::P384(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, doc.as_ref()).unwrap(),
        )
    }
    pub fn ed25519() -> Self {
        Self::Ed(Ed25519KeyPair::generate().unwrap())
    }

    /// The public JWK, with `kid` (and `alg` when given).
    pub fn jwk(&self, kid: Option<&str>, alg: Option<&str>) -> Value {
        let mut v = match self {
            Self::Rsa(k) => {
                let c = RsaPublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({"kty":"RSA","n":b64(&c.n),"e":b64(&c.e)})
            }
            Self::P256(k) | Self::P384(k) => {
                let p = k.public_key().as_ref();
                let n = (p.len() - 1) / 2;
                let crv = if n == 32 { "P-256" } else { "P-384" };
                json!({"kty":"EC","crv":crv,"x":b64(&p[1..1 + n]),"y":b64(&p[1 + n..])})
            }
            Self::Ed(k) => json!({"kty":"OKP","crv":"Ed25519","x":b64(k.public_key().as_ref())}),
        };
        if let Some(kid) = kid {
            v["kid"] = json!(kid);
        }
        if let Some(alg) = alg {
            v["alg"] = json!(alg);
        }
        v
    }

    /// Sign `input` as JWS algorithm `alg` (must fit the key, except for deliberate
    /// mismatch tests, where RSA signs PS256 and EC/Ed sign their own).
    pub fn sign(&self, alg: &str, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Self::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                let enc: &'static dyn aws_lc_rs::signature::RsaEncoding = if alg.starts_with("PS") {
                    &RSA_PSS_SHA256
                } else {
                    &RSA_PKCS1_SHA256
                };
                k.sign(enc, &rng, input, &mut sig).unwrap();
                sig
            }
            Self::P256(k) | Self::P384(k) => k.sign(&rng, input).unwrap().as_ref().to_vec(),
            Self::Ed(k) => k.sign(input).as_ref().to_vec(),
        }
    }
}

/// A JWKS document of the given keys.
pub fn jwks_doc(keys: &[Value]) -> Vec<u8> {
    json!({ "keys": keys }).to_string().into_bytes()
}

/// A compact JWS with `header` and `claims`, signed by `key`.
pub fn sign_token(key: &TestKey, header: &Value, claims: &Value) -> String {
    let alg = header["alg"].as_str().unwrap_or("RS256");
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = key.sign(alg, input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

/// A token with an arbitrary (unsigned) signature part.
pub fn unsigned_token(header: &Value, claims: &Value, sig: &str) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        sig
    )
}
