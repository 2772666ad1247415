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
    }

}

/// Nice value of the threads that read other processes' memory for snapshots.
pub const SNAPSHOT_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`SNAPSHOT_NICE`], so a snapshot reader competing
/// with the workloads for a core loses: the target's own threads (its tickers, its requests) run
/// first (Linux nice values are per thread). Failure only costs that, so it is logged.
pub fn yield_to_workloads() {
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, SNAPSHOT_NICE)
    };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "cannot lower the snapshot thread's priority");
    }
}
