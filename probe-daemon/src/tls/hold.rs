//! Holds of processes the kernel stopped at their first mapping of a libssl file that was not
//! probed yet (issue #18 (a)): the file is probed while the process waits, then it is resumed,
//! so its first handshake is counted. Every hold has a hard bound after which the process is
//! resumed whatever the probing has done; each is recorded on disk, so a daemon killed during one
//! resumes the process when it starts again; and at start and at shutdown a scan resumes any
//! untraced process stopped at a page fault in its dynamic loader with a libssl mapped (a daemon
//! killed before it even saw the event).
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use serde::Serialize;
use tracing::{debug, info, warn};

use crate::{
    procfs::{cont, start_time, state},
    sync::lock,
};

/// Counters for the API (`openssl_holds` in /api/v1/targets).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct HoldStats {
    /// Processes held while their libssl file was probed.
    pub held: u64,
    /// Resumed once the file was probed (or could not be).
    pub resumed_probed: u64,
    /// Resumed by the bound (the probing took longer: its first handshakes may be missed).
    pub resumed_bound: u64,
    /// Found stopped at a page fault in its loader with libssl mapped and no hold on record (an
    /// earlier daemon's), and resumed.
    pub resumed_orphans: u64,
    /// The longest hold, from the kernel's stop to the SIGCONT.
    pub held_max_seconds: f64,
}

struct Held {
    start_time: u64,
    since: Instant,
    deadline: Instant,
}

struct Inner {
    active: HashMap<u32, Held>,
    stats: HoldStats,
    stopping: bool,
}

pub struct Holds {
    inner: Mutex<Inner>,
    wake: Condvar,
    dir: PathBuf,
    bound: Duration,
}

impl Holds {
    /// Starts the keeper: resumes what an earlier daemon left held, then watches the bounds.
    pub fn start(dir: PathBuf, bound: Duration) -> std::io::Result<Arc<Holds>> {
        std::fs::create_dir_all(&dir)?;
        let h = Arc::new(Holds { inner: Mutex::new(Inner { active: HashMap::new(), stats: HoldStats::default(), stopping: false }), wake: Condvar::new(), dir, bound });
        h.recover();
        crate::procfs::spawn_watchdog("libssl-holds", &h, Holds::watch_once)?;
        Ok(h)
    }

    pub fn bound(&self) -> Duration {
        self.bound
    }

    pub fn stats(&self) -> HoldStats {
        lock(&self.inner).stats.clone()
    }

    /// The kernel stopped `pid` at `stopped_at`: hold it until [`Self::end`] or the bound.
    pub fn begin(&self, pid: u32, stopped_at: Instant) {
        let start_time = start_time(pid).unwrap_or(0);
        // The record first: if this daemon dies now, the next one resumes the process.
        if let Err(e) = std::fs::write(self.dir.join(pid.to_string()), format!("{start_time}\n")) {
            warn!(pid, dir = %self.dir.display(), error = %e, "cannot record the libssl hold on disk: a daemon killed during it would not resume the process");
        }
        let mut inner = lock(&self.inner);
        if inner.stopping {
            drop(inner);
            self.finish(pid, Some(start_time), stopped_at, false);
            return;
        }
        inner.active.insert(pid, Held { start_time, since: stopped_at, deadline: stopped_at + self.bound });
        inner.stats.held += 1;
        drop(inner);
        self.wake.notify_all();
    }

    /// The file is probed (or could not be): resume `pid` if it is still held. How long it was.
    pub fn end(&self, pid: u32) -> Option<Duration> {
        let h = lock(&self.inner).active.remove(&pid)?;
        self.finish(pid, Some(h.start_time), h.since, false);
        Some(h.since.elapsed())
    }

    fn finish(&self, pid: u32, start: Option<u64>, since: Instant, bound: bool) {
        // Never SIGCONT a reused pid.
        let same = start.is_none_or(|s| s == 0 || start_time(pid) == Some(s));
        if same && !cont(pid) {
            debug!(pid, "SIGCONT failed: the process is gone");
        }
        let _ = std::fs::remove_file(self.dir.join(pid.to_string()));
        let held = since.elapsed().as_secs_f64();
        let mut inner = lock(&self.inner);
        let s = &mut inner.stats;
        s.held_max_seconds = s.held_max_seconds.max(held);
        if bound {
            s.resumed_bound += 1;
        } else {
            s.resumed_probed += 1;
        }
        drop(inner);
        if bound {
            warn!(pid, held_ms = held * 1e3, bound_ms = self.bound.as_millis() as u64, "libssl hold bound reached: process resumed before its library was probed (its first handshakes may be missed)");
        } else {
            debug!(pid, held_ms = held * 1e3, "process held for its new libssl resumed");
        }
    }

