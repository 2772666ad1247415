//! Container and pod identity from `/proc/PID/cgroup`.
//!
//! The kubelet places every pod in a cgroup named after its QoS class and UID, and the container
//! runtime places each container in a child named after the container id. The spelling depends on
//! the cgroup driver and the runtime:
//!
//! | driver | runtime | container cgroup (last components) |
//! |---|---|---|
//! | cgroupfs | containerd, Docker (cri-dockerd) | `kubepods/burstable/pod<uid>/<id>` |
//! | cgroupfs | CRI-O | `kubepods/besteffort/pod<uid>/crio-<id>` |
//! | systemd | containerd | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope` |
//! | systemd | CRI-O | `…/kubepods-pod<uid_>.slice/crio-<id>.scope` |
//! | systemd | Docker (cri-dockerd) | `…/kubepods-besteffort-pod<uid_>.slice/docker-<id>.scope` |
//!
//! (`<uid_>`: the pod UID with `-` replaced by `_`, systemd's escaping.) Guaranteed pods have no
//! QoS level in the path. Nested setups (kind: `kubelet.slice/kubelet-kubepods.slice/…`) and
//! paths relative to a cgroup namespace (`0::/../../kubepods-…`) are handled because the parser
//! looks at components, not at a fixed prefix. Plain Docker outside Kubernetes
//! (`/docker/<id>`, `system.slice/docker-<id>.scope`) gives a container id without a pod.
//!
//! The file has one line per hierarchy, `ID:CONTROLLERS:PATH`: a single `0::PATH` line on
//! cgroup v2, one line per v1 controller (plus possibly `0::` for the hybrid unified hierarchy)
//! on cgroup v1. The first line that names a container wins, in the order v2, `memory`, `cpu`,
//! `pids`, `name=systemd`, then any other.

use std::fmt;

/// Kubernetes QoS class, as the kubelet encodes it in the pod's cgroup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    /// Parses the API's `status.qosClass` value.
    pub fn from_api(s: &str) -> Option<QosClass> {
        match s {
            "Guaranteed" => Some(QosClass::Guaranteed),
            "Burstable" => Some(QosClass::Burstable),
            "BestEffort" => Some(QosClass::BestEffort),
            _ => None,
        }
    }
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Container runtime, as far as the cgroup name tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    /// A bare 64-hex id under a pod (cgroupfs driver with containerd or Docker: indistinguishable).
    Unknown,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Unknown => "unknown",
        }
    }
}

/// What a process's cgroup path says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupIdentity {
    /// Full container id (hex), when the process is in a container's cgroup.
    pub container_id: Option<String>,
    /// Pod UID in its canonical dashed form, when the process is in a Kubernetes pod.
    pub pod_uid: Option<String>,
    /// QoS class, when the process is in a Kubernetes pod.
    pub qos: Option<QosClass>,
    pub runtime: Option<Runtime>,
    /// The cgroup path the identity was read from.
    pub path: String,
}

/// Parses the contents of `/proc/PID/cgroup`. Returns `None` when no line places the process in
/// a container or a pod (host processes, systemd services, …).
pub fn parse_proc_cgroup(contents: &str) -> Option<CgroupIdentity> {
    let mut lines: Vec<(u8, &str)> = Vec::new();
    for line in contents.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let rank = if id == "0" && ctrls.is_empty() {
            0
        } else if ctrls.split(',').any(|c| c == "memory") {
            1
        } else if ctrls.split(',').any(|c| c == "cpu") {
            2
        } else if ctrls.split(',').any(|c| c == "pids") {
            3
        } else if ctrls == "name=systemd" {
            4
        } else {
            5
        };
        lines.push((rank, path));
    }
    lines.sort_by_key(|(rank, _)| *rank);
    let mut pod_only: Option<CgroupIdentity> = None;
    for (_, path) in lines {
        if let Some(ident) = parse_cgroup_path(path) {
            if ident.container_id.is_some() {
                return Some(ident);
            }
            pod_only.get_or_insert(ident);
        }
    }
    pod_only
}

/// The cgroup v2 hierarchy's mount point in `mountinfo` contents.
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<std::path::PathBuf> {
    mounts_of(mountinfo, "cgroup2").next().map(std::path::PathBuf::from)
}

/// True when `mountinfo` has a cgroup v1 hierarchy mounted (a hybrid or a v1 node).
pub fn has_cgroup1_mount(mountinfo: &str) -> bool {
    mounts_of(mountinfo, "cgroup").next().is_some()
}

