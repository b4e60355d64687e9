//! What a process's cgroup membership says about where it runs: the Kubernetes pod
//! UID, the container ID (and, from the path's shape, which runtime made it) and the
//! systemd unit. A pure parser of `/proc/PID/cgroup` text ([`parse`]); reading the
//! file is [`read`]'s job.
//!
//! The text has one line per hierarchy, `ID:CONTROLLERS:PATH` — cgroup v1 has one
//! line per controller (and `name=systemd`), v2 a single `0::PATH`. The shapes
//! recognised (cgroupfs and systemd drivers):
//!
//! | runtime | cgroupfs driver | systemd driver |
//! | --- | --- | --- |
//! | Docker | `/docker/<id>` | `/system.slice/docker-<id>.scope` |
//! | kubelet + containerd | `/kubepods/besteffort/pod<uid>/<id>` | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope` |
//! | kubelet + CRI-O | `/kubepods/pod<uid>/crio-<id>` | `.../kubepods-pod<uid_>.slice/crio-<id>.scope` |
//! | kubelet + Docker (dockershim) | `/kubepods/burstable/pod<uid>/<id>` | `.../kubepods-besteffort-pod<uid_>.slice/docker-<id>.scope` |
//! | Podman | `/libpod_parent/libpod-<id>` | `/machine.slice/libpod-<id>.scope` |
//!
//! `<id>` is 64 lowercase hex digits; `<uid_>` is the pod UID with `_` for `-`
//! (systemd reserves `-` in slice names). A kind/nested node prefixes all of this
//! with its own `/docker/<node-id>/` — the innermost container is the workload's.
//!
//! The systemd unit is the first path segment that is not a slice, when every segment
//! before it is a slice: `/system.slice/nginx.service` → `nginx.service`; in
//! `/user.slice/user-1000.slice/user@1000.service/app.slice/x.service` it is
//! `user@1000.service` — the unit of the *system* manager. Units below it are made by
//! the user's own manager, so a user could name one `nginx.service`: they are never
//! reported as the unit.
//!
//! Fail closed: when two hierarchies disagree (two different container IDs or pod
//! UIDs), the text is ambiguous and [`parse`] refuses it.

use std::path::Path;

use crate::attestor::{AttestError, start_time};

/// Which runtime made a container, as far as the cgroup path tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
    /// A bare ID (cgroupfs driver) not under `/docker/`: a kubelet's or containerd's.
    Unknown,
}

/// A container, from the cgroup path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// 64 lowercase hex digits.
    pub id: String,
    pub runtime: Runtime,
}

/// The facts a cgroup file gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupFacts {
    /// The pod UID in the API's form (`-` separated; a static pod's 32 hex digits).
    pub pod_uid: Option<String>,
    pub container: Option<Container>,
    /// The systemd (system manager's) unit, e.g. `nginx.service`.
    pub systemd_unit: Option<String>,
}

/// Why cgroup text could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupError {
    #[error("line {line} of the cgroup file is not ID:CONTROLLERS:PATH")]
    Malformed { line: usize },
    #[error(
        "the cgroup file names two different {what}s ({a} and {b}) in different hierarchies; refusing to guess which is the process's"
    )]
    Ambiguous {
        what: &'static str,
        a: String,
        b: String,
    },
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A pod UID as the cgroup writes it (`-` or `_` separated UUID, or 32 hex digits
/// for a static pod's hash), in the API's form.
fn pod_uid(s: &str) -> Option<String> {
    let s = s.strip_suffix(".slice").unwrap_or(s);
    let hex = |b: u8| b.is_ascii_hexdigit();
    let dashed = s.replace('_', "-");
    let b = dashed.as_bytes();
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == b'-'
            } else {
                hex(c)
            }
        });
    let static_hash = b.len() == 32 && b.iter().all(|&c| hex(c));
    (uuid || static_hash).then_some(dashed)
}

/// The pod UID in one path segment: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid_>.slice` (systemd).
fn pod_in(seg: &str) -> Option<String> {
    if let Some(rest) = seg.strip_prefix("pod") {
        return pod_uid(rest);
    }
    let rest = seg.strip_prefix("kubepods-")?;
    let rest = rest
        .strip_prefix("burstable-")
        .or_else(|| rest.strip_prefix("besteffort-"))
        .unwrap_or(rest);
    pod_uid(rest.strip_prefix("pod")?)
}

