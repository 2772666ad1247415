//! The discovery thread: the one owner of the Go tracker, the goroutine-creation probes and the
//! OpenSSL tracker. It scans /proc at start, then follows execs and exits (forwarded by the
//! collector from the ring buffer), reads every tracked Go process's runtime on a timer, and
//! answers the API's creation-probe commands.
//!
//! Outputs, never imports of what is downstream: the Go targets as an immutable [`GoView`] (a
//! `watch` channel the API and the snapshotter read), and [`GoUpdate`]s handed to a sink (the
//! daemon wires it to the collector's command channel).
use std::{
    collections::BTreeMap,
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{oneshot, watch};
use tracing::{debug, info};

use crate::{
    attach::Probes,
    goruntime::{
        check_offsets,
        creation::{CreationProbes, CreationStatus},
        Discoverer, Discovery, GoSample, GoTarget, GoTracker, ProcMem,
    },
    tls::{OpenSsl, SslLibrary},
};

/// What discovery is told.
pub enum Command {
    /// A process exec'd (from the ring buffer).
    Exec(u32),
    /// A process exited.
    Exit(u32),
    /// `POST /api/v1/targets/{pid}/creation-probes`.
    SetCreation { pid: u32, enable: bool, window: Option<Duration>, reply: oneshot::Sender<Result<Option<CreationStatus>, CreationError>> },
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
    pub targets: Option<BTreeMap<u32, GoTarget>>,
    /// None: OpenSSL probes are off in the configuration.
    pub openssl: Option<Vec<SslLibrary>>,
}

impl GoView {
    pub fn target(&self, pid: u32) -> Option<&GoTarget> {
        self.targets.as_ref()?.get(&pid)
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
}

struct Thread {
    own: Trackers,
    discoverer: Discoverer,
    sink: Sink,
    view: watch::Sender<Arc<GoView>>,
    next_read: Instant,
}

/// Starts the discovery thread; it ends when every sender of `rx` is gone.
pub fn start(own: Trackers, rx: mpsc::Receiver<Command>, sink: Sink) -> std::io::Result<watch::Receiver<Arc<GoView>>> {
    let (view, view_rx) = watch::channel(Arc::new(GoView::default()));
    let mut t = Thread { next_read: Instant::now() + own.read_interval, own, discoverer: Discoverer::default(), sink, view };
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

    fn publish(&self) {
        let view = GoView {
            targets: self.own.go.as_ref().map(|g| g.targets().map(|t| (t.pid, t.clone())).collect()),
            openssl: self.own.openssl.as_ref().map(|o| o.libraries()),
        };
        self.view.send_replace(Arc::new(view));
    }

    fn consider(&mut self, pid: u32) -> Discovery {
        let Some(go) = &mut self.own.go else { return Discovery::NotGo };
        let outcome = match self.discoverer.inspect(go, pid) {
            Ok(ins) => go.track(ins),
            Err(d) => d,
        };
        if outcome == Discovery::Tracked {
            if let Some(t) = go.target(pid) {
                let minor = t.layout.as_ref().map(|l| l.minor).unwrap_or_else(|| minor_of(&t.go_version));
                (self.sink)(GoUpdate::Tracked { pid, go_version: t.go_version.clone(), minor });
            }
        }
        outcome
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Exec(pid) => {
                if let Some(o) = &mut self.own.openssl {
                    o.on_exec(pid, Instant::now());
                }
                self.consider(pid);
            }
            Command::Exit(pid) => {
                if let Some(o) = &mut self.own.openssl {
                    o.forget(pid);
                }
                if let Some(go) = &mut self.own.go {
                    go.forget(pid);
                }
            }
            Command::SetCreation { pid, enable, window, reply } => {
                let result = self.set_creation(pid, enable, window);
                if let Ok(status) = &result {
                    (self.sink)(GoUpdate::Creation(vec![(pid, status.clone())]));
                }
                let _ = reply.send(result);
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
        // A slow round delays the next, never overlaps.
        self.next_read = Instant::now() + self.own.read_interval;
    }

    /// Reads every tracked Go process's runtime state, then lets the creation probes react.
    fn read_go(&mut self) {
        let Some(go) = &mut self.own.go else { return };
        go.refresh_crash_pauses();
        // Offsets not yet checked on a live process: check one process per binary.
        for (pid, key, bin, layout) in go.pending_checks() {
            let verdict = check_offsets(pid, &bin, &layout);
            go.record_verdict(key, pid, verdict);
        }
        let mut samples = Vec::new();
        let mut counts = Vec::new();
        for (pid, layout) in go.readable() {
            match ProcMem::open(pid).and_then(|m| m.sample(&layout)) {
                Ok(sample) => {
                    counts.push((pid, sample.goroutines));
                    samples.push((pid, sample));
                }
                Err(e) => debug!(pid, error = %e, "Go runtime read failed"),
            }
        }
        (self.sink)(GoUpdate::Samples { samples, offsets_sources: go.offsets_sources() });
        if let Some(creation) = &mut self.own.creation {
            let targets: Vec<GoTarget> = go.targets().cloned().collect();
            creation.tick(&self.own.probes, &targets, &counts);
            (self.sink)(GoUpdate::Creation(targets.iter().map(|t| (t.pid, creation.status(t.pid).cloned())).collect()));
        }
    }
}

fn minor_of(version: &str) -> u32 {
    version.trim_start_matches("go").split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0)
}
