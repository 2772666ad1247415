//! Small readers of /proc that several modules share. A process can vanish between any two reads:
//! every function returns `None`/error rather than assuming it is still there.
use std::{collections::HashMap, fs, io, os::unix::fs::FileExt, path::PathBuf};

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

/// One small /proc file (`status`, say) of many processes, read again and again: each is kept
/// open and read with one `pread` at offset 0, which makes the kernel generate it anew. A fresh
/// open + read costs five system calls (open, the size hint's statx, two reads, close) and the
/// path walk of /proc/PID; measured with 500 processes read every 10 s, the opens were a quarter
/// of the reader's CPU. The descriptor refers to the process, not to its pid number: once the
/// process is gone (reaped) its reads fail, even if the pid is reused, and the descriptor goes.
pub struct ProcFiles {
    name: &'static str,
    open: HashMap<u32, fs::File>,
    /// At most this many kept open (the rest are opened for each read).
    max_open: usize,
    buf: Vec<u8>,
}

impl ProcFiles {
    /// `name` under /proc/PID; keeps at most a quarter of the soft RLIMIT_NOFILE open (4,096 at
    /// most).
    pub fn new(name: &'static str) -> ProcFiles {
        let max_open = open_file_limit().map_or(256, |l| (l / 4).min(4096) as usize);
        ProcFiles { name, open: HashMap::new(), max_open, buf: vec![0; 4096] }
    }

    /// The file of `pid` as generated now (None: gone, or unreadable).
    pub fn read(&mut self, pid: u32) -> Option<&str> {
        let fresh;
        let f = match self.open.get(&pid) {
            Some(f) => f,
            None => {
                let f = fs::File::open(proc_path(pid, self.name)).ok()?;
                if self.open.len() < self.max_open {
                    self.open.entry(pid).or_insert(f)
                } else {
                    fresh = f;
                    &fresh
                }
            }
        };
        let n = loop {
            match f.read_at(&mut self.buf, 0) {
                // Filled: it may be longer.
                Ok(n) if n == self.buf.len() && n < 1 << 20 => self.buf.resize(n * 2, 0),
                Ok(n) => break Some(n),
                Err(_) => break None,
            }
        };
        let Some(n) = n else {
            self.open.remove(&pid);
            return None;
        };
        std::str::from_utf8(&self.buf[..n]).ok()
    }

    /// Closes the files of processes `keep` says no to.
    pub fn retain(&mut self, keep: impl Fn(u32) -> bool) {
        self.open.retain(|pid, _| keep(*pid));
    }
}

/// The soft RLIMIT_NOFILE.
fn open_file_limit() -> Option<u64> {
    let mut rlim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) } != 0 {
        return None;
    }
    Some(rlim.rlim_cur)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (as Go programs do at start): systemd's
/// default soft limit is 1,024, and the daemon holds a descriptor per probe and per watched
/// process. Returns the soft limit now.
pub fn raise_open_file_limit() -> Option<u64> {
    let mut rlim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) != 0 {
            return None;
        }
        if rlim.rlim_cur < rlim.rlim_max {
            let raised = libc::rlimit { rlim_cur: rlim.rlim_max, rlim_max: rlim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                rlim.rlim_cur = rlim.rlim_max;
            }
        }
    }
    Some(rlim.rlim_cur)
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

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot): tells a pid's reuse apart.
pub fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The state letter of /proc/PID/stat ('T' = stopped, 't' = traced).
pub fn state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}

/// Sends SIGCONT to `pid`; false when it is gone.
pub fn cont(pid: u32) -> bool {
    // SAFETY: kill with a pid and a signal number touches no memory of ours.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) == 0 }
}

/// The processes a killed daemon left stopped, from the records of its stops in `dir` (one
/// file per pid holding its start time): each that is still the same process and still stopped
/// is resumed. Every record is removed. The pids resumed.
pub fn resume_recorded_stops(dir: &std::path::Path) -> Vec<u32> {
    let mut resumed = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let recorded: Option<u64> = std::fs::read_to_string(e.path()).ok().and_then(|s| s.trim().parse().ok());
        if recorded.is_some() && recorded == start_time(pid) && state(pid) == Some('T') && cont(pid) {
            resumed.push(pid);
        }
        let _ = std::fs::remove_file(e.path());
    }
    resumed
}

/// Runs `round` on a thread named `name` while `keeper` lives and `round` returns true (a
/// keeper's watchdog: it ends with the keeper or when it stops).
pub fn spawn_watchdog<T: Send + Sync + 'static>(name: &str, keeper: &std::sync::Arc<T>, round: fn(&T) -> bool) -> std::io::Result<()> {
    let me = std::sync::Arc::downgrade(keeper);
    std::thread::Builder::new().name(name.into()).spawn(move || {
        while let Some(k) = me.upgrade() {
            if !round(&k) {
                return;
            }
        }
    })?;
    Ok(())
}

/// CLOCK_MONOTONIC now, in ns (the clock of bpf_ktime_get_ns).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The Instant of kernel time `ktime_ns`.
pub fn instant_of(ktime_ns: u64) -> std::time::Instant {
    let ago = std::time::Duration::from_nanos(monotonic_ns().saturating_sub(ktime_ns));
    std::time::Instant::now().checked_sub(ago).unwrap_or_else(std::time::Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_kept_open_are_generated_anew_and_fail_once_the_process_is_gone() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let pid = child.id();
        let mut files = ProcFiles::new("status");
        let first = files.read(pid).expect("status of a live process").to_string();
        // Any state: a child just spawned may still be in D while its exec pages in.
        assert!(first.contains("State:\t") && first.contains(&format!("\nPid:\t{pid}\n")), "{first}");
        assert!(files.open.contains_key(&pid), "kept open");
        // Stopped: the same descriptor shows the new state.
        // SAFETY: kill on a child this test started.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !files.read(pid).is_some_and(|s| s.contains("State:\tT")) {
            assert!(std::time::Instant::now() < deadline, "stop never seen: {:?}", files.read(pid));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(debug_state_in(&mut files, pid), Some(DebugState { tracer: 0, stopped: true }));
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert_eq!(files.read(pid), None, "a reaped process's file reads nothing");
        assert!(!files.open.contains_key(&pid), "and its descriptor is closed");
        assert_eq!(files.read(u32::MAX), None);
    }

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

/// [`debug_state`] from the status files kept open in `files` (a [`ProcFiles`] of "status").
pub fn debug_state_in(files: &mut ProcFiles, pid: u32) -> Option<DebugState> {
    parse_debug_state(files.read(pid)?)
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
        // mallinfo2 walks every arena's bins under their locks: only when someone reads it.
        if !tracing::enabled!(tracing::Level::DEBUG) {
            libc::malloc_trim(0);
            return;
        }
        let before = libc::mallinfo2();
        libc::malloc_trim(0);
        let after = libc::mallinfo2();
        tracing::debug!(
            in_use = after.uordblks + after.hblkhd,
            free_before = before.fordblks,
            free_after = after.fordblks,
            mapped = after.hblkhd,
            "allocator trimmed (bytes)"
        );
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

