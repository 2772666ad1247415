//! Go processes: discovery (a /proc scan at start, then every exec), per-binary uprobes for GC
//! cycles and stop-the-world pauses (attached once per executable file, detached when its last
//! process exits), and zero-probe runtime reads (goroutines, goroutine ids, GC count, heap) from
//! /proc/PID/mem on a timer: the goroutine count and the rest in O(P) every interval, the
//! goroutines by state (every g) under a CPU budget ([`budget`]).
pub mod budget;
pub mod crash;
pub mod creation;

pub mod mem;
pub mod validate;

use crate::sync::lock;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use aya::programs::uprobe::UProbeLinkId;
use probe_common::{GoSite, ProgGroup, ProgId};
use serde::Serialize;
use tracing::{debug, info, warn};

use goinspect::{tables::Origin, FuncTable, GoBinary, GoInspectError, Inspector};
use crate::attach::{attach_sites, ProbeState, Probes};
pub use mem::{GoSample, Layout, MemError, ProcMem};

/// How a process's goroutines are counted (`GET /api/v1/targets`: runtime.goroutines_counted_by).
pub const COUNT_BY_COUNTERS: &str = "runtime counters, as runtime.NumGoroutine (allglen - free g lists - sched.ngsys; O(GOMAXPROCS) per read)";

/// The count method of a layout: the runtime's counters, or every g and why.
fn count_method(layout: &Result<Layout, String>) -> String {
    match layout {
        Ok(Layout { count: Ok(_), .. }) => COUNT_BY_COUNTERS.to_string(),
        Ok(Layout { count: Err(why), .. }) => format!("every g read (O(goroutines) per read): {why}"),
        Err(_) => "not read".to_string(),
    }
}

/// Identity of an executable file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BinaryKey {
    pub dev: u64,
    pub ino: u64,
}

fn binary_key(pid: u32) -> Option<BinaryKey> {
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some(BinaryKey { dev: m.dev(), ino: m.ino() })
}

/// What is attached to one executable.
struct AttachedBinary {
    links: Vec<(ProgId, UProbeLinkId)>,
    probes: Vec<ProbeState>,
    pids: HashSet<u32>,
    /// The outcome of checking the binary's offsets on one of its processes (None: not yet).
    verdict: Option<Checked>,
    /// The executable, open while any of its processes is tracked (see [`GoTarget::exe_file`]).
    file: Option<Arc<std::fs::File>>,
}

/// A conclusive check of a binary's offsets on one process.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Checked {
    pid: u32,
    accepted: bool,
    detail: String,
}

/// Where a process's struct offsets come from, and whether they were checked on a live process
/// (`GET /api/v1/targets`, `chainprobe_go_processes{offsets_source}`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OffsetsStatus {
    /// "dwarf", "table", "nearest" or "none".
    pub source: &'static str,
    /// The table used ("1.26/amd64").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The toolchain the table was generated from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated_from: Option<String>,
    /// "not needed (DWARF)", "pending: …", "accepted on pid N: …", "rejected on pid N: …", or why
    /// there are no offsets.
    pub validation: String,
}

impl OffsetsStatus {
    fn of(bin: &GoBinary) -> OffsetsStatus {
        let (table, generated_from) = match &bin.offsets_origin {
            Origin::Table { table, generated_from } | Origin::Nearest { table, generated_from, .. } => (Some(table.clone()), Some(generated_from.clone())),
            _ => (None, None),
        };
        let validation = match &bin.offsets_origin {
            Origin::Dwarf if !needs_check(bin) => "not needed (offsets and addresses from this binary's DWARF and symbols)".into(),
            Origin::None { reason } => format!("no offsets: {reason}"),
            _ => "pending: checked against the live process before its runtime is read".into(),
        };
        OffsetsStatus { source: bin.offsets_origin.source(), table, generated_from, validation }
    }
}

/// Whether `bin`'s offsets or data-symbol addresses come from outside the binary (a table, the
/// code-reference method) and must be checked on a live process before they are trusted.
pub fn needs_check(bin: &GoBinary) -> bool {
    !matches!(bin.offsets_origin, Origin::Dwarf) || bin.data_symbols.values().any(|d| d.source == goinspect::Source::CodeRef)
}

