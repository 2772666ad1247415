//! Loads chainprobe's kernel programs, hands them this kernel's offsets, and attaches each to its
//! tracepoint (or, for the memory system calls, to the call's entry point through a BPF
//! trampoline where the kernel has them). Dropping [`Probes`] detaches everything.
use std::path::{Path, PathBuf};

use std::num::NonZeroU32;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
        FExit, RawTracePoint, TracePoint, UProbe,
    },
    Btf, Ebpf,
};
use probe_common::{
    maps::{self, MapSpec},
    CreationSite, FailureKey, GoCrashConfig, GoCreationConfig, GoCreationCounts, GoTlsConfig, GoidKey, KernelConfig, ProcCounters, ProgGroup, ProgId,
    ProgStats, SslLibConfig, LibsslFileKey,
};
use tracing::{debug, info, warn};

/// The kernel programs, built by build.rs for the BPF target.
static PROBE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("loading the eBPF object failed: {0} (run `chainprobe check` to see what this kernel or process lacks)")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object has no map {0}: the daemon and its kernel programs were built from different sources")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
}

/// Outcome of attaching one program.
#[derive(Debug, Clone)]
pub struct ProgramStatus {
    pub prog: ProgId,
    pub attached: bool,
    /// Why it is not attached.
    pub error: Option<String>,
}

/// Loaded programs; attached until dropped.
pub struct Probes {
    _ebpf: Ebpf,
    pub programs: Vec<ProgramStatus>,
}

impl Probes {
    /// True when every required program is attached (optional ones may be absent).
    pub fn all_required_attached(&self) -> bool {
        self.programs.iter().all(|p| p.attached || p.prog.optional())
    }

    fn uprobe(&mut self, prog: ProgId) -> Result<&mut UProbe, String> {
        let program = self
            ._ebpf
            .program_mut(prog.program_name())
            .ok_or_else(|| format!("program {} missing from the eBPF object", prog.program_name()))?;
        program.try_into().map_err(|e| format!("{e}"))
    }

    /// Attaches uprobe program `prog` at `file_offset` of the executable `target`: for every
    /// process that maps that file, or only for `pid`.
    pub fn attach_uprobe(
        &mut self,
        prog: ProgId,
        target: &Path,
        file_offset: u64,
        pid: Option<u32>,
    ) -> Result<UProbeLinkId, String> {
        let up = self.uprobe(prog)?;
        let scope = match pid.and_then(NonZeroU32::new) {
            Some(p) => UProbeScope::OneProcess(p),
            None => UProbeScope::AllProcesses,
        };
        up.attach(UProbeAttachLocation::AbsoluteOffset(file_offset), target, scope)
            .map_err(|e| format!("attach {} at {}+{file_offset:#x}: {e}", prog.program_name(), target.display()))
    }

    /// Attaches uprobe (or uretprobe) program `prog` at `point` (a symbol or offset, with an
    /// optional cookie) of the file `target` (TLS: libssl found in a process's mappings).
    pub fn attach_uprobe_point(
        &mut self,
        prog: ProgId,
        target: &Path,
        point: UProbeAttachPoint<'_>,
        pid: Option<u32>,
    ) -> Result<UProbeLinkId, String> {
        let up = self.uprobe(prog)?;
        let scope = match pid.and_then(NonZeroU32::new) {
            Some(p) => UProbeScope::OneProcess(p),
            None => UProbeScope::AllProcesses,
        };
        let at = match &point.location {
            UProbeAttachLocation::Symbol(s) => s.to_string(),
            _ => "offset".to_string(),
        };
        up.attach(point, target, scope)
            .map_err(|e| format!("attach {} at {}:{at}: {e}", prog.program_name(), target.display()))
    }

