//! Workload attestation: the agent-side seam ([`WorkloadAttestor`], run in turn by
//! [`WorkloadAttestors`] within a time bound) and the `unix` attestor.
//!
//! Every attestor gets the caller's kernel credentials ([`PeerCredentials`]) and
//! adds selectors; the Workload API serves the identities whose entries' selectors
//! are all among them. An attestor that cannot attest fails the call with its
//! reason (`Unavailable`), never with a partial set of selectors; one that is not
//! in a position to attest a process (no pod, no container, no unit) adds none.
//! The others live beside this module: `k8s`, `docker`, `containerd`, `systemd`
//! (facts from [`crate::cgroup`]), enabled by [`crate::attestor_config`].
//!
//! `unix`:
//! The kernel tells us the caller's pid, uid and gid (SO_PEERCRED). From /proc we add
//! the binary's path and SHA-256 and the supplementary groups (`Groups:` of
//! /proc/PID/status), and from /etc/passwd and /etc/group the user and group names.
//! The process start time is read before and after: if the pid was reused in
//! between, attestation fails rather than describing another process.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    #[error("the {attestor} attestor did not answer within {}ms", .bound.as_millis())]
    Timeout {
        attestor: &'static str,
        bound: Duration,
    },
    /// An attestor's source (a runtime socket, the kubelet) refused or is away.
    #[error("the {attestor} attestor: {reason}")]
    Source {
        attestor: &'static str,
        reason: String,
    },
}

/// What the kernel says about a Workload API caller (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// One workload attestor: the caller's credentials in, selectors out.
#[tonic::async_trait]
pub trait WorkloadAttestor: Send + Sync + std::fmt::Debug {
    /// The attestor's name (the prefix of its selectors).
    fn name(&self) -> &'static str;
    async fn attest(&self, peer: &PeerCredentials) -> Result<Vec<Selector>, AttestError>;
    /// Whether a call may wait on something outside this host's kernel (a runtime
    /// socket, the kubelet) and so runs under [`WorkloadAttestors`]' time bound. An
    /// attestor that only reads local kernel state says `false`: a per-call timer
    /// costs more than its whole attestation (it took the Workload API's p99 from
    /// ~0.7 ms to ~6 ms, docs/benchmarks.md).
    fn may_block(&self) -> bool {
        true
    }
}

/// Longest a caller waits for one attestor before the call fails.
pub const ATTEST_BOUND: Duration = Duration::from_secs(5);

/// The enabled workload attestors, run in order; their selectors add up.
#[derive(Debug, Clone)]
pub struct WorkloadAttestors {
    attestors: Vec<Arc<dyn WorkloadAttestor>>,
    bound: Duration,
}

impl WorkloadAttestors {
    pub fn new(attestors: Vec<Arc<dyn WorkloadAttestor>>, bound: Duration) -> Self {
        Self { attestors, bound }
    }

    /// Only the `unix` attestor (the default).
    pub fn unix() -> Self {
        Self::new(vec![Arc::new(UnixAttestor::default())], ATTEST_BOUND)
    }

