//! The collector thread: the one writer of the per-process state. It owns the ring buffer and the
//! per-CPU kernel maps, the [`Aggregate`], the [`HealthEngine`] and the latest health results;
//! everything else talks to it through [`Command`]s and reads the immutable [`View`] it publishes
//! (a `watch` channel). Nothing here is behind a lock that another thread takes, except the
//! series limiter that the scrapes it hands out share.
//!
//! Timers, all on this thread (so nothing races): the ring buffer every
//! [`probe_common::EVENTS_POLL_MS`], the kernel counters every drain interval, the health
//! evaluation at its own pace. Pod identity is read when a process is first seen (its cgroup, in
//! the aggregate, through the injected [`crate::k8s::PodSource`]) and names of held processes are
//! settled at every drain. The slow /proc readings (map counts) run on a reader thread
//! ([`start_proc_reader`]) that sends their results back as a command.
use std::{
    collections::HashMap,
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use probe_common::{FailureKey, ProcCounters, ProgId, ProgStats};
use tokio::sync::{oneshot, watch};
use tracing::{debug, warn};

use crate::{
    aggregate::{Aggregate, Identity},
    attach::ProgramStatus,
    decode::{self, Event, KernelSnapshot},
    discovery::{self, GoUpdate, GoView},
    goruntime::{creation::CreationStatus, GoSample},
    health::{Health, HealthEngine, State},
    k8s::{LabelPolicy, PodLabels, SeriesLimiter},
    metrics::ScrapeView,
    procfs,
    snapshot::{Snapshotter, Trigger},
    sync::lock,
};

/// What the collector is asked or told.
pub enum Command {
    /// A scrape: drain the kernel now and copy out what `/metrics` encodes.
    Scrape(oneshot::Sender<ScrapeView>),
    /// From discovery.
    Go(GoUpdate),
    /// From the /proc reader: map counts (None: unreadable; `alive` false: gone without an exit
    /// event).
    /// Map counts (pid, count, alive) and debug states (pid, (tracer pid, tracer comm), stopped).
    ProcReadings { map_counts: Vec<(u32, Option<u64>, bool)>, debug: Vec<(u32, (u32, String), bool)> },
}

/// The per-CPU maps the collector drains.
pub struct DrainMaps {
    pub counters: PerCpuHashMap<MapData, u32, ProcCounters>,
    pub failures: PerCpuHashMap<MapData, FailureKey, u64>,
    pub stats: PerCpuArray<MapData, ProgStats>,
}

/// One process as the API and the snapshotter see it.
#[derive(Debug, Clone)]
pub struct ProcessSummary {
    pub pid: u32,
    pub comm: String,
    pub pod: Option<PodLabels>,
    /// Its pod's names are awaited from the API (its series are held until then).
    pub pod_pending: bool,
    pub health: Option<Health>,
    pub pprof_port: Option<u16>,
    pub go: Option<GoSummary>,
    pub debug: Option<crate::aggregate::Debugged>,
    /// HTTP/2 control frames (Go).
    pub http2: Option<crate::http2::Http2State>,
    /// TLS handshakes, with every label (the metrics leave some out).
    pub tls: Option<crate::tls::TlsState>,
    /// The process's revision in the aggregate and its health's when this was built: while
    /// both stay, the summary stays (see [`Thread::publish`]).
    revs: (u64, u64),
}

/// What the probes and the runtime reads saw of a Go process.
#[derive(Debug, Clone)]
pub struct GoSummary {
    pub sample: Option<GoSample>,
    pub gc_cycles: u64,
    pub stw_count: u64,
    /// Stop-the-world pauses by reason: (count, seconds).
    pub stw_by_reason: std::collections::BTreeMap<&'static str, (u64, f64)>,
    pub creation: Option<CreationStatus>,
}

impl ProcessSummary {
    /// The summary of `p` with its latest health.
    fn of(p: &crate::aggregate::ProcessState, health: Option<&Health>, health_rev: u64) -> ProcessSummary {
        ProcessSummary {
            revs: (p.rev(), health_rev),
            pid: p.pid,
            comm: p.comm.clone(),
            pod: p.pod.clone(),
            pod_pending: p.pod.is_none(),
            health: health.cloned(),
            pprof_port: p.pprof_port,
            go: p.go.as_ref().map(|g| GoSummary { sample: g.sample.clone(), gc_cycles: g.gc_cycles, stw_count: g.stw_count, stw_by_reason: g.stw_by_reason.clone(), creation: g.creation.clone() }),
            debug: p.debug.clone(),
            http2: p.http2.clone(),
            tls: p.tls.clone(),
        }
    }

    /// True when [`ProcessSummary::of`] would give this summary again (compared field by field,
    /// nothing copied). TLS state only grows, one handshake at a time: its handshake count
    /// tells whether it changed. Debug builds check with it, at every publish, that the view
    /// missed no change (one the aggregate made without a new revision, or did not list).
    fn shows(&self, p: &crate::aggregate::ProcessState, health: Option<&Health>) -> bool {
        let go_same = match (&self.go, &p.go) {
            (None, None) => true,
            (Some(s), Some(g)) => s.gc_cycles == g.gc_cycles && s.stw_count == g.stw_count && s.sample == g.sample && s.creation == g.creation && s.stw_by_reason == g.stw_by_reason,
            _ => false,
        };
        let tls_same = match (&self.tls, &p.tls) {
            (None, None) => true,
            (Some(a), Some(b)) => a.handshakes_total() == b.handshakes_total(),
            _ => false,
        };
        go_same
            && tls_same
            && self.pid == p.pid
            && self.comm == p.comm
            && self.pod == p.pod
            && self.pprof_port == p.pprof_port
            && self.health.as_ref() == health
            && self.debug == p.debug
            && self.http2 == p.http2
    }
}

/// The live processes as of the collector's last change (exited ones are not in it).
#[derive(Debug, Clone, Default)]
pub struct View {
    pub processes: HashMap<u32, Arc<ProcessSummary>>,
}

/// Why no single Go process was found in a pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindError {
    #[error("Go tracking is disabled in the configuration ([go] enabled = false)")]
    GoDisabled,
    #[error("no tracked Go process in pod {0}")]
    NotFound(String),
    #[error("pod {pod} has several Go processes ({pids:?}): name the container or the pid")]
    Ambiguous { pod: String, pids: Vec<u32> },
}