    /// Detaches one uprobe link (errors are logged: the link may already be gone).
    pub fn detach_uprobe(&mut self, prog: ProgId, link: UProbeLinkId) {
        match self.uprobe(prog) {
            Ok(up) => {
                if let Err(e) = up.detach(link) {
                    debug!(program = prog.program_name(), error = %e, "uprobe detach");
                }
            }
            Err(e) => debug!(error = %e, "uprobe detach"),
        }
    }
}

/// User-space handles on the kernel maps the collector reads.
pub struct KernelMaps {
    pub counters: PerCpuHashMap<MapData, u32, ProcCounters>,
    pub failures: PerCpuHashMap<MapData, FailureKey, u64>,
    pub stats: PerCpuArray<MapData, ProgStats>,
    pub events: RingBuf<MapData>,
    pub creation: CreationMaps,
    /// Per-process offsets of the Go TLS probes (present = handshakes reported).
    pub go_tls: HashMap<MapData, u32, GoTlsConfig>,
    /// Field offsets of each probed libssl build, by attach cookie.
    pub ssl_libs: HashMap<MapData, u32, SslLibConfig>,
    /// Go crash programs: per-process offsets and pause permission, and the pause counters.
    pub crash_config: HashMap<MapData, u32, GoCrashConfig>,
    pub crash_pauses: Array<MapData, u64>,
    /// The kernel's settings (written at load; rewritten when a setting starts later).
    pub config: Array<MapData, KernelConfig>,
    /// libssl files the kernel holds no process for (probed, or tried).
    pub libssl_files: HashMap<MapData, LibsslFileKey, u32>,
}

/// The on-demand goroutine-creation maps.
pub struct CreationMaps {
    pub config: HashMap<MapData, u32, GoCreationConfig>,
    pub counts: PerCpuHashMap<MapData, u32, GoCreationCounts>,
    pub sites: PerCpuHashMap<MapData, CreationSite, u64>,
    /// (tgid, goid) of goroutines created in the window and still alive.
    pub window_goids: HashMap<MapData, GoidKey, u8>,
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(ebpf: &mut Ebpf, spec: MapSpec) -> Result<T, AttachError> {
    let name = spec.name;
    let map = ebpf.take_map(name).ok_or(AttachError::MissingMap(name))?;
    T::try_from(map).map_err(|source| AttachError::Map { name, source })
}

/// State of one probe of one binary, as `/api/v1/targets` shows it.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct ProbeState {
    pub name: &'static str,
    pub function: &'static str,
    /// "attached", "failed" or "absent" (function not in this binary).
    pub state: &'static str,
    /// Attach points (entry or RET instructions).
    pub sites: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Attaches `prog` at each file offset of `offsets` in the executable of `pid` (for every process
/// of that file), adds the links to `links`, and says how it went.
pub fn attach_sites(
    probes: &mut Probes,
    pid: u32,
    prog: ProgId,
    function: &'static str,
    offsets: Vec<u64>,
    links: &mut Vec<(ProgId, UProbeLinkId)>,
) -> ProbeState {
    let target = PathBuf::from(format!("/proc/{pid}/exe"));
    let mut error = if offsets.is_empty() { Some("no RET instruction found".to_string()) } else { None };
    let mut attached = 0;
    for off in offsets {
        match probes.attach_uprobe(prog, &target, off, None) {
            Ok(link) => {
                links.push((prog, link));
                attached += 1;
            }
            Err(e) => error = Some(e),
        }
    }
    if let Some(e) = &error {
        warn!(pid, probe = prog.program_name(), function, error = %e, "Go probe not attached: what it reports is missing for this binary");
    }
    let state = if error.is_none() { "attached" } else { "failed" };
    ProbeState { name: prog.program_name(), function, state, sites: attached, error }
}

/// How the memory system calls (mmap, munmap, brk) are hooked (`[collect] memory_hooks`).
///
/// The choice matters because of a kernel detail: enabling *any* syscall tracepoint sends every
/// system call of every process on the node through the kernel's slower syscall path (measured on
/// the project's VM: 3–4% fewer 64-byte TLS round trips per second, in a program that never calls
/// mmap). An fexit program costs only the three calls it sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryHooks {
    /// An fexit program on each call's entry point where the kernel can attach one (BTF and BPF
    /// trampolines); where it cannot, that call is not counted (the log and
    /// `chainprobe_program_attached{program="…_fexit"} 0` say so): never the node-wide slow path.
    Auto,
    /// fexit where the kernel allows it, else the call's pair of syscall tracepoints: always
    /// counted, at the cost above on kernels without BPF trampolines.
    FexitOrTracepoints,
    /// Always the syscall tracepoints.
    Tracepoints,
    /// Not counted (no mmap/munmap/brk metrics), nothing attached.
    Off,
}

impl MemoryHooks {
    /// The value as written in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryHooks::Auto => "auto",
            MemoryHooks::FexitOrTracepoints => "fexit-or-tracepoints",
            MemoryHooks::Tracepoints => "tracepoints",
            MemoryHooks::Off => "off",
        }
    }
}