    /// All selectors of the caller; the first attestor that fails or exceeds the
    /// bound fails the attestation.
    pub async fn attest(&self, peer: &PeerCredentials) -> Result<Vec<Selector>, AttestError> {
        let mut out = Vec::new();
        for a in &self.attestors {
            let found = if a.may_block() {
                tokio::time::timeout(self.bound, a.attest(peer))
                    .await
                    .map_err(|_| AttestError::Timeout {
                        attestor: a.name(),
                        bound: self.bound,
                    })??
            } else {
                a.attest(peer).await?
            };
            for s in found {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }
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
    users: NameFile,
    groups: NameFile,
}

impl Default for UnixAttestor {
    fn default() -> Self {
        Self::new(PathBuf::from("/proc"))
    }
}

pub(crate) fn start_time(proc_root: &Path, pid: i32) -> Result<u64, AttestError> {
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

/// The supplementary group IDs in `/proc/PID/status` text (its `Groups:` line; an
/// empty line means none). `None`: no such line, or a value that is not a gid.
pub fn supplementary_gids(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    let mut out: Vec<u32> = Vec::new();
    for g in line.split_whitespace() {
        let g = g.parse().ok()?;
        if !out.contains(&g) {
            out.push(g);
        }
    }
    Some(out)
}

/// User or group names by id.
type Names = HashMap<u32, String>;

/// Names by id from an /etc/passwd- or /etc/group-style text.
fn parse_names(text: &str) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    for l in text.lines() {
        let mut f = l.split(':');
        let (Some(name), Some(_pw), Some(id)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if let Ok(n) = id.parse::<u32>() {
            // The first line for an id wins, as getpwuid does.
            out.entry(n).or_insert_with(|| name.to_string());
        }
    }
    out
}

/// An /etc/passwd- or /etc/group-style file, parsed once and re-read when the
/// file changes (its inode, size or modification time), so that attesting a
/// caller costs one `stat` instead of reading and parsing the file.
#[derive(Debug)]
struct NameFile {
    path: PathBuf,
    cached: Mutex<Option<(FileId, Arc<Names>)>>,
}

impl NameFile {
    fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cached: Mutex::new(None),
        }
    }

    /// Name of `id` (`None`: no such id, or the file cannot be read).
    fn lookup(&self, id: u32) -> Option<String> {
        let meta = std::fs::metadata(&self.path).ok()?;
        let stamp = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        };
        if let Ok(g) = self.cached.lock()
            && let Some((s, names)) = g.as_ref()
            && *s == stamp
        {
            return names.get(&id).cloned();
        }
        let names = Arc::new(parse_names(&std::fs::read_to_string(&self.path).ok()?));
        let found = names.get(&id).cloned();
        if let Ok(mut g) = self.cached.lock() {
            *g = Some((stamp, names));
        }
        found
    }
}

