//! Per-process state: what the kernel counted for each process, folded with what the ring buffer
//! said (exec, exit, OOM kill, Go GC and pauses, TLS handshakes), plus the slow readings the
//! collector hands in (map counts, pods, Go runtime reads). Pure: no /proc, no kernel maps; the
//! collector thread owns it (one writer) and copies views out of it.
//!
//! Series lifetime: the state of an exited process is kept until it has been scraped at least once
//! and `exited_grace` has passed (so Prometheus sees the final values), or 4 × `exited_grace` in
//! any case, or until `max_exited` newer exits push it out.
use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use prometheus_client::metrics::histogram::Histogram;
use probe_common::{
    MemSyscall, ProcCounters, ProgId, ProgStats, DURATION_UNKNOWN, EXIT_CODE_UNKNOWN,
};

use crate::{
    decode::{Event, KernelSnapshot},
    goruntime::{stw_reason, GoSample},
};

/// What the collector knows of a pid the aggregate sees for the first time (its comm from /proc,
/// and whether it is still running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Live(String),
    /// Gone before its exit event was seen (or it ended before chainprobe started).
    Gone(Option<String>),
}

/// Looks a pid up (the collector reads /proc; tests answer from a table).
pub type Identify = dyn Fn(u32) -> Identity + Send;

/// GC cycle durations: 100 µs to ~13 s.
fn gc_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1e-4, 2.0, 18))
}

/// Stop-the-world pauses: 10 µs to ~1.3 s.
fn stw_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1e-5, 2.0, 18))
}

/// Go runtime state of a process.
#[derive(Debug, Clone)]
pub struct GoState {
    pub go_version: String,
    pub minor: u32,
    /// GC cycles seen by the probes since tracking began.
    pub gc_cycles: u64,
    pub gc_duration: Histogram,
    pub stw_pauses: BTreeMap<&'static str, Histogram>,
    pub stw_count: u64,
    /// Total stop-the-world time seen, in seconds.
    pub stw_seconds: f64,
    /// The latest runtime read.
    pub sample: Option<GoSample>,
    /// Goroutine-creation probes of this process.
    pub creation: Option<crate::goruntime::creation::CreationStatus>,
    /// How it crashed (at most one kind in a process's life, but a signal can follow an exit
    /// path that itself failed).
    pub crashes: BTreeMap<crate::evidence::CrashKind, u64>,
}

/// Why a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitReason {
    Exit,
    Signal,
    Oom,
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Exit => "exit",
            ExitReason::Signal => "signal",
            ExitReason::Oom => "oom",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    pub reason: ExitReason,
    /// Exit status ("0".."255"), signal name ("SIGKILL"), or "unknown".
    pub code: String,
    pub at: Instant,
}

/// Decodes `task_struct.exit_code` (see [`probe_common::ExitEvent::exit_code`]).
pub fn decode_exit_code(raw: u32, oom_killed: bool) -> (ExitReason, String) {
    if raw == EXIT_CODE_UNKNOWN {
        let reason = if oom_killed { ExitReason::Oom } else { ExitReason::Exit };
        return (reason, "unknown".into());
    }
    let sig = raw & 0x7f;
    if oom_killed {
        return (ExitReason::Oom, signal_name(if sig == 0 { 9 } else { sig }));
    }
    if sig != 0 {
        (ExitReason::Signal, signal_name(sig))
    } else {
        (ExitReason::Exit, ((raw >> 8) & 0xff).to_string())
    }
}

/// "SIGKILL" for 9, "SIG42" for signals without a classic name.
pub fn signal_name(sig: u32) -> String {
    const NAMES: [&str; 32] = [
        "", "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE",
        "SIGKILL", "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT",
        "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU",
        "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR", "SIGSYS",
    ];
    match NAMES.get(sig as usize) {
        Some(n) if !n.is_empty() => (*n).to_string(),
        _ => format!("SIG{sig}"),
    }
}