/// The kernel function of system call `name`'s entry point on this architecture.
fn syscall_entry_point(name: &str) -> Option<String> {
    let prefix = if cfg!(target_arch = "x86_64") {
        "__x64_sys_"
    } else if cfg!(target_arch = "aarch64") {
        "__arm64_sys_"
    } else {
        return None;
    };
    Some(format!("{prefix}{name}"))
}

/// Loads `prog` (a [`ProgId::MEMORY_FEXIT`] program) as an fexit program on its system call's
/// entry point and attaches it.
fn attach_fexit(ebpf: &mut Ebpf, prog: ProgId, btf: &Btf) -> Result<(), String> {
    let (syscall, _) = prog.replaces().ok_or_else(|| format!("{} is not a memory system call program", prog.program_name()))?;
    let function = syscall_entry_point(syscall).ok_or("no known system call entry points on this architecture")?;
    let program = ebpf
        .program_mut(prog.program_name())
        .ok_or_else(|| format!("program {} missing from the eBPF object", prog.program_name()))?;
    let fexit: &mut FExit = program.try_into().map_err(|e| format!("{e}"))?;
    // aya ends a load error with "Verifier output: " even when the verifier said nothing.
    fexit.load(&function, btf).map_err(|e| format!("load on {function}: {}", e.to_string().trim_end().trim_end_matches("Verifier output:").trim_end().trim_end_matches('.')))?;
    fexit.attach().map_err(|e| format!("attach to {function}: {e}"))?;
    Ok(())
}

/// `chainprobe check`'s line on fexit: whether this kernel lets the memory system call programs
/// attach (loads the object and attaches `mmap_fexit` for a moment).
pub fn fexit_check() -> crate::kernel::CheckItem {
    use crate::kernel::{CheckItem, Status};
    let name = "fexit (mmap, munmap, brk)".to_string();
    // As `run` does: kernels before 5.11 charge the object's maps to RLIMIT_MEMLOCK (the memlock
    // line above says whether it can be raised).
    let _ = crate::kernel::raise_memlock();
    let result = Ebpf::load(PROBE_OBJECT)
        .map_err(|e| format!("cannot load the eBPF object to try: {e}"))
        .and_then(|mut ebpf| {
            let btf = Btf::from_sys_fs().map_err(|e| format!("kernel BTF unreadable: {e}"))?;
            attach_fexit(&mut ebpf, ProgId::MmapFexit, &btf)
        });
    match result {
        Ok(()) => CheckItem { name, status: Status::Ok, detail: "supported: only these three calls pay for being counted".into() },
        Err(e) => CheckItem {
            name,
            status: Status::Warn,
            detail: format!(
                "not available ({e}): with [collect] memory_hooks = \"auto\" these calls are not counted; \"fexit-or-tracepoints\" counts them with syscall tracepoints, which slow every system call on the node by a few %"
            ),
        },
    }
}

