//! Crash capsules: what a Go process knew when it died, kept where on-call finds it (a snapshot
//! with trigger `crash`, listed with the others), even after the pod is gone.
//!
//! The kernel programs (probe-ebpf crash.rs) report each crash path — unrecovered panic, fatal
//! error, os.Exit with a code — with the message, the panic value's first bytes and the
//! frame-pointer chain, and stop the process when allowed. A worker here then reads, while it is
//! stopped, the crashing goroutine's stack (symbolized through pclntab), the message, every
//! goroutine (the out-of-process goroutine profile) and the heap profile, resumes it ([`pause`]
//! bounds the hold), and stores the capsule. OOM kills get a capsule too, with the newest heap
//! profile chainprobe holds for the process and its age. A crash loop keeps the first capsule,
//! then one per cooldown window per container (or executable), counting the rest.
pub mod memwatch;
pub mod message;
pub mod pause;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{Array, MapData};
use goinspect::{pclntab::Symbolizer, GoBinary};
use probe_common::{GoCrashEvent, CRASH_EXIT, PAUSE_LIMIT, PAUSE_STOPPED, PAUSE_TRACED};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::{goroutines, heap, timestamps, Kind, Resolve, SnapshotMeta, Snapshotter, Status, TargetInfo, Trigger};
use crate::{evidence::CrashKind, goruntime::ProcMem, sync::lock};
pub use message::Message;
pub use pause::{PauseStats, Pauses, Resumed};

/// How long an OOM capsule waits for a heap snapshot of the process that is under way.
const OOM_WAIT_FOR_SNAPSHOT: Duration = Duration::from_secs(3);

/// `[crash]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrashConfig {
    /// Stop a crashing Go process (SIGSTOP from the kernel, at the crash) so its goroutines and
    /// heap can be read before it exits. Off: capsules hold the message and the stack only.
    pub pause: bool,
    /// Hard bound on a pause: the process is resumed after this long whatever was read.
    pub max_pause_ms: u64,
    /// Processes held at once on the node at most (the others crash unpaused).
    pub max_concurrent_pauses: u32,
    /// A crash loop: one capsule per container (or executable) per this many seconds; the rest
    /// are counted.
    pub cooldown_seconds: f64,
    /// Where pauses are recorded, so a restarted daemon resumes what it left stopped; default
    /// `<[snapshot] dir>/paused`.
    pub state_dir: String,
    /// OOM kills cannot be paused: a heap snapshot (trigger `memory-limit`) is taken of a Go
    /// process whose memory cgroup is at this share of its limit (0: off), so the OOM capsule
    /// has one ([`memwatch`]).
    pub memory_watch_ratio: f64,
    pub memory_watch_interval_seconds: f64,
    /// Again after this long (or sooner when usage grew by a twentieth of the limit).
    pub memory_watch_cooldown_seconds: f64,
}

impl Default for CrashConfig {
    fn default() -> Self {
        CrashConfig {
            pause: true,
            max_pause_ms: 300,
            max_concurrent_pauses: 4,
            cooldown_seconds: 300.0,
            state_dir: String::new(),
            memory_watch_ratio: 0.9,
            memory_watch_interval_seconds: 5.0,
            memory_watch_cooldown_seconds: 600.0,
        }
    }
}

impl CrashConfig {
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(1..=10_000).contains(&self.max_pause_ms) {
            return Err(("crash.max_pause_ms", format!("{} is outside 1..=10000 (a stopped process is an outage: keep it short)", self.max_pause_ms)));
        }
        if !(1..=64).contains(&self.max_concurrent_pauses) {
            return Err(("crash.max_concurrent_pauses", format!("{} is outside 1..=64", self.max_concurrent_pauses)));
        }
        if !(self.cooldown_seconds >= 0.0 && self.cooldown_seconds.is_finite()) {
            return Err(("crash.cooldown_seconds", format!("{} is not a duration in seconds", self.cooldown_seconds)));
        }
        if !(0.0..=1.0).contains(&self.memory_watch_ratio) {
            return Err(("crash.memory_watch_ratio", format!("{} is not a ratio 0-1 (0 turns the watch off)", self.memory_watch_ratio)));
        }
        if !(self.memory_watch_interval_seconds >= 0.5 && self.memory_watch_interval_seconds <= 3600.0) {
            return Err(("crash.memory_watch_interval_seconds", format!("{} is outside 0.5..=3600", self.memory_watch_interval_seconds)));
        }
        if !(self.memory_watch_cooldown_seconds >= 0.0 && self.memory_watch_cooldown_seconds.is_finite()) {
            return Err(("crash.memory_watch_cooldown_seconds", format!("{} is not a duration in seconds", self.memory_watch_cooldown_seconds)));
        }
        Ok(())
    }

    /// The pause limit the kernel is given per process (0: pauses off).
    pub fn kernel_max_pauses(&self) -> u32 {
        if self.pause {
            self.max_concurrent_pauses
        } else {
            0
        }
    }
}

