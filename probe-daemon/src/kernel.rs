//! What the running kernel and this process provide: tracefs and tracepoint formats, BTF struct
//! offsets for the few kernel fields the programs read, capabilities, memlock. Used by
//! `chainprobe check` (a line per item) and by `run` before anything is loaded.
use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

use probe_common::{tp, KernelConfig, ProgGroup, ProgId, OFFSET_NONE};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("tracefs is not mounted (looked in /sys/kernel/tracing and /sys/kernel/debug/tracing): mount it with `mount -t tracefs tracefs /sys/kernel/tracing` (in Kubernetes, mount the host's /sys/kernel/tracing)")]
    NoTracefs,
    #[error("cannot read tracepoint format {path}: {source}")]
    Format { path: String, source: std::io::Error },
    #[error("tracepoint {category}:{name} has no field {field}")]
    MissingField { category: String, name: String, field: String },
    #[error("cannot read BTF from {path}: {message} (chainprobe needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)")]
    Btf { path: String, message: String },
}

/// One field of a tracepoint format: offset and size in the raw record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLayout {
    pub offset: u32,
    pub size: u32,
}

/// Where tracefs is mounted, if anywhere.
pub fn tracefs_root() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Parses a tracepoint `format` file into field name → layout.
pub fn parse_format(text: &str) -> HashMap<String, FieldLayout> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else { continue };
        let mut offset = None;
        let mut size = None;
        for part in rest.split(';').skip(1) {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.trim().parse::<u32>().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.trim().parse::<u32>().ok();
            }
        }
        // The first segment is the declaration ("field:int oldstate"): the name is its last word,
        // without any array suffix.
        let decl = rest.split(';').next().unwrap_or("").trim();
        let name = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()
            .unwrap_or("")
            .split('[')
            .next()
            .unwrap_or("");
        if let (false, Some(offset), Some(size)) = (name.is_empty(), offset, size) {
            fields.insert(name.to_string(), FieldLayout { offset, size });
        }
    }
    fields
}

/// Reads the format of tracepoint `category:name`.
pub fn tracepoint_format(
    root: &Path,
    category: &str,
    name: &str,
) -> Result<HashMap<String, FieldLayout>, KernelError> {
    let path = root.join("events").join(category).join(name).join("format");
    let text = std::fs::read_to_string(&path)
        .map_err(|source| KernelError::Format { path: path.display().to_string(), source })?;
    Ok(parse_format(&text))
}

/// Checks that every field the kernel programs read where `prog` attaches is where probe-common
/// expects it. Returns the first mismatch as a readable sentence.
pub fn verify_program_fields(root: &Path, prog: ProgId) -> Result<(), String> {
    let (cat, name) = prog.tracepoint();
    let fields = tracepoint_format(root, cat, name).map_err(|e| e.to_string())?;
    for &(fcat, fname, field, offset, size) in tp::FIELDS {
        if fcat != cat || fname != name {
            continue;
        }
        match fields.get(field) {
            Some(l) if l.offset == offset && l.size == size => {}
            Some(l) => {
                return Err(format!(
                    "{cat}:{name} field {field} is at offset {} size {} on this kernel, chainprobe reads offset {offset} size {size}",
                    l.offset, l.size
                ))
            }
            None => return Err(format!("{cat}:{name} has no field {field} on this kernel")),
        }
    }
    Ok(())
}

/// Byte offset of `member` inside `struct_name`, looking through anonymous structs and unions.
pub fn btf_member_offset(btf: &btf_rs::Btf, struct_name: &str, member: &str) -> Option<u32> {
    let types = btf.resolve_types_by_name(struct_name).ok()?;
    types.iter().find_map(|t| match t {
        btf_rs::Type::Struct(s) if !s.members.is_empty() => find_member(btf, s, member, 0),
        _ => None,
    })
}

fn find_member(btf: &btf_rs::Btf, s: &btf_rs::Struct, member: &str, base_bits: u32) -> Option<u32> {
    for m in &s.members {
        let bits = base_bits + m.bit_offset();
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == member {
            return if bits % 8 == 0 { Some(bits / 8) } else { None };
        }
        if name.is_empty() {
            if let Ok(btf_rs::Type::Struct(inner) | btf_rs::Type::Union(inner)) =
                btf.resolve_chained_type(m)
            {
                if let Some(off) = find_member(btf, &inner, member, bits) {
                    return Some(off);
                }
            }
        }
    }
    None
}