/// Loads the object, writes `kcfg` to the CONFIG map, and attaches every program whose tracepoint
/// exists (for mmap, munmap and brk, per `memory`: the fexit program, else the tracepoint pair it
/// replaces). A program that fails to attach is reported in [`Probes::programs`], not fatal here:
/// the caller decides (readiness stays false while a required one is missing).
///
/// `libssl_holds`: also attach the [`ProgGroup::LibsslHold`] raw tracepoints (they do nothing
/// until `KernelConfig::hold_libssl` is set).
pub fn load(kcfg: KernelConfig, tracefs: &Path, memory: MemoryHooks, libssl_holds: bool) -> Result<(Probes, KernelMaps), AttachError> {
    let mut ebpf = Ebpf::load(PROBE_OBJECT).map_err(|e| AttachError::Load(Box::new(e)))?;

    match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => spawn_logger(logger),
        Err(e) => warn!(error = %e, "kernel-side logging unavailable"),
    }

    {
        let name = maps::CONFIG.name;
        let map = ebpf.map_mut(name).ok_or(AttachError::MissingMap(name))?;
        let mut config: Array<&mut MapData, KernelConfig> = Array::try_from(map).map_err(|source| AttachError::Map { name, source })?;
        config.set(0, kcfg, 0).map_err(|source| AttachError::Map { name, source })?;
    }

    let mut programs = Vec::new();
    // Go uprobes are loaded now and attached per Go binary as processes are discovered.
    let per_process = [ProgGroup::GoRuntime, ProgGroup::GoCreation, ProgGroup::GoTls, ProgGroup::OpenSsl, ProgGroup::GoCrash, ProgGroup::GoHttp2];
    for prog in ProgId::ALL.into_iter().filter(|p| per_process.contains(&p.group())) {
        let loaded = (|| -> Result<(), String> {
            let program = ebpf
                .program_mut(prog.program_name())
                .ok_or_else(|| format!("program {} missing from the eBPF object", prog.program_name()))?;
            let up: &mut UProbe = program.try_into().map_err(|e| format!("{e}"))?;
            up.load().map_err(|e| format!("load: {e}"))
        })();
        if let Err(e) = &loaded {
            warn!(program = prog.program_name(), error = %e, "Go runtime probe unavailable");
        }
        programs.push(ProgramStatus { prog, attached: loaded.is_ok(), error: loaded.err() });
    }
    // The memory system calls: fexit where it works, else (per call, per `memory`) its
    // tracepoints below or nothing.
    let mut replaced = Vec::new();
    // The calls left uncounted, and the first one's error: one log line for all of them.
    let (mut uncounted, mut first_error) = (Vec::new(), None);
    let btf = match memory {
        MemoryHooks::Auto | MemoryHooks::FexitOrTracepoints => Btf::from_sys_fs().map_err(|e| format!("kernel BTF unreadable: {e}")),
        MemoryHooks::Tracepoints | MemoryHooks::Off => Err(format!("[collect] memory_hooks = \"{}\"", memory.as_str())),
    };
    for prog in ProgId::in_group(ProgGroup::MemoryFexit) {
        let Some((syscall, tracepoints)) = prog.replaces() else { continue };
        if memory == MemoryHooks::Off {
            replaced.extend(tracepoints);
            continue;
        }
        match btf.as_ref().map_err(Clone::clone).and_then(|btf| attach_fexit(&mut ebpf, prog, btf)) {
            Ok(()) => {
                debug!(program = prog.program_name(), "attached");
                programs.push(ProgramStatus { prog, attached: true, error: None });
                replaced.extend(tracepoints);
            }
            Err(e) if memory == MemoryHooks::Tracepoints => debug!(syscall, reason = %e, "counted by its syscall tracepoints"),
            Err(e) if memory == MemoryHooks::FexitOrTracepoints => info!(
                syscall,
                error = %e,
                "no fexit program for this system call: counting it with its syscall tracepoints, which send every system call on the node through the kernel's slower syscall path (a few % on syscall-heavy programs; memory_hooks = \"auto\" in [collect] avoids that by not counting the calls fexit cannot see)"
            ),
            Err(e) => {
                uncounted.push(syscall);
                first_error.get_or_insert_with(|| e.clone());
                programs.push(ProgramStatus { prog, attached: false, error: Some(e) });
                replaced.extend(tracepoints);
            }
        }
    }
    if let Some(first_error) = first_error {
        warn!(
            syscalls = %uncounted.join(", "),
            %first_error,
            "no fexit program for these system calls, so they are not counted (no mmap/munmap/brk metrics or mmap_failures health signal from them); memory_hooks = \"fexit-or-tracepoints\" in [collect] counts them with syscall tracepoints instead, which send every system call on the node through the kernel's slower syscall path (a few % on syscall-heavy programs)"
        );
    }
    for prog in ProgId::in_group(ProgGroup::Tracepoint).filter(|p| !replaced.contains(p)) {
        let status = attach_one(&mut ebpf, prog, tracefs);
        match &status.error {
            None => debug!(program = prog.program_name(), "attached"),
            Some(e) if prog.optional() => info!(program = prog.program_name(), error = %e, "optional program not attached"),
            Some(e) => warn!(program = prog.program_name(), error = %e, "program not attached"),
        }
        programs.push(status);
    }

    if libssl_holds {
        for prog in ProgId::in_group(ProgGroup::LibsslHold) {
            let status = attach_raw(&mut ebpf, prog, tracefs);
            if let Some(e) = &status.error {
                info!(program = prog.program_name(), error = %e, "optional program not attached: a new libssl file's first process is not held");
            }
            programs.push(status);
        }
    }

    let maps = KernelMaps {
        counters: take(&mut ebpf, maps::PROC_COUNTERS)?,
        failures: take(&mut ebpf, maps::FAILURES)?,
        stats: take(&mut ebpf, maps::PROG_STATS)?,
        events: take(&mut ebpf, maps::EVENTS)?,
        creation: CreationMaps {
            config: take(&mut ebpf, maps::GO_CREATION)?,
            counts: take(&mut ebpf, maps::GO_CREATION_COUNTS)?,
            sites: take(&mut ebpf, maps::CREATION_SITES)?,
            window_goids: take(&mut ebpf, maps::WINDOW_GOIDS)?,
        },
        go_tls: take(&mut ebpf, maps::GO_TLS_CONFIG)?,
        ssl_libs: take(&mut ebpf, maps::SSL_LIBS)?,
        crash_config: take(&mut ebpf, maps::GO_CRASH)?,
        crash_pauses: take(&mut ebpf, maps::CRASH_PAUSES)?,
        config: take(&mut ebpf, maps::CONFIG)?,
        libssl_files: take(&mut ebpf, maps::LIBSSL_FILES)?,
    };
    Ok((Probes { _ebpf: ebpf, programs }, maps))
}