/// Symbolic errno name for the `errno` label.
pub fn errno_name(errno: u16) -> String {
    let name = match errno {
        1 => "EPERM",
        4 => "EINTR",
        9 => "EBADF",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        19 => "ENODEV",
        22 => "EINVAL",
        23 => "ENFILE",
        24 => "EMFILE",
        26 => "ETXTBSY",
        27 => "EFBIG",
        75 => "EOVERFLOW",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

/// Everything known about one process.
#[derive(Debug, Clone)]
pub struct ProcessState {
    pub pid: u32,
    pub comm: String,
    /// Counters of kernel map entries already deleted, plus the live ones below.
    folded: ProcCounters,
    live: ProcCounters,
    folded_failures: BTreeMap<(u16, u16), u64>,
    live_failures: BTreeMap<(u16, u16), u64>,
    pub map_count: Option<u64>,
    pub exit: Option<ExitInfo>,
    scrapes_since_exit: u32,
    pub go: Option<GoState>,
    /// Container/pod labels; `None` until looked up, empty values outside containers.
    pub pod: Option<crate::k8s::PodLabels>,
    /// The API named the pod (no further look-ups needed).
    pub pod_named: bool,
    /// The pprof port its pod's annotation names.
    pub pprof_port: Option<u16>,
    /// TLS handshakes (Go crypto/tls and OpenSSL); None until the first one.
    pub tls: Option<crate::tls::TlsState>,
}

impl ProcessState {
    fn new(pid: u32, comm: String) -> Self {
        ProcessState {
            tls: None,
            go: None,
            pod: None,
            pod_named: false,
            pprof_port: None,
            pid,
            comm,
            folded: ProcCounters::default(),
            live: ProcCounters::default(),
            folded_failures: BTreeMap::new(),
            live_failures: BTreeMap::new(),
            map_count: None,
            exit: None,
            scrapes_since_exit: 0,
        }
    }

    /// Totals since chainprobe first saw the process.
    pub fn counters(&self) -> ProcCounters {
        let mut c = self.folded;
        c.accumulate(&self.live);
        c
    }

    /// Failures by (syscall, errno), totals.
    pub fn failures(&self) -> BTreeMap<(MemSyscall, u16), u64> {
        let mut out = BTreeMap::new();
        for (&(sc, errno), &n) in self.folded_failures.iter().chain(self.live_failures.iter()) {
            if let Some(sc) = MemSyscall::from_u16(sc) {
                *out.entry((sc, errno)).or_insert(0) += n;
            }
        }
        out
    }

    /// TCP connections currently established.
    pub fn active_connections(&self) -> u64 {
        let c = self.counters();
        c.tcp_established_opened.saturating_sub(c.tcp_established_closed)
    }

    fn fold(&mut self) {
        self.folded.accumulate(&self.live);
        self.live = ProcCounters::default();
        for (k, v) in std::mem::take(&mut self.live_failures) {
            *self.folded_failures.entry(k).or_insert(0) += v;
        }
    }
}

/// Label of the pseudo-process that owns what cannot be attributed (e.g. RSTs the kernel sends
/// for closed ports, softirq events on sockets opened before chainprobe started).
pub const UNATTRIBUTED_COMM: &str = "unattributed";

pub struct Aggregate {
    procs: HashMap<u32, ProcessState>,
    /// Pids the OOM killer marked, until their exit arrives.
    oom_victims: HashMap<u32, Instant>,
    prog_stats: Vec<(ProgId, ProgStats)>,
    exited_grace: Duration,
    max_exited: usize,
    /// Exited processes dropped before their time because of `max_exited`.
    pub dropped_exited: u64,
    /// Ring-buffer records that could not be decoded.
    pub decode_errors: u64,
    /// Exec/exit notifications Go discovery could not take (its queue was full).
    pub discovery_dropped: u64,
    /// Tracked Go processes by where their struct offsets come from ("dwarf", "table", "nearest",
    /// "pending" or "none"), set by the runtime reader.
    pub go_offsets_sources: std::collections::BTreeMap<&'static str, u64>,
    identify: Box<Identify>,
}

impl std::fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregate").field("processes", &self.procs.len()).finish_non_exhaustive()
    }
}

