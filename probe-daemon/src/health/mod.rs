//! Health: per-process signals (each with warn/critical thresholds) folded into a 0–100 score, and
//! the rules that decide when evidence is taken.
//!
//! Every evaluation compares what the aggregate holds now with what it held at the previous
//! evaluation of the same process, so rates are over the evaluation window, whatever its length.
//! A rule breaches after `consecutive` bad evaluations in a row and clears after as many good ones
//! (hysteresis): one breach, one trigger, however long the condition lasts.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, Instant},
};

use probe_common::{MemSyscall, ProcCounters};
use serde::{Deserialize, Serialize};

use crate::{
    aggregate::{Aggregate, ExitReason, ProcessState},
    evidence::Kind,
};

/// State of one signal: ok, warn or critical (the `chainprobe_health_signal_state` value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ok = 0,
    Warn = 1,
    Critical = 2,
}

/// Warn/critical thresholds of a signal (a value at or above the threshold is in that state).
/// An absent threshold never fires.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warn: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub critical: Option<f64>,
}

impl Thresholds {
    const fn new(warn: f64, critical: f64) -> Self {
        Thresholds { warn: Some(warn), critical: Some(critical) }
    }
    pub fn state(&self, v: f64) -> State {
        if self.critical.is_some_and(|c| v >= c) {
            State::Critical
        } else if self.warn.is_some_and(|w| v >= w) {
            State::Warn
        } else {
            State::Ok
        }
    }
}

/// Every signal: name, what it measures, default thresholds.
pub const SIGNALS: &[(&str, &str, Thresholds)] = &[
    ("goroutines", "goroutines (as runtime.NumGoroutine counts them)", Thresholds::new(2000.0, 5000.0)),
    (
        "goroutine_growth_per_minute",
        "goroutines gained per minute, when the count rose steadily over the last growth_evaluations",
        Thresholds::new(100.0, 1000.0),
    ),
    ("heap_goal_ratio", "live heap / the GC's heap goal (critical above the pacer's hard goal, 1.1× the goal)", Thresholds::new(0.8, 1.1)),
    ("heap_live_bytes", "live heap in bytes (no thresholds: for growth rules)", Thresholds { warn: None, critical: None }),
    ("stw_seconds_per_10s", "stop-the-world pause time per 10 s", Thresholds::new(0.1, 0.2)),
    ("gc_rate_ratio", "GC cycles per second / the process's own baseline rate", Thresholds::new(3.0, 10.0)),
    ("tcp_connect_failure_ratio", "failed / attempted TCP connects (10 attempts or more in the window)", Thresholds::new(0.05, 0.25)),
    ("tcp_resets_per_second", "TCP resets sent and received per second", Thresholds::new(5.0, 50.0)),
    ("tcp_retransmits_per_second", "TCP retransmitted segments per second", Thresholds::new(10.0, 100.0)),
    (
        "tls_handshake_failure_ratio",
        "failed / finished TLS handshakes in the window (5 handshakes or more)",
        Thresholds::new(0.05, 0.25),
    ),
    ("tls_handshake_p99_seconds", "99th percentile of TLS handshake durations in the window (5 handshakes or more)", Thresholds::new(0.5, 2.0)),
    (
        "http2_goaways_received_error",
        "HTTP/2 GOAWAY frames received with an error code (anything but NO_ERROR) in the window: a peer closing the connection on this process",
        Thresholds::new(1.0, 3.0),
    ),
    ("http2_stream_resets_per_second", "HTTP/2 RST_STREAM frames sent and received per second", Thresholds::new(5.0, 50.0)),
    ("memory_maps_ratio", "memory maps / vm.max_map_count", Thresholds::new(0.8, 0.9)),
    ("mmap_failures", "failed mmap/munmap/brk calls in the window", Thresholds::new(1.0, 10.0)),
    (
        "sibling_abnormal_exits",
        "abnormal exits (signal other than SIGTERM/SIGINT, non-zero status) of processes in the same pod (or with the same name outside pods) within sibling_window_seconds",
        Thresholds::new(1.0, 3.0),
    ),
    ("sibling_oom_kills", "OOM kills in the same pod (or of the same name) within sibling_window_seconds", Thresholds::new(1.0, 1.0)),
    ("traced", "1 while a tracer (a debugger) is attached to the process", Thresholds { warn: Some(1.0), critical: None }),
    (
        "stopped_seconds",
        "seconds the process has been seen stopped (a breakpoint, SIGSTOP), from the periodic /proc read ([collect] map_count_interval_seconds): a lower bound",
        Thresholds::new(1.0, 10.0),
    ),
];

/// The built-in thresholds of `name`.
pub fn default_thresholds(name: &str) -> Option<Thresholds> {
    SIGNALS.iter().find(|s| s.0 == name).map(|s| s.2)
}