impl UnixAttestor {
    pub fn new(proc_root: PathBuf) -> Self {
        Self {
            proc_root,
            hashes: Mutex::new(HashMap::new()),
            users: NameFile::new("/etc/passwd"),
            groups: NameFile::new("/etc/group"),
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
        if let Some(u) = self.users.lookup(uid) {
            push("user", u);
        }
        if let Some(g) = self.groups.lookup(gid) {
            push("group", g);
        }
        // Supplementary groups: the kernel's list for the process, not /etc/group's
        // membership lines (a process may have dropped or gained groups since login).
        let status = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("status"))
            .map_err(|e| AttestError::Proc {
            pid,
            reason: e.to_string(),
        })?;
        let groups = supplementary_gids(&status).ok_or_else(|| AttestError::Proc {
            pid,
            reason: "no readable Groups: line in its status".to_string(),
        })?;
        for g in groups {
            push("supplementary_gid", g.to_string());
            if let Some(name) = self.groups.lookup(g) {
                push("supplementary_group", name);
            }
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

#[tonic::async_trait]
impl WorkloadAttestor for UnixAttestor {
    fn name(&self) -> &'static str {
        "unix"
    }
    async fn attest(&self, peer: &PeerCredentials) -> Result<Vec<Selector>, AttestError> {
        UnixAttestor::attest(self, peer.pid, peer.uid, peer.gid)
    }
    /// Only /proc, /etc/passwd and /etc/group: local kernel and file state.
    fn may_block(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[derive(Debug)]
    struct Fixed(&'static str, Vec<&'static str>, Duration);

    #[tonic::async_trait]
    impl WorkloadAttestor for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        async fn attest(&self, _: &PeerCredentials) -> Result<Vec<Selector>, AttestError> {
            tokio::time::sleep(self.2).await;
            if self.1.is_empty() {
                return Err(AttestError::Source {
                    attestor: self.0,
                    reason: "runtime socket unreachable".into(),
                });
            }
            Ok(self.1.iter().map(|s| Selector::new(s).unwrap()).collect())
        }
    }

    fn peer() -> PeerCredentials {
        PeerCredentials {
            pid: 1,
            uid: 0,
            gid: 0,
        }
    }

    #[tokio::test]
    async fn selectors_of_all_attestors_add_up_without_duplicates() {
        let a = WorkloadAttestors::new(
            vec![
                Arc::new(Fixed("a", vec!["a:x:1", "b:y:2"], Duration::ZERO)),
                Arc::new(Fixed("b", vec!["b:y:2", "b:z:3"], Duration::ZERO)),
            ],
            ATTEST_BOUND,
        );
        let s: Vec<String> = a
            .attest(&peer())
            .await
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(s, ["a:x:1", "b:y:2", "b:z:3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_or_slow_attestor_fails_the_attestation_with_its_reason() {
        let failing = WorkloadAttestors::new(
            vec![
                Arc::new(Fixed("a", vec!["a:x:1"], Duration::ZERO)),
                Arc::new(Fixed("docker", vec![], Duration::ZERO)),
            ],
            ATTEST_BOUND,
        );
        let e = failing.attest(&peer()).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "the docker attestor: runtime socket unreachable"
        );
        let slow = WorkloadAttestors::new(
            vec![Arc::new(Fixed(
                "k8s",
                vec!["k8s:ns:x"],
                Duration::from_secs(60),
            ))],
            Duration::from_millis(500),
        );
        let e = slow.attest(&peer()).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "the k8s attestor did not answer within 500ms"
        );
    }

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
    fn user_and_group_names_are_reread_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("passwd");
        std::fs::write(
            &p,
            "root:x:0:0::/root:/bin/sh\nweb:x:1000:1000::/:/bin/false\nbad line\ndup:x:1000:1\n",
        )
        .unwrap();
        let f = NameFile::new(&p);
        assert_eq!(f.lookup(1000).as_deref(), Some("web"));
        assert_eq!(f.lookup(0).as_deref(), Some("root"));
        assert_eq!(f.lookup(7), None);
        std::fs::write(&p, "svc:x:1000:1000::/:/bin/false\n").unwrap();
        assert_eq!(
            f.lookup(1000).as_deref(),
            Some("svc"),
            "a changed file is read again"
        );
        std::fs::remove_file(&p).unwrap();
        assert_eq!(f.lookup(1000), None, "an unreadable file names nobody");
    }

    #[test]
    fn supplementary_groups_come_from_the_status_groups_line() {
        let status = "Name:\tnginx\nUid:\t33\t33\t33\t33\nGid:\t33\t33\t33\t33\nGroups:\t4 27 33 4 \nNgid:\t0\n";
        assert_eq!(supplementary_gids(status), Some(vec![4, 27, 33]));
        assert_eq!(supplementary_gids("Groups:\t\n"), Some(vec![]));
        assert_eq!(supplementary_gids("Groups:\t4 x\n"), None);
        assert_eq!(supplementary_gids("Name:\tx\n"), None);
    }

    #[test]
    fn attests_supplementary_groups_from_a_proc_root() {
        // A fake /proc: pid 42 with groups 0 and 4242 (no name in /etc/group).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("42");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(
            p.join("stat"),
            "42 (w) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0",
        )
        .unwrap();
        std::fs::write(p.join("status"), "Name:\tw\nGroups:\t0 4242\n").unwrap();
        let a = UnixAttestor::new(dir.path().to_path_buf());
        let s: Vec<String> = a
            .attest(42, 1000, 1000)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(s.contains(&"unix:supplementary_gid:0".to_string()), "{s:?}");
        assert!(
            s.contains(&"unix:supplementary_gid:4242".to_string()),
            "{s:?}"
        );
        assert!(
            s.contains(&"unix:supplementary_group:root".to_string()),
            "{s:?}"
        );
        assert!(
            !s.iter()
                .any(|x| x.starts_with("unix:supplementary_group:") && x.ends_with("4242")),
            "{s:?}"
        );
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
