//! On-demand goroutine-creation probes: uprobes on runtime.newproc1's RETs (the new g, its
//! creation PC) and runtime.goexit1, attached to one process at a time, for a bounded window.
//! A uprobe hit costs microseconds, so they are off by default and switch on only when they pay:
//! a suspected goroutine leak (the count rising read after read), an API request, or config
//! (`always`). They switch off when the window ends or when goroutines are created too fast to
//! afford the probes.
use crate::sync::lock;
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::programs::uprobe::UProbeLinkId;
use probe_common::{CreationSite, GoCreationConfig, GoSite, GoidKey, ProgGroup, ProgId};
use serde::Serialize;
use tracing::{info, warn};

use super::{BinaryKey, GoTarget};
use goinspect::FuncTable;
use crate::{
    attach::{CreationMaps, Probes},
};

/// When creation probes may switch on by themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CreationMode {
    /// On a suspected leak or an API request.
    Auto,
    /// Only on an API request.
    Manual,
    /// On for every Go process (still bounded by the rate guard).
    Always,
}

#[derive(Debug, Clone)]
pub struct CreationSettings {
    pub mode: CreationMode,
    pub window: Duration,
    /// Above this many creations per second the probes switch off (each hit costs µs).
    pub max_rate: f64,
    /// A leak is suspected when the goroutine count rose at each of this many consecutive reads…
    pub leak_reads: usize,
    /// …by at least this much in total.
    pub leak_growth: i64,
    /// After switching off, a process is not switched on automatically again for this long.
    pub cooldown: Duration,
    pub top_n: usize,
}

/// The creation-probe state of one process, for metrics and the API.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CreationStatus {
    pub active: bool,
    /// Why they are on, or why they went off.
    pub reason: String,
    /// Goroutines created / exited while on (this window).
    pub created: u64,
    pub exited: u64,
    /// Creating functions, most creations first (top N).
    pub top: Vec<(String, u64)>,
}

struct Active {
    until: Instant,
    links: Vec<(ProgId, UProbeLinkId)>,
    bias: u64,
    funcs: Arc<FuncTable>,
    reason: String,
    last: (Instant, u64),
}

pub struct CreationProbes {
    maps: CreationMaps,
    settings: CreationSettings,
    active: HashMap<u32, Active>,
    status: HashMap<u32, CreationStatus>,
    cooldown_until: HashMap<u32, Instant>,
    history: HashMap<u32, VecDeque<i64>>,
    funcs: HashMap<BinaryKey, Arc<FuncTable>>,
}

impl CreationProbes {
    pub fn new(maps: CreationMaps, settings: CreationSettings) -> Self {
        CreationProbes {
            maps,
            settings,
            active: HashMap::new(),
            status: HashMap::new(),
            cooldown_until: HashMap::new(),
            history: HashMap::new(),
            funcs: HashMap::new(),
        }
    }

    pub fn status(&self, pid: u32) -> Option<&CreationStatus> {
        self.status.get(&pid)
    }