/// `[[health.rules]]`: when to take a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// A signal name, or "any".
    pub signal: String,
    /// The state that counts as bad (threshold rules).
    #[serde(default = "critical")]
    pub state: State,
    /// Bad evaluations in a row before the rule breaches (and good ones before it clears).
    #[serde(default = "three")]
    pub consecutive: u32,
    /// Baseline rule instead: bad when the value exceeds its average over the previous
    /// `baseline_evaluations` by more than this many percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_percent: Option<f64>,
    #[serde(default = "ten")]
    pub baseline_evaluations: usize,
    /// What to capture.
    #[serde(default = "all_kinds")]
    pub kinds: Vec<Kind>,
}

fn critical() -> State {
    State::Critical
}
fn three() -> u32 {
    3
}
fn ten() -> usize {
    10
}
fn all_kinds() -> Vec<Kind> {
    Kind::ALL.to_vec()
}

/// `[health]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub interval_seconds: f64,
    pub degraded_interval_seconds: f64,
    pub warn_penalty: u32,
    pub critical_penalty: u32,
    pub growth_evaluations: usize,
    pub gc_baseline_evaluations: usize,
    pub sibling_window_seconds: f64,
    /// Overrides of the built-in thresholds, by signal name.
    pub signals: BTreeMap<String, Thresholds>,
    pub rules: Vec<RuleConfig>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_seconds: 30.0,
            degraded_interval_seconds: 5.0,
            warn_penalty: 10,
            critical_penalty: 30,
            growth_evaluations: 6,
            gc_baseline_evaluations: 20,
            sibling_window_seconds: 300.0,
            signals: SIGNALS.iter().map(|(n, _, t)| (n.to_string(), *t)).collect(),
            rules: vec![RuleConfig {
                name: "critical".into(),
                signal: "any".into(),
                state: State::Critical,
                consecutive: 3,
                growth_percent: None,
                baseline_evaluations: 10,
                kinds: all_kinds(),
            }],
        }
    }
}

impl HealthConfig {
    /// Checks names and ranges; `Err` says which setting is wrong.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let bad = |k: &'static str, m: String| Err((k, m));
        let known = || SIGNALS.iter().map(|s| s.0).collect::<Vec<_>>().join(", ");
        for (name, t) in &self.signals {
            if default_thresholds(name).is_none() {
                return bad("health.signals", format!("unknown signal {name:?} (known: {})", known()));
            }
            if let (Some(w), Some(c)) = (t.warn, t.critical) {
                if w > c {
                    return bad("health.signals", format!("{name}: warn ({w}) is above critical ({c})"));
                }
            }
        }
        for r in &self.rules {
            if r.name.is_empty() || !r.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return bad("health.rules.name", format!("{:?}: use letters, digits, '-' and '_'", r.name));
            }
            if r.signal != "any" && default_thresholds(&r.signal).is_none() {
                return bad("health.rules.signal", format!("rule {}: unknown signal {:?} (\"any\" or one of: {})", r.name, r.signal, known()));
            }
            if r.consecutive == 0 || r.consecutive > 1000 {
                return bad("health.rules.consecutive", format!("rule {}: must be 1 to 1000", r.name));
            }
            if let Some(g) = r.growth_percent {
                if !(g.is_finite() && g > 0.0) || r.signal == "any" || r.baseline_evaluations < 2 {
                    return bad("health.rules.growth_percent", format!("rule {}: needs a positive percentage, one signal and baseline_evaluations >= 2", r.name));
                }
            }
            if r.kinds.is_empty() {
                return bad("health.rules.kinds", format!("rule {}: name at least one of heap, goroutine", r.name));
            }
        }
        if self.rules.iter().enumerate().any(|(i, r)| self.rules[..i].iter().any(|o| o.name == r.name)) {
            return bad("health.rules.name", "rule names must be unique".into());
        }
        if self.growth_evaluations < 2 || self.gc_baseline_evaluations < 2 {
            return bad("health.growth_evaluations", "growth_evaluations and gc_baseline_evaluations must be at least 2".into());
        }
        if self.warn_penalty > 100 || self.critical_penalty > 100 {
            return bad("health.critical_penalty", "penalties are points out of 100".into());
        }
        Ok(())
    }

    fn thresholds(&self, name: &str) -> Thresholds {
        self.signals.get(name).copied().or_else(|| default_thresholds(name)).unwrap_or_default()
    }
}

/// One signal's reading, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signal {
    pub name: &'static str,
    pub value: f64,
    /// The threshold of the state it is in (critical's when critical, else warn's).
    pub threshold: Option<f64>,
    pub state: State,
}

/// A process's health after an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    pub score: u8,
    pub signals: Vec<Signal>,
}

impl Health {
    pub fn worst(&self) -> State {
        self.signals.iter().map(|s| s.state).max().unwrap_or(State::Ok)
    }
}

/// A rule that just breached for a process.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    pub pid: u32,
    pub rule: String,
    pub kinds: Vec<Kind>,
    pub health: Health,
}