impl View {
    /// The tracked Go process in a pod (and container).
    pub fn find_go_process(&self, go: &GoView, namespace: &str, pod: &str, container: Option<&str>) -> Result<u32, FindError> {
        let targets = go.targets.as_ref().ok_or(FindError::GoDisabled)?;
        let mut pids: Vec<u32> = targets
            .keys()
            .copied()
            .filter(|pid| {
                self.processes
                    .get(pid)
                    .and_then(|p| p.pod.as_ref())
                    .is_some_and(|l| l.namespace == namespace && l.pod == pod && container.is_none_or(|c| l.container == c))
            })
            .collect();
        pids.sort_unstable();
        match pids.as_slice() {
            [] => Err(FindError::NotFound(format!("{namespace}/{pod}{}", container.map(|c| format!(" container {c}")).unwrap_or_default()))),
            [pid] => Ok(*pid),
            _ => Err(FindError::Ambiguous { pod: format!("{namespace}/{pod}"), pids }),
        }
    }
}

/// What the collector owns.
pub struct Collector {
    pub agg: Aggregate,
    pub health: HealthEngine,
    pub ring: RingBuf<MapData>,
    pub maps: DrainMaps,
    pub programs: Vec<ProgramStatus>,
    pub kernel: String,
    pub policy: LabelPolicy,
    pub limiter: Arc<Mutex<SeriesLimiter>>,
    /// Where execs and exits go (Go and OpenSSL discovery), when it runs.
    pub discovery: Option<mpsc::SyncSender<discovery::Command>>,
    pub go_view: watch::Receiver<Arc<GoView>>,
    pub snapshots: Option<Arc<Snapshotter>>,
    /// Crash capsules (and the pauses of crashing processes).
    pub crashes: Option<Arc<crate::snapshot::crash::Crashes>>,
    pub drain_interval: Duration,
    /// Which detail becomes series.
    pub series: crate::metrics::SeriesOptions,
}