/// A process that exited while it was checked says nothing about the offsets (its memory went
/// away under the reads): not a rejection of the binary.
fn gone_is_inconclusive(pid: u32, v: validate::Verdict) -> validate::Verdict {
    match v {
        validate::Verdict::Rejected(why) if std::fs::read_link(format!("/proc/{pid}/exe")).is_err() => {
            validate::Verdict::Inconclusive(format!("process {pid} exited while it was checked ({why})"))
        }
        v => v,
    }
}

/// Checks `bin`'s offsets on process `pid` through its layout.
pub fn check_offsets(pid: u32, bin: &GoBinary, layout: &Layout) -> validate::Verdict {
    let checks = match validate::Checks::new(bin) {
        Ok(c) => c,
        Err(e) => return validate::Verdict::Rejected(e),
    };
    let mem = match ProcMem::open(pid) {
        Ok(m) => m,
        Err(e) => return validate::Verdict::Inconclusive(e.to_string()),
    };
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    gone_is_inconclusive(pid, validate::check(&mem, layout, &checks, || FuncTable::load(&exe).map_err(|e| e.to_string())))
}

/// A tracked Go process.
#[derive(Debug, Clone, Serialize)]
pub struct GoTarget {
    pub pid: u32,
    pub exe: PathBuf,
    pub go_version: String,
    pub pie: bool,
    pub stripped: bool,
    pub link_mode: String,
    pub abi: String,
    pub supported: bool,
    /// Why runtime reads are off, when they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reads_error: Option<String>,
    pub probes: Vec<ProbeState>,
    pub offsets: OffsetsStatus,
    /// How the goroutine count is read: [`COUNT_BY_COUNTERS`], or "every g read …: why".
    pub goroutine_count: String,
    /// Set once the offsets are trusted (DWARF, or checked on a live process).
    #[serde(skip)]
    pub layout: Option<Layout>,
    /// The layout awaiting its check.
    #[serde(skip)]
    pending: Option<Layout>,
    #[serde(skip)]
    pub binary: Option<Arc<GoBinary>>,
    /// The executable, opened when the first process of the binary was tracked (one descriptor
    /// per binary): what symbolizes a crash after the process is gone, also inside a container
    /// whose files are not at `exe` on the node.
    #[serde(skip)]
    pub exe_file: Option<Arc<std::fs::File>>,
    #[serde(skip)]
    key: Option<BinaryKey>,
}

impl GoTarget {
    /// The executable's load bias in this process, when its layout (checked or not) is known.
    pub fn bias(&self) -> Option<u64> {
        self.layout.as_ref().or(self.pending.as_ref()).map(|l| l.bias)
    }
}

/// The discovery outcome for one pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    Tracked,
    AlreadyTracked,
    NotGo,
    Gone,
}

/// Tracked Go processes and what is attached to their binaries. Shared with the API and the
/// runtime reader, so it is only locked briefly: inspection happens in [`Discoverer`], outside.
pub struct GoTracker {
    probes: Arc<Mutex<Probes>>,
    /// Shared with the published views (a change copies the one target it changes).
    targets: HashMap<u32, Arc<GoTarget>>,
    binaries: HashMap<BinaryKey, AttachedBinary>,
    /// Go TLS handshake probes, when enabled.
    tls: Option<Arc<crate::tls::GoTls>>,
    /// The crash programs' per-process settings.
    crash: Option<crash::CrashProbes>,
}

/// A process inspected and ready to be tracked.
pub struct Inspected {
    pid: u32,
    key: BinaryKey,
    bin: Arc<GoBinary>,
    layout: Result<Layout, String>,
    /// A first check of the offsets, made at inspection (None: not needed or not made).
    verdict: Option<validate::Verdict>,
}

/// Looks at processes (owned by the discovery thread): inspects their executables, remembering
/// which ones are not Go.
pub struct Discoverer {
    inspector: Inspector,
    /// Executables known not to be (supported) Go.
    not_go: HashSet<BinaryKey>,
}

impl Default for Discoverer {
    fn default() -> Self {
        Discoverer { inspector: Inspector::new(), not_go: HashSet::new() }
    }
}