/// The value of enumerator `name` of `enum enum_name`.
pub fn btf_enum_value(btf: &btf_rs::Btf, enum_name: &str, name: &str) -> Option<u32> {
    let types = btf.resolve_types_by_name(enum_name).ok()?;
    types.iter().find_map(|t| match t {
        btf_rs::Type::Enum(e) => e.members.iter().find(|m| btf.resolve_name(*m).is_ok_and(|n| n == name)).map(|m| m.val()),
        _ => None,
    })
}

/// The cgroup v1 controllers whose hierarchy can key exec cgroups, in order of preference:
/// container runtimes place every container in a cgroup of its own in each of them.
const CGROUP1_CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "devices"];

/// The first of [`CGROUP1_CONTROLLERS`] that `/proc/cgroups` (`#subsys_name hierarchy
/// num_cgroups enabled`) shows enabled and bound to a cgroup v1 hierarchy (hierarchy id not 0);
/// None on a node with cgroup v2 alone.
pub fn cgroup1_controller(proc_cgroups: &str) -> Option<&'static str> {
    let bound: Vec<&str> = proc_cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[1] != "0" && f[3] == "1").then_some(f[0])
        })
        .collect();
    CGROUP1_CONTROLLERS.into_iter().find(|c| bound.contains(c))
}

/// Fills the chain from a task to its cgroup's kernfs id in `controller`'s v1 hierarchy (see
/// [`KernelConfig::css_set_subsys`]); all of it or nothing.
fn cgroup1_chain(btf: &btf_rs::Btf, cfg: &mut KernelConfig, controller: &str, missing: &mut Vec<String>) {
    let parts = [
        ("task_struct", "cgroups"),
        ("css_set", "subsys"),
        ("cgroup_subsys_state", "cgroup"),
        ("cgroup", "kn"),
        ("kernfs_node", "id"),
    ]
    .map(|(s, m)| btf_member_offset(btf, s, m).ok_or(format!("struct {s}.{m}")));
    let index = btf_enum_value(btf, "cgroup_subsys_id", &format!("{controller}_cgrp_id")).ok_or(format!("enum cgroup_subsys_id.{controller}_cgrp_id"));
    match (parts, index) {
        ([Ok(cgroups), Ok(subsys), Ok(css_cgroup), Ok(kn), Ok(id)], Ok(index)) => {
            cfg.task_cgroups = cgroups;
            // subsys[] holds one pointer per controller.
            cfg.css_set_subsys = subsys + index * 8;
            cfg.css_cgroup = css_cgroup;
            cfg.cgroup_kn = kn;
            cfg.kernfs_node_id = id;
        }
        (parts, index) => {
            let what: Vec<String> = parts.into_iter().filter_map(Result::err).chain(index.err()).collect();
            missing.push(format!("{} (execs on this cgroup v1 node read /proc/PID/cgroup each)", what.join(", ")));
        }
    }
}

