//! `chainprobe run`: checks the kernel, loads and attaches the programs, then runs the collector
//! (ring buffer, periodic drains, /proc readings) and the HTTP server until SIGTERM or SIGINT.
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, OnceLock, Weak,
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use probe_common::{FailureKey, ProcCounters, ProgStats};
use tracing::{debug, error, info, warn};

use crate::{
    aggregate::Aggregate,
    api::{self, ApiAuth, ApiState, RateLimiter},
    attach::{self, KernelMaps, ProgramStatus},
    config::Config,
    events::{self, Event},
    goruntime::{
        creation::{CreationProbes, CreationStatus},
        Discoverer, Discovery, GoTracker, ProcMem,
    },
    health::{HealthEngine, State},
    kernel::{self, Status},
    k8s::{LabelPolicy, PodResolver, SeriesLimiter},
    metrics::ScrapeView,
    snapshot::{Snapshotter, TargetInfo, Trigger},
};

/// What the ring-buffer reader tells Go discovery.
enum Lifecycle {
    Exec(u32),
    Exit(u32),
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("this machine cannot run chainprobe:\n{0}\n(`chainprobe check` lists everything it looked at)")]
    Requirements(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Attach(#[from] attach::AttachError),
    #[error("cannot listen on {addr}: {source} (choose another address with --listen or [server] listen)")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot start the Go discovery thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Kubernetes(#[from] crate::k8s::K8sError),
    #[error(transparent)]
    Snapshots(#[from] crate::snapshot::store::StoreError),
}

/// The per-CPU maps the collector drains.
struct DrainMaps {
    counters: PerCpuHashMap<MapData, u32, ProcCounters>,
    failures: PerCpuHashMap<MapData, FailureKey, u64>,
    stats: PerCpuArray<MapData, ProgStats>,
}

/// State shared by the collector tasks and the HTTP handlers.
struct Shared {
    agg: Mutex<Aggregate>,
    /// Rare events; drained every EVENTS_POLL_MS and before each scrape (the kernel side does
    /// not wake us: a wake-up per event would cost more than the event).
    ring: Mutex<RingBuf<MapData>>,
    maps: Mutex<DrainMaps>,
    programs: Vec<ProgramStatus>,
    kernel: String,
    serving: AtomicBool,
    go: Option<Arc<Mutex<GoTracker>>>,
    /// OpenSSL libraries found in process mappings (issue #6), when enabled.
    openssl: Option<Mutex<crate::tls::OpenSsl>>,
    creation: Option<Mutex<CreationProbes>>,
    probes: Arc<Mutex<attach::Probes>>,
    lifecycle: Option<std::sync::mpsc::SyncSender<Lifecycle>>,
    pods: Arc<PodResolver>,
    policy: LabelPolicy,
    limiter: Arc<Mutex<SeriesLimiter>>,
    health: Mutex<HealthEngine>,
    /// Set once at start (the snapshotter looks processes up through a weak handle to this).
    snapshots: OnceLock<Arc<Snapshotter>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent-enough counters; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Folds the kernel maps into the aggregate and deletes entries of exited processes.
    fn drain(&self, now: Instant) {
        let mut maps = lock(&self.maps);
        let snap = events::snapshot(&maps.counters, &maps.failures, &maps.stats);
        let delete = lock(&self.agg).apply_kernel(snap, now);
        let DrainMaps { counters, failures, .. } = &mut *maps;
        events::delete_exited(counters, failures, &delete);
    }

    /// Decodes and applies every event waiting in the ring buffer.
    fn drain_ring(&self) {
        let now = Instant::now();
        let mut decoded = Vec::new();
        let mut bad = 0u64;
        {
            let mut ring = lock(&self.ring);
            while let Some(item) = ring.next() {
                match events::decode(&item) {
                    Ok(ev) => decoded.push(ev),
                    Err(e) => {
                        bad += 1;
                        debug!(error = %e, "undecodable ring-buffer record");
                    }
                }
            }
        }
        if decoded.is_empty() && bad == 0 {
            return;
        }
        let mut agg = lock(&self.agg);
        agg.decode_errors += bad;
        for ev in decoded {
            if let Some(tx) = &self.lifecycle {
                let msg = match ev {
                    Event::Exec { tgid, .. } => Some(Lifecycle::Exec(tgid)),
                    Event::Exit { tgid, .. } => Some(Lifecycle::Exit(tgid)),
                    _ => None,
                };
                if let Some(m) = msg {
                    if tx.try_send(m).is_err() {
                        agg.discovery_dropped += 1;
                    }
                }
            }
            events::apply(&mut agg, ev, now);
        }
    }

    fn render(&self) -> Result<String, String> {
        let now = Instant::now();
        self.drain_ring();
        self.drain(now);
        let view = {
            let mut agg = lock(&self.agg);
            let removed = agg.prune_for_scrape(now);
            self.release_series(&removed);
            ScrapeView::with_policy(&agg, &self.programs, &self.kernel, self.policy.clone(), Some(self.limiter.clone()))
        };
        let view = view.with_snapshots(self.snapshots.get().map(|s| s.stats()));
        view.render().map_err(|e| e.to_string())
    }

    /// The series of processes that are gone no longer count against metrics.max_series.
    fn release_series(&self, pids: &[u32]) {
        if pids.is_empty() {
            return;
        }
        let mut lim = lock(&self.limiter);
        for pid in pids {
            lim.release_label("pid", &pid.to_string());
        }
    }

    /// `GET /api/v1/targets`: every tracked Go process with its probes and latest runtime read.
    fn targets(&self) -> serde_json::Value {
        let mut v = self.go_targets();
        // OpenSSL libraries probed (issue #6).
        v["openssl_libraries"] = match &self.openssl {
            Some(o) => serde_json::json!(lock(o).libraries()),
            None => serde_json::json!("disabled in the configuration ([tls] openssl = false)"),
        };
        v
    }

    fn go_targets(&self) -> serde_json::Value {
        let Some(go) = &self.go else {
            return serde_json::json!({ "targets": [], "go_tracking": "disabled in the configuration ([go] enabled = false)" });
        };
        let targets: Vec<crate::goruntime::GoTarget> = lock(go).targets().cloned().collect();
        let agg = lock(&self.agg);
        let mut out: Vec<serde_json::Value> = targets
            .into_iter()
            .map(|t| {
                let p = agg.process(t.pid);
                let g = p.and_then(|p| p.go.as_ref());
                let s = g.and_then(|g| g.sample.as_ref());
                let pod = p.and_then(|p| p.pod.clone()).filter(|l| !l.pod.is_empty());
                serde_json::json!({
                    "pid": t.pid,
                    "comm": p.map(|p| p.comm.clone()),
                    "namespace": pod.as_ref().map(|l| l.namespace.clone()),
                    "pod": pod.as_ref().map(|l| l.pod.clone()),
                    "container": pod.as_ref().map(|l| l.container.clone()),
                    "health": p.and_then(|p| p.health.clone()),
                    "exe": t.exe,
                    "go_version": t.go_version,
                    "build": { "pie": t.pie, "stripped": t.stripped, "link_mode": t.link_mode },
                    "abi": t.abi,
                    "supported": t.supported,
                    "probes": t.probes,
                    "creation_probes": g.and_then(|g| g.creation.clone()).unwrap_or_else(|| CreationStatus {
                        active: false,
                        reason: "off: goroutines are counted from memory reads; the per-goroutine probes switch on for a suspected leak or on request".into(),
                        ..Default::default()
                    }),
                    "runtime_reads": match (&t.reads_error, &t.layout) { (Some(e), _) => e.clone(), (None, Some(_)) => "ok".to_string(), (None, None) => t.offsets.validation.clone() },
                    "offsets": t.offsets,
                    "runtime": {
                        "goroutines": s.map(|s| s.goroutines),
                        "goroutines_created": s.map(|s| s.goidgen),
                        "gc_cycles_probed": g.map(|g| g.gc_cycles),
                        "gc_cycles_memstats": s.map(|s| s.numgc),
                        "stw_pauses_probed": g.map(|g| g.stw_count),
                        "heap_live_bytes": s.map(|s| s.heap_live),
                        "heap_goal_bytes": s.map(|s| s.heap_goal),
                    },
                })
            })
            .collect();
        out.sort_by_key(|v| v["pid"].as_u64());
        serde_json::json!({ "targets": out })
    }

    /// `POST /api/v1/targets/{pid}/creation-probes`: switches a process's creation probes.
    fn set_creation(&self, pid: u32, enable: bool, seconds: Option<f64>) -> Result<serde_json::Value, (u16, String)> {
        let (Some(go), Some(creation)) = (&self.go, &self.creation) else {
            return Err((409, "Go tracking is disabled in the configuration ([go] enabled = false)".into()));
        };
        let Some(t) = lock(go).target(pid).cloned() else {
            return Err((404, format!("process {pid} is not a tracked Go process (see GET /api/v1/targets)")));
        };
        let window = match seconds {
            Some(s) if !(s.is_finite() && s > 0.0 && s <= 3600.0) => {
                return Err((400, "seconds must be between 0 and 3600".into()));
            }
            Some(s) => Some(Duration::from_secs_f64(s)),
            None => None,
        };
        let status = {
            let mut c = lock(creation);
            if enable {
                c.enable(&self.probes, &t, "requested through the API".into(), window).map_err(|e| (422, format!("cannot switch on creation probes: {e}")))?;
            } else {
                c.disable(&self.probes, pid, "requested through the API");
            }
            c.status(pid).cloned()
        };
        lock(&self.agg).set_go_creation(pid, status.clone());
        Ok(serde_json::json!({ "pid": pid, "creation_probes": status }))
    }

    /// One health evaluation over fresh counters; breaches queue snapshots. Returns when to run
    /// the next one.
    fn evaluate_health(&self) -> Duration {
        let now = Instant::now();
        self.drain_ring();
        self.drain(now);
        let max_maps = crate::procfs::max_map_count();
        let (breaches, degraded, next) = {
            let mut engine = lock(&self.health);
            let mut agg = lock(&self.agg);
            let (results, breaches) = engine.evaluate(&agg, max_maps, now);
            let degraded = results.iter().any(|(_, h)| h.worst() != State::Ok);
            agg.set_health(results);
            (breaches, degraded, engine.next_interval(degraded))
        };
        if degraded {
            debug!(next_seconds = next.as_secs_f64(), "degraded processes: evaluating sooner");
        }
        for b in breaches {
            let signals: Vec<String> = b.health.signals.iter().filter(|s| s.state != State::Ok).map(|s| format!("{}={} ({:?})", s.name, s.value, s.state)).collect();
            warn!(pid = b.pid, rule = %b.rule, score = b.health.score, signals = ?signals, "health rule breached");
            if let Some(snap) = self.snapshots.get() {
                let is_go = self.go.as_ref().is_some_and(|g| lock(g).target(b.pid).is_some());
                if is_go {
                    let _ = snap.request(b.pid, &b.kinds, Trigger::Rule, Some(&b.rule));
                }
            }
        }
        next
    }

    /// What the snapshotter needs to know of `pid`.
    fn target_info(&self, pid: u32) -> Option<TargetInfo> {
        let go = self.go.as_ref().and_then(|g| lock(g).target(pid).cloned());
        let agg = lock(&self.agg);
        let p = agg.process(pid).filter(|p| p.exit.is_none());
        if p.is_none() && go.is_none() {
            return None;
        }
        Some(TargetInfo {
            pid,
            comm: p.map(|p| p.comm.clone()).or_else(|| crate::procfs::comm(pid)).unwrap_or_else(|| "unknown".into()),
            pod: p.and_then(|p| p.pod.clone()),
            go,
            health: p.and_then(|p| p.health.clone()),
            pprof_port: p.and_then(|p| p.pprof_port),
        })
    }

    /// The tracked Go process in a pod (and container).
    fn find_target(&self, namespace: &str, pod: &str, container: Option<&str>) -> Result<u32, (u16, String)> {
        let go: Vec<u32> = match &self.go {
            Some(g) => lock(g).targets().map(|t| t.pid).collect(),
            None => return Err((409, "Go tracking is disabled in the configuration ([go] enabled = false)".into())),
        };
        let agg = lock(&self.agg);
        let mut pids: Vec<u32> = go
            .into_iter()
            .filter(|pid| {
                agg.process(*pid).and_then(|p| p.pod.as_ref()).is_some_and(|l| l.namespace == namespace && l.pod == pod && container.is_none_or(|c| l.container == c))
            })
            .collect();
        pids.sort_unstable();
        match pids.as_slice() {
            [] => Err((404, format!("no tracked Go process in pod {namespace}/{pod}{}", container.map(|c| format!(" container {c}")).unwrap_or_default()))),
            [pid] => Ok(*pid),
            many => Err((409, format!("pod {namespace}/{pod} has several Go processes ({many:?}): name the container or the pid"))),
        }
    }

    fn readiness(&self) -> Result<(), Vec<String>> {
        let mut reasons: Vec<String> = self
            .programs
            .iter()
            .filter(|p| !p.attached && !p.prog.optional())
            .map(|p| format!("program {} not attached: {}", p.prog.program_name(), p.error.as_deref().unwrap_or("unknown")))
            .collect();
        if !self.serving.load(Ordering::Relaxed) {
            reasons.push("HTTP server starting".into());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    cfg.validate()?;

    let failures: Vec<String> = kernel::check()
        .into_iter()
        .filter(|i| i.status == Status::Fail)
        .map(|i| i.to_string())
        .collect();
    if !failures.is_empty() {
        return Err(DaemonError::Requirements(failures.join("\n")));
    }
    if let Err(e) = kernel::raise_memlock() {
        debug!(error = %e, "could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11)");
    }
    let tracefs = kernel::tracefs_root().ok_or(kernel::KernelError::NoTracefs)?;
    let report = kernel::kernel_config(&tracefs, std::path::Path::new(kernel::VMLINUX_BTF))?;
    if !report.missing.is_empty() {
        warn!(missing = ?report.missing, "some kernel layouts unknown; affected details are reported as unknown");
    }
    let mut kcfg = report.config;
    kcfg.self_tgid = std::process::id();

    let (probes, KernelMaps { counters, failures, stats, events: ring, creation, go_tls, ssl_libs }) = attach::load(kcfg, &tracefs, cfg.collect.memory_hooks)?;
    let attached = probes.programs.iter().filter(|p| p.attached).count();
    info!(attached, total = probes.programs.len(), "kernel programs loaded");
    let programs = probes.programs.clone();
    let probes = Arc::new(Mutex::new(probes));

    let creation_settings = cfg.creation_settings()?;
    let policy = cfg.label_policy()?;
    let pods = Arc::new(PodResolver::start(&cfg.kubernetes)?);
    let (go, lifecycle_rx, lifecycle) = if cfg.go.enabled || cfg.tls.openssl {
        let (tx, rx) = std::sync::mpsc::sync_channel(16_384);
        let go = cfg.go.enabled.then(|| {
            let mut tracker = GoTracker::new(probes.clone());
            if cfg.tls.go {
                tracker = tracker.with_tls(Arc::new(crate::tls::GoTls::new(go_tls, cfg.tls.go_result_site)));
            }
            Arc::new(Mutex::new(tracker))
        });
        (go, Some(rx), Some(tx))
    } else {
        (None, None, None)
    };
    let openssl = cfg.tls.openssl.then(|| Mutex::new(crate::tls::OpenSsl::new(probes.clone(), ssl_libs)));
    let shared = Arc::new(Shared {
        ring: Mutex::new(ring),
        agg: Mutex::new(Aggregate::new(cfg.scrape_interval()?, cfg.metrics.max_exited_processes)),
        maps: Mutex::new(DrainMaps { counters, failures, stats }),
        programs,
        kernel: kernel::kernel_release(),
        serving: AtomicBool::new(false),
        creation: go.as_ref().map(|_| Mutex::new(CreationProbes::new(creation, creation_settings))),
        go,
        openssl,
        probes: probes.clone(),
        lifecycle,
        pods,
        policy,
        limiter: Arc::new(Mutex::new(SeriesLimiter::new(cfg.metrics.max_series))),
        health: Mutex::new(HealthEngine::new(cfg.health.clone())),
        snapshots: OnceLock::new(),
    });
    if cfg.snapshot.enabled {
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        let resolve = Arc::new(move |pid: u32| weak.upgrade().and_then(|s| s.target_info(pid)));
        let snap = Snapshotter::start(cfg.snapshot.clone(), resolve)?;
        let _ = shared.snapshots.set(snap);
    }
    let mut go_tasks = Vec::new();
    if let Some(rx) = lifecycle_rx {
        let s = shared.clone();
        std::thread::Builder::new()
            .name("go-discovery".into())
            .spawn(move || discovery_thread(s, rx))
            .map_err(DaemonError::Thread)?;
        if shared.go.is_some() {
            go_tasks.push(tokio::spawn(every(shared.clone(), cfg.go_read_interval()?, go_read_job)));
        }
    }

    let ring_task = tokio::spawn(every(shared.clone(), Duration::from_millis(probe_common::EVENTS_POLL_MS), |s| s.drain_ring()));
    let drain_task = tokio::spawn(every(shared.clone(), cfg.drain_interval()?, drain_job));
    let maps_task = tokio::spawn(every(shared.clone(), cfg.map_count_interval()?, map_count_job));
    let health_task = tokio::spawn({
        let s = shared.clone();
        async move {
            loop {
                let s2 = s.clone();
                let next = tokio::task::spawn_blocking(move || s2.evaluate_health()).await.unwrap_or(Duration::from_secs(5));
                tokio::time::sleep(next).await;
            }
        }
    });

    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|source| DaemonError::Listen { addr: cfg.server.listen, source })?;
    let local = listener.local_addr().map_err(DaemonError::Serve)?;
    let auth = ApiAuth::new(
        std::env::var("CHAINPROBE_API_TOKEN").ok(),
        Some(cfg.api.token_file.as_str()).filter(|f| !f.is_empty()).map(std::path::PathBuf::from),
        local.ip().is_loopback(),
    );
    if !auth.enabled() {
        warn!("the API is not started: no token configured and not listening on loopback (set CHAINPROBE_API_TOKEN or [api] token_file); /api/ answers 403, /metrics is served");
    }
    let state = ApiState {
        render_metrics: {
            let s = shared.clone();
            Arc::new(move || s.render())
        },
        readiness: {
            let s = shared.clone();
            Arc::new(move || s.readiness())
        },
        targets: {
            let s = shared.clone();
            Arc::new(move || s.targets())
        },
        set_creation: {
            let s = shared.clone();
            Arc::new(move |pid, on, secs| s.set_creation(pid, on, secs))
        },
        find_target: {
            let s = shared.clone();
            Arc::new(move |ns: &str, pod: &str, c: Option<&str>| s.find_target(ns, pod, c))
        },
        snapshots: shared.snapshots.get().cloned(),
        auth: Arc::new(auth),
        limiter: Arc::new(RateLimiter::new(cfg.api.rate_limit_per_second, cfg.api.rate_limit_burst)),
        max_body: cfg.api.max_body_bytes,
    };
    shared.serving.store(true, Ordering::Relaxed);
    match shared.readiness() {
        Ok(()) => info!(listen = %local, "chainprobe ready"),
        Err(r) => warn!(listen = %local, reasons = ?r, "chainprobe serving but not ready"),
    }
    let served = axum::serve(listener, api::router(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown_signal())
        .await;

    ring_task.abort();
    drain_task.abort();
    maps_task.abort();
    health_task.abort();
    for t in go_tasks {
        t.abort();
    }
    drop(probes);
    info!("kernel programs detached; bye");
    served.map_err(DaemonError::Serve)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot watch SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
    }
}

/// Runs `job` on a blocking thread every `every` (a slow round delays the next, never overlaps).
async fn every(shared: Arc<Shared>, every: Duration, job: fn(&Shared)) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || job(&s)).await;
    }
}

