//! The discovery thread: the one owner of the Go tracker, the goroutine-creation probes and the
//! OpenSSL tracker. It scans /proc at start, then follows execs and exits (forwarded by the
//! collector from the ring buffer), reads every tracked Go process's runtime on a timer, and
//! answers the API's creation-probe commands.
//!
//! Outputs, never imports of what is downstream: the Go targets as an immutable [`GoView`] (a
//! `watch` channel the API and the snapshotter read), and [`GoUpdate`]s handed to a sink (the
//! daemon wires it to the collector's command channel).
use std::{
    collections::{BTreeMap, HashMap},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use crate::{
    attach::Probes,
    goruntime::{
        budget, check_offsets,
        creation::{CreationProbes, CreationStatus},
        mem::{thread_cpu_time, BreakdownRead},
        Discoverer, Discovery, GoSample, GoTarget, GoTracker, ProcMem,
    },
    tls::{OpenSsl, SslLibrary},
};

/// What discovery is told.
pub enum Command {
    /// Processes that exec'd and exited (from the ring buffer, in its order).
    Lives(Vec<Life>),
    /// The kernel stopped a process at its first mapping of a libssl file it did not know.
    LibsslHeld(probe_common::LibsslHeldEvent),
    /// `POST /api/v1/targets/{pid}/creation-probes`.
    SetCreation { pid: u32, enable: bool, window: Option<Duration>, reply: oneshot::Sender<Result<Option<CreationStatus>, CreationError>> },
}

/// A process's exec or exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    Exec(u32),
    Exit(u32),
}

/// Why creation probes could not be switched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreationError {
    #[error("Go tracking is disabled in the configuration ([go] enabled = false)")]
    GoDisabled,
    #[error("process {0} is not a tracked Go process (see GET /api/v1/targets)")]
    NotTracked(u32),
    #[error("cannot switch on creation probes: {0}")]
    Attach(String),
}

/// What discovery tells the collector.
#[derive(Debug, Clone)]
pub enum GoUpdate {
    /// A Go process is tracked from now on.
    Tracked { pid: u32, go_version: String, minor: u32 },
    /// One round of runtime reads, and where the tracked processes' offsets come from.
    Samples { samples: Vec<(u32, GoSample)>, offsets_sources: BTreeMap<&'static str, u64> },
    /// The creation-probe state of each tracked process.
    Creation(Vec<(u32, Option<CreationStatus>)>),
}

/// Where [`GoUpdate`]s go.
pub type Sink = Box<dyn Fn(GoUpdate) + Send>;

/// The Go and OpenSSL targets, as of the last change.
#[derive(Debug, Clone, Default)]
pub struct GoView {
    /// None: Go tracking is off in the configuration.
    pub targets: Option<BTreeMap<u32, Arc<GoTarget>>>,
    /// None: OpenSSL probes are off in the configuration.
    pub openssl: Option<Vec<SslLibrary>>,
    /// None: holds are off (or OpenSSL probes are).
    pub openssl_holds: Option<crate::tls::hold::HoldStats>,
}

impl GoView {
    pub fn target(&self, pid: u32) -> Option<&GoTarget> {
        self.targets.as_ref()?.get(&pid).map(|t| &**t)
    }