    /// Switches the probes on for `t` for `window` (default: the configured window).
    pub fn enable(&mut self, probes: &Mutex<Probes>, t: &GoTarget, reason: String, window: Option<Duration>) -> Result<(), String> {
        if self.active.contains_key(&t.pid) {
            return Ok(());
        }
        let bin = t.binary.as_ref().ok_or("binary not inspected")?;
        let layout = t.layout.as_ref().ok_or_else(|| t.reads_error.clone().unwrap_or_else(|| "no runtime layout".into()))?;
        let off = |k: &str| bin.offset(k).map(|v| v as u32).ok_or_else(|| format!("offset {k} unknown for {}", bin.go_version));
        let cfg = GoCreationConfig { g_gopc: off("g.gopc")?, g_goid: off("g.goid")? };
        let key = t.key.ok_or("binary identity unknown")?;
        let funcs = match self.funcs.get(&key) {
            Some(f) => f.clone(),
            None => {
                let f = Arc::new(FuncTable::load(&std::path::PathBuf::from(format!("/proc/{}/exe", t.pid))).map_err(|e| e.to_string())?);
                self.funcs.insert(key, f.clone());
                f
            }
        };
        self.maps.config.insert(t.pid, cfg, 0).map_err(|e| format!("creation config map: {e}"))?;
        let target = std::path::PathBuf::from(format!("/proc/{}/exe", t.pid));
        let mut links = Vec::new();
        let mut failure = None;
        {
            let mut p = lock(probes);
            for prog in ProgId::in_group(ProgGroup::GoCreation) {
                let Some((function, site)) = prog.go_site() else { continue };
                let Some(f) = bin.function(function) else {
                    failure = Some(format!("{function} not found in the binary"));
                    break;
                };
                let offsets = match site {
                    GoSite::Entry => vec![f.entry_probe_file_offset],
            GoSite::AfterStackCheck => vec![f.after_stack_check_file_offset],
                    GoSite::Returns => f.ret_file_offsets.clone(),
                };
                for o in offsets {
                    match p.attach_uprobe(prog, &target, o, Some(t.pid)) {
                        Ok(l) => links.push((prog, l)),
                        Err(e) => failure = Some(e),
                    }
                }
            }
            if failure.is_some() {
                for (prog, l) in links.drain(..) {
                    p.detach_uprobe(prog, l);
                }
            }
        }
        if let Some(e) = failure {
            let _ = self.maps.config.remove(&t.pid);
            return Err(e);
        }
        let now = Instant::now();
        info!(pid = t.pid, %reason, "goroutine creation probes on");
        self.active.insert(
            t.pid,
            Active { until: now + window.unwrap_or(self.settings.window), links, bias: layout.bias, funcs, reason: reason.clone(), last: (now, 0) },
        );
        self.status.insert(t.pid, CreationStatus { active: true, reason, ..Default::default() });
        Ok(())
    }

    /// Switches the probes off for `pid`, keeping the last counts in its status.
    pub fn disable(&mut self, probes: &Mutex<Probes>, pid: u32, why: &str) {
        let Some(a) = self.active.remove(&pid) else { return };
        self.collect(pid, &a);
        {
            let mut p = lock(probes);
            for (prog, l) in a.links {
                p.detach_uprobe(prog, l);
            }
        }
        let _ = self.maps.config.remove(&pid);
        let _ = self.maps.counts.remove(&pid);
        let doomed: Vec<CreationSite> = self.maps.sites.keys().flatten().filter(|k| k.tgid == pid).collect();
        for k in doomed {
            let _ = self.maps.sites.remove(&k);
        }
        let doomed: Vec<GoidKey> = self.maps.window_goids.keys().flatten().filter(|k| k.tgid == pid).collect();
        for k in doomed {
            let _ = self.maps.window_goids.remove(&k);
        }
        self.cooldown_until.insert(pid, Instant::now() + self.settings.cooldown);
        if let Some(s) = self.status.get_mut(&pid) {
            s.active = false;
            s.reason = format!("off: {why} (were on: {})", a.reason);
        }
        info!(pid, why, "goroutine creation probes off");
    }

    /// Reads the kernel counts of an active process into its status.
    fn collect(&mut self, pid: u32, a: &Active) {
        let (created, exited) = match self.maps.counts.get(&pid, 0) {
            Ok(per_cpu) => per_cpu.iter().fold((0, 0), |(c, e), v| (c + v.created, e + v.exited)),
            Err(_) => (0, 0),
        };
        let mut by_fn: HashMap<String, u64> = HashMap::new();
        for (site, per_cpu) in self.maps.sites.iter().flatten() {
            if site.tgid != pid {
                continue;
            }
            let n: u64 = per_cpu.iter().sum();
            let name = a.funcs.lookup(site.gopc.wrapping_sub(a.bias)).unwrap_or("unknown").to_string();
            *by_fn.entry(name).or_insert(0) += n;
        }
        let mut top: Vec<(String, u64)> = by_fn.into_iter().collect();
        top.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        top.truncate(self.settings.top_n);
        let s = self.status.entry(pid).or_default();
        s.created = created;
        s.exited = exited;
        s.top = top;
    }