/// Fills the chain from a file's page cache to its name and identity, and the controlling
/// terminal (see [`KernelConfig::mapping_host`]); all of it or nothing. Without it a new libssl
/// file's first process is not held (its first handshakes may be missed).
fn libssl_chain(btf: &btf_rs::Btf, cfg: &mut KernelConfig, missing: &mut Vec<String>) {
    let parts = [
        ("address_space", "host"),
        ("inode", "i_dentry"),
        ("dentry", "d_u"),
        ("dentry", "d_name"),
        ("qstr", "name"),
        ("inode", "i_ino"),
        ("inode", "i_sb"),
        ("super_block", "s_dev"),
        ("signal_struct", "tty"),
    ]
    .map(|(s, m)| btf_member_offset(btf, s, m).ok_or(format!("struct {s}.{m}")));
    match parts {
        [Ok(host), Ok(i_dentry), Ok(d_u), Ok(d_name), Ok(qstr_name), Ok(i_ino), Ok(i_sb), Ok(s_dev), Ok(tty)] if cfg.task_signal != OFFSET_NONE => {
            cfg.mapping_host = host;
            cfg.inode_dentry = i_dentry;
            // d_u is a union whose d_alias (the node in the inode's i_dentry list) is at 0.
            cfg.dentry_alias = d_u;
            cfg.dentry_name = d_name + qstr_name;
            cfg.inode_ino = i_ino;
            cfg.inode_sb = i_sb;
            cfg.sb_dev = s_dev;
            cfg.signal_tty = tty;
        }
        parts => {
            let what: Vec<String> = parts.into_iter().filter_map(Result::err).collect();
            missing.push(format!("{} (the first process of a new libssl file is not held: its first handshakes may be missed)", what.join(", ")));
        }
    }
}

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Fills the kernel-specific part of [`KernelConfig`] from tracefs and BTF. Missing pieces stay
/// [`OFFSET_NONE`]; [`KernelConfigReport::missing`] names them.
pub fn kernel_config(tracefs: &Path, btf_path: &Path) -> Result<KernelConfigReport, KernelError> {
    let btf = btf_rs::Btf::from_file(btf_path).map_err(|e| KernelError::Btf {
        path: btf_path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut cfg = KernelConfig::UNKNOWN;
    let mut missing = Vec::new();
    let get = |s: &str, m: &str, missing: &mut Vec<String>| {
        btf_member_offset(&btf, s, m).unwrap_or_else(|| {
            missing.push(format!("struct {s}.{m}"));
            OFFSET_NONE
        })
    };
    cfg.task_exit_code = get("task_struct", "exit_code", &mut missing);
    cfg.task_signal = get("task_struct", "signal", &mut missing);
    cfg.signal_live = get("signal_struct", "live", &mut missing);
    cfg.sock_err = get("sock", "sk_err", &mut missing);
    cfg.task_ptrace = get("task_struct", "ptrace", &mut missing);
    cfg.task_group_leader = get("task_struct", "group_leader", &mut missing);
    let skc_net = get("sock_common", "skc_net", &mut missing);
    let net_ns = get("net", "ns", &mut missing);
    let ns_inum = get("ns_common", "inum", &mut missing);
    // sock starts with its sock_common (__sk_common); possible_net_t is a single pointer.
    let sk_common = btf_member_offset(&btf, "sock", "__sk_common").unwrap_or(0);
    if skc_net != OFFSET_NONE && net_ns != OFFSET_NONE && ns_inum != OFFSET_NONE {
        cfg.sock_net = sk_common + skc_net;
        cfg.net_ns_inum = net_ns + ns_inum;
    }
    libssl_chain(&btf, &mut cfg, &mut missing);
    if let Some(controller) = std::fs::read_to_string("/proc/cgroups").ok().as_deref().and_then(cgroup1_controller) {
        cgroup1_chain(&btf, &mut cfg, controller, &mut missing);
    }
    match tracepoint_format(tracefs, "sched", "sched_process_exit") {
        Ok(f) => match f.get("group_dead") {
            Some(l) => cfg.tp_exit_group_dead = l.offset,
            None => missing.push("sched_process_exit.group_dead (older kernel; using signal->live)".into()),
        },
        Err(e) => missing.push(e.to_string()),
    }
    Ok(KernelConfigReport { config: cfg, missing })
}

#[derive(Debug, Clone)]
pub struct KernelConfigReport {
    pub config: KernelConfig,
    pub missing: Vec<String>,
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Effective capabilities of this process (CapEff from /proc/self/status).
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub const CAP_KILL: u32 = 5;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_RESOURCE: u32 = 24;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Raises RLIMIT_MEMLOCK to infinity (kernels before 5.11 charge BPF maps against it).
pub fn raise_memlock() -> Result<(), std::io::Error> {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid pointer to an initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn memlock_limit() -> Option<u64> {
    let mut rlim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rlim) } != 0 {
        return None;
    }
    Some(rlim.rlim_cur)
}

/// State of one check line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, with less: the detail says what is missing.
    Warn,
    /// chainprobe cannot run: the detail says how to fix it.
    Fail,
}

#[derive(Debug, Clone)]
pub struct CheckItem {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

impl fmt::Display for CheckItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        write!(f, "[{tag}] {:<40} {}", self.name, self.detail)
    }
}

fn item(name: impl Into<String>, status: Status, detail: impl Into<String>) -> CheckItem {
    CheckItem { name: name.into(), status, detail: detail.into() }
}