struct Thread {
    own: Collector,
    /// The latest health of each process (kept until the process leaves the aggregate).
    scores: HashMap<u32, Health>,
    /// When each process's health last changed (a revision, as [`ProcessState::rev`] for the
    /// aggregate's part), and the last one handed out.
    ///
    /// [`ProcessState::rev`]: crate::aggregate::ProcessState::rev
    health_revs: HashMap<u32, u64>,
    health_rev: u64,
    /// Pids whose health changed since the last publish.
    health_changed: Vec<u32>,
    view: watch::Sender<Arc<View>>,
    dirty: bool,
    /// When the view was last published.
    published: Instant,
    /// Pids whose crash or OOM kill the crash workers were told of, until their exit is passed on.
    crash_noticed: std::collections::HashSet<u32>,
    /// Execs and exits not yet passed to discovery, and when the last batch went.
    lives: Vec<discovery::Life>,
    lives_sent: Instant,
    /// The decoded records of a ring-buffer poll (kept: its capacity serves the next poll).
    decoded: Vec<Event>,
}

/// The view is a copy of every process; with a hundred execs a second it would be copied at
/// every ring-buffer poll. The API and the snapshotter can live with it being this old.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// How often execs and exits go to discovery (and at most how late): each batch wakes its thread,
/// and on a VM a wake-up of a thread on another CPU costs tens of µs. Measured with 100 execs a
/// second, a batch at every ring-buffer poll was a tenth of the collector's CPU. A new process is
/// inspected for Go or OpenSSL at most this much later.
const LIVES_EVERY: Duration = Duration::from_millis(200);

/// Execs and exits that go to discovery at once, however recent the last batch.
const LIVES_MAX: usize = 512;

/// How often the allocator's free memory is handed back ([`procfs::release_free_memory`]).
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// The /proc reader for processes the aggregate knows: applies [`Aggregate::with_identify`]'s
/// contract (comm, and alive or gone).
pub fn identify(pid: u32) -> Identity {
    match procfs::comm(pid) {
        Some(comm) if procfs::alive(pid) => Identity::Live(comm),
        comm => Identity::Gone(comm),
    }
}

/// Starts the collector thread; it ends when every sender of `rx` is gone.
pub fn start(own: Collector, rx: mpsc::Receiver<Command>) -> std::io::Result<watch::Receiver<Arc<View>>> {
    let (view, view_rx) = watch::channel(Arc::new(View::default()));
    let mut t = Thread { own, scores: HashMap::new(), health_revs: HashMap::new(), health_rev: 0, health_changed: Vec::new(), view, dirty: true, published: Instant::now().checked_sub(PUBLISH_EVERY).unwrap_or_else(Instant::now), crash_noticed: Default::default(), lives: Vec::new(), lives_sent: Instant::now(), decoded: Vec::new() };
    std::thread::Builder::new().name("collector".into()).spawn(move || t.run(rx))?;
    Ok(view_rx)
}