/// The mount points of file system type `fstype` in `mountinfo` contents.
fn mounts_of<'a>(mountinfo: &'a str, fstype: &'a str) -> impl Iterator<Item = &'a str> {
    mountinfo.lines().filter_map(move |l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == fstype).then(|| left.split_whitespace().nth(4))?
    })
}

/// The path (from the hierarchy's root, `/…`) of the cgroup v2 directory whose kernfs id is `id`
/// — what `bpf_get_current_cgroup_id` gives — opened by handle (`open_by_handle_at` with a
/// kernfs file handle, which needs CAP_DAC_READ_SEARCH) on `mount` (the hierarchy's root
/// directory, mounted at `mount_path`). `None` when the cgroup is gone or not reachable from this
/// mount (a cgroup namespace).
pub fn cgroup_path_by_id(mount: &std::fs::File, mount_path: &std::path::Path, id: u64) -> Option<String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    /// `struct file_handle` with the 8-byte kernfs id as its payload.
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    const FILEID_KERNFS: i32 = 0xfe;
    let mut h = KernfsHandle { handle_bytes: 8, handle_type: FILEID_KERNFS, id };
    // SAFETY: a valid directory fd and a handle of the size it declares; the returned fd is owned.
    let fd = unsafe {
        libc::syscall(libc::SYS_open_by_handle_at, mount.as_raw_fd(), &mut h as *mut KernfsHandle, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let rel = link.strip_prefix(mount_path).ok()?;
    Some(format!("/{}", rel.display()))
}

/// Parses one cgroup path (e.g. the part after `0::`).
pub fn parse_cgroup_path(path: &str) -> Option<CgroupIdentity> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != "..").collect();
    // Pod: the last component that names a pod UID under a kubepods hierarchy.
    let kube_at = comps.iter().position(|c| is_kubepods(c));
    let mut pod_uid = None;
    let mut pod_at = None;
    let mut qos = None;
    if let Some(start) = kube_at {
        for (i, c) in comps.iter().enumerate().skip(start) {
            let lc = c.to_ascii_lowercase();
            if lc.contains("besteffort") {
                qos = Some(QosClass::BestEffort);
            } else if lc.contains("burstable") {
                qos = Some(QosClass::Burstable);
            }
            if let Some(uid) = pod_uid_of(c) {
                pod_uid = Some(uid);
                pod_at = Some(i);
                break;
            }
        }
    }
    // A relative path (cgroup namespace) may start below kubepods: `/../kubepods-besteffort-pod<uid>.slice/…`.
    if pod_uid.is_none() {
        for (i, c) in comps.iter().enumerate() {
            if c.starts_with("kubepods") || c.starts_with("kubelet-kubepods") {
                if let Some(uid) = pod_uid_of(c) {
                    pod_uid = Some(uid);
                    pod_at = Some(i);
                    qos = if c.contains("besteffort") {
                        Some(QosClass::BestEffort)
                    } else if c.contains("burstable") {
                        Some(QosClass::Burstable)
                    } else {
                        None
                    };
                    break;
                }
            }
        }
    }
    if pod_uid.is_some() && qos.is_none() {
        qos = Some(QosClass::Guaranteed);
    }
    // Container: the component right below the pod, or for non-Kubernetes Docker the last one.
    let container = match pod_at {
        Some(i) => comps.get(i + 1).and_then(|c| container_of(c)),
        None => comps.iter().rev().find_map(|c| docker_standalone_of(c)).or_else(|| docker_cgroupfs(path).map(|id| (id, Runtime::Docker))),
    };
    if pod_uid.is_none() && container.is_none() {
        return None;
    }
    let (container_id, runtime) = match container {
        Some((id, rt)) => (Some(id), Some(rt)),
        None => (None, None),
    };
    Some(CgroupIdentity { container_id, pod_uid, qos, runtime, path: path.to_string() })
}

fn is_kubepods(c: &str) -> bool {
    c == "kubepods" || c == "kubepods.slice" || c == "kubelet-kubepods.slice"
}

/// `pod<uid>` (cgroupfs) or `kubepods[-qos]-pod<uid_>.slice` (systemd) → canonical UID.
fn pod_uid_of(c: &str) -> Option<String> {
    let c = c.strip_suffix(".slice").unwrap_or(c);
    let at = c.rfind("pod")?;
    // `pod` must start the component or follow a `-`.
    if at != 0 && !c[..at].ends_with('-') {
        return None;
    }
    let raw = &c[at + 3..];
    let uid: String = raw.chars().map(|ch| if ch == '_' { '-' } else { ch }).collect();
    is_uid(&uid).then(|| uid.to_ascii_lowercase())
}

