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
    sync::Arc,
    time::{Duration, Instant},
};

use probe_common::{
    MemSyscall, ProcCounters, ProgId, ProgStats, DURATION_UNKNOWN, EXIT_CODE_UNKNOWN,
};

use crate::{
    decode::{Event, KernelSnapshot},
    goruntime::{stw_reason, GoSample},
    hist::Buckets,
    k8s::{CgroupIdentity, PodLabels, PodSource},
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

/// Upper bounds of the GC cycle duration buckets (seconds), chosen from the measured
/// distribution (docs/PERFORMANCE.md, "Series budget": on the fixtures p50 4.5 ms, p90 7.5 ms,
/// p99 9.4 ms, max 20 ms); big heaps' cycles take tens to hundreds of ms.
pub const GC_DURATION_BOUNDS: &[f64] = &[0.002, 0.005, 0.01, 0.05, 0.25];

/// Upper bounds of the stop-the-world pause buckets (seconds), from the measured distribution
/// (p50 11 µs, p90 110 µs, p99 0.5 ms, max 3.2 ms): above a millisecond is worth a look, above
/// 25 ms is a problem.
pub const STW_PAUSE_BOUNDS: &[f64] = &[0.00005, 0.0002, 0.001, 0.005, 0.025];

/// Go runtime state of a process.
#[derive(Debug, Clone)]
pub struct GoState {
    pub go_version: String,
    pub minor: u32,
    /// GC cycles seen by the probes since tracking began.
    pub gc_cycles: u64,
    pub gc_duration: Buckets,
    /// Every stop-the-world pause, whatever its reason.
    pub stw_pause: Buckets,
    /// Pauses by reason: (count, seconds).
    pub stw_by_reason: BTreeMap<&'static str, (u64, f64)>,
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
    /// Container/pod labels, final once set (they never change, so series never split); empty
    /// values outside containers. `None` while the pod's names are awaited from the API: the
    /// process's series are held out of the exposition until then (see [`Aggregate::with_pods`]).
    pub pod: Option<PodLabels>,
    /// While `pod` is `None`: the process's cgroup identity and until when to wait for names.
    pod_wait: Option<(CgroupIdentity, Instant)>,
    /// When chainprobe saw its exec (None: it was running before, or its exec was missed).
    pub exec_at: Option<Instant>,
    /// The pprof port its pod's annotation names.
    pub pprof_port: Option<u16>,
    /// TLS handshakes (Go crypto/tls and OpenSSL); None until the first one.
    pub tls: Option<crate::tls::TlsState>,
    /// A debugger attached or the process stopped, as last read (None: neither).
    pub debug: Option<Debugged>,
    /// HTTP/2 GOAWAY and RST_STREAM frames (Go); None until the first one.
    pub http2: Option<crate::http2::Http2State>,
    /// Moves (to a value no other state of the aggregate had) whenever something the API's view
    /// of the process shows may have changed: the view rebuilds a process's summary only then.
    /// Counters, map counts and scrape bookkeeping are not in the view and leave it alone.
    rev: u64,
}

/// A process with a tracer attached (a debugger: dlv, gdb, strace) or stopped (at a breakpoint,
/// by SIGSTOP), as the periodic /proc read saw it. The durations are lower bounds: from the first
/// reading that saw it to the last.
#[derive(Debug, Clone, PartialEq)]
pub struct Debugged {
    pub tracer_pid: u32,
    /// The tracer's command name ("" when it could not be read).
    pub tracer_comm: String,
    pub traced_since: Option<Instant>,
    pub stopped_since: Option<Instant>,
    /// The last reading.
    pub seen_at: Instant,
}

impl Debugged {
    pub fn traced_seconds(&self) -> Option<f64> {
        self.traced_since.map(|t| self.seen_at.saturating_duration_since(t).as_secs_f64())
    }

    pub fn stopped_seconds(&self) -> Option<f64> {
        self.stopped_since.map(|t| self.seen_at.saturating_duration_since(t).as_secs_f64())
    }
}

impl ProcessState {
    fn new(pid: u32, comm: String) -> Self {
        ProcessState {
            tls: None,
            debug: None,
            http2: None,
            go: None,
            pod: Some(PodLabels::default()),
            pod_wait: None,
            exec_at: None,
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
            rev: 0,
        }
    }

    /// See the `rev` field: equal revisions, equal summaries.
    pub fn rev(&self) -> u64 {
        self.rev
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

/// Which processes' series are folded into per-(pod, container, comm) series (the `[metrics]`
/// fold settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FoldRule {
    /// Non-Go processes are always folded.
    pub non_go: bool,
    /// A process whose exec chainprobe saw is held (no series) until it is this old; one that
    /// exits younger is folded. Zero: no young rule.
    pub young: Duration,
    /// A fold none of whose processes is left is forgotten after this long without change.
    pub retention: Duration,
    /// Keep the histograms of departed per-pid Go processes per pod (for per-pod histograms).
    pub pod_histograms: bool,
    /// Keep the TLS state of departed per-pid processes per pod (for per-pod TLS families).
    pub pod_tls: bool,
}

impl FoldRule {
    /// Every process gets its own series (the aggregate's default).
    pub const OFF: FoldRule = FoldRule { non_go: false, young: Duration::ZERO, retention: Duration::from_secs(600), pod_histograms: false, pod_tls: false };
}

/// Where a process's series are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Nowhere yet: its pod's names are awaited, or it is young.
    Held,
    /// Its own (`pid` label).
    PerPid,
    /// In the series of its (pod, container, comm).
    Folded,
}

/// The identity of folded series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FoldKey {
    pub pod: PodLabels,
    pub comm: String,
}

