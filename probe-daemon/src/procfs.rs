//! Small readers of /proc that several modules share. A process can vanish between any two reads:
//! every function returns `None`/error rather than assuming it is still there.
use std::{fs, io, path::PathBuf};

fn proc_path(pid: u32, leaf: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{leaf}"))
}

/// The process's comm (as the kernel truncates it, 15 bytes).
pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(proc_path(pid, "comm")).ok().map(|s| s.trim_end_matches('\n').to_string())
}

/// Whether a process with this tgid exists (zombies count as gone).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(proc_path(pid, "stat")) {
        // The state follows the ")" closing the comm.
        Ok(s) => s.rfind(')').and_then(|i| s[i + 1..].trim_start().chars().next()).is_some_and(|st| st != 'Z' && st != 'X'),
        Err(_) => false,
    }
}

/// Number of memory mappings (lines of /proc/PID/maps).
pub fn map_count(pid: u32) -> io::Result<u64> {
    let data = fs::read(proc_path(pid, "maps"))?;
    Ok(data.iter().filter(|&&b| b == b'\n').count() as u64)
}

/// vm.max_map_count.
pub fn max_map_count() -> Option<u64> {
    fs::read_to_string("/proc/sys/vm/max_map_count").ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(comm(me).is_some_and(|c| !c.is_empty()));
        assert!(map_count(me).unwrap() > 5);
        assert!(max_map_count().unwrap() > 1000);
        assert!(!alive(u32::MAX - 1));
        assert_eq!(debug_state(me).map(|d| d.stopped), Some(false));
    }

    #[test]
    fn debug_state_lines() {
        let s = "Name:\tsvc\nState:\tt (tracing stop)\nTgid:\t7\nTracerPid:\t4242\n";
        assert_eq!(parse_debug_state(s), Some(DebugState { tracer: 4242, stopped: true }));
        let s = "State:\tS (sleeping)\nTracerPid:\t0\n";
        assert_eq!(parse_debug_state(s), Some(DebugState { tracer: 0, stopped: false }));
        assert_eq!(parse_debug_state("State:\tT (stopped)\n"), None, "no TracerPid line: not a status file");
    }

}

/// Whether a process is being traced (a debugger attached: `TracerPid`) or stopped (`State:` T,
/// or t at a tracing stop such as a breakpoint), from /proc/PID/status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DebugState {
    /// The tracer's pid (0: none).
    pub tracer: u32,
    pub stopped: bool,
}

/// Parses the `State:` and `TracerPid:` lines of /proc/PID/status.
pub fn parse_debug_state(status: &str) -> Option<DebugState> {
    let (mut state, mut tracer) = (None, None);
    for l in status.lines() {
        if let Some(v) = l.strip_prefix("State:") {
            state = v.trim_start().chars().next();
        } else if let Some(v) = l.strip_prefix("TracerPid:") {
            tracer = v.trim().parse().ok();
        }
    }
    Some(DebugState { tracer: tracer?, stopped: matches!(state?, 'T' | 't') })
}

/// The [`DebugState`] of `pid` (None: gone).
pub fn debug_state(pid: u32) -> Option<DebugState> {
    parse_debug_state(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Hands the allocator's free memory back to the kernel (glibc's `malloc_trim`): freed memory in
/// the middle of the heap is otherwise kept, and the daemon's RSS is its high-water mark — measured
/// with 500 Go processes and 100 execs a second, 69 MiB before a trim and 37 MiB after. The
/// collector calls it every few seconds; a trim of a heap of tens of MiB takes well under a
/// millisecond.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Puts the calling thread in the `SCHED_IDLE` class: a snapshot reader (and its profile
/// writer) competing with the workloads for a core runs only when they leave it idle, and any of
/// their threads waking up (a ticker, a request) preempts it at once. Measured with `cargo xtask
/// bench snapshot --heap-only`: the target's lateness at 10k buckets, nice 10 against SCHED_IDLE,
/// in docs/PERFORMANCE.md. On a node whose cores are all busy the snapshot still progresses (the
/// idle class gets a minimal share) and its deadline bounds it. Failure only costs that, so it
/// is logged.
pub fn yield_to_workloads() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid parameter block.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "cannot move the snapshot thread to SCHED_IDLE");
    }
}
