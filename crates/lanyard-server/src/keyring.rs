//! Keys every server needs, without copying files (issue #16, item 5). With a
//! key-encryption key (KEK: `kek_file` in the configuration, or the `LANYARD_KEK`
//! environment variable — the one secret to distribute), the secrets-sealing key,
//! the token-signing key and each server's audit checkpoint key are kept in the
//! datastore sealed under the KEK (AES-256-GCM, the key's name as associated data,
//! so a sealed key moved to another name does not open). The first server to start
//! stores them — the keys already in its data dir, so that what they sealed or
//! signed stays valid — and every other server adopts the stored ones.
//!
//! Without a KEK each server keeps these keys in its data dir, as before.

use std::path::Path;

use lanyard_store::{SealedKey, Store};

use crate::secrets::SecretBox;
use crate::state::ServerError;

/// The name of the secrets-sealing key in the datastore.
pub const SECRETS_KEY: &str = "secrets";
/// The name of the token-signing key in the datastore.
pub const TOKEN_KEY: &str = "token-signing";

/// The name of a server's audit checkpoint key in the datastore.
pub fn audit_key_name(server: &str) -> String {
    format!("audit/{server}")
}

/// The key-encryption key.
pub struct Kek {
    sealer: SecretBox,
    id: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

/// Why the KEK or a sealed key cannot be used; each says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error(
        "the key-encryption key must be 32 bytes (raw, base64 or hex), found {0}; make one with `head -c 32 /dev/urandom | base64`"
    )]
    KekLength(usize),
    #[error(
        "the stored {name} key is sealed under key-encryption key {stored}, but this server's is {ours}: give every server the same kek_file (or LANYARD_KEK)"
    )]
    OtherKek {
        name: String,
        stored: String,
        ours: String,
    },
    #[error(
        "the stored {name} key does not open with this server's key-encryption key ({reason}): give every server the same KEK"
    )]
    Open { name: String, reason: String },
}

impl Kek {
    /// From the file's or variable's contents: 32 raw bytes, or 32 bytes as base64
    /// or hex text (surrounding whitespace ignored).
    pub fn parse(raw: &[u8]) -> Result<Self, KeyringError> {
        let bytes = decode_kek(raw)?;
        let sealer =
            SecretBox::from_bytes(&bytes).map_err(|_| KeyringError::KekLength(bytes.len()))?;
        let mut id = crate::node::sha256_hex(&bytes);
        id.truncate(16);
        Ok(Self { sealer, id })
    }

    /// The KEK's id: the first 8 bytes (hex) of its SHA-256 (not secret; names which
    /// KEK sealed a stored key).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn seal(&self, name: &str, material: &[u8]) -> Result<String, ServerError> {
        Ok(self.sealer.seal(&format!("key:{name}"), material)?)
    }

    /// Open the stored key `k` (which must be sealed under this KEK).
    pub fn open(&self, k: &SealedKey) -> Result<Vec<u8>, KeyringError> {
        if k.kek_id != self.id {
            return Err(KeyringError::OtherKek {
                name: k.name.clone(),
                stored: k.kek_id.clone(),
                ours: self.id.clone(),
            });
        }
        self.sealer
            .open(&format!("key:{}", k.name), &k.sealed)
            .map_err(|e| KeyringError::Open {
                name: k.name.clone(),
                reason: e.to_string(),
            })
    }
}

fn decode_kek(raw: &[u8]) -> Result<Vec<u8>, KeyringError> {
    use base64::Engine as _;
    if raw.len() == 32 {
        return Ok(raw.to_vec());
    }
    let text = String::from_utf8_lossy(raw);
    let t = text.trim();
    if t.len() == 64
        && let Ok(b) = hex::decode(t)
    {
        return Ok(b);
    }
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
    ] {
        if let Ok(b) = engine.decode(t)
            && b.len() == 32
        {
            return Ok(b);
        }
    }
    Err(KeyringError::KekLength(raw.len()))
}

/// Read the KEK from `kek_file`, else from the `LANYARD_KEK` value given.
pub fn load_kek(file: Option<&Path>, env: Option<&str>) -> Result<Option<Kek>, ServerError> {
    match (file, env) {
        (Some(p), _) => {
            let raw = std::fs::read(p).map_err(|e| ServerError::io("cannot read", p, e))?;
            Kek::parse(&raw)
                .map(Some)
                .map_err(|e| ServerError::bad_file("kek_file", p, e))
        }
        (None, Some(v)) if !v.is_empty() => Kek::parse(v.as_bytes())
            .map(Some)
            .map_err(|e| ServerError::Unavailable(format!("LANYARD_KEK: {e}"))),
        _ => Ok(None),
    }
}

