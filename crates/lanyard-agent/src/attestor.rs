//! Workload attestation from Unix peer credentials.
//!
//! The kernel tells us the caller's pid, uid and gid (SO_PEERCRED). From /proc we add
//! the binary's path and SHA-256, and from /etc/passwd and /etc/group the user and
//! group names. The process start time is read before and after: if the pid was
//! reused in between, attestation fails rather than describing another process.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lanyard_core::Selector;

/// Why a caller could not be attested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    #[error("the caller's credentials are not available on this socket")]
    NoCredentials,
    #[error("process {0} exited or was replaced during attestation")]
    ProcessChanged(i32),
    #[error("cannot inspect process {pid}: {reason}")]
    Proc { pid: i32, reason: String },
}

/// File identity used to cache binary hashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// The attestor, with a cache of binary hashes keyed by file identity.
#[derive(Debug)]
pub struct UnixAttestor {
    proc_root: PathBuf,
    hashes: Mutex<HashMap<FileId, String>>,
}

impl Default for UnixAttestor {
    fn default() -> Self {
        Self::new(PathBuf::from("/proc"))
    }
}

fn start_time(proc_root: &Path, pid: i32) -> Result<u64, AttestError> {
    let stat =
        std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).map_err(|e| {
            AttestError::Proc {
                pid,
                reason: e.to_string(),
            }
        })?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    after
        .split_whitespace()
        .nth(19) // field 22 overall: starttime
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| AttestError::Proc {
            pid,
            reason: "malformed stat".to_string(),
        })
}

/// Name of `id` in an /etc/passwd- or /etc/group-style file.
fn lookup_name(file: &str, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        let n: u32 = f.next()?.parse().ok()?;
        (n == id).then(|| name.to_string())
    })
}

impl UnixAttestor {
    pub fn new(proc_root: PathBuf) -> Self {
        Self {
            proc_root,
            hashes: Mutex::new(HashMap::new()),
        }
    }

    fn sha256_of(&self, pid: i32, exe: &Path) -> Result<String, AttestError> {
        let proc_err = |e: std::io::Error| AttestError::Proc {
            pid,
            reason: e.to_string(),
        };
        let meta = std::fs::metadata(exe).map_err(proc_err)?;
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        };
        if let Ok(cache) = self.hashes.lock()
            && let Some(h) = cache.get(&id)
        {
            return Ok(h.clone());
        }
        let mut f = std::fs::File::open(exe).map_err(proc_err)?;
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(proc_err)?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        let hex = hex::encode(ctx.finish());
        if let Ok(mut cache) = self.hashes.lock() {
            if cache.len() > 4096 {
                cache.clear();
            }
            cache.insert(id, hex.clone());
        }
        Ok(hex)
    }

    /// Selectors of the process `pid` running as `uid`/`gid`.
    pub fn attest(&self, pid: i32, uid: u32, gid: u32) -> Result<Vec<Selector>, AttestError> {
        let before = start_time(&self.proc_root, pid)?;
        let mut out = Vec::new();
        let mut push = |kind: &str, value: String| {
            if let Ok(s) = Selector::from_parts("unix", &format!("{kind}:{value}")) {
                out.push(s);
            }
        };
        push("uid", uid.to_string());
        push("gid", gid.to_string());
        if let Some(u) = lookup_name("/etc/passwd", uid) {
            push("user", u);
        }
        if let Some(g) = lookup_name("/etc/group", gid) {
            push("group", g);
        }
        // The binary: /proc/<pid>/exe opens exactly the running file, even if the
        // path has since been replaced.
        let exe_link = self.proc_root.join(pid.to_string()).join("exe");
        if let Ok(path) = std::fs::read_link(&exe_link) {
            let p = path
                .to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string();
            push("path", p);
            if let Ok(h) = self.sha256_of(pid, &exe_link) {
                push("sha256", h);
            }
        }
        let after = start_time(&self.proc_root, pid)?;
        if before != after {
            return Err(AttestError::ProcessChanged(pid));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn attests_this_process() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let meta = std::fs::metadata("/proc/self").unwrap();
        let a = UnixAttestor::default();
        let sel = a.attest(pid, meta.uid(), meta.gid()).unwrap();
        let s: Vec<String> = sel.iter().map(ToString::to_string).collect();
        assert!(s.contains(&format!("unix:uid:{}", meta.uid())), "{s:?}");
        assert!(s.iter().any(|x| x.starts_with("unix:path:/")), "{s:?}");
        let sha = s.iter().find(|x| x.starts_with("unix:sha256:")).unwrap();
        assert_eq!(sha.len(), "unix:sha256:".len() + 64);
        // The hash is cached by file identity and stays the same.
        let again = a.attest(pid, meta.uid(), meta.gid()).unwrap();
        assert_eq!(sel, again);
    }

    #[test]
    fn vanished_process_is_an_error() {
        let a = UnixAttestor::default();
        assert!(matches!(
            a.attest(i32::MAX, 0, 0),
            Err(AttestError::Proc { .. })
        ));
    }

    #[test]
    fn pid_reuse_is_detected_through_start_time() {
        // A fake /proc whose stat changes between the two reads is what a reused pid
        // looks like; simulate by pointing at a directory whose stat we rewrite.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("42");
        std::fs::create_dir_all(&p).unwrap();
        let stat = "42 (a b) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0";
        std::fs::write(p.join("stat"), stat).unwrap();
        assert_eq!(start_time(dir.path(), 42).unwrap(), 777);
        std::fs::write(p.join("stat"), "garbage").unwrap();
        assert!(start_time(dir.path(), 42).is_err());
    }
}
