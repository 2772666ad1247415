//! Snapshots: heap and goroutine profiles of a Go process, taken when a health rule breaches or
//! on-call asks, without hurting the target.
//!
//! Sources, best first: the target's own net/http/pprof endpoint (found among its listening ports,
//! fetched inside its network namespace), else an out-of-process goroutine dump from
//! /proc/PID/mem (heap numbers go in the summary). Guards: a per-target cooldown for rule
//! triggers, a per-target hourly cap, a bounded queue served by `max_concurrent` workers, and a
//! circuit breaker that stops snapshots while the node is under memory pressure or snapshots keep
//! failing. Files go to [`store::Store`].
pub mod crash;
pub mod goroutines;
pub mod heap;
pub mod pprof;
pub mod profile;
pub mod store;

use crate::sync::lock;
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    path::PathBuf,
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

pub use crate::evidence::Kind;
use crate::{goruntime::{GoTarget, ProcMem}, k8s::PodLabels};
use goinspect::FuncTable;
use goroutines::HeapNumbers;
use store::{sanitize, Store};

/// `[snapshot]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    pub enabled: bool,
    pub dir: String,
    pub max_snapshots: usize,
    pub max_bytes: u64,
    pub cooldown_seconds: f64,
    pub max_per_target_per_hour: u32,
    pub max_concurrent: usize,
    pub max_pending: usize,
    pub fetch_timeout_seconds: f64,
    pub max_profile_bytes: u64,
    pub pprof_ports: Vec<u16>,
    pub discover_pprof: bool,
    pub max_goroutines: usize,
    /// Out-of-process heap profiles: memory-profile buckets and bytes read at most.
    pub heap_max_buckets: usize,
    pub heap_max_read_bytes: u64,
    pub failure_threshold: u32,
    pub circuit_open_seconds: f64,
    pub memory_pressure_avg10: f64,
    pub min_available_memory_ratio: f64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            enabled: true,
            dir: "/var/lib/chainprobe/snapshots".into(),
            max_snapshots: 100,
            max_bytes: 1 << 30,
            cooldown_seconds: 600.0,
            max_per_target_per_hour: 6,
            max_concurrent: 2,
            max_pending: 16,
            fetch_timeout_seconds: 10.0,
            max_profile_bytes: 64 << 20,
            pprof_ports: Vec::new(),
            discover_pprof: true,
            max_goroutines: 1_000_000,
            heap_max_buckets: 250_000,
            heap_max_read_bytes: 512 << 20,
            failure_threshold: 5,
            circuit_open_seconds: 300.0,
            memory_pressure_avg10: 40.0,
            min_available_memory_ratio: 0.05,
        }
    }
}