impl Discoverer {
    /// Inspects the executable of `pid`. `Err` says why it is not to be tracked.
    pub fn inspect(&mut self, tracker: &GoTracker, pid: u32) -> Result<Inspected, Discovery> {
        let Some(key) = binary_key(pid) else {
            debug!(pid, "process gone before it could be inspected");
            return Err(Discovery::Gone);
        };
        if tracker.targets.get(&pid).is_some_and(|t| t.key == Some(key)) {
            return Err(Discovery::AlreadyTracked);
        }
        if self.not_go.contains(&key) {
            return Err(Discovery::NotGo);
        }
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        if !elf_may_be_go(&exe) {
            self.not_go.insert(key);
            return Err(Discovery::NotGo);
        }
        let bin = match self.inspector.inspect_pid(pid) {
            Ok(b) => b,
            Err(e @ (GoInspectError::Process { .. } | GoInspectError::Io { .. })) => {
                // Transient (the process or file went away): not remembered as "not Go".
                debug!(pid, error = %e, "could not inspect the process's binary");
                return Err(Discovery::Gone);
            }
            Err(e) => {
                debug!(pid, error = %e, "not a Go process we can probe");
                self.not_go.insert(key);
                return Err(Discovery::NotGo);
            }
        };
        let layout = if bin.supported() {
            match mem::load_bias(pid, &exe).and_then(|bias| Layout::new(&bin, bias)) {
                Ok(l) => Ok(l),
                Err(MemError::Gone { .. }) => return Err(Discovery::Gone),
                Err(e) => Err(e.to_string()),
            }
        } else {
            Err(format!("{} uses the stack ABI (Go < 1.17): unsupported", bin.go_version))
        };
        // A first check now (outside the tracker's lock) when the binary's offsets need one and
        // no process of it was checked yet: a process that has been running for a while is read
        // at once; one that has just exec'd is inconclusive and checked again by the reader.
        let checked = tracker.binaries.get(&key).is_some_and(|b| b.verdict.is_some());
        let verdict = match &layout {
            Ok(l) if needs_check(&bin) && !checked => Some(check_offsets(pid, &bin, l)),
            _ => None,
        };
        Ok(Inspected { pid, key, bin, layout, verdict })
    }
}

/// Cheap first look at an executable: false when its section headers show none of the sections
/// every Go binary has (`.go.buildinfo`, `.gopclntab`, `.note.go.buildid`), so a node's many
/// non-Go programs are not parsed in full. Files without section headers get the full inspection.
pub fn elf_may_be_go(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::File::open(path) else { return true };
    let mut h = [0u8; 64];
    if f.read_exact_at(&mut h, 0).is_err() || &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return true;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as u64;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3], b[o + 4], b[o + 5], b[o + 6], b[o + 7]]);
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(&h, 0x28), u16_at(&h, 0x3a), u16_at(&h, 0x3c), u16_at(&h, 0x3e));
    if shoff == 0 || shnum == 0 || shentsize < 64 || shnum > 4096 || shstrndx >= shnum {
        return true;
    }
    let mut sh = vec![0u8; (shentsize * shnum) as usize];
    if f.read_exact_at(&mut sh, shoff).is_err() {
        return true;
    }
    let str_hdr = &sh[(shstrndx * shentsize) as usize..];
    let (str_off, str_size) = (u64_at(str_hdr, 0x18), u64_at(str_hdr, 0x20));
    if str_size == 0 || str_size > 1 << 20 {
        return true;
    }
    let mut names = vec![0u8; str_size as usize];
    if f.read_exact_at(&mut names, str_off).is_err() {
        return true;
    }
    (0..shnum as usize).any(|i| {
        let start = u32_at(&sh[i * shentsize as usize..], 0) as usize;
        let name = names.get(start..).unwrap_or(&[]);
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        matches!(&name[..end], b".go.buildinfo" | b".gopclntab" | b".data.rel.ro.gopclntab" | b".note.go.buildid" | b".go.module")
    })
}

impl GoTracker {
    pub fn new(probes: Arc<Mutex<Probes>>) -> Self {
        GoTracker { probes, targets: HashMap::new(), binaries: HashMap::new(), tls: None, crash: None }
    }