    /// One round of the watchdog: resumes expired holds. False when stopping.
    fn watch_once(&self) -> bool {
        let mut inner = lock(&self.inner);
        if inner.stopping {
            return false;
        }
        let now = Instant::now();
        let next = inner.active.values().map(|h| h.deadline).min().unwrap_or(now + Duration::from_secs(1)).min(now + Duration::from_secs(1));
        if next > now {
            inner = self.wake.wait_timeout(inner, next - now).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
        let now = Instant::now();
        let expired: Vec<(u32, Held)> = {
            let pids: Vec<u32> = inner.active.iter().filter(|(_, h)| h.deadline <= now).map(|(p, _)| *p).collect();
            pids.into_iter().filter_map(|p| inner.active.remove(&p).map(|h| (p, h))).collect()
        };
        drop(inner);
        for (pid, h) in expired {
            self.finish(pid, Some(h.start_time), h.since, true);
        }
        true
    }

    /// Resumes what an earlier daemon recorded, then any orphan (see [`held_for_libssl`]).
    fn recover(&self) {
        let recorded = crate::procfs::resume_recorded_stops(&self.dir);
        for pid in &recorded {
            warn!(pid, "resumed a process an earlier chainprobe held for its new libssl and did not resume");
        }
        let resumed = recorded.len() + resume_orphans(&[]);
        lock(&self.inner).stats.resumed_orphans += resumed as u64;
    }

    /// At shutdown (after the kernel programs are detached): resumes every held process, then
    /// any the kernel stopped that this daemon had not seen yet.
    pub fn shutdown(&self) {
        let held: Vec<(u32, Held)> = {
            let mut inner = lock(&self.inner);
            inner.stopping = true;
            inner.active.drain().collect()
        };
        self.wake.notify_all();
        for (pid, h) in held {
            self.finish(pid, Some(h.start_time), h.since, false);
        }
        let n = resume_orphans(&[]);
        if n > 0 {
            info!(resumed = n, "resumed processes held for a new libssl on the way out");
        }
    }
}

/// Whether `pid` looks held for a libssl by a chainprobe: stopped, untraced, a thread stopped
/// outside any system call (at a page fault: /proc/PID/task/TID/syscall says -1) at an
/// instruction of the dynamic loader (`ld-*`: the fault is its read of the library), and a
/// libssl mapped.
pub fn held_for_libssl(pid: u32) -> bool {
    if state(pid) != Some('T') || crate::procfs::debug_state(pid).is_some_and(|d| d.tracer != 0) {
        return false;
    }
    let Some(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok() else { return false };
    let in_loader = |pc: u64| {
        maps.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (Some(range), Some(path)) = (f.next(), f.nth(4)) else { return false };
            let Some((lo, hi)) = range.split_once('-') else { return false };
            let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) else { return false };
            (lo..hi).contains(&pc) && path.rsplit('/').next().is_some_and(|n| n.starts_with("ld-"))
        })
    };
    let at_loader_fault = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten().any(|t| {
        let Ok(s) = std::fs::read_to_string(t.path().join("syscall")) else { return false };
        let f: Vec<&str> = s.split_whitespace().collect();
        f.len() == 3 && f[0] == "-1" && u64::from_str_radix(f[2].trim_start_matches("0x"), 16).is_ok_and(in_loader)
    });
    at_loader_fault && maps.lines().any(|l| l.split_whitespace().nth(5).is_some_and(|p| p.starts_with('/') && super::is_libssl(p)))
}

/// Resumes every process (other than `held`) that [`held_for_libssl`] says is held. The count.
fn resume_orphans(held: &[u32]) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if !held.contains(&pid) && held_for_libssl(pid) && cont(pid) {
            warn!(pid, "resumed a process found stopped at its mapping of libssl (held by chainprobe, never resumed)");
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stopped child is held, resumed by `end`, and the bound resumes one nobody ends.
    #[test]
    fn a_held_child_is_resumed_when_probed_or_at_the_bound() {
        let dir = std::env::temp_dir().join(format!("chainprobe-holds-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let holds = Holds::start(dir.clone(), Duration::from_millis(300)).unwrap();
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let wait_state = |want: char| {
            let t = Instant::now();
            while state(pid) != Some(want) && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
            state(pid)
        };
        for round in 0..2 {
            // SAFETY: kill with a pid and a signal number.
            unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
            assert_eq!(wait_state('T'), Some('T'), "round {round}");
            holds.begin(pid, Instant::now());
            assert!(dir.join(pid.to_string()).exists(), "the hold is recorded on disk");
            if round == 0 {
                assert!(holds.end(pid).is_some());
            }
            // Round 1: nobody ends it; the bound does.
            assert_eq!(wait_state('S'), Some('S'), "round {round}: resumed");
            // The keeper removes the record and counts the hold just after its SIGCONT.
            let t = Instant::now();
            while (dir.join(pid.to_string()).exists() || holds.stats().resumed_probed + holds.stats().resumed_bound < round + 1) && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(!dir.join(pid.to_string()).exists(), "the record is gone");
        }
        let s = holds.stats();
        assert_eq!((s.held, s.resumed_probed, s.resumed_bound), (2, 1, 1));
        assert!(s.held_max_seconds >= 0.3, "{s:?}");
        // Not held for a libssl: a stopped sleep has no libssl mapped.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        assert_eq!(wait_state('T'), Some('T'));
        assert!(!held_for_libssl(pid));
        holds.shutdown();
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
