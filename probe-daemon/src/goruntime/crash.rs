//! The crash programs' per-process settings (`GO_CRASH`): the offsets the kernel side reads the
//! goroutine id, the panic value and the user goroutine's saved registers with, and how many
//! processes may be paused at once (a traced process never is: the kernel side checks its
//! `task_struct.ptrace` at the crash).
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

    /// The process is tracked: its crashes are reported, and it may be paused (the kernel side
    /// never pauses a process while a debugger traces it).
    pub fn enable(&self, pid: u32, bin: &GoBinary) {
        let cfg = config_for(bin, self.max_pauses);
        if let Err(e) = lock(&self.config).insert(pid, cfg, 0) {
            debug!(pid, error = %e, "crash settings not written: its crashes are reported without a pause");
        }
    }

    pub fn disable(&self, pid: u32) {
        let _ = lock(&self.config).remove(&pid);
    }
}