/// The container in one path segment (`parent` is the segment before it).
fn container_in(seg: &str, parent: Option<&str>) -> Option<Container> {
    if is_hex64(seg) {
        let runtime = if parent == Some("docker") {
            Runtime::Docker
        } else {
            Runtime::Unknown
        };
        return Some(Container {
            id: seg.to_string(),
            runtime,
        });
    }
    let name = seg.strip_suffix(".scope").unwrap_or(seg);
    // conmon (`crio-conmon-<id>`) is CRI-O's monitor, not the container: no match,
    // since "conmon-<id>" is not 64 hex digits.
    const PREFIXES: [(&str, Runtime); 5] = [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
        ("nerdctl-", Runtime::Containerd),
    ];
    PREFIXES.iter().find_map(|(p, runtime)| {
        let id = name.strip_prefix(p)?;
        is_hex64(id).then(|| Container {
            id: id.to_string(),
            runtime: *runtime,
        })
    })
}

/// Unit suffixes other than `.slice` (systemd.unit(5)).
const UNIT_SUFFIXES: [&str; 4] = [".service", ".scope", ".socket", ".mount"];

fn systemd_unit_in(path: &str) -> Option<String> {
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        if seg.ends_with(".slice") {
            continue;
        }
        return UNIT_SUFFIXES
            .iter()
            .any(|s| seg.len() > s.len() && seg.ends_with(s))
            .then(|| seg.to_string());
    }
    None
}

fn merge<T: PartialEq + Clone>(
    what: &'static str,
    slot: &mut Option<T>,
    found: Option<T>,
    show: impl Fn(&T) -> String,
) -> Result<(), CgroupError> {
    match (slot.as_ref(), found) {
        (_, None) => Ok(()),
        (None, Some(f)) => {
            *slot = Some(f);
            Ok(())
        }
        (Some(a), Some(b)) if *a == b => Ok(()),
        (Some(a), Some(b)) => Err(CgroupError::Ambiguous {
            what,
            a: show(a),
            b: show(&b),
        }),
    }
}

/// The facts in `/proc/PID/cgroup` text.
pub fn parse(text: &str) -> Result<CgroupFacts, CgroupError> {
    let mut facts = CgroupFacts::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ':');
        let (Some(hier), Some(controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(CgroupError::Malformed { line: i + 1 });
        };
        if !path.starts_with('/') {
            return Err(CgroupError::Malformed { line: i + 1 });
        }
        // `..` segments appear when the reader is in another cgroup namespace.
        let segs: Vec<&str> = path
            .split('/')
            .filter(|s| !s.is_empty() && *s != "..")
            .collect();
        let pod = segs.iter().rev().find_map(|s| pod_in(s));
        let container = segs.iter().enumerate().rev().find_map(|(j, s)| {
            container_in(s, j.checked_sub(1).and_then(|p| segs.get(p)).copied())
        });
        merge("pod UID", &mut facts.pod_uid, pod, Clone::clone)?;
        merge("container ID", &mut facts.container, container, |c| {
            c.id.clone()
        })?;
        // The systemd hierarchy: v1's `name=systemd`, or v2's unified line.
        let systemd = controllers == "name=systemd" || (controllers.is_empty() && hier == "0");
        if systemd {
            merge(
                "systemd unit",
                &mut facts.systemd_unit,
                systemd_unit_in(path),
                Clone::clone,
            )?;
        }
    }
    Ok(facts)
}

/// Read `PROC_ROOT/PID/cgroup`.
pub fn read(proc_root: &Path, pid: i32) -> std::io::Result<String> {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))
}