/// Everything `chainprobe check` reports, in order. Any [`Status::Fail`] means `run` will refuse.
pub fn check() -> Vec<CheckItem> {
    let mut items = vec![item("kernel", Status::Ok, kernel_release())];

    let btf_ok = Path::new(VMLINUX_BTF).exists();
    items.push(if btf_ok {
        item("BTF", Status::Ok, VMLINUX_BTF)
    } else {
        item("BTF", Status::Fail, format!("{VMLINUX_BTF} is missing: use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distributions since 2020)"))
    });

    let root = tracefs_root();
    match &root {
        Some(r) => items.push(item("tracefs", Status::Ok, r.display().to_string())),
        None => items.push(item("tracefs", Status::Fail, KernelError::NoTracefs.to_string())),
    }
    if let Some(r) = &root {
        for prog in ProgId::in_group(ProgGroup::Tracepoint) {
            let (cat, name) = prog.tracepoint();
            let label = format!("tracepoint {cat}:{name}");
            let missing_status = if prog.optional() { Status::Warn } else { Status::Fail };
            if !r.join("events").join(cat).join(name).is_dir() {
                let why = if prog.optional() {
                    "absent on this kernel: OOM kills are reported as SIGKILL exits"
                } else {
                    "absent on this kernel: chainprobe needs Linux >= 5.8"
                };
                items.push(item(label, missing_status, why));
                continue;
            }
            match verify_program_fields(r, prog) {
                Ok(()) => items.push(item(label, Status::Ok, "present, layout as expected")),
                Err(e) => items.push(item(label, missing_status, e)),
            }
        }
        if btf_ok {
            match kernel_config(r, Path::new(VMLINUX_BTF)) {
                Ok(rep) if rep.missing.is_empty() => {
                    items.push(item("kernel struct offsets (BTF)", Status::Ok, "all found"))
                }
                Ok(rep) => items.push(item(
                    "kernel struct offsets (BTF)",
                    Status::Warn,
                    format!("not found: {} (exit codes, connect errors or per-namespace accepts may be less precise)", rep.missing.join(", ")),
                )),
                Err(e) => items.push(item("kernel struct offsets (BTF)", Status::Warn, e.to_string())),
            }
        }
    }

    let uprobe = Path::new("/sys/bus/event_source/devices/uprobe/type").exists();
    items.push(if uprobe {
        item("uprobes", Status::Ok, "supported")
    } else {
        item("uprobes", Status::Warn, "not supported by this kernel (CONFIG_UPROBE_EVENTS): Go runtime and TLS probes will be unavailable")
    });

    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    let bpf_ok = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    items.push(if bpf_ok {
        item("capabilities: load BPF", Status::Ok, if has(CAP_BPF) && has(CAP_PERFMON) { "CAP_BPF + CAP_PERFMON" } else { "CAP_SYS_ADMIN" })
    } else {
        item("capabilities: load BPF", Status::Fail, "needs CAP_BPF and CAP_PERFMON (or root): run as root or add them to the container's securityContext")
    });
    items.push(if has(CAP_SYS_PTRACE) {
        item("capabilities: read other processes", Status::Ok, "CAP_SYS_PTRACE")
    } else {
        item("capabilities: read other processes", Status::Warn, "no CAP_SYS_PTRACE: /proc/PID/maps and mem of other users' processes cannot be read")
    });
    items.push(if has(CAP_KILL) {
        item("capabilities: resume held processes", Status::Ok, "CAP_KILL")
    } else {
        item("capabilities: resume held processes", Status::Warn, "no CAP_KILL: SIGCONT to other users' processes would be refused, so crashing Go processes are not paused and new libssl files' first processes are not held (add KILL to the container's capabilities)")
    });
    let memlock = memlock_limit();
    let resource = has(CAP_SYS_RESOURCE);
    items.push(match memlock {
        Some(libc::RLIM_INFINITY) => item("memlock", Status::Ok, "unlimited"),
        Some(_) if resource => item("memlock", Status::Ok, "limited, raised at start (CAP_SYS_RESOURCE)"),
        Some(v) => item("memlock", Status::Warn, format!("{v} bytes and no CAP_SYS_RESOURCE to raise it: kernels before 5.11 may refuse the maps")),
        None => item("memlock", Status::Warn, "cannot read RLIMIT_MEMLOCK"),
    });
    items
}

