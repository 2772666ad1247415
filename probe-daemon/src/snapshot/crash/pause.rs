//! Pauses of crashing processes: the kernel stops a crashing Go process (SIGSTOP) so its memory
//! can be read; this keeps that safe. Every pause has a hard bound after which the process is
//! resumed whatever the capsule has; at most `max` are held at once (the kernel's own check is
//! racy between CPUs, so this count is the authority); each pause is recorded on disk, so a
//! daemon that was killed resumes what it left stopped when it starts again; and at start and at
//! shutdown a scan resumes any process stopped at a crash function that nobody is tracing (a
//! daemon killed before it even saw the event).
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData};
use probe_common::{PAUSES_ENDED, PAUSES_STARTED};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::sync::lock;

/// Why a pause ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resumed {
    /// The capsule was taken.
    Done,
    /// The hard bound passed first (the capsule is partial).
    Bound,
    /// More pauses than allowed at once: resumed at once.
    Limit,
    /// Shutdown, or an error while taking the capsule.
    Aborted,
}

/// Counters for `/metrics` and the API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PauseStats {
    pub paused: u64,
    pub resumed_done: u64,
    pub resumed_bound: u64,
    pub resumed_limit: u64,
    pub resumed_aborted: u64,
    /// Processes found stopped at a crash function with no pause on record, and resumed.
    pub resumed_orphans: u64,
    pub held_max_seconds: f64,
    /// The most processes held at once since the start (never above `max_concurrent_pauses`).
    pub held_at_once_max: u64,
}

struct Active {
    start_time: u64,
    since: Instant,
    deadline: Instant,
}

struct Inner {
    active: HashMap<u32, Active>,
    /// Pauses of this daemon's kernel programs that ended (written to CRASH_PAUSES).
    ended: u64,
    stats: PauseStats,
    /// When the kernel's count was first seen ahead of ours (events not yet received, or lost).
    behind_since: Option<Instant>,
    stopping: bool,
}

pub struct Pauses {
    inner: Mutex<Inner>,
    wake: Condvar,
    dir: PathBuf,
    counters: Mutex<Option<Array<MapData, u64>>>,
    max: usize,
    bound: Duration,
}

pub use crate::procfs::{start_time, state};

fn cont(pid: u32) -> bool {
    crate::procfs::cont(pid)
}

impl Pauses {
    /// Starts the keeper: resumes what an earlier daemon left stopped, then watches the bounds.
    /// `counters` is the kernel's CRASH_PAUSES map (None: pauses are off).
    pub fn start(dir: PathBuf, counters: Option<Array<MapData, u64>>, max: usize, bound: Duration) -> std::io::Result<Arc<Pauses>> {
        std::fs::create_dir_all(&dir)?;
        let p = Arc::new(Pauses {
            inner: Mutex::new(Inner { active: HashMap::new(), ended: 0, stats: PauseStats::default(), behind_since: None, stopping: false }),
            wake: Condvar::new(),
            dir,
            counters: Mutex::new(counters),
            max: max.max(1),
            bound,
        });
        p.recover();
        crate::procfs::spawn_watchdog("crash-pauses", &p, Pauses::watch_once)?;
        Ok(p)
    }

    pub fn bound(&self) -> Duration {
        self.bound
    }

    pub fn stats(&self) -> PauseStats {
        lock(&self.inner).stats.clone()
    }

    /// The kernel stopped `pid` at its crash (at `stopped_at`): hold it until [`Self::end`] or the
    /// bound. Err(Limit) when too many are held: it was resumed at once.
    pub fn begin(&self, pid: u32, stopped_at: Instant) -> Result<Instant, Resumed> {
        let mut inner = lock(&self.inner);
        if inner.stopping || inner.active.len() >= self.max {
            drop(inner);
            self.finish(pid, None, Resumed::Limit);
            return Err(Resumed::Limit);
        }
        let start_time = start_time(pid).unwrap_or(0);
        let deadline = stopped_at + self.bound;
        // The record first: if this daemon dies now, the next one resumes the process.
        if let Err(e) = std::fs::write(self.dir.join(pid.to_string()), format!("{start_time}\n")) {
            warn!(pid, dir = %self.dir.display(), error = %e, "cannot record the pause on disk: a daemon killed during it would not resume the process");
        }
        inner.active.insert(pid, Active { start_time, since: stopped_at, deadline });
        inner.stats.paused += 1;
        inner.stats.held_at_once_max = inner.stats.held_at_once_max.max(inner.active.len() as u64);
        drop(inner);
        self.wake.notify_all();
        Ok(deadline)
    }