/// Counters as of the previous evaluation of a process.
#[derive(Debug, Clone)]
struct Prev {
    at: Instant,
    counters: ProcCounters,
    mem_failures: u64,
    gc_cycles: u64,
    stw_seconds: f64,
    tls: Option<crate::tls::TlsTotals>,
    http2: Option<crate::http2::Http2Totals>,
}

#[derive(Debug, Default)]
struct ProcHistory {
    prev: Option<Prev>,
    goroutines: VecDeque<f64>,
    gc_rates: VecDeque<f64>,
    values: HashMap<&'static str, VecDeque<f64>>,
    /// Per rule: (bad in a row, good in a row, breached).
    rules: HashMap<String, (u32, u32, bool)>,
}

/// Evaluates processes; keeps per-process history between evaluations.
pub struct HealthEngine {
    cfg: HealthConfig,
    hist: HashMap<u32, ProcHistory>,
    /// Abnormal exits and OOM kills of the last `sibling_window_seconds`, by sibling group.
    exits: SiblingExits,
    /// Exited pids already recorded.
    seen_exits: HashMap<u32, Instant>,
}

/// Abnormal exits and OOM kills by sibling group, counted in time slots of a
/// [`SIBLING_SLOTS`]th of the window: memory bounded by groups × slots however fast a crash
/// loop exits (one entry per exit held 30,000 of them, a `String` each, at 100 exits/s over
/// the default 300 s window, and every process's evaluation walked them all). An exit counts
/// until the window has passed since it, and at most one slot longer. Normal exits count for
/// nothing and are not kept.
#[derive(Debug, Default)]
struct SiblingExits {
    by_group: HashMap<String, VecDeque<ExitSlot>>,
}

/// Slots a window is cut into.
const SIBLING_SLOTS: u32 = 256;

#[derive(Debug, Clone, Copy)]
struct ExitSlot {
    start: Instant,
    abnormal: u32,
    oom: u32,
}

impl SiblingExits {
    fn record(&mut self, group: String, at: Instant, abnormal: bool, oom: bool, window: Duration) {
        if !abnormal && !oom {
            return;
        }
        let width = window / SIBLING_SLOTS;
        let slots = self.by_group.entry(group).or_default();
        match slots.back_mut() {
            Some(s) if at < s.start + width => {
                s.abnormal += u32::from(abnormal);
                s.oom += u32::from(oom);
            }
            _ => slots.push_back(ExitSlot { start: at, abnormal: u32::from(abnormal), oom: u32::from(oom) }),
        }
    }

    /// Forgets slots whose every exit is older than `window`.
    fn expire(&mut self, now: Instant, window: Duration) {
        let width = window / SIBLING_SLOTS;
        self.by_group.retain(|_, slots| {
            while slots.front().is_some_and(|s| now.saturating_duration_since(s.start + width) > window) {
                slots.pop_front();
            }
            !slots.is_empty()
        });
    }

    /// (abnormal exits, OOM kills) of `group` in the window.
    fn count(&self, group: &str) -> (u32, u32) {
        self.by_group.get(group).map_or((0, 0), |slots| slots.iter().fold((0, 0), |(a, o), s| (a + s.abnormal, o + s.oom)))
    }
}

/// The group whose members are siblings: the pod when known, else the process name.
fn sibling_group(p: &ProcessState) -> String {
    match p.pod.as_ref().filter(|l| !l.pod.is_empty()) {
        Some(l) => format!("pod/{}/{}", l.namespace, l.pod),
        None => format!("comm/{}", p.comm),
    }
}

/// Adds a reading with its state under the configured thresholds.
fn reading(cfg: &HealthConfig, name: &'static str, value: f64) -> Signal {
    let t = cfg.thresholds(name);
    let state = t.state(value);
    let threshold = match state {
        State::Critical => t.critical,
        _ => t.warn.or(t.critical),
    };
    Signal { name, value, threshold, state }
}

/// Least-squares slope (per step) of `v`, if it rose in at least 80% of its steps.
fn steady_slope(v: &VecDeque<f64>) -> Option<f64> {
    let n = v.len();
    if n < 2 {
        return None;
    }
    let rises = v.iter().zip(v.iter().skip(1)).filter(|(a, b)| b > a).count();
    if (rises as f64) < 0.8 * (n - 1) as f64 {
        return None;
    }
    let mean_x = (n - 1) as f64 / 2.0;
    let mean_y = v.iter().sum::<f64>() / n as f64;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in v.iter().enumerate() {
        let dx = i as f64 - mean_x;
        num += dx * (y - mean_y);
        den += dx * dx;
    }
    (den > 0.0).then(|| num / den)
}

/// How many values of `signal` the growth rules need (their longest baseline, plus the current
/// value); None: no growth rule reads it, so none are kept.
fn history_kept(cfg: &HealthConfig, signal: &str) -> Option<usize> {
    cfg.rules.iter().filter(|r| r.growth_percent.is_some() && r.signal == signal).map(|r| r.baseline_evaluations + 1).max()
}

fn push(q: &mut VecDeque<f64>, v: f64, cap: usize) {
    q.push_back(v);
    while q.len() > cap {
        q.pop_front();
    }
}