/// The facts of process `pid`'s cgroup file, read between two looks at its start
/// time (a pid reused meanwhile fails rather than describing another process).
pub fn read_facts(proc_root: &Path, pid: i32) -> Result<CgroupFacts, AttestError> {
    let before = start_time(proc_root, pid)?;
    let text = read(proc_root, pid).map_err(|e| AttestError::Proc {
        pid,
        reason: format!("cannot read its cgroup file: {e}"),
    })?;
    if start_time(proc_root, pid)? != before {
        return Err(AttestError::ProcessChanged(pid));
    }
    parse(&text).map_err(|e| AttestError::Proc {
        pid,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const ID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";

    fn v1(path: &str) -> String {
        // Every v1 controller and the systemd hierarchy share the path, as the
        // kubelet and Docker place them.
        [
            "12:hugetlb",
            "11:memory",
            "10:cpu,cpuacct",
            "9:pids",
            "8:devices",
            "1:name=systemd",
        ]
        .iter()
        .map(|c| format!("{c}:{path}\n"))
        .collect()
    }

    struct Case {
        name: &'static str,
        text: String,
        pod: Option<&'static str>,
        container: Option<(&'static str, Runtime)>,
        unit: Option<&'static str>,
    }

    fn case(name: &'static str, text: impl Into<String>) -> Case {
        Case {
            name,
            text: text.into(),
            pod: None,
            container: None,
            unit: None,
        }
    }
    impl Case {
        fn pod(mut self, p: &'static str) -> Self {
            self.pod = Some(p);
            self
        }
        fn container(mut self, id: &'static str, r: Runtime) -> Self {
            self.container = Some((id, r));
            self
        }
        fn unit(mut self, u: &'static str) -> Self {
            self.unit = Some(u);
            self
        }
        /// The systemd driver's scope is also the process's systemd unit.
        fn scope(self, prefix: &str) -> Self {
            let u: &'static str = Box::leak(format!("{prefix}{ID}.scope").into_boxed_str());
            self.unit(u)
        }
    }

    /// Real paths, as each runtime and driver writes them (the shapes of the
    /// kubelet's `cm` package, Docker's and CRI-O's cgroup managers, and the
    /// examples in SPIRE's k8s/docker attestor tests).
    fn cases() -> Vec<Case> {
        use Runtime::*;
        vec![
            // Kubernetes, cgroup v1, cgroupfs driver (containerd or dockershim).
            case("k8s v1 cgroupfs burstable", v1(&format!("/kubepods/burstable/pod{UID}/{ID}")))
                .pod(UID)
                .container(ID, Unknown),
            case("k8s v1 cgroupfs besteffort", v1(&format!("/kubepods/besteffort/pod{UID}/{ID}")))
                .pod(UID)
                .container(ID, Unknown),
            case("k8s v1 cgroupfs guaranteed", v1(&format!("/kubepods/pod{UID}/{ID}")))
                .pod(UID)
                .container(ID, Unknown),
            case("k8s v1 cgroupfs cri-o", v1(&format!("/kubepods/pod{UID}/crio-{ID}")))
                .pod(UID)
                .container(ID, CriO),
            // Kubernetes, systemd driver (kubeadm's default), v1 and v2.
            case(
                "k8s v1 systemd containerd",
                v1(&format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
                    UID.replace('-', "_")
                )),
            )
            .pod(UID)
            .container(ID, Containerd)
            .scope("cri-containerd-"),
            case(
                "k8s v2 systemd containerd",
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope\n",
                    UID.replace('-', "_")
                ),
            )
            .pod(UID)
            .container(ID, Containerd)
            .scope("cri-containerd-"),
            case(
                "k8s v2 systemd cri-o besteffort",
                format!(
                    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{ID}.scope\n",
                    UID.replace('-', "_")
                ),
            )
            .pod(UID)
            .container(ID, CriO)
            .scope("crio-"),
            case(
                "k8s v2 systemd guaranteed (no QoS slice)",
                format!(
                    "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope\n",
                    UID.replace('-', "_")
                ),
            )
            .pod(UID)
            .container(ID, Containerd)
            .scope("cri-containerd-"),
            case(
                "k8s systemd dockershim",
                v1(&format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/docker-{ID}.scope",
                    UID.replace('-', "_")
                )),
            )
            .pod(UID)
            .container(ID, Docker)
            .scope("docker-"),
            case("k8s v2 cgroupfs", format!("0::/kubepods/burstable/pod{UID}/{ID}\n"))
                .pod(UID)
                .container(ID, Unknown),
            // A static pod: its UID is the manifest's hash, 32 hex digits.
            case(
                "k8s static pod",
                format!("0::/kubepods/burstable/pod6e0d7cd7a1bbf6c4d8b1ad2d0cbd4b71/{ID}\n"),
            )
            .pod("6e0d7cd7a1bbf6c4d8b1ad2d0cbd4b71")
            .container(ID, Unknown),
            // kind: the node is itself a Docker container; the pod's container is innermost.
            case(
                "kind node (nested)",
                format!(
                    "0::/docker/{}/kubepods/besteffort/pod{UID}/{ID}\n",
                    "a".repeat(64)
                ),
            )
            .pod(UID)
            .container(ID, Unknown),
            // CRI-O's conmon monitor sits in the pod but is no container.
            case(
                "cri-o conmon",
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-conmon-{ID}.scope\n",
                    UID.replace('-', "_")
                ),
            )
            .pod(UID)
            .scope("crio-conmon-"),
            // Docker without Kubernetes.
            case("docker v1 cgroupfs", v1(&format!("/docker/{ID}")))
                .container(ID, Docker),
            case("docker v2 cgroupfs", format!("0::/docker/{ID}\n"))
                .container(ID, Docker),
            // The systemd hierarchy says the container's scope is its unit.
            case("docker v2 systemd", format!("0::/system.slice/docker-{ID}.scope\n"))
                .container(ID, Docker)
                .unit("docker-9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961.scope"),
            // What this machine's dockerd wrote for a real container (cgroup v1 + v2 hybrid).
            case(
                "docker hybrid (real dockerd, this machine)",
                format!(
                    "9:name=systemd:/docker/{ID}\n8:pids:/docker/{ID}\n4:memory:/docker/{ID}\n0::/docker/{ID}\n"
                ),
            )
            .container(ID, Docker),
            case("podman systemd", format!("0::/machine.slice/libpod-{ID}.scope/container\n"))
                .container(ID, Podman)
                .unit("libpod-9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961.scope"),
            case("podman cgroupfs", format!("0::/libpod_parent/libpod-{ID}\n"))
                .container(ID, Podman),
            case("containerd (ctr) cgroupfs, namespace default", format!("0::/default/{ID}\n"))
                .container(ID, Unknown),
            // systemd services and sessions.
            case("systemd service v2", "0::/system.slice/nginx.service\n").unit("nginx.service"),
            case(
                "systemd service v1",
                "12:pids:/system.slice/nginx.service\n11:memory:/system.slice/nginx.service\n1:name=systemd:/system.slice/nginx.service\n0::/system.slice/nginx.service\n",
            )
            .unit("nginx.service"),
            case(
                "systemd template instance",
                "0::/system.slice/system-getty.slice/getty@tty1.service\n",
            )
            .unit("getty@tty1.service"),
            case(
                "delegated sub-cgroup of a service",
                "0::/system.slice/containerd.service/payload\n",
            )
            .unit("containerd.service"),
            case("login session", "0::/user.slice/user-1000.slice/session-3.scope\n")
                .unit("session-3.scope"),
            // A user's own service: the system manager's unit is user@1000.service.
            case(
                "user manager's service",
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service\n",
            )
            .unit("user@1000.service"),
            case("pid 1", "0::/init.scope\n").unit("init.scope"),
            // Nothing at all.
            case("root cgroup v2", "0::/\n"),
            case(
                "this sandbox (v1, memory only)",
                "9:name=systemd:/\n4:memory:/process_api/2adc48a73338ec1f4ba39ce8728e1f62\n0::/\n",
            ),
            case("a slice only", "0::/system.slice\n"),
            case("short hex is no container", "0::/docker/9bca8d63d5fa\n"),
            // Another cgroup namespace: the agent sees `..`.
            case("foreign cgroup namespace", format!("0::/../../docker/{ID}\n"))
                .container(ID, Docker),
        ]
    }

    #[test]
    fn real_cgroup_paths_of_each_runtime_and_driver() {
        for c in cases() {
            let f = parse(&c.text).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert_eq!(f.pod_uid.as_deref(), c.pod, "{}: pod", c.name);
            assert_eq!(
                f.container.as_ref().map(|x| (x.id.as_str(), x.runtime)),
                c.container,
                "{}: container",
                c.name
            );
            assert_eq!(f.systemd_unit.as_deref(), c.unit, "{}: unit", c.name);
        }
    }

    #[test]
    fn disagreeing_hierarchies_and_malformed_lines_are_refused() {
        let other = "1".repeat(64);
        let e = parse(&format!("4:memory:/docker/{ID}\n0::/docker/{other}\n")).unwrap_err();
        assert!(
            matches!(
                e,
                CgroupError::Ambiguous {
                    what: "container ID",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse(&format!(
            "4:memory:/kubepods/pod{UID}/{ID}\n3:pids:/kubepods/pod{}/{ID}\n",
            "3c48913c-b29f-11e7-9350-020968147796"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("two different pod UIDs"), "{e}");
        assert_eq!(
            parse("garbage\n").unwrap_err(),
            CgroupError::Malformed { line: 1 }
        );
        assert_eq!(
            parse("0::/\n1:cpu:relative\n").unwrap_err(),
            CgroupError::Malformed { line: 2 }
        );
        // Not a UUID: no pod.
        assert_eq!(
            parse("0::/kubepods/podnot-a-uid/x\n").unwrap().pod_uid,
            None
        );
        // Upper-case hex is not what runtimes write.
        assert_eq!(
            parse(&format!("0::/docker/{}\n", ID.to_uppercase()))
                .unwrap()
                .container,
            None
        );
    }

    #[test]
    fn reads_this_process() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let text = read(Path::new("/proc"), pid).unwrap();
        parse(&text).unwrap();
    }
}
