//! The crash programs' per-process settings (`GO_CRASH`): the offsets the kernel side reads the
//! goroutine id, the panic value and the user goroutine's saved registers with, and whether the
//! process may be paused at its crash (pauses on, and no debugger attached).
use std::sync::Mutex;

use aya::maps::{HashMap as BpfHashMap, MapData};
use goinspect::GoBinary;
use probe_common::{GoCrashConfig, OFFSET_NONE};
use tracing::debug;

use crate::sync::lock;

/// Writes `GO_CRASH` for tracked Go processes.
pub struct CrashProbes {
    config: Mutex<BpfHashMap<MapData, u32, GoCrashConfig>>,
    /// Stopped processes on the node at once at most (0: pauses off).
    max_pauses: u32,
}

/// The pid of the process tracing `pid` (a debugger), 0 when none, from /proc/PID/status.
pub fn tracer_pid(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("TracerPid:")).and_then(|v| v.trim().parse().ok())
}

/// The kernel-side settings for `bin` (offsets `OFFSET_NONE` where unknown).
pub fn config_for(bin: &GoBinary, max_pauses: u32) -> GoCrashConfig {
    let off = |k: &str| bin.offset(k).and_then(|o| u32::try_from(o).ok()).unwrap_or(OFFSET_NONE);
    let sched = |k: &str| match (bin.offset("g.sched"), bin.offset(k)) {
        (Some(s), Some(o)) => u32::try_from(s + o).unwrap_or(OFFSET_NONE),
        _ => OFFSET_NONE,
    };
    GoCrashConfig {
        g_goid: off("g.goid"),
        panic_arg: off("_panic.arg"),
        max_pauses,
        g_m: off("g.m"),
        m_curg: off("m.curg"),
        sched_pc: sched("gobuf.pc"),
        sched_bp: sched("gobuf.bp"),
        crashed: 0,
    }
}

impl CrashProbes {
    pub fn new(config: BpfHashMap<MapData, u32, GoCrashConfig>, max_pauses: u32) -> Self {
        CrashProbes { config: Mutex::new(config), max_pauses }
    }

    /// The process is tracked: its crashes are reported (and it may be paused unless traced).
    pub fn enable(&self, pid: u32, bin: &GoBinary) {
        let traced = tracer_pid(pid).is_some_and(|t| t != 0);
        let cfg = config_for(bin, if traced { 0 } else { self.max_pauses });
        if let Err(e) = lock(&self.config).insert(pid, cfg, 0) {
            debug!(pid, error = %e, "crash settings not written: its crashes are reported without a pause");
        }
    }

    /// A debugger attached or detached: pauses follow (never a SIGSTOP under a tracer).
    pub fn refresh(&self, pid: u32) {
        let Some(tracer) = tracer_pid(pid) else { return };
        let want = if tracer != 0 { 0 } else { self.max_pauses };
        let mut map = lock(&self.config);
        if let Ok(mut cfg) = map.get(&pid, 0) {
            if cfg.max_pauses != want && cfg.crashed == 0 {
                cfg.max_pauses = want;
                let _ = map.insert(pid, cfg, 0);
            }
        }
    }

    pub fn disable(&self, pid: u32) {
        let _ = lock(&self.config).remove(&pid);
    }
}
