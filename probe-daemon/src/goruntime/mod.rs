//! Go processes: discovery (a /proc scan at start, then every exec), per-binary uprobes for GC
//! cycles and stop-the-world pauses (attached once per executable file, detached when its last
//! process exits), and zero-probe runtime reads (goroutines, goroutine ids, GC count, heap) from
//! /proc/PID/mem on a timer.
pub mod mem;
pub mod tables;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use aya::programs::uprobe::UProbeLinkId;
use probe_common::{GoSite, ProgId};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::{
    attach::Probes,
    goinspect::{GoBinary, GoInspectError, Inspector},
};
pub use mem::{GoSample, Layout, MemError, ProcMem};

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

/// State of one probe of one binary, as `/api/v1/targets` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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

/// What is attached to one executable.
struct AttachedBinary {
    links: Vec<(ProgId, UProbeLinkId)>,
    probes: Vec<ProbeState>,
    pids: HashSet<u32>,
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
    #[serde(skip)]
    pub layout: Option<Layout>,
    #[serde(skip)]
    key: Option<BinaryKey>,
}

/// The discovery outcome for one pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    Tracked,
    AlreadyTracked,
    NotGo,
    Gone,
}

pub struct GoTracker {
    probes: Arc<Mutex<Probes>>,
    inspector: Inspector,
    targets: HashMap<u32, GoTarget>,
    binaries: HashMap<BinaryKey, AttachedBinary>,
    /// Executables known not to be (supported) Go.
    not_go: HashSet<BinaryKey>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl GoTracker {
    pub fn new(probes: Arc<Mutex<Probes>>) -> Self {
        GoTracker { probes, inspector: Inspector::new(), targets: HashMap::new(), binaries: HashMap::new(), not_go: HashSet::new() }
    }

    pub fn targets(&self) -> impl Iterator<Item = &GoTarget> {
        self.targets.values()
    }

    pub fn target(&self, pid: u32) -> Option<&GoTarget> {
        self.targets.get(&pid)
    }

    /// Looks at one process (after exec or at start): tracks it if it runs Go.
    pub fn consider(&mut self, pid: u32) -> Discovery {
        let Some(key) = binary_key(pid) else { return Discovery::Gone };
        if let Some(t) = self.targets.get(&pid) {
            if t.key == Some(key) {
                return Discovery::AlreadyTracked;
            }
            // The pid exec'd another binary.
            self.forget(pid);
        }
        if self.not_go.contains(&key) {
            return Discovery::NotGo;
        }
        let bin = match self.inspector.inspect_pid(pid) {
            Ok(b) => b,
            Err(GoInspectError::Process { .. }) => return Discovery::Gone,
            Err(e) => {
                if !matches!(e, GoInspectError::NotGo { .. } | GoInspectError::NotElf { .. } | GoInspectError::Empty { .. }) {
                    debug!(pid, error = %e, "binary not inspectable; skipping it");
                }
                self.not_go.insert(key);
                return Discovery::NotGo;
            }
        };
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
            layout: None,
            key: Some(key),
        };
        if !bin.supported() {
            target.reads_error = Some(format!("{} uses the stack ABI (Go < 1.17): unsupported", bin.go_version));
            info!(pid, version = %bin.go_version, "Go process with the stack ABI: not probed");
            self.targets.insert(pid, target);
            return Discovery::Tracked;
        }
        match mem::load_bias(pid, &PathBuf::from(format!("/proc/{pid}/exe"))).and_then(|bias| Layout::new(&bin, bias)) {
            Ok(l) => target.layout = Some(l),
            Err(MemError::Gone { .. }) => return Discovery::Gone,
            Err(e) => {
                warn!(pid, error = %e, "Go runtime reads unavailable for this process");
                target.reads_error = Some(e.to_string());
            }
        }
        let entry = self.binaries.entry(key).or_insert_with(|| {
            let (links, probes) = attach_binary(&self.probes, pid, &bin);
            AttachedBinary { links, probes, pids: HashSet::new() }
        });
        entry.pids.insert(pid);
        target.probes = entry.probes.clone();
        info!(pid, version = %bin.go_version, exe = %target.exe.display(), "tracking Go process");
        self.targets.insert(pid, target);
        Discovery::Tracked
    }

    /// The process exited: untrack it, and detach its binary's probes if it was the last user.
    pub fn forget(&mut self, pid: u32) {
        let Some(t) = self.targets.remove(&pid) else { return };
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

    /// Binaries with probes attached (for tests and self metrics).
    pub fn attached_binaries(&self) -> usize {
        self.binaries.len()
    }

    /// (pid, layout) of every process whose runtime can be read.
    pub fn readable(&self) -> Vec<(u32, Layout)> {
        self.targets.values().filter_map(|t| t.layout.clone().map(|l| (t.pid, l))).collect()
    }
}

/// Attaches every Go runtime probe to the binary run by `pid`.
fn attach_binary(probes: &Mutex<Probes>, pid: u32, bin: &GoBinary) -> (Vec<(ProgId, UProbeLinkId)>, Vec<ProbeState>) {
    let target = PathBuf::from(format!("/proc/{pid}/exe"));
    let mut links = Vec::new();
    let mut states = Vec::new();
    let mut probes = lock(probes);
    for prog in ProgId::GO {
        let Some((function, site)) = prog.go_site() else { continue };
        let Some(f) = bin.function(function) else {
            states.push(ProbeState { name: prog.program_name(), function, state: "absent", sites: 0, error: None });
            continue;
        };
        let offsets: Vec<u64> = match site {
            GoSite::Entry => vec![f.file_offset],
            GoSite::Returns => f.ret_file_offsets.clone(),
        };
        let mut error = if offsets.is_empty() { Some("no RET instruction found".to_string()) } else { None };
        let mut attached = 0;
        for off in offsets {
            match probes.attach_uprobe(prog, &target, off) {
                Ok(link) => {
                    links.push((prog, link));
                    attached += 1;
                }
                Err(e) => error = Some(e),
            }
        }
        let state = if error.is_none() { "attached" } else { "failed" };
        if let Some(e) = &error {
            warn!(pid, probe = prog.program_name(), error = %e, "Go probe not attached");
        }
        states.push(ProbeState { name: prog.program_name(), function, state, sites: attached, error });
    }
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

/// Goroutine counts by state for metrics: ("waiting", "chan receive") → n.
pub type StateCounts = BTreeMap<(&'static str, String), u64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stw_reasons_by_version() {
        assert_eq!(stw_reason(19, 1), "unknown");
        assert_eq!(stw_reason(21, 2), "gc_sweep_termination");
        assert_eq!(stw_reason(27, 7), "read_mem_stats");
        assert_eq!(stw_reason(27, 200), "unknown");
    }

    #[test]
    fn wait_reason_tables_follow_each_release() {
        assert_eq!(tables::wait_reasons(19)[14], "chan receive");
        assert_eq!(tables::wait_reasons(25)[14], "chan receive");
        assert_eq!(tables::wait_reasons(27)[19], "chan receive", "1.27 renumbered waitReason");
        assert!(tables::wait_reasons(40).is_empty());
    }
}
