//! Per-process TLS handshake outcomes (what the metrics expose and the health engine reads).
use std::collections::BTreeMap;

use crate::hist::Buckets;

/// Upper bounds (seconds) of the fine buckets the health signals read (p99 of a window): 100 µs
/// to ~13 s (×2 each).
pub fn bucket_bounds() -> Vec<f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1e-4, 2.0, 18).collect()
}

/// Upper bounds (seconds) of the exposed handshake-duration histogram: a loopback or LAN
/// handshake takes 1–5 ms, a WAN one tens of ms; above half a second something waits.
pub const DURATION_BOUNDS: &[f64] = &[0.005, 0.025, 0.1, 0.5, 2.5];

/// Labels of one handshake counter series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TlsKey {
    /// "go" or "openssl".
    pub library: &'static str,
    /// "client", "server" or "unknown".
    pub role: &'static str,
    /// "ok" or "error".
    pub result: &'static str,
    /// "1.2", "1.3", … or "unknown".
    pub version: &'static str,
    /// Negotiated ALPN protocol (bounded set), "none" or "unknown".
    pub alpn: &'static str,
}

/// Cumulative totals of one process, for the health engine: take one per evaluation and subtract
/// the previous one ([`TlsTotals::since`]) to get a window's failure ratio and p99 latency.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsTotals {
    pub handshakes: u64,
    pub failures: u64,
    /// (upper bound in seconds, cumulative count ≤ bound) over all handshakes; the last bound is
    /// +Inf.
    pub buckets: Vec<(f64, u64)>,
}

impl TlsTotals {
    /// What happened between `earlier` and `self` (same process; counters only grow).
    pub fn since(&self, earlier: &TlsTotals) -> TlsTotals {
        TlsTotals {
            handshakes: self.handshakes.saturating_sub(earlier.handshakes),
            failures: self.failures.saturating_sub(earlier.failures),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, (b, n))| (*b, n.saturating_sub(earlier.buckets.get(i).map(|e| e.1).unwrap_or(0))))
                .collect(),
        }
    }

    /// Failed / all handshakes; None without handshakes.
    pub fn failure_ratio(&self) -> Option<f64> {
        (self.handshakes > 0).then(|| self.failures as f64 / self.handshakes as f64)
    }

    /// The `q` quantile (0..1) of handshake duration, in seconds, as the upper bound of the bucket
    /// that holds it (Prometheus-style, without interpolation); None without handshakes. +Inf
    /// when it falls beyond the last finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last().map(|b| b.1).unwrap_or(0);
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        self.buckets.iter().find(|(_, n)| *n >= rank).map(|(b, _)| *b)
    }
}

/// TLS handshakes of one process since chainprobe began seeing them.
#[derive(Debug, Clone)]
pub struct TlsState {
    /// Handshakes by (library, role, result, version, alpn).
    pub handshakes: BTreeMap<TlsKey, u64>,
    /// Durations by (library, role, result).
    pub durations: BTreeMap<(&'static str, &'static str, &'static str), Buckets>,
    /// Failures by (library, reason).
    pub failures: BTreeMap<(&'static str, &'static str), u64>,
    total: u64,
    failed: u64,
    bounds: Vec<f64>,
    /// Per-bucket (not cumulative) counts over all handshakes; the last one is +Inf.
    counts: Vec<u64>,
}

impl Default for TlsState {
    fn default() -> Self {
        let bounds = bucket_bounds();
        let n = bounds.len() + 1;
        TlsState {
            handshakes: BTreeMap::new(),
            durations: BTreeMap::new(),
            failures: BTreeMap::new(),
            total: 0,
            failed: 0,
            bounds,
            counts: vec![0; n],
        }
    }
}

impl TlsState {
    /// Records one completed handshake. `reason` is the failure reason (ignored when ok).
    pub fn record(&mut self, key: TlsKey, duration_s: f64, reason: &'static str) {
        let failed = key.result == "error";
        self.durations.entry((key.library, key.role, key.result)).or_insert_with(|| Buckets::new(DURATION_BOUNDS)).observe(duration_s);
        if failed {
            *self.failures.entry((key.library, reason)).or_insert(0) += 1;
            self.failed += 1;
        }
        *self.handshakes.entry(key).or_insert(0) += 1;
        self.total += 1;
        let i = self.bounds.iter().position(|b| duration_s <= *b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
    }

    /// Adds `other`'s handshakes (the processes folded into one series set).
    pub fn merge(&mut self, other: &TlsState) {
        for (k, n) in &other.handshakes {
            *self.handshakes.entry(k.clone()).or_insert(0) += n;
        }
        for (k, b) in &other.durations {
            self.durations.entry(*k).or_insert_with(|| Buckets::new(DURATION_BOUNDS)).merge(b);
        }
        for (k, n) in &other.failures {
            *self.failures.entry(*k).or_insert(0) += n;
        }
        self.total += other.total;
        self.failed += other.failed;
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// All handshakes recorded (ok and failed).
    pub fn handshakes_total(&self) -> u64 {
        self.total
    }

    /// Failed handshakes recorded.
    pub fn failures_total(&self) -> u64 {
        self.failed
    }

    /// Cumulative totals for windowed signals (see [`TlsTotals`]).
    pub fn totals(&self) -> TlsTotals {
        let mut acc = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, n) in self.counts.iter().enumerate() {
            acc += n;
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), acc));
        }
        TlsTotals { handshakes: self.total, failures: self.failed, buckets }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(result: &'static str) -> TlsKey {
        TlsKey { library: "go", role: "client", result, version: "1.3", alpn: "h2" }
    }

    #[test]
    fn totals_window_ratio_and_p99() {
        let mut s = TlsState::default();
        for _ in 0..99 {
            s.record(key("ok"), 0.0005, "");
        }
        let before = s.totals();
        assert_eq!(before.handshakes, 99);
        assert_eq!(before.quantile(0.99), Some(0.0008));
        for _ in 0..90 {
            s.record(key("ok"), 0.0005, "");
        }
        for _ in 0..10 {
            s.record(key("error"), 3.0, "certificate");
        }
        let w = s.totals().since(&before);
        assert_eq!((w.handshakes, w.failures), (100, 10));
        assert_eq!(w.failure_ratio(), Some(0.1));
        assert_eq!(w.quantile(0.5), Some(0.0008));
        assert_eq!(w.quantile(0.99), Some(3.2768));
        assert_eq!(s.failures.get(&("go", "certificate")), Some(&10));
        assert_eq!(s.handshakes.get(&key("ok")), Some(&189));
        assert_eq!(TlsTotals::default().quantile(0.99), None);
    }
}