impl HealthEngine {
    pub fn new(cfg: HealthConfig) -> Self {
        HealthEngine { cfg, hist: HashMap::new(), exits: SiblingExits::default(), seen_exits: HashMap::new() }
    }

    /// How long until the next evaluation: shorter while anything is degraded.
    pub fn next_interval(&self, degraded: bool) -> Duration {
        let s = if degraded { self.cfg.degraded_interval_seconds } else { self.cfg.interval_seconds };
        Duration::from_secs_f64(s.max(0.05))
    }

    /// Evaluates every live process of `agg`. Returns each one's health and the rules that
    /// breached in this evaluation.
    pub fn evaluate(&mut self, agg: &Aggregate, max_map_count: Option<u64>, now: Instant) -> (Vec<(u32, Health)>, Vec<Breach>) {
        let window = Duration::from_secs_f64(self.cfg.sibling_window_seconds.max(0.0));
        // Exits first, so a sibling's death counts in this very evaluation.
        for p in agg.processes() {
            if let Some(e) = &p.exit {
                if p.pid != 0 && self.seen_exits.get(&p.pid) != Some(&e.at) {
                    self.seen_exits.insert(p.pid, e.at);
                    let abnormal = match e.reason {
                        ExitReason::Oom => true,
                        ExitReason::Signal => !matches!(e.code.as_str(), "SIGTERM" | "SIGINT"),
                        ExitReason::Exit => e.code != "0" && e.code != "unknown",
                    };
                    self.exits.record(sibling_group(p), e.at, abnormal, e.reason == ExitReason::Oom, window);
                }
            }
        }
        self.exits.expire(now, window);
        // An exit is counted once: its pid is remembered while the exited process is still in
        // the aggregate (it cannot come back once it has left). A time-based memory held 60,000
        // pids at 100 exits/s for 10 minutes, and the daemon's RSS grew all the while.
        self.seen_exits.retain(|pid, at| agg.process(*pid).and_then(|p| p.exit.as_ref()).is_some_and(|e| e.at == *at));

        let mut out = Vec::new();
        let mut breaches = Vec::new();
        let live: Vec<&ProcessState> = agg.processes().filter(|p| p.exit.is_none() && p.pid != 0).collect();
        let live_pids: std::collections::HashSet<u32> = live.iter().map(|p| p.pid).collect();
        self.hist.retain(|pid, _| live_pids.contains(pid));
        for p in live {
            let health = self.evaluate_one(p, max_map_count, now);
            breaches.extend(self.apply_rules(p.pid, &health));
            out.push((p.pid, health));
        }
        out.sort_by_key(|(pid, _)| *pid);
        (out, breaches)
    }