    /// Also probes crypto/tls handshakes of every tracked Go process.
    pub fn with_tls(mut self, tls: Arc<crate::tls::GoTls>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Also reports every tracked Go process's crashes (and pauses it at them, see [`crash`]).
    pub fn with_crash(mut self, crash: crash::CrashProbes) -> Self {
        self.crash = Some(crash);
        self
    }

    /// The targets as shared with the views (no copy).
    pub fn targets(&self) -> impl Iterator<Item = &Arc<GoTarget>> {
        self.targets.values()
    }

    pub fn target(&self, pid: u32) -> Option<&GoTarget> {
        self.targets.get(&pid).map(|t| &**t)
    }

    /// Tracks an inspected process: attaches its binary's probes unless already attached.
    pub fn track(&mut self, ins: Inspected) -> Discovery {
        let Inspected { pid, key, bin, layout, verdict } = ins;
        if self.targets.contains_key(&pid) {
            // The pid exec'd another binary.
            self.forget(pid);
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_else(|_| bin.path.clone());
        let mut target = GoTarget {
            pid,
            exe,
            go_version: bin.go_version.clone(),
            pie: bin.pie,
            stripped: bin.stripped,
            link_mode: format!("{:?}", bin.link_mode).to_lowercase(),
            abi: format!("{:?}", bin.abi).to_lowercase(),
            supported: bin.supported(),
            reads_error: None,
            probes: Vec::new(),
            offsets: OffsetsStatus::of(&bin),
            goroutine_count: count_method(&layout),
            layout: None,
            pending: None,
            key: Some(key),
            binary: Some(bin.clone()),
            exe_file: None,
        };
        if let (Ok(Layout { count: Err(why), .. }), false) = (&layout, self.binaries.contains_key(&key)) {
            // Once per binary; each process's target view says it too.
            warn!(pid, exe = %target.exe.display(), reason = %why, "Go goroutines of this binary are counted by reading every g (O(goroutines) per read)");
        }
        match layout {
            Ok(l) if needs_check(&bin) => target.pending = Some(l),
            Ok(l) => target.layout = Some(l),
            Err(e) => {
                warn!(pid, error = %e, "Go runtime reads unavailable for this process");
                target.reads_error = Some(e);
            }
        }
        if !bin.supported() {
            info!(pid, version = %bin.go_version, "Go process with the stack ABI: not probed");
            self.targets.insert(pid, Arc::new(target));
            return Discovery::Tracked;
        }
        let tls = self.tls.clone();
        let entry = self.binaries.entry(key).or_insert_with(|| {
            let (mut links, mut probes) = attach_binary(&self.probes, pid, &bin);
            if let Some(tls) = tls {
                let (l, p) = tls.attach_binary(&mut lock(&self.probes), pid, &bin);
                links.extend(l);
                probes.extend(p);
            }
            AttachedBinary { links, probes, pids: HashSet::new(), verdict: None, file: None }
        });
        if entry.file.is_none() {
            entry.file = std::fs::File::open(format!("/proc/{pid}/exe")).ok().map(Arc::new);
        }
        target.exe_file = entry.file.clone();
        entry.pids.insert(pid);
        target.probes = entry.probes.clone();
        if let Some(c) = &self.crash {
            c.enable(pid, &bin);
        }
        let known = entry.verdict.clone();
        // Go TLS reads the Conn's fields with the same table: with the nearest table, only once
        // the table has proven right on a live process.
        let nearest = matches!(bin.offsets_origin, Origin::Nearest { .. });
        if !nearest {
            self.enable_tls(&mut target);
        }
        info!(pid, version = %bin.go_version, exe = %target.exe.display(), offsets = %bin.offsets_origin.describe(), "tracking Go process");
        self.targets.insert(pid, Arc::new(target));
        match (known, verdict) {
            (Some(c), _) => self.apply_verdict(key, c),
            (None, Some(v)) => self.record_verdict(key, pid, v),
            (None, None) => {}
        }
        Discovery::Tracked
    }

    /// Enables Go TLS handshake reads for `target` when its binary's TLS probes are attached.
    fn enable_tls(&self, target: &mut GoTarget) {
        let (Some(tls), Some(bin)) = (&self.tls, &target.binary) else { return };
        if target.probes.iter().any(|p| p.name == ProgId::GoTlsEnter.program_name()) {
            if let Err(e) = tls.enable(target.pid, bin) {
                warn!(pid = target.pid, error = %e, "Go TLS handshakes of this process are not reported");
                target.probes.push(ProbeState { name: "go_tls_offsets", function: "crypto/tls.Conn", state: "failed", sites: 0, error: Some(e.to_string()) });
            }
        }
    }

    /// One process per binary whose offsets await their check: (pid, binary, layout).
    pub fn pending_checks(&self) -> Vec<(u32, BinaryKey, Arc<GoBinary>, Layout)> {
        let mut seen = HashSet::new();
        self.targets
            .values()
            .filter_map(|t| Some((t.pid, t.key?, t.binary.clone()?, t.pending.clone()?)))
            .filter(|(_, k, _, _)| seen.insert(*k))
            .collect()
    }

    /// Takes the outcome of checking binary `key`'s offsets on process `pid`.
    pub fn record_verdict(&mut self, key: BinaryKey, pid: u32, v: validate::Verdict) {
        let c = match v {
            validate::Verdict::Inconclusive(why) => {
                debug!(pid, why, "Go offsets not checked yet");
                return;
            }
            validate::Verdict::Accepted(d) => Checked { pid, accepted: true, detail: d },
            validate::Verdict::Rejected(d) => Checked { pid, accepted: false, detail: d },
        };
        let Some(b) = self.binaries.get_mut(&key) else { return };
        b.verdict = Some(c.clone());
        if let Some(t) = self.targets.get(&pid) {
            let origin = t.binary.as_ref().map(|b| b.offsets_origin.describe()).unwrap_or_default();
            if c.accepted {
                info!(pid, offsets = %origin, checked = %c.detail, "Go offsets accepted on a live process");
            } else {
                warn!(pid, offsets = %origin, reason = %c.detail, "Go offsets rejected on a live process: runtime reads (and Go TLS with the nearest table) are off for this binary");
            }
        }
        self.apply_verdict(key, c);
    }

    /// Applies a binary's verdict to each of its processes still waiting for one.
    fn apply_verdict(&mut self, key: BinaryKey, c: Checked) {
        let pids: Vec<u32> = self.targets.values().filter(|t| t.key == Some(key) && t.pending.is_some()).map(|t| t.pid).collect();
        for pid in pids {
            let Some(t) = self.targets.remove(&pid) else { continue };
            let mut t = Arc::unwrap_or_clone(t);
            let pending = t.pending.take();
            if c.accepted {
                t.offsets.validation = format!("accepted on pid {}: {}", c.pid, c.detail);
                t.layout = pending;
                if matches!(t.binary.as_ref().map(|b| &b.offsets_origin), Some(Origin::Nearest { .. })) {
                    self.enable_tls(&mut t);
                }
            } else {
                t.offsets.validation = format!("rejected on pid {}: {}", c.pid, c.detail);
                t.reads_error = Some(format!("offsets from {} rejected on pid {}: {}", t.offsets.table.as_deref().unwrap_or(t.offsets.source), c.pid, c.detail));
            }
            self.targets.insert(pid, Arc::new(t));
        }
    }

    /// Tracked processes by where their offsets come from ("nearest" only once accepted;
    /// rejected and pending ones count as "none" and "pending").
    pub fn offsets_sources(&self) -> BTreeMap<&'static str, u64> {
        let mut m = BTreeMap::new();
        for t in self.targets.values() {
            let s = if t.pending.is_some() {
                "pending"
            } else if t.layout.is_none() {
                "none"
            } else {
                t.offsets.source
            };
            *m.entry(s).or_insert(0) += 1;
        }
        m
    }

    /// The process exited: untrack it, and detach its binary's probes if it was the last user.
    pub fn forget(&mut self, pid: u32) {
        let Some(t) = self.targets.remove(&pid) else { return };
        if let Some(tls) = &self.tls {
            tls.disable(pid);
        }
        if let Some(c) = &self.crash {
            c.disable(pid);
        }
        let Some(key) = t.key else { return };
        let empty = match self.binaries.get_mut(&key) {
            Some(b) => {
                b.pids.remove(&pid);
                b.pids.is_empty()
            }
            None => false,
        };
        if empty {
            if let Some(b) = self.binaries.remove(&key) {
                let mut probes = lock(&self.probes);
                for (prog, link) in b.links {
                    probes.detach_uprobe(prog, link);
                }
                debug!(exe = %t.exe.display(), "last process of the binary exited; probes detached");
            }
        }
    }

    /// Records how process `pid`'s goroutines are counted (when the reader had to change it).
    pub fn set_count_method(&mut self, pid: u32, method: String) {
        if let Some(t) = self.targets.get_mut(&pid) {
            Arc::make_mut(t).goroutine_count = method;
        }
    }

    /// Every process whose runtime can be read (its layout is set).
    pub fn readable(&self) -> Vec<Arc<GoTarget>> {
        self.targets.values().filter(|t| t.layout.is_some()).cloned().collect()
    }
}

/// Attaches every Go runtime probe to the binary run by `pid`.
fn attach_binary(probes: &Mutex<Probes>, pid: u32, bin: &GoBinary) -> (Vec<(ProgId, UProbeLinkId)>, Vec<ProbeState>) {
    let mut links = Vec::new();
    let mut states = Vec::new();
    let mut probes = lock(probes);
    for prog in ProgId::in_group(ProgGroup::GoRuntime) {
        let Some((function, site)) = prog.go_site() else { continue };
        let Some(f) = bin.function(function) else {
            states.push(ProbeState { name: prog.program_name(), function, state: "absent", sites: 0, error: None });
            continue;
        };
        let offsets: Vec<u64> = match site {
            GoSite::Entry => vec![f.entry_probe_file_offset],
            GoSite::AfterStackCheck => vec![f.after_stack_check_file_offset],
            GoSite::Returns => f.ret_file_offsets.clone(),
        };
        states.push(attach_sites(&mut probes, pid, prog, function, offsets, &mut links));
    }
    // The crash programs: each at the entry of every function of its family the binary has.
    for (prog, functions) in probe_common::CRASH_FUNCTIONS {
        let present: Vec<(&'static str, u64)> = functions.iter().filter_map(|f| bin.function(f).map(|x| (*f, x.entry_probe_file_offset))).collect();
        if present.is_empty() {
            states.push(ProbeState { name: prog.program_name(), function: functions[0], state: "absent", sites: 0, error: None });
        }
        for (function, off) in present {
            states.push(attach_sites(&mut probes, pid, prog, function, vec![off], &mut links));
        }
    }
    // HTTP/2 control frames: the writers and parsers of every HTTP/2 the binary links.
    states.extend(crate::http2::attach_binary(&mut probes, pid, bin, &mut links));
    (links, states)
}

/// stwReason names (Go >= 1.21; the same order through 1.27).
pub fn stw_reason(minor: u32, reason: u32) -> &'static str {
    if minor < 21 {
        return "unknown";
    }
    match reason {
        1 => "gc_mark_termination",
        2 => "gc_sweep_termination",
        3 => "write_heap_dump",
        4 => "goroutine_profile",
        5 => "goroutine_profile_cleanup",
        6 => "all_goroutines_stack_trace",
        7 => "read_mem_stats",
        8 => "all_threads_syscall",
        9 => "gomaxprocs",
        10 => "start_trace",
        11 => "stop_trace",
        12..=16 => "test",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheap_go_check() {
        // This test binary is not Go; a Go fixture, when built, is.
        assert!(!elf_may_be_go(&std::env::current_exe().unwrap()));
        assert!(elf_may_be_go(std::path::Path::new("/nonexistent")), "unknown: leave it to the full inspection");
    }

    #[test]
    fn a_process_that_exits_mid_check_rejects_nothing() {
        let gone = 0x7fff_fff0; // beyond pid_max
        let v = gone_is_inconclusive(gone, validate::Verdict::Rejected("g at 0x1 is not readable".into()));
        assert!(matches!(&v, validate::Verdict::Inconclusive(w) if w.contains("exited")), "{v:?}");
        let me = std::process::id();
        let v = gone_is_inconclusive(me, validate::Verdict::Rejected("wrong".into()));
        assert_eq!(v, validate::Verdict::Rejected("wrong".into()), "a live process's rejection stands");
    }

    #[test]
    fn stw_reasons_by_version() {
        assert_eq!(stw_reason(19, 1), "unknown");
        assert_eq!(stw_reason(21, 2), "gc_sweep_termination");
        assert_eq!(stw_reason(27, 7), "read_mem_stats");
        assert_eq!(stw_reason(27, 200), "unknown");
    }

}