impl SnapshotConfig {
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let secs = |k: &'static str, v: f64| if v.is_finite() && (0.0..=86_400.0).contains(&v) { Ok(()) } else { Err((k, format!("{v} is out of range (0 to 86400 seconds)"))) };
        secs("snapshot.cooldown_seconds", self.cooldown_seconds)?;
        secs("snapshot.circuit_open_seconds", self.circuit_open_seconds)?;
        secs("snapshot.fetch_timeout_seconds", self.fetch_timeout_seconds)?;
        if self.fetch_timeout_seconds < 0.05 {
            return Err(("snapshot.fetch_timeout_seconds", "must be at least 0.05".into()));
        }
        if self.max_concurrent == 0 || self.max_concurrent > 64 {
            return Err(("snapshot.max_concurrent", "must be 1 to 64".into()));
        }
        if self.max_pending == 0 || self.max_snapshots == 0 || self.max_per_target_per_hour == 0 || self.failure_threshold == 0 {
            return Err(("snapshot.max_pending / max_snapshots / max_per_target_per_hour / failure_threshold", "must be at least 1".into()));
        }
        if self.dir.is_empty() {
            return Err(("snapshot.dir", "must name a directory".into()));
        }
        if self.heap_max_buckets == 0 || self.heap_max_read_bytes < 1 << 16 {
            return Err(("snapshot.heap_max_buckets / heap_max_read_bytes", "must be at least 1 bucket and 65536 bytes".into()));
        }
        if !(0.0..=1.0).contains(&self.min_available_memory_ratio) || !(0.0..=100.0).contains(&self.memory_pressure_avg10) {
            return Err(("snapshot.min_available_memory_ratio / memory_pressure_avg10", "a ratio 0–1 and a percentage 0–100".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    #[default]
    Api,
    Rule,
    /// A crash capsule (the process reached a crash path, or the OOM killer took it).
    Crash,
    /// A heap profile of a process near its memory cgroup's limit, for a later OOM kill's capsule.
    #[serde(rename = "memory-limit")]
    MemoryLimit,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Api => "api",
            Trigger::Rule => "rule",
            Trigger::Crash => "crash",
            Trigger::MemoryLimit => "memory-limit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Pending,
    Running,
    Done,
    Failed,
}

/// One stored file of a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileInfo {
    pub file: String,
    pub bytes: u64,
    /// "pprof-http <addr>" or "proc-mem".
    pub source: String,
}

/// A snapshot's metadata: the API's view and the summary file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SnapshotMeta {
    pub id: String,
    pub pid: u32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub trigger: Trigger,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub kinds: Vec<Kind>,
    pub status: Status,
    /// Why it failed (status failed), or what was missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339, UTC.
    pub created: String,
    pub created_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goroutines: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap: Option<HeapNumbers>,
    /// The heap profile read out of process (source proc-mem): buckets, rate, cost.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub heap_profile: Option<heap::HeapProfileInfo>,
    /// The health signals at the trigger (rule snapshots) or at the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<serde_json::Value>,
    /// What a crashing process knew (trigger crash).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub capsule: Option<crash::Capsule>,
    /// Stored files by kind.
    pub files: BTreeMap<String, FileInfo>,
    /// Why a requested kind has no file.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub errors: BTreeMap<String, String>,
}

/// A process as the snapshotter needs it.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    pub pid: u32,
    pub comm: String,
    pub pod: Option<PodLabels>,
    pub go: Option<GoTarget>,
    pub health: Option<crate::health::Health>,
    /// The pprof port its pod's annotation (`chainprobe.io/pprof-port`) names.
    pub pprof_port: Option<u16>,
}

/// Looks a process up by pid.
pub type Resolve = dyn Fn(u32) -> Option<TargetInfo> + Send + Sync;

/// Why a snapshot was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// `[snapshot] enabled = false`.
    Disabled,
    UnknownProcess,
    NotGo,
    /// The circuit breaker is open (node pressure, repeated failures).
    Stopped,
    Cooldown,
    HourlyCap,
    QueueFull,
}

/// A snapshot not taken: why, and a message that says what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub message: String,
}

fn refuse(reason: RefusalReason, message: impl Into<String>) -> Refusal {
    Refusal { reason, message: message.into() }
}

/// Counters for `/metrics`.
#[derive(Debug, Clone)]
pub struct SnapshotStats {
    /// (trigger, kind, result) → count; result is ok, failed, unavailable or refused.
    pub totals: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    pub duration: Histogram,
    pub circuit_open: bool,
    pub stored: usize,
    pub stored_bytes: u64,
}

/// Stops snapshots for a while after `threshold` failures in a row.
#[derive(Debug, Default)]
struct Circuit {
    failures_in_row: u32,
    open_until: Option<Instant>,
    reason: Option<String>,
}

impl Circuit {
    /// Records a snapshot's outcome (`None`: success). Returns true when this opens the circuit.
    fn record(&mut self, failure: Option<&str>, threshold: u32, open_for: Duration, now: Instant) -> bool {
        let Some(why) = failure else {
            self.failures_in_row = 0;
            return false;
        };
        self.failures_in_row += 1;
        if self.failures_in_row < threshold {
            return false;
        }
        self.open_until = Some(now + open_for);
        self.reason = Some(format!("{} snapshots failed in a row (last: {why}); retrying after {} s", self.failures_in_row, open_for.as_secs_f64()));
        self.failures_in_row = 0;
        true
    }

    /// Why it is open at `now`, if it is.
    fn open(&self, now: Instant) -> Option<&str> {
        match self.open_until {
            Some(t) if now < t => self.reason.as_deref(),
            _ => None,
        }
    }
}