    fn evaluate_one(&mut self, p: &ProcessState, max_map_count: Option<u64>, now: Instant) -> Health {
        let cfg = &self.cfg;
        let h = self.hist.entry(p.pid).or_default();
        let mut sig = Vec::new();
        let counters = p.counters();
        let mem_failures: u64 = p.failures().into_iter().filter(|((s, _), _)| matches!(s, MemSyscall::Mmap | MemSyscall::Munmap | MemSyscall::Brk)).map(|(_, n)| n).sum();
        let (gc_cycles, stw_seconds) = p.go.as_ref().map(|g| (g.gc_cycles, g.stw_seconds)).unwrap_or((0, 0.0));

        if let Some(go) = &p.go {
            if let Some(s) = &go.sample {
                let n = s.goroutines as f64;
                sig.push(reading(cfg, "goroutines", n));
                push(&mut h.goroutines, n, cfg.growth_evaluations);
                if h.goroutines.len() >= cfg.growth_evaluations {
                    if let Some(prev) = &h.prev {
                        // Slope per evaluation → per minute, with this window's length.
                        let secs = now.saturating_duration_since(prev.at).as_secs_f64().max(1e-3);
                        let per_min = steady_slope(&h.goroutines).map(|s| s * 60.0 / secs).unwrap_or(0.0);
                        sig.push(reading(cfg, "goroutine_growth_per_minute", per_min.max(0.0)));
                    }
                }
                if s.heap_goal > 0 {
                    sig.push(reading(cfg, "heap_goal_ratio", s.heap_live as f64 / s.heap_goal as f64));
                }
                sig.push(reading(cfg, "heap_live_bytes", s.heap_live as f64));
            }
        }
        if let Some(prev) = &h.prev {
            let secs = now.saturating_duration_since(prev.at).as_secs_f64();
            if secs > 0.0 {
                let d = |a: u64, b: u64| a.saturating_sub(b) as f64;
                let (c, o) = (&counters, &prev.counters);
                if p.go.is_some() {
                    sig.push(reading(cfg, "stw_seconds_per_10s", (stw_seconds - prev.stw_seconds).max(0.0) * 10.0 / secs));
                    let rate = d(gc_cycles, prev.gc_cycles) / secs;
                    // The baseline is the process's own history, without this window.
                    if h.gc_rates.len() >= cfg.gc_baseline_evaluations.min(5) {
                        let base = h.gc_rates.iter().sum::<f64>() / h.gc_rates.len() as f64;
                        // Below one cycle per second nothing is "far above" anything.
                        let ratio = if rate < 1.0 { 0.0 } else { rate / base.max(0.1) };
                        sig.push(reading(cfg, "gc_rate_ratio", ratio));
                    }
                    push(&mut h.gc_rates, rate, cfg.gc_baseline_evaluations);
                }
                let failed = d(c.tcp_connect_refused, o.tcp_connect_refused)
                    + d(c.tcp_connect_timeout, o.tcp_connect_timeout)
                    + d(c.tcp_connect_reset, o.tcp_connect_reset)
                    + d(c.tcp_connect_error, o.tcp_connect_error);
                let attempts = failed + d(c.tcp_connect_ok, o.tcp_connect_ok);
                if attempts >= 10.0 {
                    sig.push(reading(cfg, "tcp_connect_failure_ratio", failed / attempts));
                }
                let resets = d(c.tcp_resets_sent, o.tcp_resets_sent) + d(c.tcp_resets_received, o.tcp_resets_received);
                if resets > 0.0 || p.go.is_some() {
                    sig.push(reading(cfg, "tcp_resets_per_second", resets / secs));
                }
                let retrans = d(c.tcp_retransmits, o.tcp_retransmits);
                if retrans > 0.0 || p.go.is_some() {
                    sig.push(reading(cfg, "tcp_retransmits_per_second", retrans / secs));
                }
                sig.push(reading(cfg, "mmap_failures", d(mem_failures, prev.mem_failures)));
            }
        }
        let tls = p.tls.as_ref().map(|t| t.totals());
        if let (Some(now_tls), Some(prev_tls)) = (&tls, h.prev.as_ref().and_then(|p| p.tls.as_ref())) {
            let w = now_tls.since(prev_tls);
            if w.handshakes >= 5 {
                if let Some(r) = w.failure_ratio() {
                    sig.push(reading(cfg, "tls_handshake_failure_ratio", r));
                }
                if let Some(q) = w.quantile(0.99) {
                    sig.push(reading(cfg, "tls_handshake_p99_seconds", q));
                }
            }
        }
        let http2 = p.http2.as_ref().map(|h| h.totals());
        if let Some(now_h2) = &http2 {
            // Frames before the process's first evaluation (its counts start at zero when it is
            // first seen) or before its first frame count in this window: a GOAWAY received
            // right after a process started is not lost.
            let w = now_h2.since(&h.prev.as_ref().and_then(|p| p.http2).unwrap_or_default());
            sig.push(reading(cfg, "http2_goaways_received_error", w.goaways_received_error as f64));
            if let Some(prev) = &h.prev {
                let secs = now.saturating_duration_since(prev.at).as_secs_f64();
                if secs > 0.0 {
                    sig.push(reading(cfg, "http2_stream_resets_per_second", w.stream_resets as f64 / secs));
                }
            }
        }
        if let (Some(n), Some(max)) = (p.map_count, max_map_count.filter(|m| *m > 0)) {
            sig.push(reading(cfg, "memory_maps_ratio", n as f64 / max as f64));
        }
        let (abnormal, oom) = self.exits.count(&sibling_group(p));
        sig.push(reading(cfg, "sibling_abnormal_exits", f64::from(abnormal)));
        sig.push(reading(cfg, "sibling_oom_kills", f64::from(oom)));
        let debug = p.debug.as_ref();
        sig.push(reading(cfg, "traced", if debug.is_some_and(|d| d.tracer_pid != 0) { 1.0 } else { 0.0 }));
        sig.push(reading(cfg, "stopped_seconds", debug.and_then(|d| d.stopped_seconds()).unwrap_or(0.0)));

        // Only what a growth rule compares with: its baseline plus this evaluation. (A cap of
        // 1,000 values for every signal grew each process's history for hours, 8 KB a signal:
        // the daemon's RSS crept by 0.25 MiB a minute with 500 Go processes.)
        for s in &sig {
            if let Some(keep) = history_kept(cfg, s.name) {
                push(h.values.entry(s.name).or_default(), s.value, keep);
            }
        }
        h.prev = Some(Prev { at: now, counters, mem_failures, gc_cycles, stw_seconds, tls, http2 });
        let penalty: u32 = sig
            .iter()
            .map(|s| match s.state {
                State::Ok => 0,
                State::Warn => cfg.warn_penalty,
                State::Critical => cfg.critical_penalty,
            })
            .sum();
        Health { score: 100u32.saturating_sub(penalty) as u8, signals: sig }
    }

