//! The security settings of a container, as data: the pod's and container's
//! `securityContext` merged (`Security`), and how the shim isolates a process container
//! (`Isolation`, part of its spec). `isolation.rs` carries them out.

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod};
use nix::unistd::Uid;
use serde::{Deserialize, Serialize};

/// The capabilities Docker gives a container by default.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Kubernetes' message for a container that must not run as root but would.
pub const NON_ROOT_MESSAGE: &str = "container has runAsNonRoot and image will run as root";

/// The security settings of one container: the pod's `securityContext` merged with the
/// container's (the container's fields win), as Kubernetes defines them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Security {
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub supplemental_groups: Vec<u32>,
    pub fs_group: Option<u32>,
    pub run_as_non_root: bool,
    pub privileged: bool,
    /// Capability names as written (`NET_ADMIN`, `CAP_NET_ADMIN` or `ALL`).
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub allow_privilege_escalation: Option<bool>,
    pub read_only_root_filesystem: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
}

fn id(v: Option<i64>) -> Option<u32> {
    v.and_then(|n| u32::try_from(n).ok())
}

pub(crate) fn canonical(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    if upper == "ALL" || upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

impl Security {
    pub fn of(pod: &Pod, c: &Container) -> Security {
        let spec = pod.spec.as_ref();
        let p = spec.and_then(|s| s.security_context.as_ref());
        let sc = c.security_context.as_ref();
        let caps = sc.and_then(|s| s.capabilities.as_ref());
        Security {
            run_as_user: id(sc
                .and_then(|s| s.run_as_user)
                .or_else(|| p.and_then(|p| p.run_as_user))),
            run_as_group: id(sc
                .and_then(|s| s.run_as_group)
                .or_else(|| p.and_then(|p| p.run_as_group))),
            supplemental_groups: p
                .and_then(|p| p.supplemental_groups.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|g| id(Some(*g)))
                .collect(),
            fs_group: id(p.and_then(|p| p.fs_group)),
            run_as_non_root: sc
                .and_then(|s| s.run_as_non_root)
                .or_else(|| p.and_then(|p| p.run_as_non_root))
                .unwrap_or(false),
            privileged: sc.and_then(|s| s.privileged).unwrap_or(false),
            cap_add: caps
                .and_then(|c| c.add.clone())
                .unwrap_or_default()
                .iter()
                .map(|c| canonical(c))
                .collect(),
            cap_drop: caps
                .and_then(|c| c.drop.clone())
                .unwrap_or_default()
                .iter()
                .map(|c| canonical(c))
                .collect(),
            allow_privilege_escalation: sc.and_then(|s| s.allow_privilege_escalation),
            read_only_root_filesystem: sc
                .and_then(|s| s.read_only_root_filesystem)
                .unwrap_or(false),
            host_pid: spec.and_then(|s| s.host_pid).unwrap_or(false),
            host_ipc: spec.and_then(|s| s.host_ipc).unwrap_or(false),
        }
    }

    /// Whether the container's processes may not gain privileges (setuid binaries, file
    /// capabilities): always, unless it is privileged or asks for escalation explicitly.
    pub fn no_new_privs(&self) -> bool {
        !self.privileged && self.allow_privilege_escalation != Some(true)
    }

    /// The capability bounding set: Docker's defaults, then `add`, then `drop` (`ALL`
    /// in drop keeps only what `add` names, as containerd does). Every capability when
    /// privileged.
    pub fn capabilities(&self) -> BTreeSet<String> {
        let all: BTreeSet<String> = caps::all().iter().map(|c| c.to_string()).collect();
        if self.privileged {
            return all;
        }
        let added: BTreeSet<String> = if self.cap_add.iter().any(|c| c == "ALL") {
            all.clone()
        } else {
            self.cap_add.iter().cloned().collect()
        };
        if self.cap_drop.iter().any(|c| c == "ALL") {
            return added;
        }
        let mut set: BTreeSet<String> =
            DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
        set.extend(added);
        for d in &self.cap_drop {
            set.remove(d);
        }
        set
    }

    /// Supplementary groups: supplementalGroups and fsGroup, as Kubernetes adds them.
    pub fn groups(&self) -> Vec<u32> {
        let mut g = self.supplemental_groups.clone();
        g.extend(self.fs_group);
        g.sort_unstable();
        g.dedup();
        g
    }

    /// The refusal of a container that must not run as root but would: `image_user` is the
    /// user the image (or, for a process, the host) would pick when runAsUser is unset.
    pub fn check_non_root(&self, image_user: Option<u32>) -> Result<(), String> {
        if !self.run_as_non_root {
            return Ok(());
        }
        match self.run_as_user {
            Some(0) => Err(
                "container's runAsUser breaks non-root policy (runAsNonRoot is true and runAsUser is 0)"
                    .into(),
            ),
            Some(_) => Ok(()),
            None if image_user.is_some_and(|u| u != 0) => Ok(()),
            None => Err(NON_ROOT_MESSAGE.into()),
        }
    }
}

/// How the shim isolates one process container (part of its spec).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Isolation {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub privileged: bool,
    /// The bounding set the workload keeps (ignored when privileged).
    pub capabilities: Vec<String>,
    pub no_new_privs: bool,
    /// readOnlyRootFilesystem: /tmp is read-only as well (volumes stay as they are).
    pub read_only_root: bool,
    pub hostname: String,
    /// False with hostPID: the container sees the host's processes.
    pub pid_namespace: bool,
    /// False with hostIPC.
    pub ipc_namespace: bool,
    /// Host paths covered by an empty read-only mount (bosun's data and credentials).
    pub hidden: Vec<PathBuf>,
}

impl Isolation {
    /// The isolation of a process container with settings `sec` in a pod named `hostname`.
    pub fn for_process(sec: &Security, hostname: String) -> Isolation {
        let uid = sec.run_as_user.unwrap_or(0);
        // Without runAsGroup the user's primary group on the host (there is no image).
        let gid = sec.run_as_group.unwrap_or_else(|| {
            nix::unistd::User::from_uid(Uid::from_raw(uid))
                .ok()
                .flatten()
                .map_or(0, |u| u.gid.as_raw())
        });
        Isolation {
            uid,
            gid,
            groups: sec.groups(),
            privileged: sec.privileged,
            capabilities: sec.capabilities().into_iter().collect(),
            no_new_privs: sec.no_new_privs(),
            read_only_root: sec.read_only_root_filesystem,
            hostname,
            pid_namespace: !sec.host_pid,
            ipc_namespace: !sec.host_ipc,
            hidden: Vec::new(),
        }
    }
}