    /// The capsule is taken (or failed): resume `pid` if it is still held. The time it was held.
    pub fn end(&self, pid: u32, why: Resumed) -> Option<Duration> {
        let a = lock(&self.inner).active.remove(&pid)?;
        self.finish(pid, Some(&a), why);
        Some(a.since.elapsed())
    }

    /// Whether `pid` is still held (false once the bound resumed it).
    pub fn holds(&self, pid: u32) -> bool {
        lock(&self.inner).active.contains_key(&pid)
    }

    fn finish(&self, pid: u32, a: Option<&Active>, why: Resumed) {
        // Never SIGCONT a reused pid.
        let same = a.is_none_or(|a| a.start_time == 0 || start_time(pid) == Some(a.start_time));
        if same && !cont(pid) {
            debug!(pid, "SIGCONT failed: the process is gone");
        }
        let _ = std::fs::remove_file(self.dir.join(pid.to_string()));
        let mut inner = lock(&self.inner);
        inner.ended += 1;
        let held = a.map(|a| a.since.elapsed().as_secs_f64()).unwrap_or(0.0);
        let s = &mut inner.stats;
        s.held_max_seconds = s.held_max_seconds.max(held);
        match why {
            Resumed::Done => s.resumed_done += 1,
            Resumed::Bound => s.resumed_bound += 1,
            Resumed::Limit => s.resumed_limit += 1,
            Resumed::Aborted => s.resumed_aborted += 1,
        }
        let ended = inner.ended;
        drop(inner);
        self.write_ended(ended);
        match why {
            Resumed::Bound => warn!(pid, held_ms = held * 1e3, bound_ms = self.bound.as_millis() as u64, "crash pause bound reached: process resumed, its capsule is partial"),
            Resumed::Limit => info!(pid, max = self.max, "crash pause refused: the node's limit of processes held at once is reached; its capsule has no profiles"),
            _ => debug!(pid, held_ms = held * 1e3, ?why, "crashing process resumed"),
        }
    }

    fn write_ended(&self, ended: u64) {
        if let Some(m) = lock(&self.counters).as_mut() {
            if let Err(e) = m.set(PAUSES_ENDED, ended, 0) {
                warn!(error = %e, "cannot update the kernel's pause count: later crashes may not be paused");
            }
        }
    }