fn attach_one(ebpf: &mut Ebpf, prog: ProgId, tracefs: &Path) -> ProgramStatus {
    let (cat, name) = prog.tracepoint();
    let result = (|| -> Result<(), String> {
        if !tracefs.join("events").join(cat).join(name).is_dir() {
            return Err(format!("tracepoint {cat}:{name} does not exist on this kernel"));
        }
        crate::kernel::verify_program_fields(tracefs, prog)?;
        let program = ebpf
            .program_mut(prog.program_name())
            .ok_or_else(|| format!("program {} missing from the eBPF object", prog.program_name()))?;
        let tp: &mut TracePoint = program.try_into().map_err(|e| format!("{e}"))?;
        tp.load().map_err(|e| format!("load: {e}"))?;
        tp.attach(cat, name).map_err(|e| format!("attach to {cat}:{name}: {e}"))?;
        Ok(())
    })();
    ProgramStatus { prog, attached: result.is_ok(), error: result.err() }
}

fn attach_raw(ebpf: &mut Ebpf, prog: ProgId, tracefs: &Path) -> ProgramStatus {
    let (cat, name) = prog.tracepoint();
    let result = (|| -> Result<(), String> {
        if !tracefs.join("events").join(cat).join(name).is_dir() {
            return Err(format!("tracepoint {cat}:{name} does not exist on this kernel"));
        }
        let program = ebpf
            .program_mut(prog.program_name())
            .ok_or_else(|| format!("program {} missing from the eBPF object", prog.program_name()))?;
        let tp: &mut RawTracePoint = program.try_into().map_err(|e| format!("{e}"))?;
        tp.load().map_err(|e| format!("load: {e}"))?;
        tp.attach(name).map_err(|e| format!("attach to raw tracepoint {name}: {e}"))?;
        Ok(())
    })();
    ProgramStatus { prog, attached: result.is_ok(), error: result.err() }
}