fn drain_job(s: &Shared) {
    let now = Instant::now();
    s.drain(now);
    let removed = lock(&s.agg).prune_unscraped(now);
    s.release_series(&removed);
}

fn map_count_job(s: &Shared) {
    // Container and pod of processes not yet named (cgroup now, names once the API knows the pod).
    let unresolved = lock(&s.agg).pods_to_resolve();
    let metas: Vec<_> = unresolved.into_iter().map(|pid| (pid, s.pods.resolve(pid))).collect();
    {
        let mut agg = lock(&s.agg);
        for (pid, meta) in metas {
            agg.set_pod(pid, meta);
        }
    }
    let pids = lock(&s.agg).live_pids();
    let counts: Vec<(u32, Option<u64>)> = pids.into_iter().map(|pid| (pid, crate::procfs::map_count(pid).ok())).collect();
    let now = Instant::now();
    let mut agg = lock(&s.agg);
    for (pid, n) in counts {
        match n {
            Some(n) => agg.set_map_count(pid, Some(n)),
            // Gone without an exit event (ring buffer overflow, or exited mid-read).
            None if !crate::procfs::alive(pid) => agg.mark_gone(pid, now),
            None => agg.set_map_count(pid, None),
        }
    }
}

/// Go discovery: the /proc scan at start, then each exec (inspect, attach) and exit (detach).
fn discovery_thread(shared: Arc<Shared>, rx: std::sync::mpsc::Receiver<Lifecycle>) {
    let go = shared.go.clone();
    let mut discoverer = Discoverer::default();
    let mut consider = |pid: u32| {
        let Some(go) = &go else { return Discovery::NotGo };
        let outcome = match discoverer.inspect(go, pid) {
            Ok(ins) => lock(go).track(ins),
            Err(d) => d,
        };
        if outcome == Discovery::Tracked {
            let t = lock(go).target(pid).cloned();
            if let Some(t) = t {
                let minor = t.layout.as_ref().map(|l| l.minor).unwrap_or_else(|| minor_of(&t.go_version));
                lock(&shared.agg).on_go_tracked(pid, &t.go_version, minor, Instant::now());
            }
        }
        outcome
    };
    let handle = |msg: Lifecycle, consider: &mut dyn FnMut(u32) -> Discovery| match msg {
        Lifecycle::Exec(pid) => {
            if let Some(o) = &shared.openssl {
                lock(o).on_exec(pid, Instant::now());
            }
            consider(pid);
        }
        Lifecycle::Exit(pid) => {
            if let Some(o) = &shared.openssl {
                lock(o).forget(pid);
            }
            if let Some(go) = &go {
                lock(go).forget(pid);
            }
        }
    };
    let started = Instant::now();
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    let me = std::process::id();
    let mut found = 0;
    for pid in pids.into_iter().filter(|&p| p != me) {
        // New processes first: the scan of old ones must not delay their discovery.
        while let Ok(msg) = rx.try_recv() {
            handle(msg, &mut consider);
        }
        // OpenSSL (issue #6): libssl in the process's mappings.
        if let Some(o) = &shared.openssl {
            lock(o).consider(pid);
        }
        if consider(pid) == Discovery::Tracked {
            found += 1;
        }
    }
    info!(found, elapsed_ms = started.elapsed().as_millis() as u64, "Go processes found at start");
    loop {
        // OpenSSL rechecks of processes that had no libssl mapped yet at exec.
        let next = shared.openssl.as_ref().and_then(|o| lock(o).recheck_due(Instant::now()));
        let wait = next.map(|t| t.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_secs(3600));
        match rx.recv_timeout(wait) {
            Ok(msg) => handle(msg, &mut consider),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
}

fn minor_of(version: &str) -> u32 {
    version.trim_start_matches("go").split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0)
}

/// Reads every tracked Go process's runtime state (on a timer), then lets the creation probes
/// react to what was read.
fn go_read_job(s: &Shared) {
    let Some(go) = &s.go else { return };
    // Offsets not yet checked on a live process: check one process per binary (outside the lock).
    let pending = lock(go).pending_checks();
    for (pid, key, bin, layout) in pending {
        let verdict = crate::goruntime::check_offsets(pid, &bin, &layout);
        lock(go).record_verdict(key, pid, verdict);
    }
    let sources = lock(go).offsets_sources();
    lock(&s.agg).go_offsets_sources = sources;
    let readable = lock(go).readable();
    let mut counts = Vec::new();
    for (pid, layout) in readable {
        match ProcMem::open(pid).and_then(|m| m.sample(&layout)) {
            Ok(sample) => {
                counts.push((pid, sample.goroutines));
                lock(&s.agg).set_go_sample(pid, sample);
            }
            Err(e) => debug!(pid, error = %e, "Go runtime read failed"),
        }
    }
    if let Some(creation) = &s.creation {
        let targets: Vec<crate::goruntime::GoTarget> = lock(go).targets().cloned().collect();
        let mut c = lock(creation);
        c.tick(&s.probes, &targets, &counts);
        let mut agg = lock(&s.agg);
        for t in &targets {
            agg.set_go_creation(t.pid, c.status(t.pid).cloned());
        }
    }
}