    /// One round of the watchdog: resumes expired pauses, heals the kernel's count. False when
    /// stopping.
    fn watch_once(&self) -> bool {
        let mut inner = lock(&self.inner);
        if inner.stopping {
            return false;
        }
        let now = Instant::now();
        let next = inner.active.values().map(|a| a.deadline).min().unwrap_or(now + Duration::from_secs(1)).min(now + Duration::from_secs(1));
        if next > now {
            inner = self.wake.wait_timeout(inner, next - now).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
        let now = Instant::now();
        let expired: Vec<u32> = inner.active.iter().filter(|(_, a)| a.deadline <= now).map(|(p, _)| *p).collect();
        let expected = inner.ended + inner.active.len() as u64;
        drop(inner);
        for pid in expired {
            self.end(pid, Resumed::Bound);
        }
        // The kernel stopped more than we know of: events on their way, or lost. After a second,
        // look for stopped processes nobody holds.
        let started = lock(&self.counters).as_ref().and_then(|m| m.get(&PAUSES_STARTED, 0).ok());
        if let Some(started) = started {
            let mut inner = lock(&self.inner);
            if started > expected {
                let since = *inner.behind_since.get_or_insert(now);
                if now.duration_since(since) > Duration::from_secs(1) {
                    inner.behind_since = None;
                    let held: Vec<u32> = inner.active.keys().copied().collect();
                    drop(inner);
                    let found = self.resume_orphans(&held);
                    let mut inner = lock(&self.inner);
                    // Whatever is still missing was counted twice by the kernel (two CPUs at once).
                    inner.ended = started.saturating_sub(inner.active.len() as u64).max(inner.ended);
                    let ended = inner.ended;
                    drop(inner);
                    if found > 0 {
                        info!(found, "resumed processes stopped at a crash whose event never arrived");
                    }
                    self.write_ended(ended);
                }
            } else {
                inner.behind_since = None;
            }
        }
        true
    }

    /// Resumes what an earlier daemon recorded, then any process stopped at a crash function.
    fn recover(&self) {
        let recorded = crate::procfs::resume_recorded_stops(&self.dir);
        for pid in &recorded {
            warn!(pid, "resumed a process an earlier chainprobe paused at its crash and did not resume");
        }
        let mut resumed = recorded.len();
        resumed += self.resume_orphans(&[]);
        if resumed > 0 {
            lock(&self.inner).stats.resumed_orphans += resumed as u64;
        }
    }

    /// At shutdown (after the kernel programs are detached): resumes every held process, then
    /// anything the kernel stopped that this daemon had not seen yet.
    pub fn shutdown(&self) {
        let pids: Vec<u32> = {
            let mut inner = lock(&self.inner);
            inner.stopping = true;
            inner.active.keys().copied().collect()
        };
        self.wake.notify_all();
        for pid in pids {
            self.end(pid, Resumed::Aborted);
        }
        let n = self.resume_orphans(&[]);
        if n > 0 {
            info!(resumed = n, "resumed processes stopped at a crash on the way out");
        }
    }

    /// Resumes every process (other than `held`) that is stopped, not traced, and has a thread
    /// stopped inside a Go crash function. The count.
    fn resume_orphans(&self, held: &[u32]) -> usize {
        let mut n = 0;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if held.contains(&pid) || state(pid) != Some('T') {
                continue;
            }
            if crate::procfs::debug_state(pid).is_some_and(|d| d.tracer != 0) {
                continue;
            }
            if stopped_at_crash(pid) && cont(pid) {
                warn!(pid, "resumed a Go process found stopped at its crash (paused by chainprobe, never resumed)");
                n += 1;
            }
        }
        n
    }
}

/// Whether a thread of the stopped process `pid` stands at the entry of a Go crash function
/// (where the crash programs stop it): its user pc from /proc/PID/task/TID/syscall, or, for a
/// thread stopped at the first instruction of the runtime's signal handler (a signal delivered
/// just before the stop), the pc the kernel saved in the handler's signal frame.
fn stopped_at_crash(pid: u32) -> bool {
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    if !crate::goruntime::elf_may_be_go(&exe) {
        return false;
    }
    let Ok(funcs) = goinspect::FuncTable::load(&exe) else { return false };
    let bias = crate::goruntime::mem::load_bias(pid, &exe).unwrap_or(0);
    let crash_fns: Vec<&str> = probe_common::CRASH_FUNCTIONS.iter().flat_map(|(_, f)| f.iter().copied()).collect();
    let mem = crate::goruntime::mem::ProcMem::open(pid).ok();
    thread_regs(pid).into_iter().any(|(sp, pc)| {
        let pc = mem.as_ref().map_or(pc, |m| interrupted_pc(m, &funcs, bias, sp, pc));
        funcs.lookup(pc.wrapping_sub(bias)).is_some_and(|f| crash_fns.contains(&f))
    })
}

/// The Go runtime's signal handlers (what it installs with sigaction).
const SIGNAL_HANDLERS: [&str; 2] = ["runtime.sigtramp", "runtime.cgoSigtramp"];

/// Where the kernel's rt_sigframe keeps the interrupted sp, followed by the pc, as an offset from
/// the stack pointer at the handler's first instruction: the kernel's user ABI
/// (arch/*/kernel/signal.c), the same for every Go version. x86-64: the return address, then the
/// ucontext (flags, link, stack_t: 40 bytes), whose sigcontext holds r8–r15, rdi, rsi, rbp, rbx,
/// rdx, rax, rcx, rsp, rip. arm64: siginfo (128 bytes), then the ucontext, whose sigcontext (at
/// 176, after the signal mask and its padding) holds fault_address, x0–x30, sp, pc.
#[cfg(target_arch = "x86_64")]
const SIGFRAME_SP: Option<u64> = Some(8 + 40 + 15 * 8);
#[cfg(target_arch = "aarch64")]
const SIGFRAME_SP: Option<u64> = Some(128 + 176 + 8 + 31 * 8);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SIGFRAME_SP: Option<u64> = None;