/// One frame of the crashing goroutine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: i64,
    pub pc: String,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub inlined: bool,
}

/// What a capsule holds beyond the profiles (the snapshot's `capsule`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capsule {
    pub kind: CrashKind,
    /// The runtime function the crash went through ("runtime.fatalpanic", "runtime.throw" …).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub via: Option<String>,
    pub message: Message,
    /// The crashing goroutine (0: unknown).
    pub goid: u64,
    /// The first frame outside the runtime (and, for an exit, outside os and log): where it died.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub top_frame: Option<Frame>,
    /// The crashing goroutine's stack, innermost first.
    pub stack: Vec<Frame>,
    /// The thread's system stack, when the crash ran on it (stack overflow: runtime.newstack).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub system_stack: Vec<Frame>,
    /// os.Exit's code; for panics and fatal errors the runtime exits with 2.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exit_code: Option<i64>,
    /// How the process ended, once its exit was seen ("exit 2", "signal SIGKILL", "oom").
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exit: Option<String>,
    /// Whether the process was stopped for the capsule, and for how long.
    pub paused: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub held_seconds: Option<f64>,
    /// Seconds from the crash (the kernel's event) to the capsule on disk.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seconds_to_capsule: Option<f64>,
    /// Why the profiles are missing or partial, when they are.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub partial: Option<String>,
    /// Crashes of the same container (or executable) in its cooldown window before this one
    /// that got no capsule of their own.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub suppressed_before: u64,
    /// OOM kills: the newest heap profile chainprobe holds for the process, and its age.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub heap_profile_snapshot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub heap_profile_age_seconds: Option<f64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What the collector tells the crash workers.
pub enum Notice {
    /// `target`: filled in by [`Crashes::notify`], while the process is still known.
    Crash { event: Box<GoCrashEvent>, received: Instant, target: Option<Box<TargetInfo>> },
    /// The OOM killer chose `pid`.
    Oom { pid: u32, target: Option<Box<TargetInfo>> },
    /// `pid` exited (`status` as the aggregate names it: "exit 2", "signal SIGKILL", "oom").
    Exit { pid: u32, status: String },
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CrashStats {
    pub capsules: u64,
    /// Crash-loop repeats in a cooldown window: counted, no capsule.
    pub suppressed: u64,
    /// Notices dropped because the workers' queue was full.
    pub dropped: u64,
    pub pauses: PauseStats,
}

struct Shared {
    cfg: CrashConfig,
    snapshots: Option<Arc<Snapshotter>>,
    resolve: Arc<Resolve>,
    pauses: Arc<Pauses>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Crash-loop guard: last capsule per container/executable, and repeats since.
    last: HashMap<String, (Instant, u64)>,
    /// Recent capsules by pid (to record the exit), pruned after a minute.
    recent: HashMap<u32, (String, Instant)>,
    /// Exits seen before their capsule was stored.
    exits: HashMap<u32, (String, Instant)>,
    /// Processes whose crash is being (or was) handled: a second thread reaching a crash path
    /// at the same moment is the same death (pruned after a minute).
    crashing: HashMap<u32, Instant>,
    /// When `exits` was last pruned (every process's exit comes here: a hundred a second on a
    /// busy node, so the minute-old ones are pruned once a second, not at every exit).
    exits_pruned: Option<Instant>,
    stats: CrashStats,
}

/// The crash workers.
pub struct Crashes {
    tx: mpsc::SyncSender<Notice>,
    shared: Arc<Shared>,
}

use crate::procfs::instant_of;

impl Crashes {
    /// Starts the pause keeper and `max_concurrent_pauses` workers.
    pub fn start(cfg: CrashConfig, snapshot_dir: &str, snapshots: Option<Arc<Snapshotter>>, resolve: Arc<Resolve>, counters: Option<Array<MapData, u64>>) -> std::io::Result<Crashes> {
        let dir = if cfg.state_dir.is_empty() { PathBuf::from(snapshot_dir).join("paused") } else { PathBuf::from(&cfg.state_dir) };
        let pauses = Pauses::start(dir, counters, cfg.max_concurrent_pauses as usize, Duration::from_millis(cfg.max_pause_ms))?;
        let workers = cfg.max_concurrent_pauses.max(1) as usize;
        let (tx, rx) = mpsc::sync_channel::<Notice>(1024);
        let shared = Arc::new(Shared { cfg, snapshots, resolve, pauses, state: Mutex::new(State::default()) });
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let (s, rx) = (shared.clone(), rx.clone());
            std::thread::Builder::new().name(format!("crash-{i}")).spawn(move || loop {
                let Ok(n) = lock(&rx).recv() else { return };
                s.handle(n);
            })?;
        }
        Ok(Crashes { tx, shared })
    }