struct Inner {
    jobs: HashMap<String, SnapshotMeta>,
    last_rule: HashMap<u32, Instant>,
    hourly: HashMap<u32, VecDeque<Instant>>,
    circuit: Circuit,
    totals: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    duration: Histogram,
    endpoints: HashMap<u32, (Option<SocketAddr>, Instant)>,
    /// Function tables by executable (dev, inode, mtime), most recent first.
    funcs: VecDeque<((u64, u64, i64), Arc<FuncTable>)>,
}

struct Job {
    id: String,
    target: TargetInfo,
}

pub struct Snapshotter {
    cfg: SnapshotConfig,
    store: Mutex<Store>,
    inner: Mutex<Inner>,
    queue: mpsc::SyncSender<Job>,
    resolve: Arc<Resolve>,
}

/// 16 hex digits from the kernel's random source.
pub fn random_id() -> String {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0) as u64;
        b = (t ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether `id` has the shape of a snapshot id (so it can never name a path).
pub fn valid_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// (RFC 3339 "2026-11-23T20:30:12.345Z", compact "20261123T203012.345Z", ms since the epoch).
pub fn timestamps(t: SystemTime) -> (String, String, u64) {
    let ms = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let (days, rem) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    (
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z"),
        format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}.{milli:03}Z"),
        ms,
    )
}

/// Memory pressure of the node, if above the configured limits.
fn node_pressure(cfg: &SnapshotConfig) -> Option<String> {
    if cfg.memory_pressure_avg10 > 0.0 {
        if let Ok(p) = std::fs::read_to_string("/proc/pressure/memory") {
            let avg10 = p
                .lines()
                .find(|l| l.starts_with("some "))
                .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("avg10=")))
                .and_then(|v| v.parse::<f64>().ok());
            if let Some(v) = avg10.filter(|v| *v >= cfg.memory_pressure_avg10) {
                return Some(format!("node under memory pressure: PSI some avg10 = {v:.1}% (limit [snapshot] memory_pressure_avg10 = {}%)", cfg.memory_pressure_avg10));
            }
        }
    }
    if cfg.min_available_memory_ratio > 0.0 {
        if let Ok(m) = std::fs::read_to_string("/proc/meminfo") {
            let field = |k: &str| m.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok());
            if let (Some(avail), Some(total)) = (field("MemAvailable:"), field("MemTotal:")) {
                if total > 0.0 && avail / total < cfg.min_available_memory_ratio {
                    return Some(format!("node low on memory: {:.1}% available (limit [snapshot] min_available_memory_ratio = {})", 100.0 * avail / total, cfg.min_available_memory_ratio));
                }
            }
        }
    }
    None
}

/// A failure of one snapshot: its reason, and whether it says something about chainprobe's
/// ability to take snapshots (a target that exits does not).
struct Failure {
    reason: String,
    counts: bool,
}

