//! `chainprobe run`: checks the kernel, loads and attaches the programs, starts the threads that
//! own the state (discovery, the collector, the /proc reader, the snapshot workers), then serves
//! HTTP until SIGTERM or SIGINT. Wiring only: see docs/ARCHITECTURE.md for who owns what.
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, OnceLock,
    },
};

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::{
    aggregate::Aggregate,
    api::{self, ApiAuth, ApiState, RateLimiter},
    attach::{self, KernelMaps},
    collector::{self, Collector, DrainMaps, View},
    config::{Config, Settings},
    discovery::{self, GoView, Trackers},
    goruntime::{crash::CrashProbes, creation::CreationProbes, GoTracker},
    health::HealthEngine,
    k8s::{PodResolver, SeriesLimiter},
    kernel::{self, Status},
    snapshot::{crash::Crashes, Snapshotter, TargetInfo},
    tls::{hold::Holds, GoTls, OpenSsl},
};

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
    #[error("cannot start a daemon thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Kubernetes(#[from] crate::k8s::K8sError),
    #[error(transparent)]
    Snapshots(#[from] crate::snapshot::store::StoreError),
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    let settings = Settings::new(cfg)?;
    let cfg = &settings.config;

    let failures: Vec<String> = kernel::check()
        .into_iter()
        .filter(|i| i.status == Status::Fail)
        .map(|i| i.to_string())
        .collect();
    if !failures.is_empty() {
        return Err(DaemonError::Requirements(failures.join("\n")));
    }
    let nofile = crate::procfs::raise_open_file_limit();
    debug!(?nofile, "open file limit");
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

    // Holds of a new libssl's first process start once the system's files are probed (below).
    let hold_chain = kcfg.sb_dev != probe_common::OFFSET_NONE;
    kcfg.hold_libssl = 0;
    // Stopping a process (a crash pause, a libssl hold) needs the right to resume it: CAP_KILL.
    let can_resume = kernel::can_resume_any_process();
    if !can_resume && (cfg.crash.kernel_max_pauses() > 0 || cfg.tls.hold_new_libssl) {
        warn!("no CAP_KILL (see `chainprobe check`): crashing Go processes are not paused and new libssl files' first processes are not held, since other users' processes could not be resumed; add KILL to the container's capabilities");
    }
    let hold_programs = cfg.tls.openssl && cfg.tls.hold_new_libssl && hold_chain && can_resume;
    let (probes, KernelMaps { counters, failures, stats, events: ring, creation, go_tls, ssl_libs, crash_config, crash_pauses, config: mut kernel_config_map, libssl_files }) =
        attach::load(kcfg, &tracefs, cfg.collect.memory_hooks, hold_programs)?;
    let attached = probes.programs.iter().filter(|p| p.attached).count();
    info!(attached, total = probes.programs.len(), "kernel programs loaded");
    let programs = probes.programs.clone();
    let probes = Arc::new(Mutex::new(probes));

    let (creation_settings, policy) = (settings.creation.clone(), settings.label_policy.clone());
    let pods = Arc::new(PodResolver::start(&cfg.kubernetes)?);

    // Discovery owns the Go and OpenSSL trackers; the collector owns the per-process state. Each
    // publishes a view; they talk through typed commands.
    let (collector_tx, collector_rx) = mpsc::sync_channel::<collector::Command>(1024);
    let mut libssl_holds: Option<Arc<Holds>> = None;
    let (discovery_tx, go_view) = if cfg.go.enabled || cfg.tls.openssl {
        let go = cfg.go.enabled.then(|| {
            let mut tracker = GoTracker::new(probes.clone());
            if cfg.tls.go {
                tracker = tracker.with_tls(Arc::new(GoTls::new(go_tls, cfg.tls.go_result_site)));
            }
            // The kernel stops a crashing process only where this daemon can resume it.
            let max_pauses = if can_resume { cfg.crash.kernel_max_pauses() } else { 0 };
            tracker.with_crash(CrashProbes::new(crash_config, max_pauses))
        });
        let trackers = Trackers {
            creation: go.as_ref().map(|_| CreationProbes::new(creation, creation_settings)),
            go,
            openssl: cfg.tls.openssl.then(|| {
                // The system's libssl files before the daemon is ready: the first process that
                // loads one has its first handshakes counted (others: at start scan and exec).
                let mut o = OpenSsl::new(probes.clone(), ssl_libs);
                // The hold programs are attached only when holds are wanted and possible.
                let hold_attached = programs.iter().filter(|p| p.prog.group() == probe_common::ProgGroup::LibsslHold && p.attached).count() == 2;
                let holds = if !(cfg.tls.hold_new_libssl && can_resume) {
                    None
                } else if !hold_attached {
                    warn!("the kernel's file layout is unknown or its filemap tracepoints could not be attached (see `chainprobe check` and the program list in /api/v1/status): a new libssl file's first process is not held, its first handshakes may be missed");
                    None
                } else {
                    Holds::start(std::path::Path::new(&cfg.snapshot.dir).join("libssl-holds"), std::time::Duration::from_millis(cfg.tls.hold_new_libssl_max_ms))
                        .map_err(|e| warn!(error = %e, "cannot start the libssl hold keeper: a new libssl file's first handshakes may be missed"))
                        .ok()
                };
                if let Some(h) = &holds {
                    o = o.with_holds(libssl_files, h.clone());
                }
                let root = std::path::Path::new("/proc/1/root");
                let root = if root.join("usr").exists() { root } else { std::path::Path::new("/") };
                let n = o.attach_system(root);
                info!(libraries = n, "system OpenSSL libraries probed at start");
                if let Some(h) = holds {
                    kcfg.hold_libssl = 1;
                    match kernel_config_map.set(0, kcfg, 0) {
                        Ok(()) => {
                            info!(bound_ms = h.bound().as_millis() as u64, "the first process of a new libssl file is held until the file is probed");
                            libssl_holds = Some(h);
                        }
                        Err(e) => warn!(error = %e, "cannot switch on libssl holds in the kernel"),
                    }
                }
                o
            }),
            probes: probes.clone(),
            read_interval: settings.go_read_interval,
            read_cpu_budget: cfg.go.read_cpu_budget,
            states_interval: settings.go_states_interval,
            every_g_read: cfg.go.every_g_read_each_interval,
        };
        let (tx, rx) = mpsc::sync_channel(16_384);
        let to_collector = collector_tx.clone();
        let sink: discovery::Sink = Box::new(move |u| {
            let _ = to_collector.send(collector::Command::Go(u));
        });
        (Some(tx), discovery::start(trackers, rx, sink).map_err(DaemonError::Thread)?)
    } else {
        (None, watch::channel(Arc::new(GoView::default())).1)
    };

    // The snapshotter looks processes up in the two views.
    let view_slot: Arc<OnceLock<watch::Receiver<Arc<View>>>> = Arc::new(OnceLock::new());
    let snapshots = if cfg.snapshot.enabled {
        let (views, go_view) = (view_slot.clone(), go_view.clone());
        let resolve = Arc::new(move |pid: u32| target_info(views.get().map(|v| v.borrow().clone()).as_deref(), &go_view.borrow(), pid));
        Some(Snapshotter::start(cfg.snapshot.clone(), resolve)?)
    } else {
        None
    };
    // Crash capsules: the pause keeper runs even without snapshots (a paused process must be
    // resumed whatever else is configured).
    let crashes = {
        let (views, go_view) = (view_slot.clone(), go_view.clone());
        let resolve = Arc::new(move |pid: u32| target_info(views.get().map(|v| v.borrow().clone()).as_deref(), &go_view.borrow(), pid));
        Arc::new(Crashes::start(cfg.crash.clone(), &cfg.snapshot.dir, snapshots.clone(), resolve, Some(crash_pauses)).map_err(DaemonError::Thread)?)
    };
    {
        // Heap profiles near the memory limit, for OOM kills' capsules: the Go processes whose
        // runtime can be read.
        let go_view = go_view.clone();
        crashes
            .watch_memory(Box::new(move || {
                go_view.borrow().targets.as_ref().map(|t| t.iter().filter(|(_, g)| g.layout.is_some()).map(|(pid, _)| *pid).collect()).unwrap_or_default()
            }))
            .map_err(DaemonError::Thread)?;
    }
    let own = Collector {
        agg: Aggregate::new(settings.scrape_interval, cfg.metrics.max_exited_processes)
            .with_identify(Box::new(collector::identify))
            .with_pods(pods, std::time::Duration::from_secs(cfg.kubernetes.pod_name_wait_seconds))
            .with_folding(settings.fold),
        health: HealthEngine::new(cfg.health.clone()),
        ring,
        maps: DrainMaps { counters, failures, stats },
        programs: programs.clone(),
        kernel: kernel::kernel_release(),
        policy,
        limiter: Arc::new(Mutex::new(SeriesLimiter::new(cfg.metrics.max_series))),
        discovery: discovery_tx.clone(),
        go_view: go_view.clone(),
        snapshots: snapshots.clone(),
        crashes: Some(crashes.clone()),
        drain_interval: settings.drain_interval,
        series: settings.series,
    };
    let view = collector::start(own, collector_rx).map_err(DaemonError::Thread)?;
    let _ = view_slot.set(view.clone());
    collector::start_proc_reader(view.clone(), collector_tx.clone(), settings.map_count_interval).map_err(DaemonError::Thread)?;

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
        collector: collector_tx,
        discovery: discovery_tx,
        view,
        go_view,
        programs: Arc::new(programs),
        serving: Arc::new(AtomicBool::new(false)),
        snapshots,
        crashes: Some(crashes.clone()),
        auth: Arc::new(auth),
        limiter: Arc::new(RateLimiter::new(cfg.api.rate_limit_per_second, cfg.api.rate_limit_burst)),
        max_body: cfg.api.max_body_bytes,
    };
    state.serving.store(true, Ordering::Relaxed);
    match state.readiness() {
        Ok(()) => info!(listen = %local, "chainprobe ready"),
        Err(r) => warn!(listen = %local, reasons = ?r, "chainprobe serving but not ready"),
    }
    let served = axum::serve(listener, api::router(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown_signal())
        .await;

    drop(probes);
    crashes.shutdown();
    if let Some(h) = libssl_holds.take() {
        h.shutdown();
    }
    info!("kernel programs detached; bye");
    served.map_err(DaemonError::Serve)
}

/// What the snapshotter needs to know of `pid`.
fn target_info(view: Option<&View>, go: &GoView, pid: u32) -> Option<TargetInfo> {
    let go = go.target(pid).cloned();
    let p = view.and_then(|v| v.processes.get(&pid));
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