    /// Hands a notice to the workers without blocking (the collector calls this). A paused
    /// process whose notice cannot be queued is resumed at once.
    pub fn notify(&self, mut n: Notice) {
        // Looked up now, on the collector's thread: by the time a worker takes the notice the
        // process may have exited and been forgotten (a crash that was not paused is gone in a
        // millisecond; 50 crashing at once wait for the workers).
        match &mut n {
            Notice::Crash { event, target, .. } => *target = (self.shared.resolve)(event.header.tgid).map(Box::new),
            Notice::Oom { pid, target } => *target = (self.shared.resolve)(*pid).map(Box::new),
            Notice::Exit { .. } => {}
        }
        if let Err(mpsc::TrySendError::Full(n) | mpsc::TrySendError::Disconnected(n)) = self.tx.try_send(n) {
            lock(&self.shared.state).stats.dropped += 1;
            if let Notice::Crash { event, .. } = n {
                if event.paused == PAUSE_STOPPED && self.shared.pauses.begin(event.header.tgid, Instant::now()).is_ok() {
                    self.shared.pauses.end(event.header.tgid, Resumed::Aborted);
                }
            }
        }
    }

    pub fn stats(&self) -> CrashStats {
        let mut s = lock(&self.shared.state).stats.clone();
        s.pauses = self.shared.pauses.stats();
        s
    }

    /// Starts the memory watch over the processes `list` names (needs snapshots).
    pub fn watch_memory(&self, list: memwatch::List) -> std::io::Result<()> {
        let Some(snap) = self.shared.snapshots.clone() else { return Ok(()) };
        let c = &self.shared.cfg;
        memwatch::start(c.memory_watch_ratio, Duration::from_secs_f64(c.memory_watch_interval_seconds), Duration::from_secs_f64(c.memory_watch_cooldown_seconds), snap, list)
    }

    /// Resumes everything held (call after the kernel programs are detached).
    pub fn shutdown(&self) {
        self.shared.pauses.shutdown();
    }
}

/// Functions skipped when choosing the top frame: the runtime's own, and the exit path.
fn is_runtime_frame(f: &str, exit: bool) -> bool {
    f.starts_with("runtime.")
        || f.starts_with("internal/")
        || matches!(f, "sync.fatal" | "sync.throw")
        || (exit && (f == "os.Exit" || f.starts_with("log.")))
}

/// Symbolizes return addresses `pcs` (the first is an exact pc): the logical frames.
fn frames(sym: Option<&Symbolizer>, bias: u64, pcs: &[u64]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut exact = true;
    for &pc in pcs {
        // A return address points after its call: look up the call. The frame the signal
        // handler made sigpanic "return" to is the faulting pc itself.
        let at = if exact { pc } else { pc.wrapping_sub(1) };
        let fr = sym.map(|s| s.frames(at.wrapping_sub(bias))).unwrap_or_default();
        if fr.is_empty() {
            out.push(Frame { function: "?".into(), file: String::new(), line: 0, pc: format!("{pc:#x}"), inlined: false });
            exact = false;
            continue;
        }
        let mut sigpanic = false;
        for f in fr {
            sigpanic |= f.function == "runtime.sigpanic";
            if f.function == "runtime.goexit" {
                return out;
            }
            out.push(Frame { function: f.function.to_string(), file: f.file.to_string(), line: f.line, pc: format!("{pc:#x}"), inlined: f.inlined });
        }
        exact = sigpanic;
    }
    out
}

