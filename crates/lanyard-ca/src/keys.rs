//! Signing keys: one type that signs X.509 certificates (through rcgen) and JWTs
//! (directly with aws-lc-rs, from a key parsed once), and serializes to PKCS#8 for
//! storage. `Debug` never prints key material.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    RSA_PKCS1_SHA256, RsaKeyPair,
};
use rcgen::{
    KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, PublicKeyData,
};
use serde::{Deserialize, Serialize};

use crate::CaError;

/// Key algorithm of CA and JWT signing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// EC P-256 with SHA-256 (the SPIFFE reference default).
    #[default]
    EcP256,
    /// EC P-384 with SHA-384.
    EcP384,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256.
    Rsa2048,
}

impl KeyAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
            Self::Rsa2048 => "rsa-2048",
        }
    }

    /// The JWS `alg` of JWTs signed with this key.
    pub fn jwt_alg(self) -> &'static str {
        match self {
            Self::EcP256 => "ES256",
            Self::EcP384 => "ES384",
            Self::Rsa2048 => "RS256",
        }
    }

    fn rcgen_alg(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcP256 => &PKCS_ECDSA_P256_SHA256,
            Self::EcP384 => &PKCS_ECDSA_P384_SHA384,
            Self::Rsa2048 => &PKCS_RSA_SHA256,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ec-p256" => Ok(Self::EcP256),
            "ec-p384" => Ok(Self::EcP384),
            "rsa-2048" => Ok(Self::Rsa2048),
            other => Err(CaError::UnknownKeyAlgorithm(other.to_string())),
        }
    }
}

enum JwtSigner {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A private signing key.
pub struct SigningKey {
    alg: KeyAlgorithm,
    pkcs8: Vec<u8>,
    rcgen: KeyPair,
    jwt: JwtSigner,
    rng: SystemRandom,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("private", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    /// Generate a fresh key.
    pub fn generate(alg: KeyAlgorithm) -> Result<Self, CaError> {
        let kp = KeyPair::generate_for(alg.rcgen_alg())
            .map_err(|e| CaError::KeyGeneration(e.to_string()))?;
        Self::from_pkcs8(alg, &kp.serialize_der())
    }

    /// Load a key from PKCS#8 DER.
    pub fn from_pkcs8(alg: KeyAlgorithm, der: &[u8]) -> Result<Self, CaError> {
        let bad = |e: String| CaError::BadKey(format!("{alg} key: {e}"));
        let rcgen = KeyPair::from_pkcs8_der_and_sign_algo(&der.to_vec().into(), alg.rcgen_alg())
            .map_err(|e| bad(e.to_string()))?;
        let jwt = match alg {
            KeyAlgorithm::EcP256 => JwtSigner::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|e| bad(e.to_string()))?,
            ),
            KeyAlgorithm::EcP384 => JwtSigner::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der)
                    .map_err(|e| bad(e.to_string()))?,
            ),
            KeyAlgorithm::Rsa2048 => {
                JwtSigner::Rsa(RsaKeyPair::from_pkcs8(der).map_err(|e| bad(e.to_string()))?)
            }
        };
        Ok(Self {
            alg,
            pkcs8: der.to_vec(),
            rcgen,
            jwt,
            rng: SystemRandom::new(),
        })
    }

    /// Load a key from a PEM `PRIVATE KEY` (PKCS#8) block, guessing its algorithm.
    pub fn from_pkcs8_pem(pem_text: &str) -> Result<Self, CaError> {
        let kp = KeyPair::from_pem(pem_text).map_err(|e| {
            CaError::BadKey(format!(
                "not a PEM PKCS#8 EC P-256/P-384 or RSA private key: {e}; convert it with `openssl pkcs8 -topk8 -nocrypt`"
            ))
        })?;
        let alg = if kp.algorithm() == &PKCS_ECDSA_P256_SHA256 {
            KeyAlgorithm::EcP256
        } else if kp.algorithm() == &PKCS_ECDSA_P384_SHA384 {
            KeyAlgorithm::EcP384
        } else if kp.is_compatible(&PKCS_RSA_SHA256) {
            KeyAlgorithm::Rsa2048
        } else {
            return Err(CaError::BadKey(
                "unsupported key algorithm; use EC P-256, P-384 or RSA".to_string(),
            ));
        };
        Self::from_pkcs8(alg, &kp.serialize_der())
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.alg
    }

    /// PKCS#8 DER of the private key, for storage with restrictive permissions.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// DER SubjectPublicKeyInfo of the public key.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.rcgen.subject_public_key_info()
    }

    pub(crate) fn rcgen(&self) -> &KeyPair {
        &self.rcgen
    }

    /// Sign a JWS signing input (`b64(header).b64(claims)`); the signature is in JWS
    /// form (fixed-size r||s for ECDSA).
    pub fn sign_jws(&self, signing_input: &[u8]) -> Result<Vec<u8>, CaError> {
        match &self.jwt {
            JwtSigner::Ec(k) => k
                .sign(&self.rng, signing_input)
                .map(|s| s.as_ref().to_vec())
                .map_err(|e| CaError::Signing(e.to_string())),
            JwtSigner::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &self.rng, signing_input, &mut sig)
                    .map_err(|e| CaError::Signing(e.to_string()))?;
                Ok(sig)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_round_trips_through_pkcs8() {
        for alg in [
            KeyAlgorithm::EcP256,
            KeyAlgorithm::EcP384,
            KeyAlgorithm::Rsa2048,
        ] {
            let k = SigningKey::generate(alg).unwrap();
            let again = SigningKey::from_pkcs8(alg, k.pkcs8_der()).unwrap();
            assert_eq!(again.public_key_der(), k.public_key_der());
            assert!(!k.sign_jws(b"x.y").unwrap().is_empty());
            assert_eq!(alg.name().parse::<KeyAlgorithm>().unwrap(), alg);
            assert!(!format!("{k:?}").contains(&format!("{:?}", &k.pkcs8_der()[..8])));
        }
        assert!("ed25519".parse::<KeyAlgorithm>().is_err());
    }

    #[test]
    fn wrong_algorithm_or_garbage_is_refused() {
        let k = SigningKey::generate(KeyAlgorithm::EcP256).unwrap();
        assert!(SigningKey::from_pkcs8(KeyAlgorithm::EcP384, k.pkcs8_der()).is_err());
        assert!(SigningKey::from_pkcs8(KeyAlgorithm::EcP256, b"junk").is_err());
        assert!(SigningKey::from_pkcs8_pem("not pem").is_err());
    }
}