/// Forwards kernel-side aya-log records to `tracing` (through the `log` bridge).
fn spawn_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring-buffer fd and keeps it open while the AsyncFd owns it.
    let fd = match unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %std::io::Error::from(e), "kernel-side logging unavailable");
            return;
        }
    };
    tokio::spawn(async move {
        let mut fd = fd;
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    warn!(error = %e, "kernel log reader stopped");
                    return;
                }
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

#[cfg(test)]
mod abi_tests {
    //! The kernel/user ABI, checked on the object this daemon embeds (no root: parsing only).
    use aya_obj::{Object, ProgramSection};
    use probe_common::{maps, ProgId, ProgKind};

    use super::PROBE_OBJECT;

    fn object() -> Object {
        Object::parse(PROBE_OBJECT).expect("the embedded eBPF object parses")
    }

    #[test]
    fn every_program_is_in_the_object_with_its_type() {
        let obj = object();
        for prog in ProgId::ALL {
            let p = obj.programs.get(prog.program_name()).unwrap_or_else(|| panic!("program {} missing from the object", prog.program_name()));
            let ok = matches!(
                (prog.kind(), &p.section),
                (ProgKind::TracePoint, ProgramSection::TracePoint)
                    | (ProgKind::UProbe, ProgramSection::UProbe { sleepable: false })
                    | (ProgKind::URetProbe, ProgramSection::URetProbe { sleepable: false })
                    | (ProgKind::FExit, ProgramSection::FExit { sleepable: false })
                    | (ProgKind::RawTracePoint, ProgramSection::RawTracePoint)
            );
            assert!(ok, "program {}: object section {:?}, ProgId says {:?}", prog.program_name(), p.section, prog.kind());
        }
        let known: Vec<&str> = ProgId::ALL.iter().map(|p| p.program_name()).collect();
        let mut extra: Vec<&String> = obj.programs.keys().filter(|n| !known.contains(&n.as_str())).collect();
        extra.sort();
        assert!(extra.is_empty(), "programs in the object without a ProgId: {extra:?}");
    }

    #[test]
    fn every_map_matches_its_spec() {
        let obj = object();
        for spec in maps::ALL {
            let m = obj.maps.get(spec.name).unwrap_or_else(|| panic!("map {} missing from the object", spec.name));
            let got = (m.map_type(), m.key_size(), m.value_size(), m.max_entries());
            let want = (spec.kind as u32, spec.key_size, spec.value_size, spec.max_entries);
            assert_eq!(got, want, "map {}: (type, key size, value size, max entries) in the object vs probe_common::maps", spec.name);
        }
        // Data sections (.rodata, .bss) and aya-log's own maps are not part of the ABI.
        let mut extra: Vec<&String> =
            obj.maps.keys().filter(|n| !n.starts_with('.') && !n.starts_with("AYA_") && !maps::ALL.iter().any(|s| s.name == n.as_str())).collect();
        extra.sort();
        assert!(extra.is_empty(), "maps in the object without a probe_common::maps spec: {extra:?}");
    }
}
