//! Cardinality control: which labels per-process series carry, and a hard cap on the number of
//! series.
//!
//! [`LabelPolicy`] decides per label name (drop list or keep list). Dropping an identity label
//! (e.g. `pid`) makes series of several processes collapse into one: the caller sums them.
//! [`SeriesLimiter`] admits at most `max_series` distinct series; a series that would exceed the
//! cap is refused and counted once (`chainprobe_series_dropped_total`), and admitted series stay
//! admitted until the caller releases them (e.g. when an exited process's series are removed).

use std::collections::{BTreeSet, HashSet};

use serde::Deserialize;

/// The `[metrics]` settings of the policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabelPolicyConfig {
    /// Labels removed from every chainprobe series, e.g. `["pid"]` (series are summed).
    pub drop_labels: Vec<String>,
    /// When not empty: the only optional labels kept (the others are dropped). Exclusive with
    /// `drop_labels`.
    pub keep_labels: Vec<String>,
    /// Hard cap on the number of series chainprobe exposes; 0 = no cap.
    pub max_series: usize,
}

impl Default for LabelPolicyConfig {
    fn default() -> Self {
        LabelPolicyConfig { drop_labels: Vec::new(), keep_labels: Vec::new(), max_series: 20_000 }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("metrics.drop_labels and metrics.keep_labels are both set: set only one (drop_labels removes the labels it names, keep_labels removes all others)")]
    BothLists,
    #[error("metrics label policy: {0:?} is not a valid Prometheus label name (letters, digits and '_', not starting with a digit)")]
    InvalidName(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Drop(BTreeSet<String>),
    Keep(BTreeSet<String>),
}

/// Which labels to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelPolicy {
    mode: Mode,
    /// Labels never dropped: they are part of what a metric means (e.g. `result`, `program`).
    always: BTreeSet<String>,
}

/// Labels that carry a metric's meaning rather than a process's identity: a keep list does not
/// remove them (a drop list that names one explicitly still does).
pub const SEMANTIC_LABELS: &[&str] = &["result", "reason", "code", "syscall", "errno", "program", "version", "kernel"];

impl Default for LabelPolicy {
    fn default() -> Self {
        LabelPolicy { mode: Mode::Drop(BTreeSet::new()), always: SEMANTIC_LABELS.iter().map(|s| s.to_string()).collect() }
    }
}

fn valid_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_') && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

impl LabelPolicy {
    pub fn from_config(cfg: &LabelPolicyConfig) -> Result<LabelPolicy, PolicyError> {
        if !cfg.drop_labels.is_empty() && !cfg.keep_labels.is_empty() {
            return Err(PolicyError::BothLists);
        }
        for n in cfg.drop_labels.iter().chain(&cfg.keep_labels) {
            if !valid_label_name(n) {
                return Err(PolicyError::InvalidName(n.clone()));
            }
        }
        let mode = if cfg.keep_labels.is_empty() {
            Mode::Drop(cfg.drop_labels.iter().cloned().collect())
        } else {
            Mode::Keep(cfg.keep_labels.iter().cloned().collect())
        };
        Ok(LabelPolicy { mode, ..LabelPolicy::default() })
    }

    /// Whether series keep label `name`.
    pub fn keeps(&self, name: &str) -> bool {
        match &self.mode {
            Mode::Drop(d) => !d.contains(name),
            Mode::Keep(k) => k.contains(name) || self.always.contains(name),
        }
    }

    /// The labels that stay, in their order.
    pub fn apply<K: AsRef<str>, V>(&self, labels: Vec<(K, V)>) -> Vec<(K, V)> {
        labels.into_iter().filter(|(k, _)| self.keeps(k.as_ref())).collect()
    }
}

/// One series: metric name plus its label pairs, sorted.
type SeriesKey = (String, Vec<(String, String)>);

/// Admits at most `max` distinct series.
#[derive(Debug)]
pub struct SeriesLimiter {
    max: usize,
    admitted: HashSet<SeriesKey>,
    /// Refused series remembered (bounded) so a series refused on every event counts once.
    refused: HashSet<SeriesKey>,
    dropped_total: u64,
}

fn key<K: AsRef<str>, V: AsRef<str>>(metric: &str, labels: &[(K, V)]) -> SeriesKey {
    let mut l: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string())).collect();
    l.sort();
    (metric.to_string(), l)
}

impl SeriesLimiter {
    /// `max == 0` means no cap.
    pub fn new(max: usize) -> SeriesLimiter {
        SeriesLimiter { max, admitted: HashSet::new(), refused: HashSet::new(), dropped_total: 0 }
    }

    /// True when the series may be exposed (already admitted, or room left).
    pub fn admit<K: AsRef<str>, V: AsRef<str>>(&mut self, metric: &str, labels: &[(K, V)]) -> bool {
        let k = key(metric, labels);
        if self.admitted.contains(&k) {
            return true;
        }
        if self.max == 0 || self.admitted.len() < self.max {
            self.refused.remove(&k);
            self.admitted.insert(k);
            return true;
        }
        if self.refused.len() >= self.max.max(1024) {
            // Bounded memory: beyond this every refusal counts (an over-count, never an under-count).
            self.refused.clear();
        }
        if self.refused.insert(k) {
            self.dropped_total += 1;
        }
        false
    }

    /// Forgets one series, making room.
    pub fn release<K: AsRef<str>, V: AsRef<str>>(&mut self, metric: &str, labels: &[(K, V)]) {
        self.admitted.remove(&key(metric, labels));
    }