impl Snapshotter {
    /// Opens the store and starts `max_concurrent` workers.
    pub fn start(cfg: SnapshotConfig, resolve: Arc<Resolve>) -> Result<Arc<Snapshotter>, store::StoreError> {
        let store = Store::open(&PathBuf::from(&cfg.dir), cfg.max_snapshots, cfg.max_bytes)?;
        let (tx, rx) = mpsc::sync_channel::<Job>(cfg.max_pending);
        let s = Arc::new(Snapshotter {
            store: Mutex::new(store),
            inner: Mutex::new(Inner {
                jobs: HashMap::new(),
                last_rule: HashMap::new(),
                hourly: HashMap::new(),
                circuit: Circuit::default(),
                totals: BTreeMap::new(),
                duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 14)),
                endpoints: HashMap::new(),
                funcs: VecDeque::new(),
            }),
            queue: tx,
            resolve,
            cfg,
        });
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..s.cfg.max_concurrent {
            let (me, rx) = (Arc::downgrade(&s), rx.clone());
            std::thread::Builder::new()
                .name(format!("snapshot-{i}"))
                .spawn(move || {
                    crate::procfs::yield_to_workloads();
                    loop {
                        let job = lock(&rx).recv();
                        let (Ok(job), Some(s)) = (job, me.upgrade()) else { return };
                        s.run(job);
                    }
                })
                .map_err(|source| store::StoreError::Dir { dir: PathBuf::from("(worker thread)"), source })?;
        }
        Ok(s)
    }

    pub fn config(&self) -> &SnapshotConfig {
        &self.cfg
    }

    fn count(inner: &mut Inner, trigger: Trigger, kinds: &[Kind], result: &'static str) {
        for k in kinds {
            *inner.totals.entry((trigger.as_str(), k.as_str(), result)).or_insert(0) += 1;
        }
    }

    /// Why snapshots are stopped now, if they are.
    pub fn circuit_reason(&self) -> Option<String> {
        if let Some(p) = node_pressure(&self.cfg) {
            return Some(p);
        }
        lock(&self.inner).circuit.open(Instant::now()).map(str::to_string)
    }

    /// Queues a snapshot of `pid`. Rule triggers respect the per-target cooldown; every trigger
    /// respects the hourly cap, the queue bound and the circuit breaker.
    pub fn request(&self, pid: u32, kinds: &[Kind], trigger: Trigger, rule: Option<&str>) -> Result<SnapshotMeta, Refusal> {
        let mut kinds: Vec<Kind> = if kinds.is_empty() { Kind::ALL.to_vec() } else { kinds.to_vec() };
        kinds.sort();
        kinds.dedup();
        let refused = |r: Refusal| {
            Self::count(&mut lock(&self.inner), trigger, &kinds, "refused");
            warn!(pid, trigger = trigger.as_str(), rule = rule.unwrap_or(""), reason = %r.message, "snapshot refused");
            Err(r)
        };
        if !self.cfg.enabled {
            return refused(refuse(RefusalReason::Disabled, "snapshots are disabled in the configuration ([snapshot] enabled = false)"));
        }
        let Some(target) = (self.resolve)(pid) else {
            return refused(refuse(RefusalReason::UnknownProcess, format!("process {pid} is not known to chainprobe (see GET /api/v1/targets)")));
        };
        if target.go.is_none() {
            return refused(refuse(RefusalReason::NotGo, format!("process {pid} ({}) is not a tracked Go process: heap and goroutine snapshots need one", target.comm)));
        }
        if let Some(why) = self.circuit_reason() {
            return refused(refuse(RefusalReason::Stopped, format!("snapshots are stopped: {why}")));
        }
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        // Forget what no longer limits anything (processes come and go).
        let cooldown = Duration::from_secs_f64(self.cfg.cooldown_seconds);
        inner.last_rule.retain(|_, t| now.saturating_duration_since(*t) < cooldown);
        inner.hourly.retain(|_, q| q.back().is_some_and(|t| now.saturating_duration_since(*t) < Duration::from_secs(3600)));
        if trigger == Trigger::Rule {
            if let Some(last) = inner.last_rule.get(&pid) {
                let cd = Duration::from_secs_f64(self.cfg.cooldown_seconds);
                if now.saturating_duration_since(*last) < cd {
                    drop(inner);
                    return refused(refuse(RefusalReason::Cooldown, format!("process {pid} is in its snapshot cooldown ([snapshot] cooldown_seconds = {})", self.cfg.cooldown_seconds)));
                }
            }
        }
        let in_last_hour = {
            let hour = inner.hourly.entry(pid).or_default();
            while hour.front().is_some_and(|t| now.saturating_duration_since(*t) > Duration::from_secs(3600)) {
                hour.pop_front();
            }
            hour.len()
        };
        if in_last_hour >= self.cfg.max_per_target_per_hour as usize {
            drop(inner);
            return refused(refuse(RefusalReason::HourlyCap, format!("process {pid} already had {} snapshots in the last hour ([snapshot] max_per_target_per_hour)", self.cfg.max_per_target_per_hour)));
        }
        let id = random_id();
        let (created, _, created_ms) = timestamps(SystemTime::now());
        let pod = target.pod.clone().filter(|p| !p.pod.is_empty());
        let meta = SnapshotMeta {
            id: id.clone(),
            pid,
            comm: target.comm.clone(),
            namespace: pod.as_ref().map(|p| p.namespace.clone()).filter(|n| !n.is_empty()),
            pod: pod.as_ref().map(|p| p.pod.clone()),
            container: pod.as_ref().map(|p| p.container.clone()).filter(|n| !n.is_empty()),
            trigger,
            rule: rule.map(str::to_string),
            kinds: kinds.clone(),
            status: Status::Pending,
            created,
            created_ms,
            go_version: target.go.as_ref().map(|g| g.go_version.clone()),
            health: target.health.as_ref().and_then(|h| serde_json::to_value(h).ok()),
            ..Default::default()
        };
        inner.jobs.insert(id.clone(), meta.clone());
        if self.queue.try_send(Job { id: id.clone(), target }).is_err() {
            inner.jobs.remove(&id);
            drop(inner);
            return refused(refuse(RefusalReason::QueueFull, format!("{} snapshots are already queued ([snapshot] max_pending)", self.cfg.max_pending)));
        }
        inner.hourly.entry(pid).or_default().push_back(now);
        if trigger == Trigger::Rule {
            inner.last_rule.insert(pid, now);
        }
        info!(id = %id, pid, trigger = trigger.as_str(), rule = rule.unwrap_or(""), kinds = ?kinds, "snapshot queued");
        Ok(meta)
    }

    /// A snapshot by id: queued/running ones from memory, finished ones from the store.
    pub fn get(&self, id: &str) -> Option<SnapshotMeta> {
        if let Some(m) = lock(&self.inner).jobs.get(id) {
            return Some(m.clone());
        }
        lock(&self.store).get(id).cloned()
    }

    /// Every snapshot, newest first.
    pub fn list(&self) -> Vec<SnapshotMeta> {
        let mut all: Vec<SnapshotMeta> = lock(&self.inner).jobs.values().cloned().collect();
        all.extend(lock(&self.store).list());
        all.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then_with(|| b.id.cmp(&a.id)));
        all
    }

    /// Path of a finished snapshot's file ("heap", "goroutine" or "summary").
    pub fn file(&self, id: &str, kind: &str) -> Option<PathBuf> {
        lock(&self.store).file(id, kind)
    }

    pub fn stats(&self) -> SnapshotStats {
        let circuit_open = self.circuit_reason().is_some();
        let (stored, stored_bytes) = {
            let s = lock(&self.store);
            (s.len(), s.bytes())
        };
        let inner = lock(&self.inner);
        SnapshotStats { totals: inner.totals.clone(), duration: inner.duration.clone(), circuit_open, stored, stored_bytes }
    }

    fn set_status(&self, id: &str, status: Status) {
        if let Some(m) = lock(&self.inner).jobs.get_mut(id) {
            m.status = status;
        }
    }

    fn run(&self, job: Job) {
        let started = Instant::now();
        self.set_status(&job.id, Status::Running);
        let Some(mut meta) = lock(&self.inner).jobs.get(&job.id).cloned() else { return };
        meta.status = Status::Running;
        let outcome = self.execute(&mut meta, &job.target);
        let (finished, _, _) = timestamps(SystemTime::now());
        meta.finished = Some(finished);
        meta.duration_seconds = Some(started.elapsed().as_secs_f64());
        let failure = match outcome {
            Ok(()) if !meta.files.is_empty() => None,
            Ok(()) => Some(Failure { reason: format!("no file could be captured: {}", meta.errors.values().cloned().collect::<Vec<_>>().join("; ")), counts: true }),
            Err(f) => Some(f),
        };
        match &failure {
            None => {
                meta.status = Status::Done;
                if !meta.errors.is_empty() {
                    meta.reason = Some(meta.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("; "));
                }
            }
            Some(f) => {
                meta.status = Status::Failed;
                meta.reason = Some(f.reason.clone());
            }
        }
        let stem = self.stem(&meta);
        if let Err(e) = lock(&self.store).commit(&stem, &meta) {
            warn!(id = %meta.id, error = %e, "cannot write the snapshot summary");
            meta.status = Status::Failed;
            meta.reason = Some(e.to_string());
            for f in meta.files.values() {
                let _ = std::fs::remove_file(PathBuf::from(&self.cfg.dir).join(&f.file));
            }
            meta.files.clear();
        }
        let mut inner = lock(&self.inner);
        for k in &meta.kinds {
            let result = if meta.files.contains_key(k.as_str()) {
                "ok"
            } else if meta.status == Status::Done {
                "unavailable"
            } else {
                "failed"
            };
            *inner.totals.entry((meta.trigger.as_str(), k.as_str(), result)).or_insert(0) += 1;
        }
        inner.duration.observe(started.elapsed().as_secs_f64());
        let counted = failure.as_ref().filter(|f| f.counts).map(|f| f.reason.as_str());
        // A target that exits says nothing about chainprobe: it neither opens nor resets the circuit.
        if failure.is_none() || counted.is_some() {
            let open_for = Duration::from_secs_f64(self.cfg.circuit_open_seconds);
            if inner.circuit.record(counted, self.cfg.failure_threshold, open_for, Instant::now()) {
                warn!(reason = ?inner.circuit.reason, "snapshot circuit breaker open");
            }
        }
        inner.jobs.remove(&meta.id);
        match &failure {
            None => info!(id = %meta.id, pid = meta.pid, files = meta.files.len(), seconds = meta.duration_seconds, "snapshot done"),
            Some(f) => warn!(id = %meta.id, pid = meta.pid, reason = %f.reason, "snapshot failed"),
        }
    }

    /// Stores a crash capsule taken elsewhere (no queue, no cooldown: crashes are rare and their
    /// own loop guard decides): `files` are (kind, bytes, source). The stored metadata.
    pub(crate) fn store_capsule(&self, mut meta: SnapshotMeta, files: Vec<(Kind, Vec<u8>, String)>) -> Result<SnapshotMeta, String> {
        let stem = self.stem(&meta);
        let mut store = lock(&self.store);
        for (kind, bytes, source) in files {
            let file = format!("{stem}.{}.pb.gz", kind.as_str());
            match store.write_file(&file, &bytes) {
                Ok(n) => {
                    meta.files.insert(kind.as_str().into(), FileInfo { file, bytes: n, source });
                }
                Err(e) => {
                    meta.errors.insert(kind.as_str().into(), e.to_string());
                }
            }
        }
        meta.status = Status::Done;
        if let Err(e) = store.commit(&stem, &meta) {
            for f in meta.files.values() {
                let _ = std::fs::remove_file(PathBuf::from(&self.cfg.dir).join(&f.file));
            }
            return Err(e.to_string());
        }
        drop(store);
        let mut inner = lock(&self.inner);
        for k in &meta.kinds {
            let result = if meta.files.contains_key(k.as_str()) { "ok" } else { "unavailable" };
            *inner.totals.entry((Trigger::Crash.as_str(), k.as_str(), result)).or_insert(0) += 1;
        }
        Ok(meta)
    }

    /// Changes a stored snapshot's summary (a capsule learns its process's exit status).
    pub(crate) fn update_stored(&self, id: &str, f: impl FnOnce(&mut SnapshotMeta)) -> bool {
        match lock(&self.store).update(id, f) {
            Ok(done) => done,
            Err(e) => {
                warn!(id, error = %e, "cannot update the snapshot summary");
                false
            }
        }
    }

    /// `<pod-or-comm>_<UTC timestamp>_<goroutine count>`, unique in the directory.
    fn stem(&self, meta: &SnapshotMeta) -> String {
        let who = sanitize(meta.pod.as_deref().unwrap_or(&meta.comm));
        let (_, compact, _) = timestamps(SystemTime::UNIX_EPOCH + Duration::from_millis(meta.created_ms));
        let n = meta.goroutines.map(|n| n.to_string()).unwrap_or_else(|| "unknown".into());
        let stem = format!("{who}_{compact}_{n}");
        if PathBuf::from(&self.cfg.dir).join(format!("{stem}{}", store::SUMMARY_SUFFIX)).exists() {
            format!("{stem}-{}", meta.id)
        } else {
            stem
        }
    }

    /// The function table of the executable of `pid` (remembered per file: many pods run the
    /// same binary).
    pub(crate) fn funcs(&self, pid: u32) -> Result<Arc<FuncTable>, goinspect::GoInspectError> {
        use std::os::unix::fs::MetadataExt;
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let key = std::fs::metadata(&exe)
            .map(|m| (m.dev(), m.ino(), m.mtime()))
            .map_err(|source| goinspect::GoInspectError::Io { path: exe.clone(), source })?;
        if let Some(f) = lock(&self.inner).funcs.iter().find(|f| f.0 == key) {
            return Ok(f.1.clone());
        }
        let f = Arc::new(FuncTable::load(&exe)?);
        let mut inner = lock(&self.inner);
        inner.funcs.push_front((key, f.clone()));
        inner.funcs.truncate(16);
        Ok(f)
    }

    /// The pprof endpoint of `pid` (remembered for a minute, found again after a failure), or why
    /// the search failed.
    fn endpoint(&self, pid: u32, annotated: Option<u16>) -> Result<Option<SocketAddr>, String> {
        let mut ports = self.cfg.pprof_ports.clone();
        ports.extend(annotated);
        if !self.cfg.discover_pprof && ports.is_empty() {
            return Ok(None);
        }
        if let Some((a, at)) = lock(&self.inner).endpoints.get(&pid) {
            if at.elapsed() < Duration::from_secs(60) {
                return Ok(*a);
            }
        }
        let timeout = Duration::from_secs_f64(self.cfg.fetch_timeout_seconds.min(2.0));
        let found = pprof::discover(pid, &ports, timeout).map_err(|e| {
            warn!(pid, error = %e, "pprof endpoint discovery failed");
            format!("pprof endpoint discovery failed: {e}")
        })?;
        let found = found.filter(|a| self.cfg.discover_pprof || ports.contains(&a.port()));
        let mut inner = lock(&self.inner);
        inner.endpoints.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(60));
        inner.endpoints.insert(pid, (found, Instant::now()));
        Ok(found)
    }

    fn execute(&self, meta: &mut SnapshotMeta, t: &TargetInfo) -> Result<(), Failure> {
        let pid = t.pid;
        let gone = |what: &str| Failure { reason: format!("process {pid} exited during the snapshot ({what})"), counts: false };
        let go = t.go.as_ref().ok_or_else(|| Failure { reason: "not a Go process".into(), counts: false })?;
        if !crate::procfs::alive(pid) {
            return Err(gone("before it started"));
        }
        let mem = ProcMem::open(pid).ok();
        let rt = match (&mem, &go.layout, &go.binary) {
            (Some(m), Some(l), Some(b)) => Some((m, l, b)),
            _ => None,
        };
        if let Some((m, l, b)) = rt {
            meta.heap = goroutines::heap_numbers(m, l, b).ok();
            meta.goroutines = m.goroutines(l).ok().map(|n| n.max(0) as u64);
        }
        let timeout = Duration::from_secs_f64(self.cfg.fetch_timeout_seconds);
        let limit = self.cfg.max_profile_bytes as usize;
        let (endpoint, discovery_error) = match self.endpoint(pid, t.pprof_port) {
            Ok(a) => (a, None),
            Err(e) => (None, Some(e)),
        };
        let mut data: Vec<(Kind, Vec<u8>, String)> = Vec::new();
        for kind in meta.kinds.clone() {
            let mut err = discovery_error.clone();
            if let Some(addr) = endpoint {
                match pprof::fetch_profile(pid, addr, &format!("/debug/pprof/{}", kind.as_str()), timeout, limit) {
                    Ok(b) => {
                        data.push((kind, b, format!("pprof-http {addr}")));
                        continue;
                    }
                    Err(e) => {
                        lock(&self.inner).endpoints.remove(&pid);
                        err = Some(format!("pprof fetch failed: {e}"));
                    }
                }
            }
            if !crate::procfs::alive(pid) {
                return Err(gone(kind.as_str()));
            }
            match kind {
                Kind::Goroutine => {
                    let Some((m, l, b)) = rt else {
                        meta.errors.insert(kind.as_str().into(), err.unwrap_or_else(|| format!("no pprof endpoint, and runtime reads are off: {}", go.reads_error.clone().unwrap_or_default())));
                        continue;
                    };
                    let funcs = self.funcs(pid).map_err(|e| match e {
                        // A live process always has its executable: it is exiting.
                        goinspect::GoInspectError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => gone("reading its binary"),
                        _ if !crate::procfs::alive(pid) => gone("reading its binary"),
                        e => Failure { reason: format!("cannot read the function table: {e}"), counts: true },
                    })?;
                    match goroutines::dump(m, l, b, &funcs, &go.exe.display().to_string(), self.cfg.max_goroutines) {
                        Ok(d) => {
                            debug!(pid, goroutines = d.goroutines, system = d.system, unwound = d.unwound, seconds = d.seconds, "goroutine profile read out of process");
                            meta.goroutines = Some(d.goroutines);
                            data.push((kind, d.profile_gz, "proc-mem".into()));
                        }
                        Err(_) if !crate::procfs::alive(pid) => return Err(gone("reading goroutines")),
                        Err(e) => {
                            meta.errors.insert(kind.as_str().into(), format!("out-of-process goroutine dump failed: {e}"));
                        }
                    }
                }
                Kind::Heap => {
                    let why = err.unwrap_or_else(|| "no net/http/pprof endpoint found".into());
                    let Some((m, l, b)) = rt else {
                        meta.errors.insert(kind.as_str().into(), format!("{why}, and runtime reads are off: {}", go.reads_error.clone().unwrap_or_default()));
                        continue;
                    };
                    let limits = goinspect::heap::Limits { max_buckets: self.cfg.heap_max_buckets, max_bytes: self.cfg.heap_max_read_bytes, timeout };
                    match heap::capture(m, b, l.bias, &go.exe.display().to_string(), limits) {
                        Ok(c) => {
                            info!(pid, buckets = c.info.buckets, read_seconds = c.info.read_seconds, bytes_read = c.info.bytes_read, "heap profile read out of process");
                            meta.heap_profile = Some(c.info);
                            data.push((kind, c.profile_gz, "proc-mem".into()));
                        }
                        Err(goinspect::heap::HeapError::Gone) => return Err(gone("reading the heap profile")),
                        Err(_) if !crate::procfs::alive(pid) => return Err(gone("reading the heap profile")),
                        Err(e @ goinspect::heap::HeapError::Disabled) => {
                            meta.errors.insert(kind.as_str().into(), e.to_string());
                        }
                        Err(e) => {
                            warn!(pid, error = %e, "out-of-process heap profile failed");
                            meta.errors.insert(kind.as_str().into(), format!("{why}; out-of-process heap profile failed: {e}"));
                        }
                    }
                }
            }
        }
        if data.is_empty() && !crate::procfs::alive(pid) {
            return Err(gone("before anything was captured"));
        }
        let stem = self.stem(meta);
        let store = lock(&self.store);
        for (kind, bytes, source) in data {
            let file = format!("{stem}.{}.pb.gz", kind.as_str());
            let n = store.write_file(&file, &bytes).map_err(|e| Failure { reason: e.to_string(), counts: true })?;
            meta.files.insert(kind.as_str().into(), FileInfo { file, bytes: n, source });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_465_812_345);
        let (rfc, compact, ms) = timestamps(t);
        assert_eq!(rfc, "2026-11-23T20:30:12.345Z");
        assert_eq!(compact, "20261123T203012.345Z");
        assert_eq!(ms, 1_795_465_812_345);
        assert_eq!(timestamps(SystemTime::UNIX_EPOCH).0, "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamps(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)).0, "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn circuit_opens_after_failures_in_a_row_and_closes_after_its_time() {
        let mut c = Circuit::default();
        let t0 = Instant::now();
        let open_for = Duration::from_secs(10);
        assert!(!c.record(Some("disk full"), 3, open_for, t0));
        assert!(!c.record(None, 3, open_for, t0), "a success resets the count");
        assert!(!c.record(Some("disk full"), 3, open_for, t0));
        assert!(!c.record(Some("disk full"), 3, open_for, t0));
        assert!(c.open(t0).is_none());
        assert!(c.record(Some("disk full"), 3, open_for, t0));
        let why = c.open(t0 + Duration::from_secs(9)).unwrap();
        assert!(why.contains("3 snapshots failed in a row") && why.contains("disk full"), "{why}");
        assert!(c.open(t0 + Duration::from_secs(11)).is_none(), "half-open again after its time");
    }

    #[test]
    fn ids() {
        let a = random_id();
        assert!(valid_id(&a), "{a}");
        assert_ne!(a, random_id());
        assert!(!valid_id("../../etc/passwd"));
        assert!(!valid_id("0123456789ABCDEF"));
        assert!(!valid_id("0123"));
    }
}
