//! The heap profile an OOM kill's capsule points at.
//!
//! The OOM killer gives no time to read its victim: the kill is a SIGKILL, which cannot be
//! stopped, and the OOM reaper frees the victim's memory at once. So the evidence is taken before:
//! every `[crash] memory_watch_interval_seconds`, the memory cgroups of the tracked Go processes
//! are compared with their limits (cgroup v2 `memory.current` against `memory.max`, or v1's
//! `memory.usage_in_bytes` against `memory.limit_in_bytes`; the tightest of the process's cgroup
//! and its ancestors: container and pod), and a process at or above
//! `memory_watch_ratio` of its limit gets a heap snapshot (trigger `memory-limit`). Again after
//! `memory_watch_cooldown_seconds`, or sooner when its usage has grown by another twentieth of
//! the limit since the last one — the profile an OOM capsule points at is then the one taken
//! closest to the kill. At most one request a round for the node (the process nearest its limit
//! first); the snapshotter's own bounds (hourly cap, queue, circuit breaker) apply.
//!
//! Cost a round: per distinct cgroup one read of each limited level's usage (the limits are
//! re-read once a minute); /proc/PID/cgroup once per new process, and /proc/PID/stat (a reused pid
//! is a new process) once a minute per process and before any snapshot.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{debug, info};

use super::super::{Kind, Snapshotter, Trigger};
use super::pause::start_time;

/// The Go processes to watch (the daemon lists the tracked ones whose runtime can be read).
pub type List = Box<dyn Fn() -> Vec<u32> + Send>;

/// How long a cgroup's `memory.max` is trusted before it is read again.
const LIMIT_TTL: Duration = Duration::from_secs(60);
/// The deepest cgroup nesting looked at above a process's own cgroup.
const MAX_LEVELS: usize = 16;

/// The limit and usage that matter for one cgroup: of all its levels, the one with the least
/// room left relative to its limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pressure {
    pub current: u64,
    pub limit: u64,
}

impl Pressure {
    pub fn ratio(&self) -> f64 {
        self.current as f64 / self.limit.max(1) as f64
    }
}

/// Which memory-cgroup files a hierarchy has.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Version {
    V1,
    V2,
}

impl Version {
    fn files(self) -> (&'static str, &'static str) {
        match self {
            Version::V1 => ("memory.limit_in_bytes", "memory.usage_in_bytes"),
            Version::V2 => ("memory.max", "memory.current"),
        }
    }
}

/// Parses a limit file: v2's "max" or a byte count; v1's "no limit" is the page counter's
/// maximum (2^63 rounded down to a page), so anything from 2^62 up means none.
pub fn parse_limit(s: &str) -> Option<u64> {
    let s = s.trim();
    if s == "max" {
        return None;
    }
    s.parse().ok().filter(|&n: &u64| n < 1 << 62)
}

/// Where the memory controller is mounted: the cgroup v1 `memory` hierarchy when there is one
/// (a hybrid node: the controller is there), else the cgroup v2 hierarchy.
fn memory_mount() -> Option<(PathBuf, Version)> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut v2 = None;
    for l in mi.lines() {
        let Some((left, right)) = l.split_once(" - ") else { continue };
        let mut r = right.split_whitespace();
        let (fstype, _source, opts) = (r.next().unwrap_or(""), r.next(), r.next().unwrap_or(""));
        let Some(at) = left.split_whitespace().nth(4) else { continue };
        match fstype {
            "cgroup" if opts.split(',').any(|o| o == "memory") => return Some((PathBuf::from(at), Version::V1)),
            "cgroup2" => v2 = v2.or(Some(PathBuf::from(at))),
            _ => {}
        }
    }
    v2.map(|m| (m, Version::V2))
}

/// The memory cgroup path of `pid` in `version`'s hierarchy (from /proc/PID/cgroup), when
/// reachable from our cgroup namespace.
fn cgroup_of(pid: u32, version: Version) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = s.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        let hit = match version {
            Version::V1 => ctrls.split(',').any(|c| c == "memory"),
            Version::V2 => ctrls.is_empty(),
        };
        hit.then_some(path)
    })?;
    // "/.." components: the process lives outside our cgroup namespace; its files are not here.
    (!path.split('/').any(|c| c == "..")).then(|| path.to_string())
}