/// What the processes that left a fold had counted (the fold's series are this plus its current
/// processes, so they only grow).
#[derive(Debug, Clone)]
pub struct Fold {
    pub counters: ProcCounters,
    pub failures: BTreeMap<(MemSyscall, u16), u64>,
    pub exits: BTreeMap<(ExitReason, String), u64>,
    pub go: Option<GoState>,
    pub tls: Option<crate::tls::TlsState>,
    pub http2: Option<crate::http2::Http2State>,
    /// GC-duration and pause histograms of departed per-pid Go processes of this key (kept for
    /// per-pod histograms).
    pub pid_hists: Option<(Buckets, Buckets)>,
    /// TLS handshakes of departed per-pid processes of this key (kept for per-pod TLS families).
    pub pid_tls: Option<crate::tls::TlsState>,
    pub last_change: Instant,
}

impl Fold {
    fn new(now: Instant) -> Fold {
        Fold { counters: ProcCounters::default(), failures: BTreeMap::new(), exits: BTreeMap::new(), go: None, tls: None, http2: None, pid_hists: None, pid_tls: None, last_change: now }
    }
}

/// Adds a Go process's probe counts and histograms to `into` (no runtime read: folded series
/// have no gauges).
pub fn merge_go(into: &mut Option<GoState>, g: &GoState) {
    match into {
        None => *into = Some(GoState { sample: None, creation: None, ..g.clone() }),
        Some(a) => {
            a.gc_cycles += g.gc_cycles;
            a.gc_duration.merge(&g.gc_duration);
            a.stw_pause.merge(&g.stw_pause);
            for (r, (n, secs)) in &g.stw_by_reason {
                let e = a.stw_by_reason.entry(*r).or_insert((0, 0.0));
                e.0 += n;
                e.1 += secs;
            }
            a.stw_count += g.stw_count;
            a.stw_seconds += g.stw_seconds;
            a.go_version.clone_from(&g.go_version);
        }
    }
}

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
    /// Pod identity of first-seen processes; `None`: no pod labels.
    pods: Option<Arc<dyn PodSource>>,
    /// How long a process in an unnamed pod is held for its names.
    pod_wait: Duration,
    /// Cgroups read at exec for pids the aggregate has no state of yet (their first event, or
    /// their exit, takes it): a process that is gone before its first event is still attributed.
    first_sight: HashMap<u32, (Option<CgroupIdentity>, Instant)>,
    fold: FoldRule,
    folds: HashMap<FoldKey, Fold>,
    /// Folds forgotten since [`Self::take_pruned_folds`].
    pruned_folds: Vec<FoldKey>,
    /// Revisions of the states ([`ProcessState::rev`]) and which changed.
    revisions: Revisions,
}

/// Hands out [`ProcessState::rev`]s and lists the pids stamped since the last
/// [`Aggregate::take_changed`], so that the view is updated for those alone.
#[derive(Debug, Default)]
struct Revisions {
    last: u64,
    /// None: more than [`CHANGED_MAX`] (or never taken): every process is to be looked at.
    changed: Option<Vec<u32>>,
}

/// Changed pids listed at most between two takes (then: all of them).
const CHANGED_MAX: usize = 16_384;

impl Revisions {
    /// Gives `p` a revision no state has had, and lists it as changed.
    fn stamp(&mut self, p: &mut ProcessState) {
        self.last += 1;
        p.rev = self.last;
        self.changed_pid(p.pid);
    }

    fn changed_pid(&mut self, pid: u32) {
        if let Some(v) = &mut self.changed {
            if v.len() >= CHANGED_MAX {
                self.changed = None;
            } else {
                v.push(pid);
            }
        }
    }
}