impl Shared {
    fn handle(&self, n: Notice) {
        match n {
            Notice::Crash { event, received, target } => self.crash(&event, received, target),
            Notice::Oom { pid, target } => self.oom(pid, target),
            Notice::Exit { pid, status } => self.exited(pid, status),
        }
    }

    /// The crash-loop key of a process: its container, else its executable.
    fn loop_key(t: &TargetInfo) -> String {
        match &t.pod {
            Some(p) if !p.pod.is_empty() => format!("{}/{}/{}", p.namespace, p.pod, p.container),
            _ => t.go.as_ref().map(|g| g.exe.display().to_string()).unwrap_or_else(|| t.comm.clone()),
        }
    }

    /// Whether this crash gets a capsule (crash-loop guard); the repeats suppressed before it.
    fn admit(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        let cooldown = Duration::from_secs_f64(self.cfg.cooldown_seconds);
        let mut st = lock(&self.state);
        if cooldown.is_zero() {
            // No crash-loop guard: every crash gets its capsule.
            return Some(0);
        }
        st.last.retain(|_, (t, _)| now.duration_since(*t) < cooldown);
        match st.last.get_mut(key) {
            Some((_, n)) => {
                *n += 1;
                st.stats.suppressed += 1;
                None
            }
            None => {
                st.last.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }

    fn crash(&self, e: &GoCrashEvent, received: Instant, target: Option<Box<TargetInfo>>) {
        let pid = e.header.tgid;
        {
            let mut st = lock(&self.state);
            st.crashing.retain(|_, at| at.elapsed() < Duration::from_secs(60));
            if st.crashing.insert(pid, Instant::now()).is_some() {
                // Its pause (if the kernel stopped it again) is the first one's; the kernel's
                // pause count is healed by the keeper.
                debug!(pid, "a second crash path of a process already crashing: one capsule");
                return;
            }
        }
        let crashed_at = instant_of(e.header.ktime_ns);
        let held = match e.paused {
            PAUSE_STOPPED => self.pauses.begin(pid, crashed_at).is_ok(),
            _ => false,
        };
        let kind = CrashKind::of_event(e.kind).unwrap_or(CrashKind::Panic);
        let Some(t) = target.map(|t| *t).or_else(|| (self.resolve)(pid)) else {
            if held {
                self.pauses.end(pid, Resumed::Aborted);
            }
            warn!(pid, kind = kind.as_str(), "a process crashed that chainprobe no longer knows: no capsule");
            return;
        };
        let key = Self::loop_key(&t);
        let Some(suppressed_before) = self.admit(&key) else {
            if held {
                self.pauses.end(pid, Resumed::Done);
            }
            info!(pid, kind = kind.as_str(), key, "crash in a crash loop: counted, no capsule (one per [crash] cooldown_seconds)");
            return;
        };
        let repeats = lock(&self.state).last.get(&key).map(|x| x.1).unwrap_or(0);
        let (mut capsule, files) = self.read(e, &t, kind, held);
        capsule.suppressed_before = suppressed_before.max(repeats);
        if e.paused == PAUSE_LIMIT {
            capsule.partial.get_or_insert_with(|| "not paused: the node's limit of processes held at once ([crash] max_concurrent_pauses) was reached".into());
        }
        let top = capsule.top_frame.as_ref().map(|f| format!("{} ({}:{})", f.function, f.file, f.line)).unwrap_or_default();
        warn!(pid, comm = %t.comm, kind = kind.as_str(), crash_message = %capsule.message.text, top_frame = %top, goid = capsule.goid, "Go process crashed");
        capsule.seconds_to_capsule = Some(crashed_at.elapsed().as_secs_f64());
        debug!(pid, queued_ms = received.duration_since(crashed_at).as_secs_f64() * 1e3, "crash event reached the daemon");
        self.store(pid, &t, (capsule, files));
    }

    /// Reads everything the capsule holds; resumes the process when done (or the bound does).
    /// What needs the process's memory is read first, while it is held; what needs only its
    /// executable (symbols, type names) after, through a descriptor opened while it was alive.
    fn read(&self, e: &GoCrashEvent, t: &TargetInfo, kind: CrashKind, held: bool) -> (Capsule, Vec<(Kind, Vec<u8>, String)>) {
        let pid = t.pid;
        let started = Instant::now();
        let go = t.go.as_ref();
        let bin: Option<&GoBinary> = go.and_then(|g| g.binary.as_deref());
        let proc_exe = PathBuf::from(format!("/proc/{pid}/exe"));
        // The executable, readable after the process is gone: the descriptor discovery keeps
        // open per binary, else one opened now (a held process is still there).
        let exe_file = go.and_then(|g| g.exe_file.clone()).or_else(|| std::fs::File::open(&proc_exe).ok().map(Arc::new));
        let exe = exe_file.as_ref().map(|f| PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&**f)))).unwrap_or(proc_exe.clone());
        let bias = go.and_then(|g| g.bias()).or_else(|| crate::goruntime::mem::load_bias(pid, &proc_exe).ok()).unwrap_or(0);
        let mem = ProcMem::open(pid).ok();
        let mut files = Vec::new();
        let mut partial = None;
        if held {
            match (go, mem.as_ref()) {
                (Some(g), Some(m)) => partial = self.profiles(pid, g, m, &mut files),
                _ => partial = Some("runtime reads are off for this process".into()),
            }
        } else if !self.cfg.pause {
            partial = Some("not paused ([crash] pause = false): no profiles".into());
        } else if e.paused == PAUSE_TRACED {
            partial = Some("not paused: a debugger is attached (its tracer would see the stop); no profiles".into());
        } else if e.paused != PAUSE_LIMIT {
            partial = Some("not paused (chainprobe had no crash settings for it yet): no profiles".into());
        }
        let profiles_done = started.elapsed();
        // The panic value's type, from the binary's type metadata; a message in a struct field
        // beyond the first is read from the process (still there if held).
        let ty = match (e.kind, bin) {
            (probe_common::CRASH_PANIC, Some(b)) if e.value_type != 0 => goinspect::types::describe(&exe, b, e.value_type.wrapping_sub(bias)).map_err(|err| debug!(pid, error = %err, "cannot name the panic value's type")).ok(),
            _ => None,
        };
        let bounds = bin.and_then(|b| Some([b.offset("boundsError.x")? as usize, b.offset("boundsError.y")? as usize, b.offset("boundsError.signed")? as usize, b.offset("boundsError.code")? as usize]));
        let mut read_field = |off: u64| -> Option<String> {
            let m = mem.as_ref()?;
            let at = e.value_data.checked_add(off)?;
            let (p, len) = (m.u64(at).ok()?, m.u64(at + 8).ok()?);
            let mut b = vec![0u8; len.min(message::MAX_MESSAGE as u64) as usize];
            m.read_exact(p, &mut b).ok()?;
            Some(String::from_utf8_lossy(&b).into_owned())
        };
        let message = message::message(e, ty.as_ref(), bounds, &mut read_field);
        let held_for = if held { self.pauses.end(pid, Resumed::Done) } else { None };
        if held && held_for.is_none() {
            let why = format!("the pause bound ({} ms, [crash] max_pause_ms) ended the pause first", self.cfg.max_pause_ms);
            partial = Some(match partial {
                Some(p) => format!("{why}: {p}"),
                None => why,
            });
        }
        // Symbols, from the executable only: the process may be gone by now.
        let sym = bin.and_then(|b| Symbolizer::load(&exe, b).map_err(|err| debug!(pid, error = %err, "cannot symbolize the crash stack")).ok());
        let n = (e.npcs as usize).min(e.pcs.len());
        let split = (e.system_pcs as usize).min(n);
        let (system_pcs, user_pcs) = if split > 0 { (&e.pcs[..split], &e.pcs[split..n]) } else { (&[][..], &e.pcs[..n]) };
        let stack = frames(sym.as_ref(), bias, user_pcs);
        let system_stack = frames(sym.as_ref(), bias, system_pcs);
        let via = system_stack.first().or(stack.first()).map(|f| f.function.clone());
        let exit = e.kind == CRASH_EXIT;
        let top_frame = stack.iter().find(|f| !is_runtime_frame(&f.function, exit)).cloned();
        debug!(pid, profiles_ms = profiles_done.as_secs_f64() * 1e3, total_ms = started.elapsed().as_secs_f64() * 1e3, "crash capsule read");
        let capsule = Capsule {
            kind,
            via,
            message,
            goid: e.goid,
            top_frame,
            stack,
            system_stack,
            exit_code: Some(if exit { e.code } else { 2 }),
            exit: None,
            paused: held,
            held_seconds: held_for.map(|d| d.as_secs_f64()).or_else(|| held.then(|| self.pauses.bound().as_secs_f64())),
            seconds_to_capsule: None,
            partial,
            suppressed_before: 0,
            heap_profile_snapshot: None,
            heap_profile_age_seconds: None,
        };
        (capsule, files)
    }

    /// The goroutine and heap profiles of the held process (reads stop at the pause bound).
    fn profiles(&self, pid: u32, g: &crate::goruntime::GoTarget, m: &ProcMem, files: &mut Vec<(Kind, Vec<u8>, String)>) -> Option<String> {
        let (Some(l), Some(b)) = (g.layout.as_ref(), g.binary.as_ref()) else {
            return Some(format!("runtime reads are off for this process: {}", g.reads_error.clone().unwrap_or_else(|| "offsets not checked yet".into())));
        };
        let mut why = Vec::new();
        let exe = g.exe.display().to_string();
        let funcs = match &self.snapshots {
            Some(s) => s.funcs(pid).map_err(|e| e.to_string()),
            None => goinspect::FuncTable::load(std::path::Path::new(&format!("/proc/{pid}/exe"))).map(Arc::new).map_err(|e| e.to_string()),
        };
        let max_g = self.snapshots.as_ref().map(|s| s.config().max_goroutines).unwrap_or(1_000_000);
        match funcs.and_then(|f| goroutines::dump(m, l, b, &f, &exe, max_g).map_err(|e| e.to_string())) {
            Ok(d) => files.push((Kind::Goroutine, d.profile_gz, "proc-mem (paused)".into())),
            Err(e) => why.push(format!("goroutine profile: {e}")),
        }
        if self.pauses.holds(pid) {
            let cfg = self.snapshots.as_ref().map(|s| s.config().clone()).unwrap_or_default();
            let left = self.pauses.bound().saturating_sub(Duration::from_millis(10));
            let limits = goinspect::heap::Limits { max_buckets: cfg.heap_max_buckets, max_bytes: cfg.heap_max_read_bytes, timeout: left };
            match heap::capture(m, b, l.bias, &exe, limits) {
                Ok(c) => files.push((Kind::Heap, c.profile_gz, "proc-mem (paused)".into())),
                Err(e) => why.push(format!("heap profile: {e}")),
            }
        } else {
            why.push("heap profile: the pause bound passed before it was read".into());
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    fn store(&self, pid: u32, t: &TargetInfo, (mut capsule, files): (Capsule, Vec<(Kind, Vec<u8>, String)>)) {
        if let Some((status, _)) = lock(&self.state).exits.remove(&pid) {
            capsule.exit = Some(status);
        }
        let Some(snap) = &self.snapshots else {
            lock(&self.state).stats.capsules += 1;
            return;
        };
        let (created, _, created_ms) = timestamps(SystemTime::now());
        let pod = t.pod.clone().filter(|p| !p.pod.is_empty());
        let kinds: Vec<Kind> = files.iter().map(|f| f.0).collect();
        let meta = SnapshotMeta {
            id: super::random_id(),
            pid,
            comm: t.comm.clone(),
            namespace: pod.as_ref().map(|p| p.namespace.clone()).filter(|n| !n.is_empty()),
            pod: pod.as_ref().map(|p| p.pod.clone()),
            container: pod.as_ref().map(|p| p.container.clone()).filter(|n| !n.is_empty()),
            trigger: Trigger::Crash,
            rule: Some(capsule.kind.as_str().into()),
            kinds,
            status: Status::Done,
            created,
            created_ms,
            go_version: t.go.as_ref().map(|g| g.go_version.clone()),
            health: t.health.as_ref().and_then(|h| serde_json::to_value(h).ok()),
            reason: capsule.partial.clone(),
            capsule: Some(capsule),
            ..Default::default()
        };
        match snap.store_capsule(meta, files) {
            Ok(m) => {
                info!(id = %m.id, pid, files = m.files.len(), "crash capsule stored");
                let mut st = lock(&self.state);
                st.stats.capsules += 1;
                st.recent.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(60));
                st.recent.insert(pid, (m.id, Instant::now()));
            }
            Err(e) => warn!(pid, error = %e, "cannot store the crash capsule"),
        }
    }

    /// The process exited: a capsule taken in the last minute learns how.
    fn exited(&self, pid: u32, status: String) {
        let recent = {
            let mut st = lock(&self.state);
            let now = Instant::now();
            if st.exits_pruned.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1)) {
                st.exits.retain(|_, (_, at)| now.saturating_duration_since(*at) < Duration::from_secs(60));
                st.exits_pruned = Some(now);
            }
            let r = st.recent.remove(&pid);
            if r.is_none() {
                st.exits.insert(pid, (status.clone(), now));
            }
            r
        };
        let Some((id, _)) = recent else { return };
        if let Some(s) = &self.snapshots {
            s.update_stored(&id, |m| {
                if let Some(c) = m.capsule.as_mut() {
                    c.exit = Some(status);
                }
            });
        }
    }

    /// An OOM kill: a capsule with the newest heap profile chainprobe holds for the process.
    fn oom(&self, pid: u32, target: Option<Box<TargetInfo>>) {
        let Some(snap) = &self.snapshots else { return };
        let Some(t) = target.map(|t| *t).or_else(|| (self.resolve)(pid)) else {
            warn!(pid, "a Go process was OOM-killed that chainprobe no longer knows: no capsule");
            return;
        };
        if t.go.is_none() {
            return;
        }
        let key = Self::loop_key(&t);
        let Some(suppressed_before) = self.admit(&key) else { return };
        // A heap snapshot of the process may be under way (the memory watch started it as usage
        // neared the limit; the kill came while it was written): it read the memory before the
        // kill, so it is the newest evidence. Wait for it, bounded.
        let deadline = Instant::now() + OOM_WAIT_FOR_SNAPSHOT;
        let in_flight = |m: &SnapshotMeta| m.pid == pid && matches!(m.status, Status::Pending | Status::Running);
        while snap.list().iter().any(in_flight) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let newest = snap.list().into_iter().find(|m| m.pid == pid && m.files.contains_key("heap"));
        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let capsule = Capsule {
            kind: CrashKind::OomKill,
            via: None,
            message: Message { text: "killed by the OOM killer".into(), ..Default::default() },
            goid: 0,
            top_frame: None,
            stack: Vec::new(),
            system_stack: Vec::new(),
            exit_code: None,
            exit: Some("signal SIGKILL (oom)".into()),
            paused: false,
            held_seconds: None,
            seconds_to_capsule: None,
            partial: newest.is_none().then(|| "no heap profile of this process was taken before the kill".into()),
            suppressed_before,
            heap_profile_snapshot: newest.as_ref().map(|m| m.id.clone()),
            heap_profile_age_seconds: newest.as_ref().map(|m| now_ms.saturating_sub(m.created_ms) as f64 / 1e3),
        };
        warn!(pid, comm = %t.comm, heap_profile = ?capsule.heap_profile_snapshot, "Go process killed by the OOM killer");
        self.store(pid, &t, (capsule, Vec::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_frame_skips_the_runtime_and_the_exit_path() {
        assert!(is_runtime_frame("runtime.gopanic", false));
        assert!(is_runtime_frame("internal/runtime/maps.fatal", false));
        assert!(!is_runtime_frame("main.handler", false));
        assert!(is_runtime_frame("log.Fatal", true) && !is_runtime_frame("log.Fatal", false));
        assert!(is_runtime_frame("os.Exit", true));
    }

    #[test]
    fn defaults_are_valid_and_bounds_are_checked() {
        assert!(CrashConfig::default().check().is_ok());
        let c = CrashConfig { max_pause_ms: 0, ..Default::default() };
        assert_eq!(c.check().unwrap_err().0, "crash.max_pause_ms");
        assert_eq!(CrashConfig { pause: false, ..Default::default() }.kernel_max_pauses(), 0);
    }

    #[test]
    fn kernel_time_maps_to_an_instant_in_the_past() {
        let t = instant_of(crate::procfs::monotonic_ns().saturating_sub(50_000_000));
        assert!(t.elapsed() >= Duration::from_millis(49));
    }
}
