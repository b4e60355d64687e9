//! Filesystem helpers the server and the agent share. Keys, SVIDs and tokens are
//! written with [`write_private`]: owner-only, durable, and never seen half-written.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// A file operation that failed, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct FsError {
    /// What was being done ("cannot write", "cannot sync", "cannot replace").
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FsError {
    fn new(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Write a file readable only by its owner (mode 0600), durably: the data goes to a
/// temporary sibling that is synced and then renamed over `path`, and the directory
/// is synced, so a crash leaves either the old content or the new, never a mix.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), FsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| FsError::new("cannot write", &tmp, e))?;
    f.write_all(data)
        .map_err(|e| FsError::new("cannot write", &tmp, e))?;
    f.sync_all()
        .map_err(|e| FsError::new("cannot sync", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| FsError::new("cannot replace", path, e))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_are_owner_only_and_replace_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pk8");
        write_private(&p, b"one").unwrap();
        write_private(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!p.with_extension("tmp").exists());
    }

    #[test]
    fn errors_name_the_file() {
        let e = write_private(Path::new("/nonexistent-dir/x/key"), b"k").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("cannot write /nonexistent-dir/x/key.tmp"),
            "{msg}"
        );
    }
}
