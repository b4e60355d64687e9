//! What `lanyard svid watch` writes: file names (checked once, at start), the
//! content of each file rendered from one Workload API answer (pure), and the
//! atomic, mode-exact write of each file.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::WatchError;

/// Default name of the certificate chain (leaf first, then intermediates).
pub const CERT_FILE: &str = "svid.pem";
/// Default name of the private key (PKCS #8 PEM).
pub const KEY_FILE: &str = "svid.key";
/// Default name of the trust bundle (PEM CA certificates).
pub const BUNDLE_FILE: &str = "bundle.pem";
/// Default name of the key-and-chain file written with `--combined`.
pub const COMBINED_FILE: &str = "svid_combined.pem";

/// Mode of files that hold no secret: certificates and bundles.
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of files that hold a key or a token.
pub const PRIVATE_MODE: u32 = 0o600;

/// The default name of the JWT-SVID for the `n`-th `--jwt-audience` (from 0), the
/// same as `lanyard agent --oneshot --write` uses.
pub fn jwt_file_name(n: usize) -> String {
    format!("jwt_svid.{n}.token")
}

/// The names of the files written into the output directory, each a plain file
/// name (no `/`), all different.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileNames {
    pub cert: String,
    pub key: String,
    pub bundle: String,
    /// Key followed by the chain in one file (`--combined`).
    pub combined: Option<String>,
    /// PKCS #12 archive of key and chain (`--pkcs12`).
    pub pkcs12: Option<String>,
    /// One file per `--jwt-audience`, in the same order.
    pub jwt: Vec<String>,
}

impl FileNames {
    /// Check the names given on the command line. `jwt` holds the `--jwt-file`
    /// names, which may be fewer than the audiences (the rest get
    /// [`jwt_file_name`]) but not more.
    pub fn new(
        cert: String,
        key: String,
        bundle: String,
        combined: Option<String>,
        pkcs12: Option<String>,
        jwt_names: Vec<String>,
        audiences: usize,
    ) -> Result<Self, WatchError> {
        if jwt_names.len() > audiences {
            return Err(WatchError::Usage(format!(
                "{} --jwt-file names for {audiences} --jwt-audience values; give one --jwt-file per --jwt-audience, in the same order",
                jwt_names.len()
            )));
        }
        let jwt = (0..audiences)
            .map(|n| {
                jwt_names
                    .get(n)
                    .cloned()
                    .unwrap_or_else(|| jwt_file_name(n))
            })
            .collect();
        let names = Self {
            cert,
            key,
            bundle,
            combined,
            pkcs12,
            jwt,
        };
        let mut seen = BTreeMap::new();
        for (flag, name) in names.all() {
            check_name(flag, name)?;
            if let Some(other) = seen.insert(name.to_string(), flag) {
                return Err(WatchError::Usage(format!(
                    "{other} and {flag} both name {name:?}; every output file needs its own name"
                )));
            }
        }
        Ok(names)
    }

    /// Every name with the flag that sets it.
    fn all(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![
            ("--cert-file", self.cert.as_str()),
            ("--key-file", self.key.as_str()),
            ("--bundle-file", self.bundle.as_str()),
        ];
        if let Some(c) = &self.combined {
            v.push(("--combined-file", c));
        }
        if let Some(p) = &self.pkcs12 {
            v.push(("--pkcs12", p));
        }
        v.extend(self.jwt.iter().map(|j| ("--jwt-file", j.as_str())));
        v
    }
}

/// A plain file name: not empty, not `.` or `..`, no `/`, no NUL.
fn check_name(flag: &str, name: &str) -> Result<(), WatchError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(WatchError::Usage(format!(
            "{flag} {name:?} is not a file name; give a plain name such as svid.pem (files go into the --write directory)"
        )));
    }
    Ok(())
}

/// The X.509 material of one answer that the files are made from; files are
/// rewritten only when this changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    pub spiffe_id: String,
    /// Leaf first, then intermediates (DER).
    pub chain: Vec<Vec<u8>>,
    /// PKCS #8 DER. Never logged: `Debug` of this type is only used in tests.
    pub key: Vec<u8>,
    /// The trust bundle's CA certificates (DER): the SVID's own trust domain, then
    /// federated trust domains in name order when asked for.
    pub bundle: Vec<Vec<u8>>,
}