/// A UUID in 8-4-4-4-12 hex form (what the API server assigns), or 32 hex digits (static pods
/// get a hash as their UID).
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let hex = |g: &str| !g.is_empty() && g.bytes().all(|b| b.is_ascii_hexdigit());
    match groups.as_slice() {
        [a, b, c, d, e] => a.len() == 8 && b.len() == 4 && c.len() == 4 && d.len() == 4 && e.len() == 12 && groups.iter().all(|g| hex(g)),
        [one] => one.len() == 32 && hex(one),
        _ => false,
    }
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn container_of(c: &str) -> Option<(String, Runtime)> {
    let (body, scope) = match c.strip_suffix(".scope") {
        Some(b) => (b, true),
        None => (c, false),
    };
    if body.starts_with("crio-conmon-") {
        // CRI-O's monitor process lives beside the container, not in it.
        return None;
    }
    let prefixed = [("cri-containerd-", Runtime::Containerd), ("crio-", Runtime::CriO), ("docker-", Runtime::Docker)];
    for (prefix, rt) in prefixed {
        if let Some(id) = body.strip_prefix(prefix) {
            return is_container_id(id).then(|| (id.to_ascii_lowercase(), rt));
        }
    }
    if !scope && is_container_id(body) {
        return Some((body.to_ascii_lowercase(), Runtime::Unknown));
    }
    None
}

fn docker_standalone_of(c: &str) -> Option<(String, Runtime)> {
    if let Some(id) = c.strip_prefix("docker-").and_then(|b| b.strip_suffix(".scope")) {
        return is_container_id(id).then(|| (id.to_ascii_lowercase(), Runtime::Docker));
    }
    None
}