/// The pc a thread stopped at, seen through signal frames: a thread stopped at the entry of a Go
/// signal handler had a signal delivered at the moment it stopped, and the kernel saved the pc it
/// interrupted in the frame (nested at most a few deep).
fn interrupted_pc(mem: &crate::goruntime::mem::ProcMem, funcs: &goinspect::FuncTable, bias: u64, mut sp: u64, mut pc: u64) -> u64 {
    let Some(sp_off) = SIGFRAME_SP else { return pc };
    for _ in 0..4 {
        let at = pc.wrapping_sub(bias);
        if !funcs.lookup_entry(at).is_some_and(|(entry, f)| entry == at && SIGNAL_HANDLERS.contains(&f)) {
            break;
        }
        let mut saved = [0u8; 16];
        if mem.read_vm(sp.wrapping_add(sp_off), &mut saved).is_err() {
            break;
        }
        let word = |i: usize| u64::from_le_bytes(saved[i..i + 8].try_into().unwrap_or_default());
        (sp, pc) = (word(0), word(8));
    }
    pc
}

/// The user (sp, pc) of each blocked thread of `pid` ("-1 sp pc" or "nr args… sp pc").
fn thread_regs(pid: u32) -> Vec<(u64, u64)> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let dir = Path::new("/proc").join(pid.to_string()).join("task");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("syscall")).ok())
        .filter_map(|s| {
            let mut w = s.split_whitespace().rev();
            let pc = hex(w.next()?)?;
            Some((hex(w.next()?)?, pc))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_start_time_and_state() {
        let me = std::process::id();
        assert!(start_time(me).is_some_and(|t| t > 0));
        assert!(matches!(state(me), Some('R' | 'S')));
        assert_eq!(start_time(0x7fff_fff0), None);
    }

    #[test]
    fn a_stopped_child_is_held_then_resumed_and_the_limit_holds() {
        let dir = std::env::temp_dir().join(format!("chainprobe-pauses-{}", std::process::id()));
        let p = Pauses::start(dir.clone(), None, 1, Duration::from_millis(300)).expect("keeper");
        let mut a = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let mut b = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        for c in [&a, &b] {
            // SAFETY: stops our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
        }
        let wait_state = |pid: u32, want: char| (0..200).any(|_| state(pid) == Some(want) || { std::thread::sleep(Duration::from_millis(5)); false });
        assert!(wait_state(a.id(), 'T') && wait_state(b.id(), 'T'));
        assert!(p.begin(a.id(), Instant::now()).is_ok());
        assert!(dir.join(a.id().to_string()).exists(), "the pause is on record");
        assert_eq!(p.begin(b.id(), Instant::now()), Err(Resumed::Limit), "one at a time");
        assert!(wait_state(b.id(), 'S'), "the one beyond the limit runs again at once");
        // The bound resumes the held one.
        assert!(wait_state(a.id(), 'S') || wait_state(a.id(), 'S'), "resumed by the bound");
        // The keeper resumes the process first, then removes its record and counts it: the
        // process may run before that is done.
        let forgotten = (0..200).any(|_| (!p.holds(a.id()) && !dir.join(a.id().to_string()).exists() && p.stats().resumed_bound == 1) || {
            std::thread::sleep(Duration::from_millis(5));
            false
        });
        assert!(forgotten, "no longer held, its record gone");
        let s = p.stats();
        assert_eq!((s.paused, s.resumed_bound, s.resumed_limit), (1, 1, 1));
        for c in [&mut a, &mut b] {
            let _ = c.kill();
            let _ = c.wait();
        }
        p.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_recorded_pause_is_resumed_by_the_next_keeper() {
        let dir = std::env::temp_dir().join(format!("chainprobe-pauses-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        // SAFETY: stops our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
        while state(c.id()) != Some('T') {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::write(dir.join(c.id().to_string()), format!("{}\n", start_time(c.id()).unwrap())).unwrap();
        let p = Pauses::start(dir.clone(), None, 4, Duration::from_secs(1)).expect("keeper");
        assert!((0..200).any(|_| state(c.id()) == Some('S') || { std::thread::sleep(Duration::from_millis(5)); false }), "resumed at start");
        let _ = c.kill();
        let _ = c.wait();
        p.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }
}
