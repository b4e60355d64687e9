//! The PKCS #12 archive of `--pkcs12`: the SVID's key with its chain, and the
//! trust bundle's CA certificates as trusted entries (for Java and .NET
//! software). Encrypted with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) and an
//! HMAC-SHA256 MAC, which OpenSSL 3, Java 11+ and .NET read.

use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};

use super::WatchError;
use super::files::Material;

/// The alias of the key entry.
pub const KEY_ALIAS: &str = "svid";

/// The archive for `m`, protected by `password`.
pub fn archive(m: &Material, password: &str) -> Result<Vec<u8>, WatchError> {
    let bad = |what: &str, e: p12_keystore::error::Error| {
        WatchError::BadAnswer(format!(
            "cannot put the {what} into the PKCS #12 archive: {e}"
        ))
    };
    let key = PrivateKey::from_der(&m.key).map_err(|e| bad("private key", e))?;
    let certs = m
        .chain
        .iter()
        .map(|d| Certificate::from_der(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate chain", e))?;
    let leaf = m
        .chain
        .first()
        .ok_or_else(|| WatchError::BadAnswer("the SVID has no certificate".into()))?;
    // The local key ID ties the key to its certificate: a digest of the leaf.
    let id = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf);
    let mut store = KeyStore::new();
    store.add_entry(
        KEY_ALIAS,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(id.as_ref(), key, certs)),
    );
    for (i, ca) in m.bundle.iter().enumerate() {
        let cert = Certificate::from_der(ca).map_err(|e| bad("trust bundle", e))?;
        store.add_entry(&format!("ca-{i}"), KeyStoreEntry::Certificate(cert));
    }
    store
        .writer(password)
        .write()
        .map_err(|e| bad("key and certificates", e))
}

/// The password in a `--pkcs12-password-file`: its first line, without the line
/// ending.
pub fn read_password(path: &std::path::Path) -> Result<String, WatchError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        WatchError::Usage(format!(
            "cannot read --pkcs12-password-file {}: {e}",
            path.display()
        ))
    })?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn archives_hold_the_key_chain_and_bundle() {
        let ca = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = p.self_signed(&ca).unwrap();
        let issuer = rcgen::Issuer::new(p, &ca);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let m = Material {
            spiffe_id: "spiffe://example.org/web".into(),
            chain: vec![leaf.der().to_vec()],
            key: leaf_key.serialize_der(),
            bundle: vec![ca_cert.der().to_vec()],
        };
        let der = archive(&m, "s3cret").unwrap();
        let store =
            KeyStore::from_pkcs12(&der, "s3cret", p12_keystore::Pkcs12ImportPolicy::default())
                .unwrap();
        let (alias, chain) = store.private_key_chain().unwrap();
        assert_eq!(alias, KEY_ALIAS);
        assert_eq!(chain.key().as_der(), m.key.as_slice());
        assert_eq!(chain.certs()[0].as_der(), m.chain[0].as_slice());
        assert!(matches!(
            store.entry("ca-0"),
            Some(KeyStoreEntry::Certificate(c)) if c.as_der() == m.bundle[0].as_slice()
        ));
        assert!(
            KeyStore::from_pkcs12(&der, "wrong", p12_keystore::Pkcs12ImportPolicy::default())
                .is_err()
        );
    }

    #[test]
    fn the_password_is_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "changeit\n").unwrap();
        assert_eq!(read_password(&f).unwrap(), "changeit");
        let e = read_password(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("--pkcs12-password-file"), "{e}");
    }
}