/// One file to write: its name in the output directory, bytes and mode.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    pub name: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered")
            .field("name", &self.name)
            .field("bytes", &self.data.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

fn pem_all(tag: &str, ders: &[Vec<u8>]) -> String {
    ders.iter()
        .map(|d| pem::encode(&pem::Pem::new(tag, d.clone())))
        .collect()
}

/// The PEM files for `m` (and the combined file when named), in the order they
/// are written: bundle, chain, key, combined. The PKCS #12 archive is made apart
/// (it needs the password and a random salt).
pub fn render(names: &FileNames, m: &Material) -> Vec<Rendered> {
    let chain = pem_all("CERTIFICATE", &m.chain);
    let key = pem::encode(&pem::Pem::new("PRIVATE KEY", m.key.clone()));
    let mut out = vec![
        Rendered {
            name: names.bundle.clone(),
            data: pem_all("CERTIFICATE", &m.bundle).into_bytes(),
            mode: PUBLIC_MODE,
        },
        Rendered {
            name: names.cert.clone(),
            data: chain.clone().into_bytes(),
            mode: PUBLIC_MODE,
        },
        Rendered {
            name: names.key.clone(),
            data: key.clone().into_bytes(),
            mode: PRIVATE_MODE,
        },
    ];
    if let Some(c) = &names.combined {
        out.push(Rendered {
            name: c.clone(),
            data: format!("{key}{chain}").into_bytes(),
            mode: PRIVATE_MODE,
        });
    }
    out
}

/// The CA certificates for the bundle file: `own` (concatenated DER) and, in
/// trust-domain order, each federated bundle when `federated` is given.
pub fn bundle_certs(
    own: &[u8],
    federated: Option<&std::collections::HashMap<String, Vec<u8>>>,
) -> Result<Vec<Vec<u8>>, WatchError> {
    let split = |der: &[u8], what: &str| {
        lanyard_core::x509::split_der_chain(der)
            .map_err(|e| WatchError::BadAnswer(format!("{what}: {e}")))
    };
    let mut out = split(own, "trust bundle")?;
    if let Some(fed) = federated {
        let sorted: BTreeMap<_, _> = fed.iter().collect();
        for (td, der) in sorted {
            for cert in split(der, &format!("federated bundle of {td}"))? {
                if !out.contains(&cert) {
                    out.push(cert);
                }
            }
        }
    }
    Ok(out)
}

/// Write `data` to `dir/name` atomically with exactly `mode`: a new temporary file
/// in the same directory, created with `mode` (so a key is never readable by
/// others, not even briefly), synced, then renamed over the old file; the
/// directory is synced after. Readers see the old content or the new, never a mix.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<(), WatchError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = dir.join(name);
    let tmp = temp_name(dir, name);
    let err = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| WatchError::File {
            action,
            path: p,
            source,
        }
    };
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err("cannot create", &tmp))?;
        // The umask may have narrowed the mode; set it exactly (never wider than
        // asked, and the file is not yet visible under its final name).
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(err("cannot set the mode of", &tmp))?;
        f.write_all(data).map_err(err("cannot write", &tmp))?;
        f.sync_all().map_err(err("cannot sync", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(err("cannot replace", &path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `dir/.NAME.tmp-PID`: hidden, per file and per process, so two files (or two
/// helpers) never share a temporary name.
fn temp_name(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.tmp-{}", std::process::id()))
}

/// Create the output directory (0755) if it is missing.
pub fn create_dir(dir: &Path) -> Result<(), WatchError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|source| WatchError::File {
            action: "cannot create",
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names() -> FileNames {
        FileNames::new(
            CERT_FILE.into(),
            KEY_FILE.into(),
            BUNDLE_FILE.into(),
            None,
            None,
            vec![],
            0,
        )
        .unwrap()
    }

    fn material() -> Material {
        Material {
            spiffe_id: "spiffe://example.org/web".into(),
            chain: vec![b"leaf".to_vec(), b"inter".to_vec()],
            key: b"key".to_vec(),
            bundle: vec![b"root".to_vec()],
        }
    }

    #[test]
    fn jwt_files_default_per_audience_and_may_be_named() {
        let n = FileNames::new(
            "a".into(),
            "b".into(),
            "c".into(),
            None,
            None,
            vec!["db.token".into()],
            3,
        )
        .unwrap();
        assert_eq!(n.jwt, ["db.token", "jwt_svid.1.token", "jwt_svid.2.token"]);
        let e = FileNames::new(
            "a".into(),
            "b".into(),
            "c".into(),
            None,
            None,
            vec!["x".into(), "y".into()],
            1,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("one --jwt-file per --jwt-audience"),
            "{e}"
        );
    }

    #[test]
    fn names_must_be_plain_and_distinct() {
        for bad in ["", ".", "..", "certs/svid.pem", "/etc/svid.pem"] {
            let e = FileNames::new(bad.into(), "k".into(), "b".into(), None, None, vec![], 0)
                .unwrap_err();
            assert!(e.to_string().contains("--cert-file"), "{e}");
            assert!(e.to_string().contains("not a file name"), "{e}");
        }
        let e = FileNames::new(
            "svid.pem".into(),
            "k".into(),
            "b".into(),
            Some("svid.pem".into()),
            None,
            vec![],
            0,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--cert-file and --combined-file both name \"svid.pem\"; every output file needs its own name"
        );
        let e = FileNames::new(
            "c".into(),
            "k".into(),
            "b".into(),
            None,
            None,
            vec!["k".into()],
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("--key-file and --jwt-file"), "{e}");
    }

    #[test]
    fn rendering_puts_the_key_only_in_private_files() {
        let mut n = names();
        n.combined = Some(COMBINED_FILE.into());
        let files = render(&n, &material());
        let by_name = |name: &str| files.iter().find(|f| f.name == name).unwrap();
        let pems = |f: &Rendered| pem::parse_many(&f.data).unwrap();
        let cert = by_name(CERT_FILE);
        assert_eq!(cert.mode, PUBLIC_MODE);
        let tags: Vec<_> = pems(cert).iter().map(|p| p.tag().to_string()).collect();
        assert_eq!(tags, ["CERTIFICATE", "CERTIFICATE"]);
        assert_eq!(pems(cert)[0].contents(), b"leaf");
        let key = by_name(KEY_FILE);
        assert_eq!(key.mode, PRIVATE_MODE);
        assert_eq!(pems(key)[0].tag(), "PRIVATE KEY");
        let combined = by_name(COMBINED_FILE);
        assert_eq!(combined.mode, PRIVATE_MODE);
        let tags: Vec<_> = pems(combined).iter().map(|p| p.tag().to_string()).collect();
        assert_eq!(tags, ["PRIVATE KEY", "CERTIFICATE", "CERTIFICATE"]);
        let bundle = by_name(BUNDLE_FILE);
        assert_eq!(bundle.mode, PUBLIC_MODE);
        assert_eq!(pems(bundle)[0].contents(), b"root");
        // The bundle is written before the chain and key, so a reload after the
        // last write sees a bundle at least as new as the SVID.
        assert_eq!(files[0].name, BUNDLE_FILE);
        // Debug never shows file content.
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn writes_replace_atomically_with_the_exact_mode() {
        let dir = tempfile::tempdir().unwrap();
        // A key left world-readable by something else is replaced, not reused.
        std::fs::write(dir.path().join("svid.key"), "old").unwrap();
        std::fs::set_permissions(
            dir.path().join("svid.key"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        write_atomic(dir.path(), "svid.key", b"new", PRIVATE_MODE).unwrap();
        write_atomic(dir.path(), "svid.pem", b"cert", PUBLIC_MODE).unwrap();
        let mode = |n: &str| {
            std::fs::metadata(dir.path().join(n))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("svid.key"), 0o600);
        assert_eq!(mode("svid.pem"), 0o644);
        assert_eq!(std::fs::read(dir.path().join("svid.key")).unwrap(), b"new");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let e = write_atomic(Path::new("/nonexistent-dir"), "k", b"k", PRIVATE_MODE).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot create /nonexistent-dir/.k.tmp-"),
            "{e}"
        );
    }

    /// A real (self-signed) certificate, DER.
    pub(crate) fn test_cert(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec![cn.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn federated_bundles_follow_in_trust_domain_order() {
        let own = test_cert("own");
        let a = test_cert("alpha");
        let b = test_cert("zeta");
        let fed: std::collections::HashMap<String, Vec<u8>> = [
            ("spiffe://zeta.org".to_string(), b.clone()),
            (
                "spiffe://alpha.org".to_string(),
                [a.clone(), own.clone()].concat(),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            bundle_certs(&own, None).unwrap(),
            std::slice::from_ref(&own)
        );
        // A CA already present (shared by two trust domains) is listed once.
        assert_eq!(bundle_certs(&own, Some(&fed)).unwrap(), [own, a, b]);
    }
}