impl Thread {
    fn run(&mut self, rx: mpsc::Receiver<Command>) {
        let ring_every = Duration::from_millis(probe_common::EVENTS_POLL_MS);
        let now = Instant::now();
        let (mut next_ring, mut next_drain, mut next_health) = (now + ring_every, now + self.own.drain_interval, now);
        // The first trim after the start (the kernel object and BTF parsed, the start scan done).
        let mut next_trim = now + Duration::from_secs(2);
        loop {
            let mut wake = next_ring.min(next_drain).min(next_health);
            if self.dirty {
                wake = wake.min(self.published + PUBLISH_EVERY);
            }
            match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(cmd) => self.handle(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            // The ring before the counters, always: a process's exec record precedes its first
            // counted event, so a process gone within milliseconds is first seen through its exec
            // (comm, cgroup, pod), not through a counter of a pid already gone.
            if now >= next_ring || now >= next_drain {
                self.drain_ring();
                next_ring = now + ring_every;
            }
            if now >= next_drain {
                self.drain(now);
                let removed = self.own.agg.prune_unscraped(now);
                self.forget(&removed);
                next_drain = now + self.own.drain_interval;
            }
            if now >= next_trim {
                procfs::release_free_memory();
                next_trim = now + TRIM_EVERY;
            }
            if now >= next_health {
                next_health = Instant::now() + self.evaluate_health();
            }
            if self.dirty && now.saturating_duration_since(self.published) >= PUBLISH_EVERY {
                self.publish();
                self.published = now;
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Scrape(reply) => {
                let _ = reply.send(self.scrape());
            }
            Command::Go(GoUpdate::Tracked { pid, go_version, minor }) => self.own.agg.on_go_tracked(pid, &go_version, minor, Instant::now()),
            Command::Go(GoUpdate::Samples { samples, offsets_sources }) => {
                for (pid, s) in samples {
                    self.own.agg.set_go_sample(pid, s);
                }
                self.own.agg.go_offsets_sources = offsets_sources;
            }
            Command::Go(GoUpdate::Creation(statuses)) => {
                for (pid, s) in statuses {
                    self.own.agg.set_go_creation(pid, s);
                }
            }
            Command::ProcReadings { map_counts, debug } => {
                let now = Instant::now();
                for (pid, tracer, stopped) in debug {
                    self.own.agg.set_debug(pid, tracer, stopped, now);
                }
                for (pid, n, alive) in map_counts {
                    match n {
                        Some(n) => self.own.agg.set_map_count(pid, Some(n)),
                        // Gone without an exit event (ring buffer overflow, or exited mid-read).
                        None if !alive => self.own.agg.mark_gone(pid, now),
                        None => self.own.agg.set_map_count(pid, None),
                    }
                }
            }
        }
        self.dirty = true;
    }

    /// Copies the processes out for the API and the snapshotter. A process whose revisions (its
    /// state's in the aggregate, its health's) are those of its summary in the last view keeps
    /// that one (shared, not rebuilt): with hundreds of idle Go processes, most are unchanged
    /// between two publishes. Rebuilding each one's strings and maps every half second was a
    /// quarter of a percent of a core (perf, 500 processes), and comparing them field by field
    /// instead still a sixth of the collector's time.
    ///
    /// Only the processes the aggregate or the health evaluation changed since the last publish
    /// are looked at (the rest of the last view is taken as it is): with a hundred exits a
    /// second the aggregate holds thousands of exited processes, and walking all of them twice a
    /// second was most of what remained of the publish.
    fn publish(&mut self) {
        let prev = Arc::clone(&self.view.borrow());
        let health_changed = std::mem::take(&mut self.health_changed);
        let processes = match self.own.agg.take_changed() {
            Some(changed) => {
                let mut processes = prev.processes.clone();
                for pid in changed.into_iter().chain(health_changed) {
                    match self.own.agg.process(pid).filter(|p| Self::in_view(p)) {
                        Some(p) => {
                            let s = self.summary(p, prev.processes.get(&pid));
                            processes.insert(pid, s);
                        }
                        None => {
                            processes.remove(&pid);
                        }
                    }
                }
                processes
            }
            None => self.own.agg.processes().filter(|p| Self::in_view(p)).map(|p| (p.pid, self.summary(p, prev.processes.get(&p.pid)))).collect(),
        };
        drop(prev);
        if cfg!(debug_assertions) {
            // What a walk of every process would have given.
            let live: std::collections::BTreeSet<u32> = self.own.agg.processes().filter(|p| Self::in_view(p)).map(|p| p.pid).collect();
            assert_eq!(live, processes.keys().copied().collect(), "the view's processes are not the live ones");
            for (pid, s) in &processes {
                let p = self.own.agg.process(*pid).expect("live");
                assert!(s.shows(p, self.scores.get(pid)), "pid {pid}: a change the view missed (no new revision, or not listed as changed)");
            }
        }
        self.view.send_replace(Arc::new(View { processes }));
        self.dirty = false;
    }

    /// Live processes only are in the view: everything that reads it (the API's targets, the
    /// snapshotter, crash capsules, the /proc reader) asks about live ones, and with a hundred
    /// short-lived processes a second most of the aggregate has exited.
    fn in_view(p: &crate::aggregate::ProcessState) -> bool {
        p.pid != 0 && p.exit.is_none()
    }

    /// `p`'s summary: `old` (shared) when its revisions are still `p`'s and its health's.
    fn summary(&self, p: &crate::aggregate::ProcessState, old: Option<&Arc<ProcessSummary>>) -> Arc<ProcessSummary> {
        let health = self.scores.get(&p.pid);
        let health_rev = self.health_revs.get(&p.pid).copied().unwrap_or(0);
        match old {
            Some(old) if old.revs == (p.rev(), health_rev) => Arc::clone(old),
            _ => Arc::new(ProcessSummary::of(p, health, health_rev)),
        }
    }

    /// Folds the kernel maps into the aggregate and deletes entries of exited processes.
    fn drain(&mut self, now: Instant) {
        let snap = read_counters(&self.own.maps);
        let delete = self.own.agg.apply_kernel(snap, now);
        delete_exited(&mut self.own.maps, &delete);
        self.own.agg.settle_pods(now);
        self.dirty = true;
    }

    /// Decodes and applies every event waiting in the ring buffer; forwards execs and exits to
    /// discovery.
    fn drain_ring(&mut self) {
        let now = Instant::now();
        let mut decoded = std::mem::take(&mut self.decoded);
        let mut bad = 0u64;
        while let Some(item) = self.own.ring.next() {
            match decode::decode(&item) {
                Ok(ev) => decoded.push(ev),
                Err(e) => {
                    bad += 1;
                    debug!(error = %e, "undecodable ring-buffer record");
                }
            }
        }
        if decoded.is_empty() && bad == 0 {
            self.decoded = decoded;
            self.send_lives(now);
            return;
        }
        let agg = &mut self.own.agg;
        agg.decode_errors += bad;
        // Execs and exits go to discovery in batches (one wakeup, not one per process: a
        // hundred short-lived processes a second are two hundred of them).
        for ev in decoded.drain(..) {
            match ev {
                Event::Exec { tgid, .. } => self.lives.push(discovery::Life::Exec(tgid)),
                Event::Exit { tgid, .. } => self.lives.push(discovery::Life::Exit(tgid)),
                // A held process waits: at once, not with the next batch. Discovery's queue full
                // (or gone): resumed now, its file is probed when its exec is noticed.
                Event::LibsslHeld(e) => {
                    match &self.own.discovery {
                        Some(tx) => {
                            if tx.try_send(discovery::Command::LibsslHeld(e)).is_err() {
                                crate::procfs::cont(e.header.tgid);
                            }
                        }
                        None => {
                            crate::procfs::cont(e.header.tgid);
                        }
                    }
                    continue;
                }
                _ => {}
            }
            if let Some(c) = &self.own.crashes {
                use crate::snapshot::crash::Notice;
                // Exits matter to the crash workers only for processes they were told of (the
                // crash or OOM event comes first in the ring): a hundred exits a second would
                // otherwise wake a worker each.
                match &ev {
                    Event::GoCrash(e) => {
                        self.crash_noticed.insert(e.header.tgid);
                        c.notify(Notice::Crash { event: e.clone(), received: now, target: None })
                    }
                    Event::OomVictim { tgid } if self.own.go_view.borrow().is_go(*tgid) => {
                        self.crash_noticed.insert(*tgid);
                        c.notify(Notice::Oom { pid: *tgid, target: None })
                    }
                    Event::Exit { tgid, exit_code, .. } if self.crash_noticed.remove(tgid) => {
                        let (reason, code) = crate::aggregate::decode_exit_code(*exit_code, false);
                        c.notify(Notice::Exit { pid: *tgid, status: format!("{} {code}", reason.as_str()) });
                    }
                    _ => {}
                }
            }
            agg.apply(ev, now);
        }
        self.decoded = decoded;
        self.send_lives(now);
        self.dirty = true;
    }

    /// Passes the execs and exits gathered to discovery when [`LIVES_EVERY`] has passed since
    /// the last batch (or [`LIVES_MAX`] are waiting).
    fn send_lives(&mut self, now: Instant) {
        if self.lives.is_empty() || (self.lives.len() < LIVES_MAX && now.saturating_duration_since(self.lives_sent) < LIVES_EVERY) {
            return;
        }
        self.lives_sent = now;
        let lives = std::mem::take(&mut self.lives);
        if let Some(tx) = &self.own.discovery {
            let n = lives.len() as u64;
            if tx.try_send(discovery::Command::Lives(lives)).is_err() {
                self.own.agg.discovery_dropped += n;
            }
        }
    }

    fn scrape(&mut self) -> ScrapeView {
        let now = Instant::now();
        self.drain_ring();
        self.drain(now);
        let removed = self.own.agg.prune_for_scrape(now);
        self.forget(&removed);
        let o = &self.own;
        ScrapeView::with_policy(&o.agg, &self.scores, procfs::max_map_count(), &o.programs, &o.kernel, o.policy.clone(), Some(o.limiter.clone())).with_options(o.series)
    }

    /// Processes that left the aggregate: their health goes, and their series no longer count
    /// against metrics.max_series.
    fn forget(&mut self, pids: &[u32]) {
        let folds = self.own.agg.take_pruned_folds();
        if pids.is_empty() && folds.is_empty() {
            return;
        }
        let mut lim = lock(&self.own.limiter);
        for pid in pids {
            self.scores.remove(pid);
            self.health_revs.remove(pid);
            self.crash_noticed.remove(pid);
        }
        // One pass over the admitted series for all of them (one per pid was O(series) each).
        let values: std::collections::HashSet<String> = pids.iter().map(u32::to_string).collect();
        lim.release_label_values("pid", &values);
        for k in folds {
            lim.release_folded(&k.comm, &k.pod.pod, &k.pod.container);
        }
    }

    /// One health evaluation over fresh counters; breaches queue snapshots. Returns when to run
    /// the next one.
    fn evaluate_health(&mut self) -> Duration {
        let now = Instant::now();
        self.drain_ring();
        self.drain(now);
        let (results, breaches) = self.own.health.evaluate(&self.own.agg, procfs::max_map_count(), now);
        let degraded = results.iter().any(|(_, h)| h.worst() != State::Ok);
        for (pid, h) in results {
            if self.scores.get(&pid) != Some(&h) {
                self.health_rev += 1;
                self.health_revs.insert(pid, self.health_rev);
                self.health_changed.push(pid);
            }
            self.scores.insert(pid, h);
        }
        let next = self.own.health.next_interval(degraded);
        if degraded {
            debug!(next_seconds = next.as_secs_f64(), "degraded processes: evaluating sooner");
        }
        for b in breaches {
            let signals: Vec<String> = b.health.signals.iter().filter(|s| s.state != State::Ok).map(|s| format!("{}={} ({:?})", s.name, s.value, s.state)).collect();
            warn!(pid = b.pid, rule = %b.rule, score = b.health.score, signals = ?signals, "health rule breached");
            if let Some(snap) = &self.own.snapshots {
                if self.own.go_view.borrow().is_go(b.pid) {
                    let _ = snap.request(b.pid, &b.kinds, Trigger::Rule, Some(&b.rule));
                }
            }
        }
        self.dirty = true;
        next
    }
}

/// Reads every per-process counter, failure counter and program statistic, summing CPUs.
pub fn read_counters(maps: &DrainMaps) -> KernelSnapshot {
    let mut snap = KernelSnapshot::default();
    // Entries can be deleted while we iterate; such errors just skip the entry.
    for (tgid, per_cpu) in maps.counters.iter().flatten() {
        let mut sum = ProcCounters::default();
        for c in per_cpu.iter() {
            sum.accumulate(c);
        }
        snap.procs.push((tgid, sum));
    }
    for (key, per_cpu) in maps.failures.iter().flatten() {
        snap.failures.push((key, per_cpu.iter().sum()));
    }
    for prog in ProgId::ALL {
        if let Ok(per_cpu) = maps.stats.get(&(prog as u32), 0) {
            let mut sum = ProgStats::default();
            for s in per_cpu.iter() {
                sum.events += s.events;
                sum.lost_ringbuf += s.lost_ringbuf;
                sum.lost_map_full += s.lost_map_full;
            }
            snap.prog_stats.push((prog, sum));
        }
    }
    snap
}

/// Deletes the kernel entries of exited processes (their values are folded in the aggregate).
fn delete_exited(maps: &mut DrainMaps, tgids: &[u32]) {
    if tgids.is_empty() {
        return;
    }
    for tgid in tgids {
        let _ = maps.counters.remove(tgid);
    }
    let doomed: Vec<FailureKey> = maps.failures.keys().flatten().filter(|k| tgids.contains(&k.tgid)).collect();
    for k in doomed {
        let _ = maps.failures.remove(&k);
    }
}

/// Starts the /proc reader: every `every`, each live process's tracer and stop state, and its map
/// count; a count far from vm.max_map_count (under a sixteenth) is read again only after
/// [`FAR_FROM_LIMIT_EVERY`] intervals (hundreds of processes' /proc/PID/maps would otherwise be
/// read every interval, for a signal that matters near the limit).
pub fn start_proc_reader(view: watch::Receiver<Arc<View>>, tx: mpsc::SyncSender<Command>, every: Duration) -> std::io::Result<()> {
    std::thread::Builder::new().name("proc-reader".into()).spawn(move || {
        let mut next_count: HashMap<u32, Instant> = HashMap::new();
        let mut status = procfs::ProcFiles::new("status");
        loop {
            std::thread::sleep(every);
            let live: Vec<u32> = view.borrow().processes.keys().copied().collect();
            let now = Instant::now();
            let far = procfs::max_map_count().map(|m| m / 16).unwrap_or(0);
            next_count.retain(|pid, _| view.borrow().processes.contains_key(pid));
            status.retain(|pid| view.borrow().processes.contains_key(&pid));
            let mut map_counts = Vec::new();
            // Debuggers and stops: the tracer is named once seen (its comm), never for untraced ones.
            let mut debug = Vec::new();
            for &pid in &live {
                let d = procfs::debug_state_in(&mut status, pid);
                if let Some(d) = &d {
                    let comm = if d.tracer != 0 { procfs::comm(d.tracer).unwrap_or_default() } else { String::new() };
                    debug.push((pid, (d.tracer, comm), d.stopped));
                }
                if next_count.get(&pid).is_some_and(|&due| now < due) {
                    if d.is_none() && !procfs::alive(pid) {
                        map_counts.push((pid, None, false));
                    }
                    continue;
                }
                match procfs::map_count(pid) {
                    Ok(n) => {
                        let wait = if n < far { every * FAR_FROM_LIMIT_EVERY } else { every };
                        next_count.insert(pid, now + wait);
                        map_counts.push((pid, Some(n), true));
                    }
                    Err(_) => map_counts.push((pid, None, procfs::alive(pid))),
                }
            }
            if tx.send(Command::ProcReadings { map_counts, debug }).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

/// Intervals between two map-count reads of a process under a sixteenth of vm.max_map_count.
const FAR_FROM_LIMIT_EVERY: u32 = 6;