    fn apply_rules(&mut self, pid: u32, health: &Health) -> Vec<Breach> {
        let Some(h) = self.hist.get_mut(&pid) else { return Vec::new() };
        let mut out = Vec::new();
        for r in &self.cfg.rules {
            let bad = match r.growth_percent {
                Some(g) => health.signals.iter().find(|s| s.name == r.signal).is_some_and(|s| {
                    // The history holds this evaluation last: the baseline is what came before.
                    let q = h.values.get(s.name);
                    let prev: Vec<f64> = q.map(|q| q.iter().rev().skip(1).take(r.baseline_evaluations).copied().collect()).unwrap_or_default();
                    if prev.len() < r.baseline_evaluations {
                        return false;
                    }
                    let avg = prev.iter().sum::<f64>() / prev.len() as f64;
                    avg > 0.0 && s.value > avg * (1.0 + g / 100.0)
                }),
                None => health.signals.iter().any(|s| (r.signal == "any" || s.name == r.signal) && s.state >= r.state),
            };
            let st = h.rules.entry(r.name.clone()).or_insert((0, 0, false));
            if bad {
                st.0 += 1;
                st.1 = 0;
            } else {
                st.1 += 1;
                st.0 = 0;
            }
            if !st.2 && st.0 >= r.consecutive {
                st.2 = true;
                out.push(Breach { pid, rule: r.name.clone(), kinds: r.kinds.clone(), health: health.clone() });
            } else if st.2 && st.1 >= r.consecutive {
                st.2 = false;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_with(rules: Vec<RuleConfig>) -> HealthConfig {
        let mut c = HealthConfig::default();
        c.signals.insert("goroutines".into(), Thresholds { warn: Some(50.0), critical: Some(100.0) });
        c.rules = rules;
        c.check().unwrap();
        c
    }

    fn rule(name: &str, signal: &str, consecutive: u32, growth: Option<f64>) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            signal: signal.into(),
            state: State::Critical,
            consecutive,
            growth_percent: growth,
            baseline_evaluations: 3,
            kinds: all_kinds(),
        }
    }

    fn go_agg(pid: u32, goroutines: i64, heap: u64) -> Aggregate {
        let mut agg = Aggregate::new(Duration::from_secs(1), 10);
        agg.on_go_tracked(pid, "go1.27.3", 27, Instant::now());
        agg.set_go_sample(pid, crate::goruntime::GoSample { goroutines, heap_live: heap, heap_goal: 4 * heap.max(1), ..Default::default() });
        agg
    }

    #[test]
    fn thresholds_and_score() {
        let t = Thresholds::new(1.0, 2.0);
        assert_eq!(t.state(0.5), State::Ok);
        assert_eq!(t.state(1.0), State::Warn);
        assert_eq!(t.state(2.5), State::Critical);
        assert_eq!(Thresholds::default().state(1e18), State::Ok);
        let mut e = HealthEngine::new(cfg_with(vec![]));
        let me = std::process::id();
        let (h, _) = e.evaluate(&go_agg(me, 60, 100), None, Instant::now());
        let g = h[0].1.signals.iter().find(|s| s.name == "goroutines").unwrap();
        assert_eq!((g.state, g.threshold), (State::Warn, Some(50.0)));
        assert_eq!(h[0].1.score, 90);
        let (h, _) = e.evaluate(&go_agg(me, 150, 100), None, Instant::now());
        assert_eq!(h[0].1.score, 70);
        assert_eq!(h[0].1.worst(), State::Critical);
    }

    #[test]
    fn a_rule_breaches_once_after_n_and_clears_after_n_good() {
        let mut e = HealthEngine::new(cfg_with(vec![rule("leak", "goroutines", 3, None)]));
        let me = std::process::id();
        let seq = [150, 150, 150, 150, 150, 10, 10, 150, 150, 150];
        let fired: Vec<usize> = seq
            .iter()
            .enumerate()
            .filter_map(|(i, &n)| (!e.evaluate(&go_agg(me, n, 100), None, Instant::now()).1.is_empty()).then_some(i))
            .collect();
        // Breach at the 3rd bad reading; two good ones do not clear it (3 are needed), so the
        // later bad run does not fire again.
        assert_eq!(fired, vec![2]);
        let seq = [10, 10, 10, 150, 150, 150];
        let fired = seq.iter().filter(|&&n| !e.evaluate(&go_agg(me, n, 100), None, Instant::now()).1.is_empty()).count();
        assert_eq!(fired, 1, "cleared after 3 good evaluations, then breached again");
    }

    #[test]
    fn growth_rule_compares_with_the_recent_average() {
        let mut e = HealthEngine::new(cfg_with(vec![rule("heap-growth", "heap_live_bytes", 2, Some(50.0))]));
        let me = std::process::id();
        let heaps = [100, 100, 100, 140, 160, 170, 400];
        let fired: Vec<usize> = heaps
            .iter()
            .enumerate()
            .filter_map(|(i, &b)| (!e.evaluate(&go_agg(me, 1, b), None, Instant::now()).1.is_empty()).then_some(i))
            .collect();
        // 160 > 1.5 × avg(100,100,140) = 170? no; 170 > 1.5 × avg(100,140,160)? no; 400: yes,
        // but consecutive = 2 needs a second bad one.
        assert!(fired.is_empty(), "{fired:?}");
        let b = e.evaluate(&go_agg(me, 1, 800), None, Instant::now()).1;
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].rule, "heap-growth");
    }

    #[test]
    fn a_process_keeps_only_the_values_its_growth_rules_compare_with() {
        let mut e = HealthEngine::new(cfg_with(vec![rule("heap-growth", "heap_live_bytes", 2, Some(50.0)), rule("leak", "goroutines", 3, None)]));
        let me = std::process::id();
        for i in 0..50 {
            e.evaluate(&go_agg(me, 1, 100 + i), None, Instant::now());
        }
        let h = &e.hist[&me];
        let kept: Vec<(&str, usize)> = h.values.iter().map(|(n, q)| (*n, q.len())).collect();
        assert_eq!(kept, vec![("heap_live_bytes", 4)], "the baseline of 3 and the current value, of that signal only");
        // The growth rule still sees its baseline: 300 > 1.5 × avg(147, 148, 149), twice.
        e.evaluate(&go_agg(me, 1, 300), None, Instant::now());
        let b = e.evaluate(&go_agg(me, 1, 400), None, Instant::now()).1;
        assert_eq!(b.iter().map(|b| b.rule.as_str()).collect::<Vec<_>>(), vec!["heap-growth"]);
    }

    #[test]
    fn tls_failure_ratio_and_p99_over_the_window() {
        let me = std::process::id();
        let mut agg = Aggregate::new(Duration::from_secs(1), 10);
        let ev = |failed: u8, secs: f64| crate::tls::test_event(me, probe_common::TLS_ROLE_CLIENT, failed, (secs * 1e9) as u64);
        let t0 = Instant::now();
        // Before the first evaluation: 100 fast, good handshakes (not in any window).
        for _ in 0..100 {
            agg.on_tls(&ev(0, 0.001), t0);
        }
        let mut e = HealthEngine::new(cfg_with(vec![]));
        let (h, _) = e.evaluate(&agg, None, t0);
        assert!(!h[0].1.signals.iter().any(|s| s.name.starts_with("tls_")), "no window yet");
        for i in 0..10 {
            agg.on_tls(&ev(u8::from(i % 2 == 0), 3.0), t0);
        }
        let (h, _) = e.evaluate(&agg, None, t0 + Duration::from_secs(5));
        let get = |n: &str| h[0].1.signals.iter().find(|s| s.name == n).cloned().unwrap_or_else(|| panic!("{n} missing"));
        assert_eq!(get("tls_handshake_failure_ratio").value, 0.5);
        assert_eq!(get("tls_handshake_failure_ratio").state, State::Critical);
        assert!(get("tls_handshake_p99_seconds").value >= 2.0);
        assert_eq!(get("tls_handshake_p99_seconds").state, State::Critical);
        // Fewer than 5 handshakes in the next window: no TLS signal.
        agg.on_tls(&ev(1, 3.0), t0);
        let (h, _) = e.evaluate(&agg, None, t0 + Duration::from_secs(10));
        assert!(!h[0].1.signals.iter().any(|s| s.name.starts_with("tls_")));
    }

    #[test]
    fn http2_goaways_with_an_error_and_the_reset_rate_over_the_window() {
        use probe_common::{EventHeader, EventKind, Http2Event, HTTP2_DEBUG_LEN, HTTP2_FRAME_GOAWAY, HTTP2_FRAME_RST_STREAM, HTTP2_RECEIVED, HTTP2_SENT};
        let me = std::process::id();
        let mut agg = Aggregate::new(Duration::from_secs(1), 10);
        let ev = |frame: u8, direction: u8, code: u32| Http2Event {
            header: EventHeader { kind: EventKind::Http2 as u32, tgid: me, ktime_ns: 1 },
            code,
            stream_id: 1,
            frame,
            direction,
            debug_copied: 0,
            debug_len: 0,
            debug: [0; HTTP2_DEBUG_LEN],
        };
        let t0 = Instant::now();
        agg.on_go_tracked(me, "go1.27.3", 27, t0);
        let mut e = HealthEngine::new(cfg_with(vec![]));
        let (h, _) = e.evaluate(&agg, None, t0);
        assert!(h.iter().all(|(_, h)| !h.signals.iter().any(|s| s.name.starts_with("http2_"))), "no HTTP/2 yet");
        // First frames after the first evaluation: the whole count is in the window.
        agg.on_http2(&ev(HTTP2_FRAME_GOAWAY, HTTP2_RECEIVED, 0xb), t0);
        agg.on_http2(&ev(HTTP2_FRAME_GOAWAY, HTTP2_RECEIVED, 0), t0);
        agg.on_http2(&ev(HTTP2_FRAME_GOAWAY, HTTP2_SENT, 1), t0);
        for _ in 0..30 {
            agg.on_http2(&ev(HTTP2_FRAME_RST_STREAM, HTTP2_SENT, 8), t0);
        }
        let (h, _) = e.evaluate(&agg, None, t0 + Duration::from_secs(5));
        let mine = |h: &Vec<(u32, Health)>| h.iter().find(|(p, _)| *p == me).map(|x| x.1.clone()).unwrap();
        let get = |h: &Health, n: &str| h.signals.iter().find(|s| s.name == n).cloned().unwrap_or_else(|| panic!("{n} missing"));
        let m = mine(&h);
        assert_eq!(get(&m, "http2_goaways_received_error").value, 1.0, "NO_ERROR and sent ones do not count");
        assert_eq!(get(&m, "http2_goaways_received_error").state, State::Warn);
        assert_eq!(get(&m, "http2_stream_resets_per_second").value, 6.0);
        assert_eq!(get(&m, "http2_stream_resets_per_second").state, State::Warn);
        // A quiet window clears both.
        let (h, _) = e.evaluate(&agg, None, t0 + Duration::from_secs(10));
        let m = mine(&h);
        assert_eq!(get(&m, "http2_goaways_received_error").state, State::Ok);
        assert_eq!(get(&m, "http2_stream_resets_per_second").value, 0.0);
        // A process whose frames all came before its first evaluation: the GOAWAY still counts.
        let other = me.wrapping_add(1_000_000);
        agg.on_http2(&Http2Event { header: EventHeader { kind: EventKind::Http2 as u32, tgid: other, ktime_ns: 1 }, ..ev(HTTP2_FRAME_GOAWAY, HTTP2_RECEIVED, 0xb) }, t0);
        let (h, _) = e.evaluate(&agg, None, t0 + Duration::from_secs(11));
        let o = h.iter().find(|(p, _)| *p == other).map(|x| x.1.clone()).expect("the new process evaluated");
        assert_eq!(get(&o, "http2_goaways_received_error").state, State::Warn);
        assert!(!o.signals.iter().any(|s| s.name == "http2_stream_resets_per_second"), "no rate without a window");
    }

    #[test]
    fn docs_list_every_signal_with_its_default_thresholds() {
        let doc = include_str!("../../../docs/health.md");
        let fmt = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_else(|| "–".into());
        for (name, _, t) in SIGNALS {
            let row = doc.lines().find(|l| l.starts_with(&format!("| `{name}` |"))).unwrap_or_else(|| panic!("docs/health.md lacks {name}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert_eq!((cells[3], cells[4]), (fmt(t.warn).as_str(), fmt(t.critical).as_str()), "{name}: {row}");
        }
    }

    #[test]
    fn sibling_exits_count_by_group_within_the_window_in_bounded_memory() {
        let window = Duration::from_secs(300);
        let t0 = Instant::now();
        let mut x = SiblingExits::default();
        // A crash loop: 100 abnormal exits a second for the whole window, one OOM kill; and
        // normal exits, which count for nothing.
        for i in 0..30_000u32 {
            let at = t0 + Duration::from_millis(u64::from(i) * 10);
            x.record("comm/job".into(), at, true, i == 7, window);
            x.record("pod/shop/web-0".into(), at, false, false, window);
        }
        let last = t0 + Duration::from_millis(29_999 * 10);
        x.expire(last, window);
        assert_eq!(x.count("comm/job"), (30_000, 1));
        assert_eq!(x.count("pod/shop/web-0"), (0, 0));
        assert!(!x.by_group.contains_key("pod/shop/web-0"), "normal exits are not kept");
        let slots = x.by_group["comm/job"].len();
        assert!(slots <= SIBLING_SLOTS as usize + 1, "{slots} slots for 30,000 exits");
        // Half a window later, about half of them are past it (one slot's worth may linger).
        x.expire(last + window / 2, window);
        let (abnormal, _) = x.count("comm/job");
        let slot = 30_000 / SIBLING_SLOTS;
        assert!((15_000 - 1..=15_000 + slot + 1).contains(&abnormal), "{abnormal}");
        // A window and a slot after the last exit, none.
        x.expire(last + window + window / SIBLING_SLOTS + Duration::from_millis(1), window);
        assert_eq!(x.count("comm/job"), (0, 0));
        assert!(x.by_group.is_empty());
    }

    #[test]
    fn steady_growth_only() {
        let q: VecDeque<f64> = [1.0, 2.0, 3.0, 4.0].into_iter().collect();
        assert_eq!(steady_slope(&q), Some(1.0));
        let q: VecDeque<f64> = [1.0, 5.0, 1.0, 5.0].into_iter().collect();
        assert_eq!(steady_slope(&q), None);
    }

    #[test]
    fn config_errors_name_the_setting() {
        let mut c = HealthConfig::default();
        c.rules.push(rule("x", "nonsense", 3, None));
        assert!(c.check().unwrap_err().1.contains("nonsense"));
        let mut c = HealthConfig::default();
        c.signals.insert("goroutines".into(), Thresholds { warn: Some(10.0), critical: Some(5.0) });
        assert!(c.check().is_err());
        let mut c = HealthConfig::default();
        c.rules.push(rule("g", "any", 3, Some(10.0)));
        assert!(c.check().is_err());
    }
}