    /// Forgets every series that has label `name` = `value` (e.g. all series of an exited pid).
    pub fn release_label(&mut self, name: &str, value: &str) {
        self.admitted.retain(|(_, l)| !l.iter().any(|(k, v)| k == name && v == value));
        self.refused.retain(|(_, l)| !l.iter().any(|(k, v)| k == name && v == value));
    }

    /// Forgets every series whose label `name` has one of `values`, in one pass.
    pub fn release_label_values(&mut self, name: &str, values: &std::collections::HashSet<String>) {
        if values.is_empty() {
            return;
        }
        let hit = |l: &Vec<(String, String)>| l.iter().any(|(k, v)| k == name && values.contains(v));
        self.admitted.retain(|(_, l)| !hit(l));
        self.refused.retain(|(_, l)| !hit(l));
    }

    /// Forgets the folded series (no `pid`) of one (pod, container, comm).
    pub fn release_folded(&mut self, comm: &str, pod: &str, container: &str) {
        let matches = |l: &Vec<(String, String)>| {
            let get = |name: &str| l.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            get("pid").is_none() && get("comm") == Some(comm) && get("pod").unwrap_or("") == pod && get("container").unwrap_or("") == container
        };
        self.admitted.retain(|(_, l)| !matches(l));
        self.refused.retain(|(_, l)| !matches(l));
    }

    /// Distinct series refused since start (the value of `chainprobe_series_dropped_total`).
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    pub fn len(&self) -> usize {
        self.admitted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.admitted.is_empty()
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(drop: &[&str], keep: &[&str]) -> LabelPolicyConfig {
        LabelPolicyConfig {
            drop_labels: drop.iter().map(|s| s.to_string()).collect(),
            keep_labels: keep.iter().map(|s| s.to_string()).collect(),
            max_series: 10,
        }
    }

    #[test]
    fn default_keeps_everything() {
        let p = LabelPolicy::from_config(&LabelPolicyConfig::default()).unwrap();
        for l in ["pid", "comm", "namespace", "pod", "container", "result"] {
            assert!(p.keeps(l));
        }
        assert_eq!(LabelPolicyConfig::default().max_series, 20_000);
    }

    #[test]
    fn drop_list() {
        let p = LabelPolicy::from_config(&cfg(&["pid", "comm"], &[])).unwrap();
        let out = p.apply(vec![("pid", "1"), ("comm", "x"), ("pod", "web"), ("result", "ok")]);
        assert_eq!(out, vec![("pod", "web"), ("result", "ok")]);
    }

    #[test]
    fn keep_list_keeps_semantic_labels() {
        let p = LabelPolicy::from_config(&cfg(&[], &["namespace", "pod"])).unwrap();
        let out = p.apply(vec![("pid", "1"), ("namespace", "a"), ("pod", "b"), ("container", "c"), ("result", "ok")]);
        assert_eq!(out, vec![("namespace", "a"), ("pod", "b"), ("result", "ok")]);
    }

    #[test]
    fn config_errors() {
        assert_eq!(LabelPolicy::from_config(&cfg(&["pid"], &["pod"])), Err(PolicyError::BothLists));
        assert_eq!(LabelPolicy::from_config(&cfg(&["1pid"], &[])), Err(PolicyError::InvalidName("1pid".into())));
        assert_eq!(LabelPolicy::from_config(&cfg(&["a-b"], &[])), Err(PolicyError::InvalidName("a-b".into())));
        assert!(PolicyError::BothLists.to_string().contains("set only one"));
    }

    #[test]
    fn config_parses_from_toml() {
        let c: LabelPolicyConfig = toml::from_str("drop_labels = [\"pid\"]\nmax_series = 5").unwrap();
        assert_eq!(c.drop_labels, vec!["pid"]);
        assert_eq!(c.max_series, 5);
        assert!(toml::from_str::<LabelPolicyConfig>("nope = 1").is_err());
    }

    #[test]
    fn limiter_caps_and_counts_distinct_refusals() {
        let mut l = SeriesLimiter::new(2);
        assert!(l.admit("m", &[("pid", "1")]));
        assert!(l.admit("m", &[("pid", "2")]));
        assert!(l.admit("m", &[("pid", "1")]), "already admitted stays admitted");
        assert!(!l.admit("m", &[("pid", "3")]));
        assert!(!l.admit("m", &[("pid", "3")]));
        assert!(!l.admit("n", &[("pid", "1")]), "another metric is another series");
        assert_eq!(l.dropped_total(), 2);
        assert_eq!(l.len(), 2);
        l.release_label("pid", "1");
        assert_eq!(l.len(), 1);
        assert!(l.admit("m", &[("pid", "3")]));
        assert!(!l.admit("m", &[("pid", "4")]));
        assert_eq!(l.dropped_total(), 3);
        l.release("m", &[("pid", "3")]);
        assert!(l.admit("m", &[("pid", "4")]));
    }

    #[test]
    fn limiter_label_order_does_not_matter() {
        let mut l = SeriesLimiter::new(1);
        assert!(l.admit("m", &[("a", "1"), ("b", "2")]));
        assert!(l.admit("m", &[("b", "2"), ("a", "1")]));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn zero_means_unbounded() {
        let mut l = SeriesLimiter::new(0);
        for i in 0..5000 {
            assert!(l.admit("m", &[("pid", i.to_string())]));
        }
        assert_eq!(l.dropped_total(), 0);
    }
}