/// Pids whose exec-time cgroup is remembered at most (an exec storm of processes that never
/// cause an event), and for how long.
const FIRST_SIGHT_MAX: usize = 65_536;
const FIRST_SIGHT_TTL: Duration = Duration::from_secs(60);

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
            pods: None,
            pod_wait: Duration::ZERO,
            first_sight: HashMap::new(),
            fold: FoldRule::OFF,
            folds: HashMap::new(),
            pruned_folds: Vec::new(),
            revisions: Revisions::default(),
        }
    }

    /// The pids whose state changed what the API's view shows (a new [`ProcessState::rev`];
    /// inserted or removed) since the last call, each once; None when they are too many to list
    /// (or at the first call): look at every process.
    pub fn take_changed(&mut self) -> Option<Vec<u32>> {
        let mut v = self.revisions.changed.replace(Vec::new())?;
        v.sort_unstable();
        v.dedup();
        Some(v)
    }

    /// `pid`'s state, to change something the API's view shows (its revision moves).
    fn touch(&mut self, pid: u32) -> Option<&mut ProcessState> {
        let p = self.procs.get_mut(&pid)?;
        self.revisions.stamp(p);
        Some(p)
    }

    /// Inserts a state under a new revision.
    fn insert(&mut self, mut p: ProcessState) -> Option<ProcessState> {
        self.revisions.stamp(&mut p);
        self.procs.insert(p.pid, p)
    }

    /// Which processes are folded into per-(pod, container, comm) series.
    pub fn with_folding(mut self, rule: FoldRule) -> Self {
        self.fold = rule;
        self
    }

    /// Where `p`'s series are at `now`.
    pub fn exposure(&self, p: &ProcessState, now: Instant) -> Exposure {
        if p.pod.is_none() {
            return Exposure::Held;
        }
        if p.pid == 0 {
            return Exposure::PerPid;
        }
        let young = !self.fold.young.is_zero()
            && p.exec_at.is_some_and(|t| p.exit.as_ref().map_or(now, |e| e.at).saturating_duration_since(t) < self.fold.young);
        match (young, p.exit.is_some()) {
            (true, false) => Exposure::Held,
            (true, true) => Exposure::Folded,
            _ if self.fold.non_go && p.go.is_none() => Exposure::Folded,
            _ => Exposure::PerPid,
        }
    }

    /// The folds with what their departed processes left.
    pub fn folds(&self) -> impl Iterator<Item = (&FoldKey, &Fold)> {
        self.folds.iter()
    }

    /// The key of `p`'s folded series.
    pub fn fold_key(p: &ProcessState) -> FoldKey {
        FoldKey { pod: p.pod.clone().unwrap_or_default(), comm: p.comm.clone() }
    }

    /// A process leaves the aggregate: what it counted stays in its fold when its series are
    /// folded (and its histograms, for per-pod histograms).
    fn depart(&mut self, p: ProcessState, now: Instant) {
        let exposure = self.exposure(&p, now);
        let per_pid = exposure == Exposure::PerPid;
        let pod_hists = self.fold.pod_histograms && per_pid && p.go.is_some();
        let pod_tls = self.fold.pod_tls && per_pid && p.tls.is_some();
        if exposure != Exposure::Folded && !pod_hists && !pod_tls {
            return;
        }
        let f = self.folds.entry(Self::fold_key(&p)).or_insert_with(|| Fold::new(now));
        f.last_change = now;
        if per_pid {
            if let Some(g) = p.go.as_ref().filter(|_| pod_hists) {
                let h = f.pid_hists.get_or_insert_with(|| (Buckets::new(GC_DURATION_BOUNDS), Buckets::new(STW_PAUSE_BOUNDS)));
                h.0.merge(&g.gc_duration);
                h.1.merge(&g.stw_pause);
            }
            if let Some(t) = p.tls.as_ref().filter(|_| pod_tls) {
                f.pid_tls.get_or_insert_with(Default::default).merge(t);
            }
            return;
        }
        f.counters.accumulate(&p.counters());
        for (k, n) in p.failures() {
            *f.failures.entry(k).or_insert(0) += n;
        }
        if let Some(e) = &p.exit {
            *f.exits.entry((e.reason, e.code.clone())).or_insert(0) += 1;
        }
        if let Some(g) = &p.go {
            merge_go(&mut f.go, g);
        }
        if let Some(t) = &p.tls {
            f.tls.get_or_insert_with(Default::default).merge(t);
        }
        if let Some(h) = &p.http2 {
            f.http2.get_or_insert_with(Default::default).merge(h);
        }
    }

    /// Removes `pids` (departing them).
    fn remove_all(&mut self, pids: &[u32], now: Instant) {
        for pid in pids {
            if let Some(p) = self.procs.remove(pid) {
                self.revisions.changed_pid(*pid);
                self.depart(p, now);
            }
        }
    }

    /// Forgets folds that have no process left and have not changed for the retention time.
    fn prune_folds(&mut self, now: Instant) {
        let retention = self.fold.retention;
        // Runs at every drain: the members (a key per process) are gathered only when a fold
        // has been quiet for the whole retention.
        if !self.folds.values().any(|f| now.saturating_duration_since(f.last_change) >= retention) {
            return;
        }
        let members: std::collections::HashSet<FoldKey> = self.procs.values().map(Self::fold_key).collect();
        let pruned = &mut self.pruned_folds;
        self.folds.retain(|k, f| {
            let keep = members.contains(k) || now.saturating_duration_since(f.last_change) < retention;
            if !keep {
                pruned.push(k.clone());
            }
            keep
        });
    }

    /// The folds forgotten since the last call (their series are gone).
    pub fn take_pruned_folds(&mut self) -> Vec<FoldKey> {
        std::mem::take(&mut self.pruned_folds)
    }

    /// Where first-seen processes get their pod labels: their cgroup is read when they are first
    /// seen (exec, first event, exit, Go discovery's start scan), before anything of theirs is
    /// counted. When names come from an API and the pod (or container) is not named yet, the
    /// process is held (no series) until the names arrive or `wait` has passed; labels are set
    /// once and never change.
    pub fn with_pods(mut self, pods: Arc<dyn PodSource>, wait: Duration) -> Self {
        self.pods = Some(pods);
        self.pod_wait = wait;
        self
    }

    /// How first-seen pids are named and found alive or gone.
    pub fn with_identify(mut self, identify: Box<Identify>) -> Self {
        self.identify = identify;
        self
    }

    /// Applies one decoded ring-buffer event.
    pub fn apply(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::Exec { tgid, comm, filename, cgroup_id, cgroup1_id } => {
                tracing::debug!(pid = tgid, %comm, %filename, cgroup_id, cgroup1_id, "exec");
                self.on_exec_at(tgid, comm, (cgroup_id, cgroup1_id), now);
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
            Event::Http2(e) => self.on_http2(&e, now),
            // Discovery's (the collector hands it over): nothing to count here.
            Event::LibsslHeld(_) => {}
            Event::GoCrash(e) => {
                if let Some(kind) = crate::evidence::CrashKind::of_event(e.kind) {
                    self.on_go_crash(e.header.tgid, kind);
                }
            }
        }
    }

    /// A tracked Go process crashed (`kind`); other processes' crashes are not counted here.
    /// A process dies once: two threads reaching crash paths at the same moment (concurrent map
    /// writes detected by both writers) count as one crash.
    pub fn on_go_crash(&mut self, pid: u32, kind: crate::evidence::CrashKind) {
        use crate::evidence::CrashKind::{Exit, FatalError, Panic};
        if let Some(go) = self.touch(pid).and_then(|p| p.go.as_mut()) {
            if go.crashes.keys().any(|k| matches!(k, Panic | FatalError | Exit)) {
                return;
            }
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

    /// `pid`'s state (created when new), to change something the API's view shows.
    fn entry(&mut self, pid: u32, now: Instant) -> &mut ProcessState {
        self.entry_counters(pid, now);
        let p = self.procs.get_mut(&pid).expect("created above");
        self.revisions.stamp(p);
        p
    }

    /// `pid`'s state (created when new) for its counters, which the API's view does not show:
    /// its revision stays.
    fn entry_counters(&mut self, pid: u32, now: Instant) -> &mut ProcessState {
        if !self.procs.contains_key(&pid) {
            let mut p = if pid == 0 {
                ProcessState::new(0, UNATTRIBUTED_COMM.into())
            } else {
                match (self.identify)(pid) {
                    Identity::Live(comm) => ProcessState::new(pid, comm),
                    Identity::Gone(comm) => {
                        // Gone before we saw its exit event (or it ended before chainprobe
                        // started): keep its counts for the usual grace period.
                        let mut p = ProcessState::new(pid, comm.unwrap_or_else(|| "unknown".into()));
                        p.exit = Some(ExitInfo { reason: ExitReason::Exit, code: "unknown".into(), at: now });
                        p
                    }
                }
            };
            if pid != 0 {
                self.sight(&mut p, now);
            }
            self.insert(p);
        }
        self.procs.get_mut(&pid).expect("inserted above")
    }

    /// Gives a first-seen process its pod: the cgroup read at its exec, else read now.
    fn sight(&mut self, p: &mut ProcessState, now: Instant) {
        let seen = self.first_sight.remove(&p.pid);
        if let Some((_, at)) = &seen {
            p.exec_at = Some(*at);
        }
        let Some(pods) = self.pods.clone() else { return };
        let (cgroup, first_at) = match seen {
            Some((cg, at)) => (cg, at),
            None => (pods.cgroup(p.pid), now),
        };
        let Some(cg) = cgroup else {
            p.pod = Some(PodLabels::default());
            return;
        };
        let meta = pods.meta(&cg);
        // Names are final when they are complete, when none will come (no API, or a container
        // outside any pod), or when waiting is off.
        if meta.names_complete() || !pods.names_expected() || meta.pod_uid.is_none() || self.pod_wait.is_zero() {
            p.pprof_port = meta.pprof_port;
            p.pod = Some(meta.labels());
            p.pod_wait = None;
        } else {
            p.pod = None;
            p.pod_wait = Some((cg, first_at + self.pod_wait));
        }
    }

    /// Settles the labels of held processes whose pod names arrived or whose wait is over.
    /// Cheap: no I/O (names come from the API cache).
    pub fn settle_pods(&mut self, now: Instant) {
        let Some(pods) = &self.pods else { return };
        for p in self.procs.values_mut() {
            let Some((cg, deadline)) = &p.pod_wait else { continue };
            let meta = pods.meta(cg);
            if meta.names_complete() || now >= *deadline {
                self.revisions.stamp(p);
                if !meta.names_complete() {
                    tracing::debug!(pid = p.pid, pod_uid = ?meta.pod_uid, "pod names did not arrive in time: labelled by pod UID and container id");
                }
                p.pprof_port = meta.pprof_port;
                p.pod = Some(meta.labels());
                p.pod_wait = None;
            }
        }
    }

    /// Processes held out of the exposition while their pod's names are awaited.
    pub fn held(&self) -> usize {
        self.procs.values().filter(|p| p.pod.is_none()).count()
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
            let p = self.entry_counters(tgid, now);
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
        self.on_exec_at(tgid, comm, (0, 0), Instant::now());
    }

    /// The cgroup of a process at its exec ([`PodSource::exec_cgroup`]: from the cgroup ids the
    /// kernel gave with the exec where that tells, else its /proc while it runs).
    fn exec_cgroup(&self, tgid: u32, cgroup_ids: (u64, u64)) -> Option<CgroupIdentity> {
        self.pods.as_ref()?.exec_cgroup(tgid, cgroup_ids.0, cgroup_ids.1)
    }

    /// [`Self::on_exec`] at `now`, with the cgroup ids from the kernel (v2, v1; 0: unknown). A pid without
    /// state gets its cgroup read now (it may be gone before its first event is drained).
    pub fn on_exec_at(&mut self, tgid: u32, comm: String, cgroup_ids: (u64, u64), now: Instant) {
        match self.procs.get(&tgid).map(|p| p.exit.is_some()) {
            Some(true) => {
                // The pid was reused: the old process departs, the new one is seen now.
                let mut fresh = ProcessState::new(tgid, comm);
                let cg = self.exec_cgroup(tgid, cgroup_ids);
                self.first_sight.insert(tgid, (cg, now));
                self.sight(&mut fresh, now);
                if let Some(old) = self.insert(fresh) {
                    self.depart(old, now);
                }
            }
            Some(false) => {
                if let Some(p) = self.touch(tgid) {
                    p.comm = comm;
                }
            }
            None => {
                if self.first_sight.len() >= FIRST_SIGHT_MAX {
                    self.first_sight.retain(|_, (_, at)| now.saturating_duration_since(*at) < Duration::from_secs(5));
                    if self.first_sight.len() >= FIRST_SIGHT_MAX {
                        self.first_sight.clear();
                    }
                }
                let cg = self.exec_cgroup(tgid, cgroup_ids);
                self.first_sight.insert(tgid, (cg, now));
            }
        }
    }

    pub fn on_oom_victim(&mut self, tgid: u32, now: Instant) {
        self.oom_victims.insert(tgid, now);
        // A victim whose exit was already seen (events can arrive in either order across CPUs).
        if let Some(p) = self.touch(tgid) {
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
        if !self.procs.contains_key(&tgid) {
            // Its first sign of life: the cgroup from its exec, or read now (a zombie's is still
            // readable).
            let mut fresh = ProcessState::new(tgid, comm.clone());
            if tgid != 0 {
                self.sight(&mut fresh, now);
            }
            self.insert(fresh);
        }
        let p = self.touch(tgid).expect("inserted above");
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
        self.enforce_exited_cap(now);
    }

    fn enforce_exited_cap(&mut self, now: Instant) {
        // Called at every exit: counting is O(processes), so only when the cap can be reached.
        if self.procs.len() <= self.max_exited {
            return;
        }
        let exited = self.procs.values().filter(|p| p.exit.is_some()).count();
        if exited <= self.max_exited {
            return;
        }
        let mut by_age: Vec<(Instant, u32)> =
            self.procs.values().filter_map(|p| p.exit.as_ref().map(|e| (e.at, p.pid))).collect();
        by_age.sort_unstable();
        let doomed: Vec<u32> = by_age.into_iter().take(exited - self.max_exited).map(|(_, pid)| pid).collect();
        self.dropped_exited += doomed.len() as u64;
        self.remove_all(&doomed, now);
    }

    /// Called right before a scrape renders: forgets exited processes whose series have been
    /// scraped and are past the grace period, and counts this scrape for the others.
    pub fn prune_for_scrape(&mut self, now: Instant) -> Vec<u32> {
        let grace = self.exited_grace;
        let removed: Vec<u32> = self
            .procs
            .values()
            .filter(|p| {
                p.exit.as_ref().is_some_and(|e| {
                    let age = now.saturating_duration_since(e.at);
                    (p.scrapes_since_exit >= 1 && age >= grace) || age >= grace * 4
                })
            })
            .map(|p| p.pid)
            .collect();
        self.remove_all(&removed, now);
        // A held process was not in this scrape.
        let scraped: Vec<u32> = self.procs.values().filter(|p| p.exit.is_some() && self.exposure(p, now) != Exposure::Held).map(|p| p.pid).collect();
        for pid in scraped {
            if let Some(p) = self.procs.get_mut(&pid) {
                p.scrapes_since_exit += 1;
            }
        }
        self.prune_folds(now);
        self.first_sight.retain(|_, (_, at)| now.saturating_duration_since(*at) < FIRST_SIGHT_TTL);
        // OOM marks whose exit never came (a victim can survive when memory is freed meanwhile).
        self.oom_victims.retain(|_, at| now.saturating_duration_since(*at) < Duration::from_secs(300));
        removed
    }

    /// Forgets exited processes past 4 × grace even when nobody scrapes.
    pub fn prune_unscraped(&mut self, now: Instant) -> Vec<u32> {
        let limit = self.exited_grace * 4;
        let removed: Vec<u32> =
            self.procs.values().filter(|p| p.exit.as_ref().is_some_and(|e| now.saturating_duration_since(e.at) >= limit)).map(|p| p.pid).collect();
        self.remove_all(&removed, now);
        self.prune_folds(now);
        self.first_sight.retain(|_, (_, at)| now.saturating_duration_since(*at) < FIRST_SIGHT_TTL);
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
                gc_duration: Buckets::new(GC_DURATION_BOUNDS),
                stw_pause: Buckets::new(STW_PAUSE_BOUNDS),
                stw_by_reason: BTreeMap::new(),
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
        let reason = match (failed, e.library) {
            (false, _) => "",
            (true, probe_common::TLS_LIBRARY_OPENSSL) => tls::openssl_failure_reason(e.ssl_reason, e.alert_sent, e.alert_received),
            (true, _) => tls::failure_reason(e.alert_sent, e.alert_received),
        };
        if failed {
            tracing::debug!(pid = e.header.tgid, library = key.library, role = key.role, alert_sent = e.alert_sent, alert_received = e.alert_received, ssl_reason = e.ssl_reason, ret = e.ret, reason, "TLS handshake failed");
        }
        let p = self.entry(e.header.tgid, now);
        p.tls.get_or_insert_with(Default::default).record(key, e.duration_ns as f64 / 1e9, reason);
    }

    /// An HTTP/2 GOAWAY or RST_STREAM frame of `e.header.tgid` was sent or received.
    pub fn on_http2(&mut self, e: &probe_common::Http2Event, now: Instant) {
        let p = self.entry(e.header.tgid, now);
        p.http2.get_or_insert_with(Default::default).record(e);
    }

    /// A GC cycle of `pid` completed.
    pub fn on_go_gc(&mut self, pid: u32, duration_ns: u64) {
        if let Some(go) = self.touch(pid).and_then(|p| p.go.as_mut()) {
            go.gc_cycles += 1;
            if duration_ns != DURATION_UNKNOWN {
                go.gc_duration.observe(duration_ns as f64 / 1e9);
            }
        }
    }

    /// A stop-the-world pause of `pid` ended.
    pub fn on_go_stw(&mut self, pid: u32, duration_ns: u64, reason: u32) {
        if let Some(go) = self.touch(pid).and_then(|p| p.go.as_mut()) {
            let name = stw_reason(go.minor, reason);
            go.stw_count += 1;
            go.stw_seconds += duration_ns as f64 / 1e9;
            let secs = duration_ns as f64 / 1e9;
            go.stw_pause.observe(secs);
            let r = go.stw_by_reason.entry(name).or_insert((0, 0.0));
            r.0 += 1;
            r.1 += secs;
        }
    }

    pub fn set_go_creation(&mut self, pid: u32, status: Option<crate::goruntime::creation::CreationStatus>) {
        if let Some(go) = self.touch(pid).and_then(|p| p.go.as_mut()) {
            go.creation = status;
        }
    }

    pub fn set_go_sample(&mut self, pid: u32, sample: GoSample) {
        if let Some(go) = self.touch(pid).and_then(|p| p.go.as_mut()) {
            go.sample = Some(sample);
        }
    }

    /// A live process vanished without an exit event: keep its series for the grace period.
    pub fn mark_gone(&mut self, pid: u32, now: Instant) {
        if let Some(p) = self.touch(pid) {
            if p.exit.is_none() {
                p.exit = Some(ExitInfo { reason: ExitReason::Exit, code: "unknown".into(), at: now });
                p.scrapes_since_exit = 0;
            }
        }
    }

    /// The periodic reading of `pid`'s tracer (`tracer`: pid and comm; pid 0 for none) and stop
    /// state, at `now`.
    pub fn set_debug(&mut self, pid: u32, tracer: (u32, String), stopped: bool, now: Instant) {
        if tracer.0 == 0 && !stopped {
            // Most readings: nothing to show, as before (the revision stays).
            if let Some(p) = self.procs.get_mut(&pid).filter(|p| p.debug.is_some()) {
                p.debug = None;
                self.revisions.stamp(p);
            }
            return;
        }
        let Some(p) = self.touch(pid) else { return };
        let prev = p.debug.take();
        let same_tracer = prev.as_ref().is_some_and(|d| d.tracer_pid == tracer.0);
        p.debug = Some(Debugged {
            traced_since: (tracer.0 != 0).then(|| prev.as_ref().filter(|_| same_tracer).and_then(|d| d.traced_since).unwrap_or(now)),
            stopped_since: stopped.then(|| prev.as_ref().and_then(|d| d.stopped_since).unwrap_or(now)),
            tracer_pid: tracer.0,
            tracer_comm: tracer.1,
            seen_at: now,
        });
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
            ssl_reason: 0,
            _pad: 0,
        };
        a.on_tls(&ok, t0);
        a.on_tls(&TlsEvent { failed: 1, alpn_len: 0, alert_received: 120, ..ok }, t0);
        a.on_tls(
            &TlsEvent { library: probe_common::TLS_LIBRARY_OPENSSL, role: probe_common::TLS_ROLE_SERVER, failed: 1, version: 0, alpn_len: probe_common::TLS_ALPN_UNREAD, alert_sent: TLS_ALERT_UNREAD, alert_received: TLS_ALERT_UNREAD, ..ok },
            t0,
        );
        // OpenSSL with its errors read: the client's CERTIFICATE_VERIFY_FAILED.
        a.on_tls(
            &TlsEvent { library: probe_common::TLS_LIBRARY_OPENSSL, failed: 1, version: 0, alpn_len: probe_common::TLS_ALPN_UNREAD, ssl_reason: 134, ..ok },
            t0,
        );
        let t = a.process(me).unwrap().tls.as_ref().unwrap();
        let key = |library, role, result, version, alpn| crate::tls::TlsKey { library, role, result, version, alpn };
        assert_eq!(t.handshakes.get(&key("go", "client", "ok", "1.3", "h2")), Some(&1));
        assert_eq!(t.handshakes.get(&key("go", "client", "error", "1.3", "none")), Some(&1));
        assert_eq!(t.handshakes.get(&key("openssl", "server", "error", "unknown", "unknown")), Some(&1));
        assert_eq!(t.failures.get(&("go", "alpn")), Some(&1));
        assert_eq!(t.failures.get(&("openssl", "other")), Some(&1));
        assert_eq!(t.failures.get(&("openssl", "certificate")), Some(&1));
        assert_eq!((t.handshakes_total(), t.failures_total()), (4, 3));
        assert_eq!(t.totals().quantile(0.5), Some(0.0032));
    }

    /// Pods by pid (the cgroup read) and names by pod UID (the API cache), set by the test.
    #[derive(Default)]
    struct Pods {
        cgroups: std::sync::Mutex<HashMap<u32, CgroupIdentity>>,
        names: std::sync::Mutex<HashMap<String, (String, String, String)>>,
        reads: std::sync::atomic::AtomicUsize,
    }

    impl PodSource for Pods {
        fn cgroup(&self, pid: u32) -> Option<CgroupIdentity> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.cgroups.lock().unwrap().get(&pid).cloned()
        }
        fn meta(&self, id: &CgroupIdentity) -> crate::k8s::PodMeta {
            let mut m = crate::k8s::PodMeta { pod_uid: id.pod_uid.clone(), container_id: id.container_id.clone(), ..Default::default() };
            if let Some((ns, pod, c)) = id.pod_uid.as_ref().and_then(|u| self.names.lock().unwrap().get(u).cloned()) {
                (m.namespace, m.pod, m.container) = (Some(ns), Some(pod), Some(c));
            }
            m
        }
        fn names_expected(&self) -> bool {
            true
        }
    }

    fn pod_cgroup(uid: &str) -> CgroupIdentity {
        CgroupIdentity { container_id: Some("ab".repeat(32)), pod_uid: Some(uid.into()), qos: None, runtime: None, path: format!("/kubepods/pod{uid}/{}", "ab".repeat(32)) }
    }

    #[test]
    fn pod_read_at_exec_and_series_held_until_the_names_arrive() {
        let t0 = Instant::now();
        let pods = Arc::new(Pods::default());
        let (pid, uid) = (0x7ffd_0001, "u-1");
        pods.cgroups.lock().unwrap().insert(pid, pod_cgroup(uid));
        let mut a = Aggregate::new(Duration::from_secs(1), 100).with_pods(pods.clone(), Duration::from_secs(10));
        a.apply(Event::Exec { tgid: pid, comm: "job".into(), filename: "/bin/job".into(), cgroup_id: 0, cgroup1_id: 0 }, t0);
        assert!(a.process(pid).is_none(), "an exec alone creates no series");
        // The process is gone (its cgroup no longer readable) before its first counters are drained.
        pods.cgroups.lock().unwrap().clear();
        a.apply_kernel(KernelSnapshot { procs: vec![(pid, ProcCounters { tcp_connect_refused: 1, ..Default::default() })], ..Default::default() }, t0);
        a.on_exit(pid, "job".into(), 1 << 8, t0 + Duration::from_millis(50));
        let p = a.process(pid).unwrap();
        assert_eq!(p.pod, None, "held: the pod is not named yet");
        assert_eq!(a.held(), 1);
        assert_eq!(a.processes().filter(|p| p.pod.is_some()).count(), 0, "no series without the pod's names (the scrape skips held processes)");
        // Scrapes while held do not count toward its removal.
        a.prune_for_scrape(t0 + Duration::from_secs(2));
        a.settle_pods(t0 + Duration::from_secs(2));
        assert_eq!(a.held(), 1);
        pods.names.lock().unwrap().insert(uid.into(), ("shop".into(), "web-0".into(), "app".into()));
        a.settle_pods(t0 + Duration::from_secs(3));
        let p = a.process(pid).unwrap();
        assert_eq!(p.pod, Some(PodLabels { namespace: "shop".into(), pod: "web-0".into(), container: "app".into() }));
        assert_eq!((p.counters().tcp_connect_refused, p.exit.as_ref().map(|e| e.code.as_str())), (1, Some("1")));
        assert!(a.prune_for_scrape(t0 + Duration::from_secs(4)).is_empty(), "kept for its first scrape with labels");
        assert_eq!(a.prune_for_scrape(t0 + Duration::from_secs(5)), vec![pid]);
    }

    #[test]
    fn unnamed_pods_get_uid_labels_after_the_wait_and_keep_them() {
        let t0 = Instant::now();
        let pods = Arc::new(Pods::default());
        let (pid, uid) = (0x7ffd_0002, "u-2");
        pods.cgroups.lock().unwrap().insert(pid, pod_cgroup(uid));
        let mut a = Aggregate::new(Duration::from_secs(1), 100).with_pods(pods.clone(), Duration::from_secs(10));
        a.on_go_tracked(pid, "go1.22.0", 22, t0);
        assert_eq!(pods.reads.load(std::sync::atomic::Ordering::Relaxed), 1, "the start scan's process is read once");
        a.settle_pods(t0 + Duration::from_secs(9));
        assert_eq!(a.held(), 1);
        a.settle_pods(t0 + Duration::from_secs(10));
        let uid_labels = PodLabels { namespace: String::new(), pod: uid.into(), container: "ab".repeat(6) };
        assert_eq!(a.process(pid).unwrap().pod, Some(uid_labels.clone()));
        // Names that arrive later do not change a label set already exposed.
        pods.names.lock().unwrap().insert(uid.into(), ("shop".into(), "late-0".into(), "app".into()));
        a.settle_pods(t0 + Duration::from_secs(11));
        assert_eq!(a.process(pid).unwrap().pod, Some(uid_labels));
        // Outside pods: labelled (empty) at once.
        a.apply_kernel(KernelSnapshot { procs: vec![(0x7ffd_0003, counters(1))], ..Default::default() }, t0);
        assert_eq!(a.process(0x7ffd_0003).unwrap().pod, Some(PodLabels::default()));
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