    pub fn is_go(&self, pid: u32) -> bool {
        self.target(pid).is_some()
    }
}

/// What discovery owns.
pub struct Trackers {
    pub go: Option<GoTracker>,
    pub creation: Option<CreationProbes>,
    pub openssl: Option<OpenSsl>,
    pub probes: Arc<Mutex<Probes>>,
    /// How often tracked Go processes' runtimes are read.
    pub read_interval: Duration,
    /// The runtime reads' share of one core (`[go] read_cpu_budget`): the every-round reads take
    /// at most half (the interval stretches), the goroutine-state breakdowns the rest.
    pub read_cpu_budget: f64,
    /// The shortest period of a process's goroutine-state breakdown once its O(P) count is
    /// verified (`[go] goroutine_states_interval_seconds`).
    pub states_interval: Duration,
    /// Every g of every process at every interval (`[go] every_g_read_each_interval`, the
    /// benchmark's baseline): no O(P) count, no budget.
    pub every_g_read: bool,
}

/// The read interval is stretched at most this many times (`[go] read_interval_seconds`) to keep
/// the every-round reads within half the read budget.
const MAX_STRETCH: f64 = 6.0;
/// The longest time between two breakdown reads of a process (whatever the budget says).
const MAX_BREAKDOWN_PERIOD: Duration = Duration::from_secs(86_400);
/// Consecutive disagreements between the O(P) count and an every-g read after which the O(P)
/// count is given up for a process.
const DISAGREEMENTS: u32 = 5;

/// Goroutines by (state, wait reason).
type ByState = BTreeMap<(&'static str, String), u64>;

/// What the reader keeps per process between reads.
#[derive(Debug, Default)]
struct ReadState {
    /// The last breakdown by state and when it was read.
    last: Option<(Arc<ByState>, BreakdownRead)>,
    /// The O(P) count agreed with an every-g read of this process (until then the every-g
    /// count is published, and the breakdown is read every interval).
    verified: bool,
    disagreements: u32,
    /// Why this process's goroutines are counted by reading every g, once the O(P) count was
    /// given up for it.
    fallback: Option<String>,
    /// Where its Ps are: the O(P) read in one system call.
    allp: crate::goruntime::mem::AllpCache,
}

impl ReadState {
    /// One more disagreement (or failed read) of the O(P) count; the reason, once this gives the
    /// O(P) count up for the process.
    fn disagree(&mut self, why: String) -> Option<String> {
        self.disagreements += 1;
        if self.disagreements < DISAGREEMENTS || self.fallback.is_some() {
            return None;
        }
        let why = format!("{why} ({DISAGREEMENTS} reads in a row)");
        self.fallback = Some(why.clone());
        Some(why)
    }

    /// Whether the breakdown is to be read now.
    fn due(&self, now: Instant) -> bool {
        match &self.last {
            None => true,
            Some((_, r)) => !self.verified || self.fallback.is_some() || now >= r.at + r.period,
        }
    }
}

/// Whether an every-g count `every_g` confirms O(P) counts read just before and after it: the
/// goroutines may come and go while every g is read.
fn counts_agree(before: i64, after: i64, every_g: i64) -> bool {
    let (lo, hi) = (before.min(after), before.max(after));
    // A wrong free-list offset is off by the free lists (or reads garbage, refused earlier as
    // implausible); goroutines that come and go while every g is read move the count less.
    let slack = 16 + hi / 20;
    every_g >= lo - slack && every_g <= hi + slack
}

struct Thread {
    own: Trackers,
    discoverer: Discoverer,
    sink: Sink,
    view: watch::Sender<Arc<GoView>>,
    next_read: Instant,
    /// The read interval as the budget lets it be (`read_interval`, longer on a node with many
    /// Go processes).
    read_every: Duration,
    reads: HashMap<u32, ReadState>,
    /// The Go targets changed since the last publish (a view is a copy of every target: on a
    /// node with hundreds of Go processes and a hundred execs a second of other programs, copying
    /// it after every exec was most of the daemon's CPU).
    dirty: bool,
    /// The OpenSSL libraries and holds as last published.
    published_ssl: Option<Vec<SslLibrary>>,
    published_holds: Option<crate::tls::hold::HoldStats>,
}

/// Starts the discovery thread; it ends when every sender of `rx` is gone.
pub fn start(own: Trackers, rx: mpsc::Receiver<Command>, sink: Sink) -> std::io::Result<watch::Receiver<Arc<GoView>>> {
    let (view, view_rx) = watch::channel(Arc::new(GoView::default()));
    let mut t = Thread {
        next_read: Instant::now() + own.read_interval,
        read_every: own.read_interval,
        own,
        discoverer: Discoverer::default(),
        sink,
        view,
        reads: HashMap::new(),
        dirty: true,
        published_ssl: None,
        published_holds: None,
    };
    t.publish();
    std::thread::Builder::new().name("discovery".into()).spawn(move || t.run(rx))?;
    Ok(view_rx)
}

impl Thread {
    fn run(&mut self, rx: mpsc::Receiver<Command>) {
        let started = Instant::now();
        let pids: Vec<u32> = std::fs::read_dir("/proc")
            .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        let me = std::process::id();
        let mut found = 0;
        for pid in pids.into_iter().filter(|&p| p != me) {
            // New processes first: the scan of old ones must not delay their discovery.
            while let Ok(cmd) = rx.try_recv() {
                self.handle(cmd);
            }
            if let Some(o) = &mut self.own.openssl {
                o.consider(pid);
            }
            if self.consider(pid) == Discovery::Tracked {
                found += 1;
            }
            self.read_if_due();
        }
        self.publish();
        info!(found, elapsed_ms = started.elapsed().as_millis() as u64, "Go processes found at start");
        loop {
            let now = Instant::now();
            // OpenSSL rechecks of processes that had no libssl mapped yet at exec.
            let recheck = self.own.openssl.as_mut().and_then(|o| o.recheck_due(now));
            let reads = self.own.go.as_ref().map(|_| self.next_read);
            let wake = [recheck, reads].into_iter().flatten().min();
            let wait = wake.map(|t| t.saturating_duration_since(now)).unwrap_or(Duration::from_secs(3600));
            match rx.recv_timeout(wait) {
                Ok(cmd) => {
                    self.handle(cmd);
                    // A burst of execs: take what is queued before publishing.
                    while let Ok(cmd) = rx.try_recv() {
                        self.handle(cmd);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            self.read_if_due();
            self.publish();
        }
    }

    /// Publishes a new view when the Go targets or the OpenSSL libraries changed.
    fn publish(&mut self) {
        let openssl = self.own.openssl.as_ref().map(|o| o.libraries());
        let holds = self.own.openssl.as_ref().and_then(|o| o.hold_stats());
        let ssl_same = match (&openssl, &self.published_ssl) {
            (None, None) => true,
            (Some(a), Some(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.path == y.path && x.pids == y.pids),
            _ => false,
        };
        if !self.dirty && ssl_same && holds == self.published_holds {
            return;
        }
        self.published_holds = holds.clone();
        let view = GoView { targets: self.own.go.as_ref().map(|g| g.targets().map(|t| (t.pid, Arc::clone(t))).collect()), openssl: openssl.clone(), openssl_holds: holds };
        self.view.send_replace(Arc::new(view));
        self.published_ssl = openssl;
        self.dirty = false;
    }

    fn consider(&mut self, pid: u32) -> Discovery {
        let Some(go) = &mut self.own.go else { return Discovery::NotGo };
        let outcome = match self.discoverer.inspect(go, pid) {
            Ok(ins) => go.track(ins),
            Err(d) => d,
        };
        if outcome == Discovery::Tracked {
            self.dirty = true;
            if let Some(t) = go.target(pid) {
                let minor = t.layout.as_ref().map(|l| l.minor).unwrap_or_else(|| minor_of(&t.go_version));
                (self.sink)(GoUpdate::Tracked { pid, go_version: t.go_version.clone(), minor });
            }
        }
        outcome
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Lives(lives) => {
                // A process whose exit is in the same batch as its exec is gone: nothing of it
                // to inspect or attach (most short-lived processes; reading /proc of a gone pid
                // costs a failed lookup each, several per exec).
                // Each pid's last exit in the batch: one pass, not a search per exec (a batch of
                // an exec storm holds thousands).
                let last_exit: HashMap<u32, usize> = lives.iter().enumerate().filter_map(|(i, l)| if let Life::Exit(p) = l { Some((*p, i)) } else { None }).collect();
                for (i, life) in lives.iter().enumerate() {
                    if let Life::Exec(pid) = life {
                        if last_exit.get(pid).is_some_and(|&at| at > i) {
                            continue;
                        }
                    }
                    self.life(*life);
                }
            }
            Command::LibsslHeld(ev) => match &mut self.own.openssl {
                Some(o) => {
                    o.held(&ev);
                    self.dirty = true;
                }
                // No OpenSSL tracker: never leave the process stopped.
                None => {
                    crate::procfs::cont(ev.header.tgid);
                }
            },
            Command::SetCreation { pid, enable, window, reply } => {
                let result = self.set_creation(pid, enable, window);
                self.dirty = true;
                if let Ok(status) = &result {
                    (self.sink)(GoUpdate::Creation(vec![(pid, status.clone())]));
                }
                let _ = reply.send(result);
            }
        }
    }

    fn life(&mut self, life: Life) {
        match life {
            Life::Exec(pid) => {
                if let Some(o) = &mut self.own.openssl {
                    o.on_exec(pid, Instant::now());
                }
                self.consider(pid);
            }
            Life::Exit(pid) => {
                if let Some(o) = &mut self.own.openssl {
                    o.forget(pid);
                }
                if let Some(go) = &mut self.own.go {
                    if go.target(pid).is_some() {
                        go.forget(pid);
                        self.dirty = true;
                    }
                }
            }
        }
    }

    fn set_creation(&mut self, pid: u32, enable: bool, window: Option<Duration>) -> Result<Option<CreationStatus>, CreationError> {
        let (Some(go), Some(creation)) = (&self.own.go, &mut self.own.creation) else { return Err(CreationError::GoDisabled) };
        let t = go.target(pid).cloned().ok_or(CreationError::NotTracked(pid))?;
        if enable {
            creation.enable(&self.own.probes, &t, "requested through the API".into(), window).map_err(CreationError::Attach)?;
        } else {
            creation.disable(&self.own.probes, pid, "requested through the API");
        }
        Ok(creation.status(pid).cloned())
    }

    fn read_if_due(&mut self) {
        if self.own.go.is_none() || Instant::now() < self.next_read {
            return;
        }
        self.read_go();
        self.dirty = true;
        // A slow round delays the next, never overlaps.
        self.next_read = Instant::now() + self.read_every;
    }

    /// Reads every tracked Go process's runtime state, then lets the creation probes react.
    fn read_go(&mut self) {
        let Some(go) = &mut self.own.go else { return };
        // Offsets not yet checked on a live process: check one process per binary.
        for (pid, key, bin, layout) in go.pending_checks() {
            let verdict = check_offsets(pid, &bin, &layout);
            go.record_verdict(key, pid, verdict);
        }
        let now = Instant::now();
        let interval = self.read_every;
        let round_start = thread_cpu_time();
        let mut breakdowns_cpu = Duration::ZERO;
        let readable = go.readable();
        let readable_pids: std::collections::HashSet<u32> = readable.iter().map(|t| t.pid).collect();
        self.reads.retain(|pid, _| readable_pids.contains(pid));
        let mut samples = Vec::new();
        let mut counts = Vec::new();
        for t in &readable {
            let Some(layout) = &t.layout else { continue };
            let pid = t.pid;
            let mem = ProcMem::lazy(pid);
            if self.own.every_g_read && !self.reads.contains_key(&pid) {
                go.set_count_method(pid, "every g read at every interval ([go] every_g_read_each_interval = true)".into());
            }
            let st = self.reads.entry(pid).or_default();
            let counters = match mem.counters_with(layout, &mut st.allp) {
                Ok(c) => c,
                Err(e) => {
                    debug!(pid, error = %e, "Go runtime read failed");
                    continue;
                }
            };
            let mut count = counters.goroutines.filter(|_| !self.own.every_g_read && st.fallback.is_none());
            if let (Some(e), None, false) = (&counters.count_error, &st.fallback, self.own.every_g_read) {
                debug!(pid, error = %e, "the O(P) goroutine count could not be read");
                if let Some(why) = st.disagree(format!("the runtime's counters could not be read ({e})")) {
                    warn!(pid, reason = %why, "Go goroutines of this process are counted by reading every g from now on (O(goroutines) per read)");
                    go.set_count_method(pid, format!("every g read (O(goroutines)): {why}"));
                }
            }
            if self.own.every_g_read || count.is_none() || st.due(now) {
                let t0 = thread_cpu_time();
                let b = mem.breakdown(layout);
                let cpu = thread_cpu_time().saturating_sub(t0);
                breakdowns_cpu += cpu;
                match b {
                    Ok(b) => {
                        if let Some(before) = count {
                            // The O(P) count is trusted once an every-g read confirms it, and
                            // checked again at every breakdown.
                            let after = mem.counters_with(layout, &mut st.allp).ok().and_then(|c| c.goroutines).unwrap_or(before);
                            if counts_agree(before, after, b.goroutines) {
                                st.verified = true;
                                st.disagreements = 0;
                            } else {
                                debug!(pid, before, after, every_g = b.goroutines, "the O(P) goroutine count disagrees with the every-g read");
                                let why = format!(
                                    "the runtime's counters gave {before}..{after} goroutines where reading every g counted {}: its free-list offsets do not fit this binary",
                                    b.goroutines
                                );
                                if let Some(why) = st.disagree(why) {
                                    warn!(pid, reason = %why, "Go goroutines of this process are counted by reading every g from now on (O(goroutines) per read)");
                                    go.set_count_method(pid, format!("every g read (O(goroutines)): {why}"));
                                }
                            }
                            if !st.verified || st.fallback.is_some() {
                                count = Some(b.goroutines);
                            }
                        } else {
                            count = Some(b.goroutines);
                        }
                        let period = st.last.as_ref().map(|(_, r)| r.period).unwrap_or(interval);
                        st.last = Some((Arc::new(b.by_state), BreakdownRead { at: now, cpu, period }));
                    }
                    Err(e) => {
                        debug!(pid, error = %e, "Go goroutine breakdown read failed");
                        if !st.verified {
                            count = None;
                        }
                    }
                }
            }
            let Some(goroutines) = count else { continue };
            counts.push((pid, goroutines));
            let (by_state, breakdown) = match &st.last {
                Some((m, r)) => (Arc::clone(m), Some(*r)),
                None => (Arc::default(), None),
            };
            samples.push((
                pid,
                GoSample {
                    goroutines,
                    by_state,
                    breakdown,
                    goidgen: counters.goidgen,
                    numgc: counters.numgc,
                    heap_live: counters.heap_live,
                    heap_goal: counters.heap_goal,
                    read_at: Some(now),
                    read_interval: interval,
                },
            ));
        }
        // What is read of every process at every round (O(P) each, but hundreds of processes)
        // takes at most half of the budget: the round's interval stretches when it would take
        // more; the breakdowns share what it leaves.
        let counters_cpu = thread_cpu_time().saturating_sub(round_start).saturating_sub(breakdowns_cpu).as_secs_f64();
        let budget = self.own.read_cpu_budget;
        let base = self.own.read_interval.as_secs_f64();
        let stretched = if budget > 0.0 { (counters_cpu / (budget / 2.0)).clamp(base, base * MAX_STRETCH) } else { base };
        if (stretched - self.read_every.as_secs_f64()).abs() > base / 10.0 {
            debug!(processes = samples.len(), round_cpu_ms = counters_cpu * 1e3, interval_seconds = stretched, "Go runtime read interval follows the read budget");
            self.read_every = Duration::from_secs_f64(stretched);
        }
        let counters_rate = counters_cpu / self.read_every.as_secs_f64();
        // The next breakdown of each process, from what the last ones cost.
        if !self.own.every_g_read {
            let pids: Vec<u32> = self.reads.iter().filter(|(_, s)| s.last.is_some()).map(|(p, _)| *p).collect();
            let demands: Vec<budget::Demand> = pids
                .iter()
                .map(|p| {
                    let s = &self.reads[p];
                    let cost = s.last.as_ref().map(|(_, r)| r.cpu.as_secs_f64()).unwrap_or(0.0);
                    budget::Demand { cost, forced: !s.verified || s.fallback.is_some() }
                })
                .collect();
            let shortest = self.own.states_interval.as_secs_f64();
            let periods = budget::periods(&demands, self.read_every.as_secs_f64(), shortest, (budget - counters_rate).max(budget / 2.0));
            for (pid, period) in pids.iter().zip(periods) {
                let period = Duration::try_from_secs_f64(period).unwrap_or(MAX_BREAKDOWN_PERIOD).min(MAX_BREAKDOWN_PERIOD);
                if let Some((_, r)) = self.reads.get_mut(pid).and_then(|s| s.last.as_mut()) {
                    r.period = period;
                }
            }
            for (pid, s) in samples.iter_mut() {
                let pid = *pid;
                if let (Some(b), Some((_, r))) = (s.breakdown.as_mut(), self.reads.get(&pid).and_then(|s| s.last.as_ref())) {
                    b.period = r.period;
                }
            }
        }
        (self.sink)(GoUpdate::Samples { samples, offsets_sources: go.offsets_sources() });
        if let Some(creation) = &mut self.own.creation {
            let targets: Vec<Arc<GoTarget>> = go.targets().cloned().collect();
            creation.tick(&self.own.probes, &targets, &counts);
            (self.sink)(GoUpdate::Creation(targets.iter().map(|t| (t.pid, creation.status(t.pid).cloned())).collect()));
        }
    }
}

fn minor_of(version: &str) -> u32 {
    version.trim_start_matches("go").split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_agree_within_the_churn_of_the_read() {
        assert!(counts_agree(1000, 1000, 1000));
        // Goroutines exited while every g was read: between the two O(P) reads.
        assert!(counts_agree(1200, 1000, 1100));
        assert!(counts_agree(500_000, 500_000, 500_000 + 5_000));
        // A count that misses the free lists (a wrong offset) is off by them.
        assert!(!counts_agree(1000, 1000, 1200));
        assert!(!counts_agree(41, 41, 241));
        assert!(!counts_agree(10_000, 10_000, 12_000));
        assert!(!counts_agree(241, 241, 41));
    }

    #[test]
    fn a_breakdown_is_due_first_then_by_its_period_once_the_count_is_verified() {
        let now = Instant::now();
        let mut s = ReadState::default();
        assert!(s.due(now), "never read");
        s.last = Some((Arc::default(), BreakdownRead { at: now, cpu: Duration::ZERO, period: Duration::from_secs(60) }));
        assert!(s.due(now + Duration::from_secs(5)), "not verified yet: every interval");
        s.verified = true;
        assert!(!s.due(now + Duration::from_secs(5)));
        assert!(s.due(now + Duration::from_secs(60)));
        for i in 1..DISAGREEMENTS {
            assert_eq!(s.disagree(format!("wrong {i}")), None, "not given up after {i}");
        }
        assert_eq!(s.disagree("wrong".into()).as_deref(), Some("wrong (5 reads in a row)"));
        assert_eq!(s.disagree("again".into()), None, "given up once");
        assert!(s.due(now + Duration::from_secs(5)), "counted from every g: every interval");
    }
}