/// How often each watched pid is checked for reuse.
const REUSE_CHECK: Duration = Duration::from_secs(60);

struct Watched {
    start_time: u64,
    /// When `start_time` was last compared with the pid's (a reused pid is a new process).
    checked: Instant,
    cgroup: Option<String>,
    /// The usage when the last snapshot was requested, and when.
    last: Option<(Instant, u64)>,
}

struct Watch {
    mount: PathBuf,
    version: Version,
    ratio: f64,
    cooldown: Duration,
    procs: HashMap<u32, Watched>,
    /// memory.max per cgroup directory (None: no limit), and when it was read.
    limits: HashMap<PathBuf, (Option<u64>, Instant)>,
}

impl Watch {
    fn limit(&mut self, dir: &Path, now: Instant) -> Option<u64> {
        if let Some((l, at)) = self.limits.get(dir) {
            if now.duration_since(*at) < LIMIT_TTL {
                return *l;
            }
        }
        let l = std::fs::read_to_string(dir.join(self.version.files().0)).ok().and_then(|s| parse_limit(&s));
        self.limits.insert(dir.to_path_buf(), (l, now));
        l
    }

    /// The pressure of the cgroup `path` (from the hierarchy's root).
    fn pressure(&mut self, path: &str, now: Instant) -> Option<Pressure> {
        let mut dir = self.mount.join(path.trim_start_matches('/'));
        let mut worst: Option<Pressure> = None;
        for _ in 0..MAX_LEVELS {
            if !dir.starts_with(&self.mount) || dir == self.mount {
                break;
            }
            if let Some(limit) = self.limit(&dir, now) {
                let current = std::fs::read_to_string(dir.join(self.version.files().1)).ok().and_then(|s| s.trim().parse().ok());
                if let Some(current) = current {
                    let p = Pressure { current, limit };
                    if worst.is_none_or(|w| p.ratio() > w.ratio()) {
                        worst = Some(p);
                    }
                }
            }
            if !dir.pop() {
                break;
            }
        }
        worst
    }

    /// One round: the process to take a heap profile of, if any.
    fn round(&mut self, pids: &[u32], now: Instant) -> Option<(u32, Pressure)> {
        let live: std::collections::HashSet<u32> = pids.iter().copied().collect();
        self.procs.retain(|pid, _| live.contains(pid));
        self.limits.retain(|_, (_, at)| now.duration_since(*at) < LIMIT_TTL * 2);
        let mut by_cgroup: HashMap<String, Option<Pressure>> = HashMap::new();
        let mut due: Vec<(u32, Pressure)> = Vec::new();
        let v = self.version;
        let fresh_watch = |pid: u32, st: u64| Watched { start_time: st, checked: now, cgroup: cgroup_of(pid, v), last: None };
        for &pid in pids {
            let w = self.procs.entry(pid).or_insert_with(|| fresh_watch(pid, start_time(pid).unwrap_or(0)));
            // A reused pid: looked for once a minute (not at every round: hundreds of processes),
            // and always before a process's pressure leads to a snapshot.
            if now.saturating_duration_since(w.checked) >= REUSE_CHECK {
                let st = start_time(pid).unwrap_or(0);
                if w.start_time != st {
                    *w = fresh_watch(pid, st);
                }
                w.checked = now;
            }
            let Some(cg) = w.cgroup.clone() else { continue };
            let p = match by_cgroup.get(&cg) {
                Some(p) => *p,
                None => {
                    let p = self.pressure(&cg, now);
                    by_cgroup.insert(cg, p);
                    p
                }
            };
            let Some(p) = p.filter(|p| p.ratio() >= self.ratio) else { continue };
            let Some(w) = self.procs.get_mut(&pid) else { continue };
            let st = start_time(pid).unwrap_or(0);
            if w.start_time != st {
                // Another process now: its own cgroup next round.
                *w = fresh_watch(pid, st);
                continue;
            }
            let fresh = match w.last {
                None => true,
                Some((at, usage)) => now.duration_since(at) >= self.cooldown || p.current >= usage.saturating_add(p.limit / 20),
            };
            if fresh {
                due.push((pid, p));
            }
        }
        due.sort_by(|a, b| b.1.ratio().total_cmp(&a.1.ratio()));
        let (pid, p) = *due.first()?;
        if let Some(w) = self.procs.get_mut(&pid) {
            w.last = Some((now, p.current));
        }
        Some((pid, p))
    }
}