/// What [`shared_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Another server (or an earlier start) stored it.
    Stored,
    /// This server stored its key.
    Published,
}

/// The key `name` every server shares: the stored one, opened with `kek`; when none
/// is stored yet, `local()` (the key in this server's data dir, or a new one) is
/// sealed and stored — unless another server stored one first, which wins.
pub async fn shared_key<S: Store>(
    store: &S,
    kek: &Kek,
    name: &str,
    now: i64,
    local: impl FnOnce() -> Result<Vec<u8>, ServerError>,
) -> Result<(Vec<u8>, Source), ServerError> {
    if let Some(k) = store.get_sealed_key(name).await? {
        return Ok((open(kek, &k)?, Source::Stored));
    }
    let material = local()?;
    let row = SealedKey {
        name: name.to_string(),
        sealed: kek.seal(name, &material)?,
        kek_id: kek.id().to_string(),
        created_at: now,
    };
    let stored = store.insert_sealed_key(&row).await?;
    let opened = open(kek, &stored)?;
    let source = if opened == material {
        Source::Published
    } else {
        Source::Stored
    };
    Ok((opened, source))
}

fn open(kek: &Kek, k: &SealedKey) -> Result<Vec<u8>, ServerError> {
    kek.open(k)
        .map_err(|e| ServerError::Unavailable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_store::AnyStore;

    #[test]
    fn a_kek_is_32_bytes_raw_hex_or_base64() {
        let raw = [7u8; 32];
        let a = Kek::parse(&raw).unwrap();
        let b = Kek::parse(hex::encode(raw).as_bytes()).unwrap();
        use base64::Engine as _;
        let c = Kek::parse(
            format!(
                "{}\n",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(a.id(), c.id());
        let e = Kek::parse(b"too short").unwrap_err().to_string();
        assert!(e.contains("32 bytes") && e.contains("/dev/urandom"), "{e}");
    }

    #[test]
    fn a_sealed_key_opens_only_with_its_kek_and_name() {
        let kek = Kek::parse(&[1u8; 32]).unwrap();
        let other = Kek::parse(&[2u8; 32]).unwrap();
        let k = SealedKey {
            name: "secrets".into(),
            sealed: kek.seal("secrets", b"material").unwrap(),
            kek_id: kek.id().into(),
            created_at: 0,
        };
        assert_eq!(kek.open(&k).unwrap(), b"material");
        assert!(!k.sealed.contains("material"));
        let e = other.open(&k).unwrap_err();
        assert!(matches!(e, KeyringError::OtherKek { .. }), "{e}");
        assert!(e.to_string().contains("same kek_file"), "{e}");
        // Moved to another name: does not open.
        let moved = SealedKey {
            name: "token-signing".into(),
            ..k.clone()
        };
        assert!(matches!(kek.open(&moved), Err(KeyringError::Open { .. })));
        // A KEK whose id was forged onto the row still cannot open it.
        let forged = SealedKey {
            kek_id: other.id().into(),
            ..k
        };
        assert!(matches!(
            other.open(&forged),
            Err(KeyringError::Open { .. })
        ));
    }

    #[tokio::test]
    async fn the_first_server_publishes_its_key_and_the_next_adopts_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = AnyStore::open(&dir.path().join("k.db").to_string_lossy())
            .await
            .unwrap();
        let kek = Kek::parse(&[3u8; 32]).unwrap();
        let (a, src) = shared_key(&store, &kek, SECRETS_KEY, 1, || Ok(vec![9u8; 32]))
            .await
            .unwrap();
        assert_eq!((a.as_slice(), src), (&[9u8; 32][..], Source::Published));
        // A second server with another local key gets the stored one; its own local
        // key is not even asked for.
        let (b, src) = shared_key(&store, &kek, SECRETS_KEY, 2, || {
            panic!("the stored key must be used")
        })
        .await
        .unwrap();
        assert_eq!((b, src), (a.clone(), Source::Stored));
        // A server with a different KEK is refused with a clear error.
        let wrong = Kek::parse(&[4u8; 32]).unwrap();
        let e = shared_key(&store, &wrong, SECRETS_KEY, 3, || Ok(vec![1; 32]))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("same kek_file"), "{e}");
    }
}