/// Whether this process may resume (SIGCONT) processes of any user: CAP_KILL.
pub fn can_resume_any_process() -> bool {
    effective_caps() & (1u64 << CAP_KILL) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT_FORMAT: &str = "name: sched_process_exit
ID: 312
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;
\tfield:const void * skaddr;\toffset:40;\tsize:8;\tsigned:0;
\tfield:__data_loc char[] filename;\toffset:48;\tsize:4;\tsigned:0;

print fmt: \"comm=%s pid=%d\"";

    #[test]
    fn parses_format_fields() {
        let f = parse_format(EXIT_FORMAT);
        assert_eq!(f["comm"], FieldLayout { offset: 8, size: 16 });
        assert_eq!(f["pid"], FieldLayout { offset: 24, size: 4 });
        assert_eq!(f["group_dead"], FieldLayout { offset: 32, size: 1 });
        assert_eq!(f["skaddr"], FieldLayout { offset: 40, size: 8 });
        assert_eq!(f["filename"], FieldLayout { offset: 48, size: 4 });
        assert_eq!(f["common_type"], FieldLayout { offset: 0, size: 2 });
    }

    #[test]
    #[cfg_attr(not(feature = "system-tests"), ignore = "reads tracefs and BTF as root: the system tier (cargo xtask test)")]
    fn live_kernel_layouts_match_what_the_programs_read() {
        // Runs on the CI machine's real kernel: every required tracepoint must have the fields
        // at the offsets the kernel programs use.
        let root = tracefs_root().expect("tracefs mounted (run ../shared/toolchain/install.sh)");
        for prog in ProgId::in_group(ProgGroup::Tracepoint) {
            let (cat, name) = prog.tracepoint();
            if prog.optional() && !root.join("events").join(cat).join(name).is_dir() {
                continue;
            }
            verify_program_fields(&root, prog).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn the_v1_hierarchy_that_keys_exec_cgroups() {
        let head = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n";
        // Hybrid: memory bound to hierarchy 4.
        assert_eq!(cgroup1_controller(&format!("{head}cpuset\t3\t1\t1\ncpu\t1\t1\t1\nmemory\t4\t41\t1\npids\t8\t1\t1\n")), Some("memory"));
        // memory on v2 (or disabled), pids on v1.
        assert_eq!(cgroup1_controller(&format!("{head}cpu\t1\t1\t1\nmemory\t0\t41\t1\npids\t8\t1\t1\n")), Some("pids"));
        assert_eq!(cgroup1_controller(&format!("{head}memory\t4\t1\t0\npids\t8\t1\t1\n")), Some("pids"));
        // cgroup v2 alone: every hierarchy id 0.
        assert_eq!(cgroup1_controller(&format!("{head}cpu\t0\t80\t1\nmemory\t0\t80\t1\npids\t0\t80\t1\n")), None);
        assert_eq!(cgroup1_controller(""), None);
    }

    #[test]
    #[cfg_attr(not(feature = "system-tests"), ignore = "reads tracefs and BTF as root: the system tier (cargo xtask test)")]
    fn btf_offsets_found_on_this_kernel() {
        let root = tracefs_root().expect("tracefs mounted");
        let rep = kernel_config(&root, Path::new(VMLINUX_BTF)).expect("BTF readable");
        let c = rep.config;
        for (name, v) in [("exit_code", c.task_exit_code), ("sk_err", c.sock_err), ("sock_net", c.sock_net), ("ns inum", c.net_ns_inum)] {
            assert_ne!(v, OFFSET_NONE, "{name} missing: {:?}", rep.missing);
        }
        // struct sock begins with struct sock_common; sk_err lies past it.
        assert!(c.sock_err > c.sock_net, "{c:?}");
        // A node with cgroup v1 hierarchies: the chain to an exec's v1 cgroup is complete.
        if std::fs::read_to_string("/proc/cgroups").ok().as_deref().and_then(cgroup1_controller).is_some() {
            for (name, v) in [("cgroups", c.task_cgroups), ("subsys", c.css_set_subsys), ("css cgroup", c.css_cgroup), ("kn", c.cgroup_kn), ("kernfs id", c.kernfs_node_id)] {
                assert_ne!(v, OFFSET_NONE, "{name} missing: {:?}", rep.missing);
            }
        }
    }
}