    /// Called after each round of runtime reads with (pid, goroutines) of every read process.
    /// Collects counts, ends windows, applies the rate guard and the leak heuristic.
    pub fn tick(&mut self, probes: &Mutex<Probes>, targets: &[std::sync::Arc<GoTarget>], goroutines: &[(u32, i64)]) {
        let now = Instant::now();
        let pids: Vec<u32> = self.active.keys().copied().collect();
        for pid in pids {
            let Some(a) = self.active.remove(&pid) else { continue };
            self.collect(pid, &a);
            let created = self.status.get(&pid).map(|s| s.created).unwrap_or(0);
            // The rate over at least a second (reads can come back to back after a slow round).
            let dt = now.saturating_duration_since(a.last.0).as_secs_f64();
            let mut a = a;
            let rate = if dt >= 1.0 {
                let r = created.saturating_sub(a.last.1) as f64 / dt;
                a.last = (now, created);
                r
            } else {
                0.0
            };
            let alive = targets.iter().any(|t| t.pid == pid);
            self.active.insert(pid, a);
            if !alive {
                self.disable(probes, pid, "process exited");
            } else if rate > self.settings.max_rate {
                warn!(pid, rate, "goroutine creation rate too high to afford creation probes");
                self.disable(probes, pid, &format!("{rate:.0} creations/s exceeds the affordable {:.0}/s", self.settings.max_rate));
            } else if now >= self.active[&pid].until {
                self.disable(probes, pid, "window ended");
            }
        }
        for &(pid, n) in goroutines {
            let h = self.history.entry(pid).or_default();
            h.push_back(n);
            while h.len() > self.settings.leak_reads + 1 {
                h.pop_front();
            }
            if self.active.contains_key(&pid) || self.cooldown_until.get(&pid).is_some_and(|&t| now < t) {
                continue;
            }
            let Some(t) = targets.iter().find(|t| t.pid == pid) else { continue };
            let reason = match self.settings.mode {
                CreationMode::Always => Some("always on (go.creation_probes = \"always\")".to_string()),
                CreationMode::Auto => leak_suspected(h, self.settings.leak_reads, self.settings.leak_growth),
                CreationMode::Manual => None,
            };
            if let Some(reason) = reason {
                if let Err(e) = self.enable(probes, t, reason, None) {
                    warn!(pid, error = %e, "cannot switch on creation probes");
                    self.cooldown_until.insert(pid, now + self.settings.cooldown);
                }
            }
        }
        let live: std::collections::HashSet<u32> = targets.iter().map(|t| t.pid).collect();
        self.history.retain(|p, _| live.contains(p));
        self.status.retain(|p, _| live.contains(p));
        self.cooldown_until.retain(|p, _| live.contains(p));
    }
}

/// "goroutines rose at each of the last `reads` reads, by `growth` or more in all".
pub fn leak_suspected(h: &VecDeque<i64>, reads: usize, growth: i64) -> Option<String> {
    if reads == 0 || h.len() < reads + 1 {
        return None;
    }
    let w: Vec<i64> = h.iter().skip(h.len() - reads - 1).copied().collect();
    let rising = w.windows(2).all(|p| p[1] > p[0]);
    let (first, last) = (w[0], w[w.len() - 1]);
    (rising && last - first >= growth)
        .then(|| format!("leak suspected: goroutines rose at each of the last {reads} reads, {first} -> {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leak_heuristic() {
        let h: VecDeque<i64> = [10, 60, 120, 200, 260, 330, 400].into_iter().collect();
        assert!(leak_suspected(&h, 6, 200).is_some());
        assert!(leak_suspected(&h, 6, 1000).is_none(), "not enough growth");
        let flat: VecDeque<i64> = [10, 60, 60, 200, 260, 330, 400].into_iter().collect();
        assert!(leak_suspected(&flat, 6, 100).is_none(), "must rise at every read");
        let short: VecDeque<i64> = [10, 500].into_iter().collect();
        assert!(leak_suspected(&short, 6, 100).is_none());
    }
}
