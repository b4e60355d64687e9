//! The `systemd` workload attestor: the caller's unit from its cgroup (the system
//! manager's unit, see [`crate::cgroup`]) and the unit's fragment path — the unit
//! file systemd loads it from — as `systemd:id:nginx.service` and
//! `systemd:fragment_path:/lib/systemd/system/nginx.service`.
//!
//! The fragment path is found without D-Bus, the way systemd itself finds a unit
//! file: the first directory of the system unit search path (systemd.unit(5),
//! highest priority first) holding a file of the unit's name, or, for a template
//! instance `name@inst.service`, of `name@.service` when no instance file exists.
//! That is what systemd loaded unless a higher-priority file was added after the
//! last `daemon-reload` (writing those directories takes root). A unit found in none
//! (a transient scope that left no file) gets only `systemd:id`.
//!
//! Not applicable (no selectors): a process whose cgroup names no unit (systemd is
//! not the cgroup manager, as in most containers). There is no failure mode beyond
//! an unreadable `/proc/PID/cgroup` (the process is gone).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lanyard_core::Selector;

use crate::attestor::{AttestError, PeerCredentials, WorkloadAttestor};
use crate::cgroup;

/// The system unit search path, highest priority first (systemd.unit(5)).
pub const UNIT_SEARCH_PATH: [&str; 8] = [
    "/etc/systemd/system.control",
    "/run/systemd/system.control",
    "/run/systemd/transient",
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// Where the attestor looks.
#[derive(Debug, Clone)]
pub struct SystemdConfig {
    /// The unit search path, highest priority first.
    pub unit_paths: Vec<PathBuf>,
    /// Where `/proc` is.
    pub proc_root: PathBuf,
}

impl Default for SystemdConfig {
    fn default() -> Self {
        Self {
            unit_paths: UNIT_SEARCH_PATH.iter().map(PathBuf::from).collect(),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// The names a unit's file may have, in the order systemd tries them: the unit's
/// own, then its template's (`getty@tty1.service` → `getty@.service`).
pub fn unit_file_names(unit: &str) -> Vec<String> {
    let mut names = vec![unit.to_string()];
    if let Some((prefix, rest)) = unit.split_once('@')
        && let Some(dot) = rest.rfind('.')
        && dot > 0
    {
        names.push(format!("{prefix}@{}", &rest[dot..]));
    }
    names
}

/// The fragment path of `unit`: the first of `dirs` × [`unit_file_names`] for which
/// `exists` holds (for each name in turn, every directory by priority).
pub fn fragment_path(
    unit: &str,
    dirs: &[PathBuf],
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    // A unit name never holds `/` (it would escape the directory).
    if unit.contains('/') || unit.starts_with('.') {
        return None;
    }
    unit_file_names(unit)
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| exists(p))
}

/// The attestor.
#[derive(Debug, Clone)]
pub struct SystemdAttestor {
    cfg: Arc<SystemdConfig>,
}

impl SystemdAttestor {
    pub fn new(cfg: SystemdConfig) -> Self {
        Self { cfg: Arc::new(cfg) }
    }

    pub fn attest_pid(&self, pid: i32) -> Result<Vec<Selector>, AttestError> {
        let facts = cgroup::read_facts(&self.cfg.proc_root, pid)?;
        let Some(unit) = facts.systemd_unit else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        if let Ok(s) = Selector::from_parts("systemd", &format!("id:{unit}")) {
            out.push(s);
        }
        // `symlink_metadata`: a symlinked unit file is found where it is linked.
        if let Some(p) = fragment_path(&unit, &self.cfg.unit_paths, |p| {
            std::fs::symlink_metadata(p).is_ok()
        }) && let Ok(s) =
            Selector::from_parts("systemd", &format!("fragment_path:{}", p.display()))
        {
            out.push(s);
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl WorkloadAttestor for SystemdAttestor {
    fn name(&self) -> &'static str {
        "systemd"
    }
    async fn attest(&self, peer: &PeerCredentials) -> Result<Vec<Selector>, AttestError> {
        self.attest_pid(peer.pid)
    }
    /// Only /proc and the unit directories: local state.
    fn may_block(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn template_instances_fall_back_to_their_template() {
        assert_eq!(unit_file_names("nginx.service"), ["nginx.service"]);
        assert_eq!(
            unit_file_names("getty@tty1.service"),
            ["getty@tty1.service", "getty@.service"]
        );
        assert_eq!(
            unit_file_names("user@1000.service"),
            ["user@1000.service", "user@.service"]
        );
        assert!(fragment_path("../etc/x.service", &[PathBuf::from("/")], |_| true).is_none());
    }

    #[test]
    fn the_highest_priority_directory_wins() {
        let dirs: Vec<PathBuf> = UNIT_SEARCH_PATH.iter().map(PathBuf::from).collect();
        let have = [
            "/lib/systemd/system/nginx.service",
            "/etc/systemd/system/nginx.service",
            "/lib/systemd/system/getty@.service",
        ];
        let exists = |p: &Path| have.iter().any(|h| Path::new(h) == p);
        assert_eq!(
            fragment_path("nginx.service", &dirs, exists),
            Some(PathBuf::from("/etc/systemd/system/nginx.service"))
        );
        assert_eq!(
            fragment_path("getty@tty1.service", &dirs, exists),
            Some(PathBuf::from("/lib/systemd/system/getty@.service"))
        );
        assert_eq!(fragment_path("sshd.service", &dirs, exists), None);
    }

    #[test]
    fn attests_a_service_from_its_cgroup_and_a_unit_directory() {
        let root = tempfile::tempdir().unwrap();
        let (etc, lib) = (root.path().join("etc"), root.path().join("lib"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(
            lib.join("nginx.service"),
            "[Service]\nExecStart=/usr/sbin/nginx\n",
        )
        .unwrap();
        std::fs::write(lib.join("getty@.service"), "[Service]\n").unwrap();
        // An override in the higher-priority directory, symlinked as `systemctl link` does.
        std::os::unix::fs::symlink(lib.join("nginx.service"), etc.join("nginx.service")).unwrap();
        let proc = root.path().join("proc");
        for (pid, cg) in [
            (
                20,
                "12:pids:/system.slice/nginx.service\n1:name=systemd:/system.slice/nginx.service\n0::/system.slice/nginx.service\n",
            ),
            (
                21,
                "0::/system.slice/system-getty.slice/getty@tty1.service\n",
            ),
            (
                22,
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service\n",
            ),
            (23, "0::/\n"),
        ] {
            let p = proc.join(pid.to_string());
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(
                p.join("stat"),
                format!("{pid} (w) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0"),
            )
            .unwrap();
            std::fs::write(p.join("cgroup"), cg).unwrap();
        }
        let a = SystemdAttestor::new(SystemdConfig {
            unit_paths: vec![etc.clone(), lib.clone()],
            proc_root: proc,
        });
        let strings = |pid| -> Vec<String> {
            a.attest_pid(pid)
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            strings(20),
            [
                "systemd:id:nginx.service".to_string(),
                format!(
                    "systemd:fragment_path:{}",
                    etc.join("nginx.service").display()
                )
            ]
        );
        assert_eq!(
            strings(21),
            [
                "systemd:id:getty@tty1.service".to_string(),
                format!(
                    "systemd:fragment_path:{}",
                    lib.join("getty@.service").display()
                )
            ]
        );
        // A user's own nginx.service is not the system's.
        assert_eq!(strings(22), ["systemd:id:user@1000.service"]);
        assert!(strings(23).is_empty());
        assert!(matches!(
            a.attest_pid(24),
            Err(AttestError::Proc { pid: 24, .. })
        ));
    }
}