impl Aggregate {
    /// An aggregate that takes a first-seen pid for a live process named "unknown" (see
    /// [`Self::with_identify`]).
    pub fn new(exited_grace: Duration, max_exited: usize) -> Self {
        Aggregate {
            identify: Box::new(|_| Identity::Live("unknown".into())),
            procs: HashMap::new(),
            oom_victims: HashMap::new(),
            prog_stats: Vec::new(),
            exited_grace,
            max_exited: max_exited.max(1),
            dropped_exited: 0,
            decode_errors: 0,
            discovery_dropped: 0,
            go_offsets_sources: Default::default(),
        }
    }

    /// How first-seen pids are named and found alive or gone.
    pub fn with_identify(mut self, identify: Box<Identify>) -> Self {
        self.identify = identify;
        self
    }

    /// Applies one decoded ring-buffer event.
    pub fn apply(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::Exec { tgid, comm, filename } => {
                tracing::debug!(pid = tgid, %comm, %filename, "exec");
                self.on_exec(tgid, comm);
            }
            Event::Exit { tgid, comm, exit_code } => {
                tracing::debug!(pid = tgid, %comm, exit_code, "exit");
                self.on_exit(tgid, comm, exit_code, now)
            }
            Event::OomVictim { tgid } => {
                tracing::warn!(pid = tgid, "OOM killer chose a victim");
                self.on_oom_victim(tgid, now);
            }
            Event::GoGc { tgid, duration_ns } => self.on_go_gc(tgid, duration_ns),
            Event::GoStw { tgid, duration_ns, reason } => self.on_go_stw(tgid, duration_ns, reason),
            Event::Tls(e) => self.on_tls(&e, now),
            Event::GoCrash(e) => {
                if let Some(kind) = crate::evidence::CrashKind::of_event(e.kind) {
                    self.on_go_crash(e.header.tgid, kind);
                }
            }
        }
    }

    /// A tracked Go process crashed (`kind`); other processes' crashes are not counted here.
    pub fn on_go_crash(&mut self, pid: u32, kind: crate::evidence::CrashKind) {
        if let Some(go) = self.procs.get_mut(&pid).and_then(|p| p.go.as_mut()) {
            *go.crashes.entry(kind).or_insert(0) += 1;
        }
    }

    pub fn process(&self, pid: u32) -> Option<&ProcessState> {
        self.procs.get(&pid)
    }

    pub fn processes(&self) -> impl Iterator<Item = &ProcessState> {
        self.procs.values()
    }

    pub fn prog_stats(&self) -> &[(ProgId, ProgStats)] {
        &self.prog_stats
    }

    /// Pids of processes that have not exited (for slow /proc readings).
    pub fn live_pids(&self) -> Vec<u32> {
        self.procs.values().filter(|p| p.exit.is_none() && p.pid != 0).map(|p| p.pid).collect()
    }

    fn entry(&mut self, pid: u32, now: Instant) -> &mut ProcessState {
        let identify = &self.identify;
        self.procs.entry(pid).or_insert_with(|| {
            if pid == 0 {
                return ProcessState::new(0, UNATTRIBUTED_COMM.into());
            }
            match identify(pid) {
                Identity::Live(comm) => ProcessState::new(pid, comm),
                Identity::Gone(comm) => {
                    // Gone before we saw its exit event (or it ended before chainprobe started):
                    // keep its counts for the usual grace period.
                    let mut p = ProcessState::new(pid, comm.unwrap_or_else(|| "unknown".into()));
                    p.exit = Some(ExitInfo { reason: ExitReason::Exit, code: "unknown".into(), at: now });
                    p
                }
            }
        })
    }

    /// Applies one pass over the kernel maps. Returns the tgids whose kernel entries should now be
    /// deleted (their process exited and the values are folded here).
    pub fn apply_kernel(&mut self, snap: KernelSnapshot, now: Instant) -> Vec<u32> {
        let mut seen: HashMap<u32, ProcCounters> = HashMap::new();
        for (tgid, c) in snap.procs {
            seen.insert(tgid, c);
        }
        let mut fails: HashMap<u32, BTreeMap<(u16, u16), u64>> = HashMap::new();
        for (k, n) in snap.failures {
            fails.entry(k.tgid).or_default().insert((k.syscall, k.errno), n);
        }
        let mut tgids: Vec<u32> = seen.keys().chain(fails.keys()).copied().collect();
        tgids.sort_unstable();
        tgids.dedup();
        let mut delete = Vec::new();
        for tgid in tgids {
            let p = self.entry(tgid, now);
            p.live = seen.remove(&tgid).unwrap_or_default();
            p.live_failures = fails.remove(&tgid).unwrap_or_default();
            if p.exit.is_some() {
                p.fold();
                delete.push(tgid);
            }
        }
        if !snap.prog_stats.is_empty() {
            self.prog_stats = snap.prog_stats;
        }
        delete
    }

    /// A process replaced its image. Updates comm of a tracked process; a tracked pid that had
    /// exited was reused, so its old state goes.
    pub fn on_exec(&mut self, tgid: u32, comm: String) {
        if let Some(p) = self.procs.get_mut(&tgid) {
            if p.exit.is_some() {
                *p = ProcessState::new(tgid, comm);
            } else {
                p.comm = comm;
            }
        }
    }

    pub fn on_oom_victim(&mut self, tgid: u32, now: Instant) {
        self.oom_victims.insert(tgid, now);
        // A victim whose exit was already seen (events can arrive in either order across CPUs).
        if let Some(p) = self.procs.get_mut(&tgid) {
            if let Some(e) = &mut p.exit {
                if e.reason == ExitReason::Signal && e.code == "SIGKILL" {
                    e.reason = ExitReason::Oom;
                    if let Some(go) = p.go.as_mut() {
                        *go.crashes.entry(crate::evidence::CrashKind::OomKill).or_insert(0) += 1;
                    }
                }
            }
        }
    }

    /// The last thread of `tgid` exited with `raw_code`.
    pub fn on_exit(&mut self, tgid: u32, comm: String, raw_code: u32, now: Instant) {
        let oom = self.oom_victims.remove(&tgid).is_some();
        let (reason, code) = decode_exit_code(raw_code, oom);
        let p = self.procs.entry(tgid).or_insert_with(|| ProcessState::new(tgid, comm.clone()));
        if p.exit.as_ref().is_some_and(|e| e.code != "unknown") {
            return;
        }
        if p.comm.is_empty() || p.comm == "unknown" {
            p.comm = comm;
        }
        // A Go process's death by the OOM killer or a crash signal is a crash too (panics and
        // fatal errors were counted at their probe: they exit with code 2, not by a signal).
        let crash = match reason {
            ExitReason::Oom => Some(crate::evidence::CrashKind::OomKill),
            ExitReason::Signal if crate::evidence::CrashKind::crash_signal(&code) => Some(crate::evidence::CrashKind::Signal),
            _ => None,
        };
        if let (Some(kind), Some(go)) = (crash, p.go.as_mut()) {
            *go.crashes.entry(kind).or_insert(0) += 1;
        }
        p.exit = Some(ExitInfo { reason, code, at: now });
        p.scrapes_since_exit = 0;
        self.enforce_exited_cap();
    }

    fn enforce_exited_cap(&mut self) {
        let exited = self.procs.values().filter(|p| p.exit.is_some()).count();
        if exited <= self.max_exited {
            return;
        }
        let mut by_age: Vec<(Instant, u32)> =
            self.procs.values().filter_map(|p| p.exit.as_ref().map(|e| (e.at, p.pid))).collect();
        by_age.sort_unstable();
        for (_, pid) in by_age.into_iter().take(exited - self.max_exited) {
            self.procs.remove(&pid);
            self.dropped_exited += 1;
        }
    }

    /// Called right before a scrape renders: forgets exited processes whose series have been
    /// scraped and are past the grace period, and counts this scrape for the others.
    pub fn prune_for_scrape(&mut self, now: Instant) -> Vec<u32> {
        let grace = self.exited_grace;
        let mut removed = Vec::new();
        self.procs.retain(|pid, p| {
            let keep = match &p.exit {
                None => true,
                Some(e) => {
                    let age = now.saturating_duration_since(e.at);
                    !((p.scrapes_since_exit >= 1 && age >= grace) || age >= grace * 4)
                }
            };
            if !keep {
                removed.push(*pid);
            }
            keep
        });
        for p in self.procs.values_mut() {
            if p.exit.is_some() {
                p.scrapes_since_exit += 1;
            }
        }
        // OOM marks whose exit never came (a victim can survive when memory is freed meanwhile).
        self.oom_victims.retain(|_, at| now.saturating_duration_since(*at) < Duration::from_secs(300));
        removed
    }

    /// Pids of live processes whose pod labels are still to be looked up (or named).
    pub fn pods_to_resolve(&self) -> Vec<u32> {
        self.procs.values().filter(|p| p.exit.is_none() && p.pid != 0 && !p.pod_named).map(|p| p.pid).collect()
    }

    pub fn set_pod(&mut self, pid: u32, meta: Option<crate::k8s::PodMeta>) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.pod_named = meta.as_ref().is_none_or(|m| m.has_names());
            p.pprof_port = meta.as_ref().and_then(|m| m.pprof_port);
            p.pod = Some(meta.map(|m| m.labels()).unwrap_or_default());
        }
    }

    /// Forgets exited processes past 4 × grace even when nobody scrapes.
    pub fn prune_unscraped(&mut self, now: Instant) -> Vec<u32> {
        let limit = self.exited_grace * 4;
        let mut removed = Vec::new();
        self.procs.retain(|pid, p| {
            let keep = p.exit.as_ref().is_none_or(|e| now.saturating_duration_since(e.at) < limit);
            if !keep {
                removed.push(*pid);
            }
            keep
        });
        removed
    }

    /// A Go process is tracked from now on.
    pub fn on_go_tracked(&mut self, pid: u32, go_version: &str, minor: u32, now: Instant) {
        let p = self.entry(pid, now);
        if p.go.is_none() {
            p.go = Some(GoState {
                go_version: go_version.to_string(),
                minor,
                gc_cycles: 0,
                gc_duration: gc_histogram(),
                stw_pauses: BTreeMap::new(),
                stw_count: 0,
                stw_seconds: 0.0,
                sample: None,
                creation: None,
                crashes: BTreeMap::new(),
            });
        }
    }

    /// A TLS handshake of `e.header.tgid` finished.
    pub fn on_tls(&mut self, e: &probe_common::TlsEvent, now: Instant) {
        use crate::tls;
        let failed = e.failed != 0;
        let alpn_n = (e.alpn_len as usize).min(e.alpn.len());
        let key = tls::TlsKey {
            library: if e.library == probe_common::TLS_LIBRARY_OPENSSL { "openssl" } else { "go" },
            role: tls::role_label(e.role),
            result: if failed { "error" } else { "ok" },
            version: tls::version_label(e.version),
            alpn: if e.alpn_len == probe_common::TLS_ALPN_UNREAD { "unknown" } else { tls::alpn_label(&e.alpn[..alpn_n], e.alpn_len as usize) },
        };
        let reason = if failed { tls::failure_reason(e.alert_sent, e.alert_received) } else { "" };
        if failed {
            tracing::debug!(pid = e.header.tgid, library = key.library, role = key.role, alert_sent = e.alert_sent, alert_received = e.alert_received, ret = e.ret, reason, "TLS handshake failed");
        }
        let p = self.entry(e.header.tgid, now);
        p.tls.get_or_insert_with(Default::default).record(key, e.duration_ns as f64 / 1e9, reason);
    }

    /// A GC cycle of `pid` completed.
    pub fn on_go_gc(&mut self, pid: u32, duration_ns: u64) {
        if let Some(go) = self.procs.get_mut(&pid).and_then(|p| p.go.as_mut()) {
            go.gc_cycles += 1;
            if duration_ns != DURATION_UNKNOWN {
                go.gc_duration.observe(duration_ns as f64 / 1e9);
            }
        }
    }

    /// A stop-the-world pause of `pid` ended.
    pub fn on_go_stw(&mut self, pid: u32, duration_ns: u64, reason: u32) {
        if let Some(go) = self.procs.get_mut(&pid).and_then(|p| p.go.as_mut()) {
            let name = stw_reason(go.minor, reason);
            go.stw_count += 1;
            go.stw_seconds += duration_ns as f64 / 1e9;
            go.stw_pauses.entry(name).or_insert_with(stw_histogram).observe(duration_ns as f64 / 1e9);
        }
    }

    pub fn set_go_creation(&mut self, pid: u32, status: Option<crate::goruntime::creation::CreationStatus>) {
        if let Some(go) = self.procs.get_mut(&pid).and_then(|p| p.go.as_mut()) {
            go.creation = status;
        }
    }

    pub fn set_go_sample(&mut self, pid: u32, sample: GoSample) {
        if let Some(go) = self.procs.get_mut(&pid).and_then(|p| p.go.as_mut()) {
            go.sample = Some(sample);
        }
    }

    /// A live process vanished without an exit event: keep its series for the grace period.
    pub fn mark_gone(&mut self, pid: u32, now: Instant) {
        if let Some(p) = self.procs.get_mut(&pid) {
            if p.exit.is_none() {
                p.exit = Some(ExitInfo { reason: ExitReason::Exit, code: "unknown".into(), at: now });
                p.scrapes_since_exit = 0;
            }
        }
    }

    pub fn set_map_count(&mut self, pid: u32, count: Option<u64>) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.map_count = count;
        }
    }

    pub fn tracked(&self) -> usize {
        self.procs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::FailureKey;

    fn counters(mmap_calls: u64) -> ProcCounters {
        ProcCounters { mmap_calls, ..Default::default() }
    }

    #[test]
    fn exit_codes_decode() {
        assert_eq!(decode_exit_code(3 << 8, false), (ExitReason::Exit, "3".into()));
        assert_eq!(decode_exit_code(0, false), (ExitReason::Exit, "0".into()));
        assert_eq!(decode_exit_code(9, false), (ExitReason::Signal, "SIGKILL".into()));
        assert_eq!(decode_exit_code(0x80 | 11, false), (ExitReason::Signal, "SIGSEGV".into()));
        assert_eq!(decode_exit_code(9, true), (ExitReason::Oom, "SIGKILL".into()));
        assert_eq!(decode_exit_code(EXIT_CODE_UNKNOWN, false).1, "unknown");
        assert_eq!(signal_name(40), "SIG40");
        assert_eq!(errno_name(12), "ENOMEM");
        assert_eq!(errno_name(99), "E99");
    }

    #[test]
    fn exited_process_folds_and_is_kept_until_scraped_and_grace_passed() {
        let t0 = Instant::now();
        let me = std::process::id();
        let mut a = Aggregate::new(Duration::from_secs(10), 100);
        let del = a.apply_kernel(KernelSnapshot { procs: vec![(me, counters(5))], ..Default::default() }, t0);
        assert!(del.is_empty());
        assert_eq!(a.process(me).unwrap().counters().mmap_calls, 5);

        a.on_exit(me, "x".into(), 2 << 8, t0);
        let del = a.apply_kernel(KernelSnapshot { procs: vec![(me, counters(7))], ..Default::default() }, t0);
        assert_eq!(del, vec![me]);
        // A late kernel entry (recreated after deletion) adds on top of the folded values.
        a.apply_kernel(KernelSnapshot { procs: vec![(me, counters(1))], ..Default::default() }, t0);
        assert_eq!(a.process(me).unwrap().counters().mmap_calls, 8);
        assert_eq!(a.process(me).unwrap().exit.as_ref().unwrap().code, "2");

        // Not scraped yet: kept even after the grace period.
        a.prune_unscraped(t0 + Duration::from_secs(11));
        a.prune_for_scrape(t0 + Duration::from_secs(11));
        assert!(a.process(me).is_some(), "kept for its first scrape");
        a.prune_for_scrape(t0 + Duration::from_secs(12));
        assert!(a.process(me).is_none(), "removed after being scraped once past grace");
    }

    #[test]
    fn unscraped_exits_expire_and_cap_holds() {
        let t0 = Instant::now();
        let mut a = Aggregate::new(Duration::from_secs(1), 3);
        for pid in 0x7fff_0000..0x7fff_0005u32 {
            a.on_exit(pid, "short".into(), 0, t0 + Duration::from_millis((pid & 0xff) as u64));
        }
        assert_eq!(a.tracked(), 3);
        assert_eq!(a.dropped_exited, 2);
        a.prune_unscraped(t0 + Duration::from_secs(5));
        assert_eq!(a.tracked(), 0);
    }

    #[test]
    fn oom_mark_turns_the_exit_into_oom_in_either_order() {
        let t0 = Instant::now();
        let mut a = Aggregate::new(Duration::from_secs(10), 10);
        a.on_oom_victim(0x7ffe_0001, t0);
        a.on_exit(0x7ffe_0001, "hog".into(), 9, t0);
        assert_eq!(a.process(0x7ffe_0001).unwrap().exit.as_ref().unwrap().reason, ExitReason::Oom);
        a.on_exit(0x7ffe_0002, "hog".into(), 9, t0);
        a.on_oom_victim(0x7ffe_0002, t0);
        assert_eq!(a.process(0x7ffe_0002).unwrap().exit.as_ref().unwrap().reason, ExitReason::Oom);
    }

    #[test]
    fn tls_events_become_labelled_counts() {
        use probe_common::{EventHeader, EventKind, TlsEvent, TLS_ALERT_UNREAD, TLS_NO_ALERT};
        let t0 = Instant::now();
        let me = std::process::id();
        let mut a = Aggregate::new(Duration::from_secs(10), 10);
        let mut alpn = [0u8; probe_common::TLS_ALPN_LEN];
        alpn[..2].copy_from_slice(b"h2");
        let ok = TlsEvent {
            header: EventHeader { kind: EventKind::Tls as u32, tgid: me, ktime_ns: 1 },
            duration_ns: 2_000_000,
            library: probe_common::TLS_LIBRARY_GO,
            role: probe_common::TLS_ROLE_CLIENT,
            failed: 0,
            alpn_len: 2,
            version: 0x0304,
            cipher_suite: 0x1301,
            alert_sent: TLS_NO_ALERT,
            alert_received: TLS_NO_ALERT,
            ret: 0,
            alpn,
        };
        a.on_tls(&ok, t0);
        a.on_tls(&TlsEvent { failed: 1, alpn_len: 0, alert_received: 120, ..ok }, t0);
        a.on_tls(
            &TlsEvent { library: probe_common::TLS_LIBRARY_OPENSSL, role: probe_common::TLS_ROLE_SERVER, failed: 1, version: 0, alpn_len: probe_common::TLS_ALPN_UNREAD, alert_sent: TLS_ALERT_UNREAD, alert_received: TLS_ALERT_UNREAD, ..ok },
            t0,
        );
        let t = a.process(me).unwrap().tls.as_ref().unwrap();
        let key = |library, role, result, version, alpn| crate::tls::TlsKey { library, role, result, version, alpn };
        assert_eq!(t.handshakes.get(&key("go", "client", "ok", "1.3", "h2")), Some(&1));
        assert_eq!(t.handshakes.get(&key("go", "client", "error", "1.3", "none")), Some(&1));
        assert_eq!(t.handshakes.get(&key("openssl", "server", "error", "unknown", "unknown")), Some(&1));
        assert_eq!(t.failures.get(&("go", "alpn")), Some(&1));
        assert_eq!(t.failures.get(&("openssl", "other")), Some(&1));
        assert_eq!((t.handshakes_total(), t.failures_total()), (3, 2));
        assert_eq!(t.totals().quantile(0.5), Some(0.0032));
    }

    #[test]
    fn failures_and_active_connections() {
        let t0 = Instant::now();
        let me = std::process::id();
        let mut a = Aggregate::new(Duration::from_secs(10), 10);
        let snap = KernelSnapshot {
            procs: vec![(me, ProcCounters { tcp_established_opened: 5, tcp_established_closed: 2, ..Default::default() })],
            failures: vec![(FailureKey { tgid: me, syscall: MemSyscall::Mmap as u16, errno: 22 }, 3)],
            prog_stats: vec![],
        };
        a.apply_kernel(snap, t0);
        let p = a.process(me).unwrap();
        assert_eq!(p.active_connections(), 3);
        assert_eq!(p.failures().get(&(MemSyscall::Mmap, 22)), Some(&3));
    }
}