/// Starts the watch (nothing when `ratio` is 0 or there is no cgroup v2 hierarchy).
pub fn start(ratio: f64, interval: Duration, cooldown: Duration, snapshots: Arc<Snapshotter>, list: List) -> std::io::Result<()> {
    if ratio <= 0.0 {
        return Ok(());
    }
    let Some((mount, version)) = memory_mount() else {
        info!("no memory cgroup hierarchy mounted: OOM-kill capsules get no heap profile taken near the limit");
        return Ok(());
    };
    let mut w = Watch { mount, version, ratio, cooldown, procs: HashMap::new(), limits: HashMap::new() };
    std::thread::Builder::new().name("memory-watch".into()).spawn(move || loop {
        std::thread::sleep(interval);
        let pids = list();
        let Some((pid, p)) = w.round(&pids, Instant::now()) else { continue };
        info!(pid, used_bytes = p.current, limit_bytes = p.limit, "process near its memory limit: heap snapshot for a later OOM kill's capsule");
        if let Err(r) = snapshots.request(pid, &[Kind::Heap], Trigger::MemoryLimit, None) {
            debug!(pid, reason = %r.message, "no heap snapshot near the memory limit");
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_this_machine_has_a_memory_hierarchy() {
        assert!(memory_mount().is_some(), "no memory cgroup hierarchy in /proc/self/mountinfo");
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("268435456\n"), Some(268_435_456));
        assert_eq!(parse_limit("garbage"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None, "cgroup v1's no limit");
        assert!((Pressure { current: 90, limit: 100 }.ratio() - 0.9).abs() < 1e-9);
    }

    /// A fake hierarchy: the nearest-to-full level wins; a process is due again only after the
    /// cooldown or a twentieth of the limit more.
    #[test]
    fn the_tightest_level_and_the_repeat_rule() {
        let root = std::env::temp_dir().join(format!("chainprobe-memwatch-{}", std::process::id()));
        let pod = root.join("kubepods/podA");
        let ctr = pod.join("ctr1");
        std::fs::create_dir_all(&ctr).unwrap();
        std::fs::write(pod.join("memory.max"), "1000\n").unwrap();
        std::fs::write(pod.join("memory.current"), "950\n").unwrap();
        std::fs::write(ctr.join("memory.max"), "max\n").unwrap();
        std::fs::write(ctr.join("memory.current"), "900\n").unwrap();
        let mut w = Watch { mount: root.clone(), version: Version::V2, ratio: 0.9, cooldown: Duration::from_secs(600), procs: HashMap::new(), limits: HashMap::new() };
        let now = Instant::now();
        assert_eq!(w.pressure("/kubepods/podA/ctr1", now), Some(Pressure { current: 950, limit: 1000 }));
        std::fs::write(ctr.join("memory.max"), "960\n").unwrap();
        std::fs::write(ctr.join("memory.current"), "940\n").unwrap();
        w.limits.clear();
        assert_eq!(w.pressure("/kubepods/podA/ctr1", now), Some(Pressure { current: 940, limit: 960 }), "940/960 is tighter than 950/1000");
        // The repeat rule, with our own pid standing in for a watched process.
        let me = std::process::id();
        w.procs.insert(me, Watched { start_time: start_time(me).unwrap_or(0), checked: Instant::now(), cgroup: Some("/kubepods/podA/ctr1".into()), last: None });
        assert!(w.round(&[me], now).is_some(), "first time near the limit");
        assert!(w.round(&[me], now + Duration::from_secs(5)).is_none(), "not again at the same usage");
        std::fs::write(ctr.join("memory.current"), "990\n").unwrap();
        assert!(w.round(&[me], now + Duration::from_secs(10)).is_some(), "again after growing by a twentieth of the limit");
        assert!(w.round(&[me], now + Duration::from_secs(700)).is_some(), "again after the cooldown");
        assert!(w.round(&[], now).is_none() && w.procs.is_empty(), "gone processes are forgotten");
        let _ = std::fs::remove_dir_all(root);
    }
}