/// Also handles `/docker/<id>` (Docker's cgroupfs driver outside Kubernetes).
fn docker_cgroupfs(path: &str) -> Option<String> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    comps.windows(2).find_map(|w| (w[0] == "docker" && is_container_id(w[1])).then(|| w[1].to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "2c6e8a4c-6a7e-4b8e-9e5c-3f1a2b3c4d5e";
    const UID_: &str = "2c6e8a4c_6a7e_4b8e_9e5c_3f1a2b3c4d5e";
    const CID: &str = "8f3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b";

    fn ident(contents: &str) -> CgroupIdentity {
        parse_proc_cgroup(contents).unwrap_or_else(|| panic!("no identity in {contents}"))
    }

    #[test]
    fn v2_containerd_systemd_burstable() {
        let c = format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n");
        let i = ident(&c);
        assert_eq!(i.container_id.as_deref(), Some(CID));
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
        assert_eq!(i.qos, Some(QosClass::Burstable));
        assert_eq!(i.runtime, Some(Runtime::Containerd));
    }

    #[test]
    fn v2_crio_systemd_guaranteed() {
        let c = format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope\n");
        let i = ident(&c);
        assert_eq!(i.container_id.as_deref(), Some(CID));
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
        assert_eq!(i.qos, Some(QosClass::Guaranteed));
        assert_eq!(i.runtime, Some(Runtime::CriO));
    }

    #[test]
    fn v2_crio_conmon_is_pod_only() {
        let c = format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{CID}.scope\n");
        let i = ident(&c);
        assert_eq!(i.container_id, None);
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
        assert_eq!(i.qos, Some(QosClass::BestEffort));
    }

    #[test]
    fn v2_docker_systemd_besteffort() {
        let c = format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope\n");
        let i = ident(&c);
        assert_eq!(i.runtime, Some(Runtime::Docker));
        assert_eq!(i.qos, Some(QosClass::BestEffort));
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn v2_cgroupfs_containerd() {
        let c = format!("0::/kubepods/burstable/pod{UID}/{CID}\n");
        let i = ident(&c);
        assert_eq!(i.container_id.as_deref(), Some(CID));
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
        assert_eq!(i.qos, Some(QosClass::Burstable));
        assert_eq!(i.runtime, Some(Runtime::Unknown));
    }

    #[test]
    fn v2_relative_to_cgroup_namespace() {
        // What a process in another pod looks like from inside a pod with a private cgroupns.
        let c = format!("0::/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n");
        let i = ident(&c);
        assert_eq!(i.container_id.as_deref(), Some(CID));
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
        assert_eq!(i.qos, Some(QosClass::BestEffort));
    }

    #[test]
    fn v2_kind_nested_kubelet_slice() {
        let c = format!(
            "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
        );
        let i = ident(&c);
        assert_eq!(i.container_id.as_deref(), Some(CID));
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
        assert_eq!(i.qos, Some(QosClass::BestEffort));
    }

    #[test]
    fn v1_cgroupfs_docker_all_controllers() {
        let p = format!("/kubepods/besteffort/pod{UID}/{CID}");
        let c = format!(
            "12:hugetlb:{p}\n11:memory:{p}\n10:cpu,cpuacct:{p}\n9:pids:{p}\n8:devices:{p}\n7:net_cls,net_prio:{p}\n1:name=systemd:{p}\n0::/\n"
        );
        let i = ident(&c);
        assert_eq!(i.container_id.as_deref(), Some(CID));
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
        assert_eq!(i.qos, Some(QosClass::BestEffort));
    }

    #[test]
    fn v1_cgroupfs_guaranteed() {
        let c = format!("11:memory:/kubepods/pod{UID}/{CID}\n");
        let i = ident(&c);
        assert_eq!(i.qos, Some(QosClass::Guaranteed));
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn v1_crio_cgroupfs() {
        let c = format!("4:memory:/kubepods/burstable/pod{UID}/crio-{CID}\n3:cpu,cpuacct:/kubepods/burstable/pod{UID}/crio-{CID}\n");
        let i = ident(&c);
        assert_eq!(i.runtime, Some(Runtime::CriO));
        assert_eq!(i.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn v1_systemd_containerd_hybrid() {
        let p = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope");
        let c = format!("11:memory:{p}\n4:cpu,cpuacct:{p}\n1:name=systemd:{p}\n0::{p}\n");
        let i = ident(&c);
        assert_eq!(i.container_id.as_deref(), Some(CID));
        assert_eq!(i.runtime, Some(Runtime::Containerd));
    }

    #[test]
    fn v1_mixed_roots_prefers_the_line_that_names_a_container() {
        // This test machine's style: only `memory` is below the root.
        let c = format!("9:name=systemd:/\n4:memory:/process_api/abc/kubepods/burstable/pod{UID}/{CID}\n1:cpu:/\n0::/\n");
        let i = ident(&c);
        assert_eq!(i.container_id.as_deref(), Some(CID));
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn static_pod_hash_uid() {
        let c = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0123456789abcdef0123456789abcdef.slice/cri-containerd-"
            .to_string()
            + CID
            + ".scope\n";
        assert_eq!(ident(&c).pod_uid.as_deref(), Some("0123456789abcdef0123456789abcdef"));
    }

    #[test]
    fn pod_level_process_has_no_container() {
        let c = format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice\n");
        let i = ident(&c);
        assert_eq!(i.container_id, None);
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn docker_without_kubernetes() {
        let i = ident(&format!("0::/system.slice/docker-{CID}.scope\n"));
        assert_eq!(i.container_id.as_deref(), Some(CID));
        assert_eq!(i.pod_uid, None);
        assert_eq!(i.qos, None);
        let i = ident(&format!("4:memory:/docker/{CID}\n"));
        assert_eq!(i.container_id.as_deref(), Some(CID));
        assert_eq!(i.runtime, Some(Runtime::Docker));
    }

    #[test]
    fn mountinfo_tells_a_cgroup2_only_node_from_a_hybrid_one() {
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n22 1 8:1 / / rw - ext4 /dev/sda1 rw\n";
        assert_eq!(cgroup2_mount_in(unified), Some("/sys/fs/cgroup".into()));
        assert!(!has_cgroup1_mount(unified));
        let hybrid = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount_in(hybrid), Some("/sys/fs/cgroup/unified".into()));
        assert!(has_cgroup1_mount(hybrid));
        assert_eq!(cgroup2_mount_in("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"), None);
    }

    #[test]
    fn host_processes_have_no_identity() {
        for c in [
            "0::/\n",
            "0::/system.slice/sshd.service\n",
            "0::/user.slice/user-1000.slice/session-2.scope\n",
            "12:memory:/user.slice\n1:name=systemd:/init.scope\n0::/\n",
            "0::/kubepods.slice\n",
            "0::/kubepods.slice/kubepods-burstable.slice\n",
            "",
            "garbage without colons\n",
            "0::/kubepods/burstable/podnot-a-uid/abc\n",
        ] {
            assert_eq!(parse_proc_cgroup(c), None, "{c:?}");
        }
    }

    #[test]
    fn short_or_odd_container_names_are_not_ids() {
        let c = format!("0::/kubepods/burstable/pod{UID}/abc123\n");
        let i = ident(&c);
        assert_eq!(i.container_id, None);
        let c = format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-xyz.scope\n");
        assert_eq!(ident(&c).container_id, None);
    }
}
