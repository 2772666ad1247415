//! `chainprobe run`: checks the kernel, loads and attaches the programs, then runs the collector
//! (ring buffer, periodic drains, /proc readings) and the HTTP server until SIGTERM or SIGINT.
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use probe_common::{FailureKey, ProcCounters, ProgStats};
use tokio::io::unix::AsyncFd;
use tracing::{debug, error, info, warn};

use crate::{
    aggregate::Aggregate,
    api::{self, ApiState},
    attach::{self, KernelMaps, ProgramStatus},
    config::Config,
    events,
    kernel::{self, Status},
    metrics::ScrapeView,
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
    #[error("cannot watch the ring buffer: {0}")]
    RingBuf(std::io::Error),
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
    maps: Mutex<DrainMaps>,
    programs: Vec<ProgramStatus>,
    kernel: String,
    serving: AtomicBool,
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

    fn render(&self) -> Result<String, String> {
        let now = Instant::now();
        self.drain(now);
        let view = {
            let mut agg = lock(&self.agg);
            agg.prune_for_scrape(now);
            ScrapeView::from_aggregate(&agg, &self.programs, &self.kernel)
        };
        view.render().map_err(|e| e.to_string())
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

    let (probes, KernelMaps { counters, failures, stats, events: ring }) = attach::load(kcfg, &tracefs)?;
    let attached = probes.programs.iter().filter(|p| p.attached).count();
    info!(attached, total = probes.programs.len(), "kernel programs loaded");

    let shared = Arc::new(Shared {
        agg: Mutex::new(Aggregate::new(cfg.scrape_interval()?, cfg.metrics.max_exited_processes)),
        maps: Mutex::new(DrainMaps { counters, failures, stats }),
        programs: probes.programs.clone(),
        kernel: kernel::kernel_release(),
        serving: AtomicBool::new(false),
    });

    // SAFETY: the RingBuf owns its map fd and keeps it open for as long as the AsyncFd owns it.
    let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| DaemonError::RingBuf(e.into()))?;
    let ring_task = tokio::spawn(read_ring(ring, shared.clone()));
    let drain_task = tokio::spawn(drain_loop(shared.clone(), cfg.drain_interval()?));
    let maps_task = tokio::spawn(map_count_loop(shared.clone(), cfg.map_count_interval()?));

    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|source| DaemonError::Listen { addr: cfg.server.listen, source })?;
    let local = listener.local_addr().map_err(DaemonError::Serve)?;
    let state = ApiState {
        render_metrics: {
            let s = shared.clone();
            Arc::new(move || s.render())
        },
        readiness: {
            let s = shared.clone();
            Arc::new(move || s.readiness())
        },
    };
    shared.serving.store(true, Ordering::Relaxed);
    match shared.readiness() {
        Ok(()) => info!(listen = %local, "chainprobe ready"),
        Err(r) => warn!(listen = %local, reasons = ?r, "chainprobe serving but not ready"),
    }
    let served = axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await;

    ring_task.abort();
    drain_task.abort();
    maps_task.abort();
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

async fn read_ring(mut fd: AsyncFd<RingBuf<MapData>>, shared: Arc<Shared>) {
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                error!(error = %e, "ring buffer reader stopped");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        let now = Instant::now();
        let mut decoded = Vec::new();
        let mut bad = 0u64;
        while let Some(item) = ring.next() {
            match events::decode(&item) {
                Ok(ev) => decoded.push(ev),
                Err(e) => {
                    bad += 1;
                    debug!(error = %e, "undecodable ring-buffer record");
                }
            }
        }
        {
            let mut agg = lock(&shared.agg);
            agg.decode_errors += bad;
            for ev in decoded {
                events::apply(&mut agg, ev, now);
            }
        }
        guard.clear_ready();
    }
}

async fn drain_loop(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let now = Instant::now();
            s.drain(now);
            lock(&s.agg).prune_unscraped(now);
        })
        .await;
    }
}

async fn map_count_loop(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let pids = lock(&s.agg).live_pids();
            let counts: Vec<(u32, Option<u64>)> =
                pids.into_iter().map(|pid| (pid, crate::procfs::map_count(pid).ok())).collect();
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
        })
        .await;
    }
}
