//! Sealing of exception secrets at rest: AES-256-GCM with a key kept in
//! `DATA_DIR/secrets.key` (mode 0600), the exception's name as associated data (a
//! sealed secret moved to another exception does not open). Servers sharing one
//! database must share this key file.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::state::ServerError;

/// Why a secret could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error("the secrets key must be 32 bytes, found {0}; restore it from backup")]
    KeyLength(usize),
    #[error("the system random source failed")]
    Random,
    #[error("AES-256-GCM: {0}")]
    Crypto(String),
    #[error("sealed secret of {name:?} is corrupt: {reason}")]
    Corrupt { name: String, reason: String },
    #[error("sealed secret of {0:?} is truncated")]
    Truncated(String),
    #[error(
        "the secret of {0:?} does not open with this server's secrets.key (wrong key or altered data)"
    )]
    WrongKey(String),
}

/// Longest secret accepted.
pub const MAX_SECRET: usize = 64 * 1024;

/// The sealing key.
pub struct SecretBox {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// Load `secrets.key` from `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, ServerError> {
        let raw = Self::local_key(dir, true)?;
        Self::from_bytes(&raw)
            .map_err(|e| ServerError::bad_file("the secrets key", &dir.join("secrets.key"), e))
    }

    /// The key in `dir/secrets.key`, or a new one (written there when `write`).
    pub fn local_key(dir: &Path, write: bool) -> Result<Vec<u8>, ServerError> {
        crate::state::read_or_generate(&dir.join("secrets.key"), write, || {
            let mut b = vec![0u8; 32];
            aws_lc_rs::rand::fill(&mut b).map_err(|_| ServerError::Random("the secrets key"))?;
            Ok(b)
        })
    }

    pub fn from_bytes(raw: &[u8]) -> Result<Self, SecretsError> {
        if raw.len() != 32 {
            return Err(SecretsError::KeyLength(raw.len()));
        }
        let key =
            UnboundKey::new(&AES_256_GCM, raw).map_err(|e| SecretsError::Crypto(e.to_string()))?;
        Ok(Self {
            key: LessSafeKey::new(key),
        })
    }

    /// Seal `secret` for the exception `name`: base64url(nonce || ciphertext || tag).
    pub fn seal(&self, name: &str, secret: &[u8]) -> Result<String, SecretsError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SecretsError::Random)?;
        let mut buf = secret.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut buf,
            )
            .map_err(|e| SecretsError::Crypto(e.to_string()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// Open a sealed secret of the exception `name`.
    pub fn open(&self, name: &str, sealed: &str) -> Result<Vec<u8>, SecretsError> {
        let raw = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|e| SecretsError::Corrupt {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(SecretsError::Truncated(name.to_string()));
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|e| SecretsError::Crypto(e.to_string()))?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buf)
            .map_err(|_| SecretsError::WrongKey(name.to_string()))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let dir = tempfile::tempdir().unwrap();
        let b = SecretBox::load_or_create(dir.path()).unwrap();
        let sealed = b.seal("db", b"hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(b.open("db", &sealed).unwrap(), b"hunter2");
        assert!(b.open("other", &sealed).is_err(), "bound to the name");
        let again = SecretBox::load_or_create(dir.path()).unwrap();
        assert_eq!(
            again.open("db", &sealed).unwrap(),
            b"hunter2",
            "key persisted"
        );
        let other = SecretBox::from_bytes(&[7u8; 32]).unwrap();
        assert!(
            other
                .open("db", &sealed)
                .unwrap_err()
                .to_string()
                .contains("secrets.key")
        );
        let mut tampered = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(b.open("db", &URL_SAFE_NO_PAD.encode(tampered)).is_err());
        assert!(b.open("db", "!!").is_err());
        assert!(SecretBox::from_bytes(&[1, 2, 3]).is_err());
    }
}
