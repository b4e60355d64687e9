//! Test helpers shared by the token attestors' unit tests.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::{AttestError, Challenger};

/// An ES256 signing key with its `kid`.
pub struct Key {
    kid: String,
    pair: rcgen::KeyPair,
}

impl Key {
    pub fn new(kid: &str) -> Self {
        Self {
            kid: kid.to_string(),
            pair: rcgen::KeyPair::generate().unwrap(),
        }
    }
    pub fn jwk(&self) -> Value {
        let raw = self.pair.public_key_raw();
        json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])})
    }
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        let k = jsonwebtoken::EncodingKey::from_ec_der(&self.pair.serialize_der());
        jsonwebtoken::encode(&h, claims, &k).unwrap()
    }
}

/// Write `keys` as the JWKS file `dir/jwks.json`.
pub fn write_jwks(dir: &Path, keys: &[&Key]) -> PathBuf {
    let path = dir.join("jwks.json");
    let doc = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

/// A node that is never challenged.
pub struct NoChallenges;
#[tonic::async_trait]
impl Challenger for NoChallenges {
    async fn challenge(&mut self, _: Vec<u8>, _: String) -> Result<Vec<u8>, AttestError> {
        panic!("token attestation sends no challenge")
    }
}
