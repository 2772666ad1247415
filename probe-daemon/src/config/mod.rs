//! Settings: built-in defaults (the documented `default.toml` beside this file), optionally
//! overridden by a TOML file. Unknown keys are errors, so a typo never silently does nothing.
use std::{net::SocketAddr, path::Path, time::Duration};

use serde::Deserialize;

/// The documented default configuration, as printed by `chainprobe config`.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config file {path}: {message}\n(see `chainprobe config` for every setting and its default)")]
    Parse { path: String, message: String },
    #[error("invalid setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub collect: CollectConfig,
    pub go: GoConfig,
    pub api: ApiConfig,
    pub kubernetes: crate::k8s::KubernetesConfig,
    pub health: crate::health::HealthConfig,
    pub snapshot: crate::snapshot::SnapshotConfig,
    pub tls: TlsConfig,
    pub crash: crate::snapshot::crash::CrashConfig,
}

/// TLS handshake probes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Go crypto/tls handshakes of tracked Go processes (needs `[go] enabled`).
    pub go: bool,
    /// OpenSSL handshakes of every process that maps libssl.
    pub openssl: bool,
    /// Where a Go handshake's result is read.
    pub go_result_site: crate::tls::GoResultSite,
    /// Hold (SIGSTOP) the first process that maps a libssl file not probed yet until it is
    /// probed, so its first handshakes are counted (needs `openssl`).
    pub hold_new_libssl: bool,
    /// The longest such a hold lasts, in milliseconds.
    pub hold_new_libssl_max_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig { go: true, openssl: true, go_result_site: crate::tls::GoResultSite::Auto, hold_new_libssl: true, hold_new_libssl_max_ms: 1000 }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GoConfig {
    pub enabled: bool,
    pub read_interval_seconds: f64,
    /// CPU the goroutine-state breakdowns may use, summed over the node's Go processes, as a
    /// fraction of one core (see goruntime::budget).
    pub read_cpu_budget: f64,
    /// The shortest time between two goroutine-state breakdowns (every g read) of a process
    /// whose count from the runtime's counters is confirmed; the budget may make it longer.
    pub goroutine_states_interval_seconds: f64,
    /// Not in default.toml (a benchmark's baseline): every g of every process read at every
    /// interval, as before the O(P) count and the budget, for `cargo xtask bench node` to
    /// measure both in one run.
    pub every_g_read_each_interval: bool,
    pub creation_probes: crate::goruntime::creation::CreationMode,
    pub creation_window_seconds: f64,
    pub creation_max_rate: f64,
    pub leak_reads: usize,
    pub leak_growth: i64,
    pub creation_cooldown_seconds: f64,
    pub creation_top_n: usize,
}

impl Default for GoConfig {
    fn default() -> Self {
        GoConfig {
            enabled: true,
            read_interval_seconds: 5.0,
            read_cpu_budget: 0.005,
            goroutine_states_interval_seconds: 30.0,
            every_g_read_each_interval: false,
            creation_probes: crate::goruntime::creation::CreationMode::Auto,
            creation_window_seconds: 60.0,
            creation_max_rate: 5000.0,
            leak_reads: 6,
            leak_growth: 200,
            creation_cooldown_seconds: 600.0,
            creation_top_n: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Empty: no file (the environment variable may still set a token).
    pub token_file: String,
    /// Requests per second each client may make to /api/ (token bucket), and the burst.
    pub rate_limit_per_second: f64,
    pub rate_limit_burst: u32,
    /// Largest request body accepted (bytes); larger ones get 413.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { token_file: String::new(), rate_limit_per_second: 10.0, rate_limit_burst: 50, max_body_bytes: 64 * 1024 }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub scrape_interval_seconds: f64,
    pub max_exited_processes: usize,
    pub drop_labels: Vec<String>,
    pub keep_labels: Vec<String>,
    pub max_series: usize,
    /// `chainprobe_go_goroutines_by_state` also by wait reason.
    pub goroutine_wait_reasons: bool,
    /// GC and stop-the-world histograms per process or per pod.
    pub histograms: crate::metrics::HistogramScope,
    /// The TLS families per process or per pod.
    pub tls: crate::metrics::HistogramScope,
    /// Non-Go processes' series per (pod, container, comm) instead of per pid.
    pub fold_non_go: bool,
    /// Processes (exec seen) are held this long; those that exit younger are folded.
    pub fold_young_seconds: f64,
    /// A fold with no process left is forgotten after this long without change.
    pub fold_retention_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectConfig {
    pub drain_interval_seconds: f64,
    pub map_count_interval_seconds: f64,
    /// How mmap / munmap / brk are hooked.
    pub memory_hooks: crate::attach::MemoryHooks,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { listen: SocketAddr::from(([0, 0, 0, 0], 9479)) }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".into() }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            scrape_interval_seconds: 15.0,
            max_exited_processes: 20_000,
            drop_labels: Vec::new(),
            keep_labels: Vec::new(),
            max_series: 20_000,
            goroutine_wait_reasons: false,
            histograms: crate::metrics::HistogramScope::Process,
            tls: crate::metrics::HistogramScope::Pod,
            fold_non_go: true,
            fold_young_seconds: 30.0,
            fold_retention_seconds: 600.0,
        }
    }
}

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig { drain_interval_seconds: 1.0, map_count_interval_seconds: 10.0, memory_hooks: crate::attach::MemoryHooks::Auto }
    }
}

fn seconds(key: &'static str, v: f64, min: f64) -> Result<Duration, ConfigError> {
    if !v.is_finite() || v < min || v > 86_400.0 {
        return Err(ConfigError::Invalid {
            key,
            message: format!("{v} is out of range ({min} to 86400 seconds)"),
        });
    }
    Ok(Duration::from_secs_f64(v))
}

impl Config {
    /// Parses TOML text (`origin` names it in errors) over the defaults, then validates.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.to_string(), message: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a config file; `None` gives the built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Ok(Config::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|source| ConfigError::Read { path: p.display().to_string(), source })?;
                Config::from_toml(&text, &p.display().to_string())
            }
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.scrape_interval()?;
        self.drain_interval()?;
        self.map_count_interval()?;
        self.go_read_interval()?;
        self.go_states_interval()?;
        if !(self.go.read_cpu_budget.is_finite() && self.go.read_cpu_budget > 0.0 && self.go.read_cpu_budget <= 1.0) {
            return Err(ConfigError::Invalid {
                key: "go.read_cpu_budget",
                message: format!("{} is out of range (above 0, at most 1: a fraction of one core)", self.go.read_cpu_budget),
            });
        }
        self.creation_settings()?;
        self.label_policy()?;
        if let Err((key, message)) = self.health.check() {
            return Err(ConfigError::Invalid { key, message });
        }
        seconds("health.interval_seconds", self.health.interval_seconds, 0.05)?;
        seconds("health.degraded_interval_seconds", self.health.degraded_interval_seconds, 0.05)?;
        seconds("health.sibling_window_seconds", self.health.sibling_window_seconds, 0.0)?;
        if let Err((key, message)) = self.crash.check() {
            return Err(ConfigError::Invalid { key, message });
        }
        if let Err((key, message)) = self.snapshot.check() {
            return Err(ConfigError::Invalid { key, message });
        }
        if !(self.api.rate_limit_per_second.is_finite() && self.api.rate_limit_per_second > 0.0) || self.api.rate_limit_burst == 0 {
            return Err(ConfigError::Invalid { key: "api.rate_limit_per_second / api.rate_limit_burst", message: "must be above 0".into() });
        }
        if self.tls.hold_new_libssl && !(10..=10_000).contains(&self.tls.hold_new_libssl_max_ms) {
            return Err(ConfigError::Invalid { key: "tls.hold_new_libssl_max_ms", message: format!("{} is out of range (10 to 10000 ms)", self.tls.hold_new_libssl_max_ms) });
        }
        if self.api.max_body_bytes < 64 {
            return Err(ConfigError::Invalid { key: "api.max_body_bytes", message: "must be at least 64".into() });
        }
        seconds("metrics.fold_young_seconds", self.metrics.fold_young_seconds, 0.0)?;
        seconds("metrics.fold_retention_seconds", self.metrics.fold_retention_seconds, 0.0)?;
        if self.metrics.max_exited_processes == 0 {
            return Err(ConfigError::Invalid {
                key: "metrics.max_exited_processes",
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    fn scrape_interval(&self) -> Result<Duration, ConfigError> {
        seconds("metrics.scrape_interval_seconds", self.metrics.scrape_interval_seconds, 0.1)
    }
    fn drain_interval(&self) -> Result<Duration, ConfigError> {
        seconds("collect.drain_interval_seconds", self.collect.drain_interval_seconds, 0.05)
    }
    fn go_read_interval(&self) -> Result<Duration, ConfigError> {
        seconds("go.read_interval_seconds", self.go.read_interval_seconds, 0.05)
    }
    fn go_states_interval(&self) -> Result<Duration, ConfigError> {
        seconds("go.goroutine_states_interval_seconds", self.go.goroutine_states_interval_seconds, 0.05)
    }
    fn creation_settings(&self) -> Result<crate::goruntime::creation::CreationSettings, ConfigError> {
        let g = &self.go;
        if !(g.creation_max_rate > 0.0) {
            return Err(ConfigError::Invalid { key: "go.creation_max_rate", message: "must be above 0".into() });
        }
        if g.creation_top_n == 0 || g.creation_top_n > 1000 {
            return Err(ConfigError::Invalid { key: "go.creation_top_n", message: "must be 1 to 1000".into() });
        }
        Ok(crate::goruntime::creation::CreationSettings {
            mode: g.creation_probes,
            window: seconds("go.creation_window_seconds", g.creation_window_seconds, 0.1)?,
            max_rate: g.creation_max_rate,
            leak_reads: g.leak_reads,
            leak_growth: g.leak_growth,
            cooldown: seconds("go.creation_cooldown_seconds", g.creation_cooldown_seconds, 0.0)?,
            top_n: g.creation_top_n,
        })
    }
    fn label_policy(&self) -> Result<crate::k8s::LabelPolicy, ConfigError> {
        crate::k8s::LabelPolicy::from_config(&crate::k8s::LabelPolicyConfig {
            drop_labels: self.metrics.drop_labels.clone(),
            keep_labels: self.metrics.keep_labels.clone(),
            max_series: self.metrics.max_series,
        })
        .map_err(|e| ConfigError::Invalid { key: "metrics.drop_labels / metrics.keep_labels", message: e.to_string() })
    }
    fn map_count_interval(&self) -> Result<Duration, ConfigError> {
        seconds("collect.map_count_interval_seconds", self.collect.map_count_interval_seconds, 0.1)
    }
}

/// The settings the daemon runs with: a [`Config`] validated once, with its derived values
/// (durations, creation-probe settings, label policy) computed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The sections used as they are (server, api, health, snapshot, kubernetes, tls, go, …).
    pub config: Config,
    pub scrape_interval: Duration,
    pub drain_interval: Duration,
    pub map_count_interval: Duration,
    pub go_read_interval: Duration,
    pub go_states_interval: Duration,
    pub creation: crate::goruntime::creation::CreationSettings,
    pub label_policy: crate::k8s::LabelPolicy,
    pub series: crate::metrics::SeriesOptions,
    pub fold: crate::aggregate::FoldRule,
}

impl Settings {
    /// Validates `config` (every key, with the key named in the error) and derives the rest.
    pub fn new(config: Config) -> Result<Settings, ConfigError> {
        config.validate()?;
        Ok(Settings {
            scrape_interval: config.scrape_interval()?,
            drain_interval: config.drain_interval()?,
            map_count_interval: config.map_count_interval()?,
            go_read_interval: config.go_read_interval()?,
            go_states_interval: config.go_states_interval()?,
            creation: config.creation_settings()?,
            label_policy: config.label_policy()?,
            series: crate::metrics::SeriesOptions {
                goroutine_wait_reasons: config.metrics.goroutine_wait_reasons,
                histograms: config.metrics.histograms,
                tls: config.metrics.tls,
            },
            fold: crate::aggregate::FoldRule {
                non_go: config.metrics.fold_non_go,
                young: seconds("metrics.fold_young_seconds", config.metrics.fold_young_seconds, 0.0)?,
                retention: seconds("metrics.fold_retention_seconds", config.metrics.fold_retention_seconds, 0.0)?,
                pod_histograms: config.metrics.histograms == crate::metrics::HistogramScope::Pod,
                pod_tls: config.metrics.tls == crate::metrics::HistogramScope::Pod,
            },
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_carry_the_validated_durations() {
        let s = Settings::new(Config::default()).expect("defaults are valid");
        assert_eq!(s.drain_interval, Duration::from_secs_f64(Config::default().collect.drain_interval_seconds));
        let mut bad = Config::default();
        bad.collect.drain_interval_seconds = 0.0;
        assert!(matches!(Settings::new(bad), Err(ConfigError::Invalid { key: "collect.drain_interval_seconds", .. })));
    }

    #[test]
    fn documented_defaults_are_the_built_in_defaults() {
        let parsed = Config::from_toml(DEFAULT_TOML, "default.toml").expect("default.toml parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let c = Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\n", "t").unwrap();
        assert_eq!(c.server.listen.port(), 1);
        assert_eq!(c.metrics, MetricsConfig::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = Config::from_toml("[server]\nlisten_addr = \"x\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
        let e = Config::from_toml("[metrics]\nscrape_interval_seconds = -1.0\n", "t").unwrap_err();
        assert!(e.to_string().contains("scrape_interval_seconds"), "{e}");
        let e = Config::from_toml("[log]\nformat = \"xml\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("xml") || e.to_string().contains("format"), "{e}");
    }

    #[test]
    fn read_cpu_budget_is_a_fraction_of_a_core() {
        assert_eq!(Config::default().go.read_cpu_budget, 0.005);
        let c = Config::from_toml("[go]\nread_cpu_budget = 0.02\n", "t").unwrap();
        assert_eq!(c.go.read_cpu_budget, 0.02);
        for bad in ["0.0", "-0.1", "1.5", "nan"] {
            let e = Config::from_toml(&format!("[go]\nread_cpu_budget = {bad}\n"), "t").unwrap_err();
            assert!(e.to_string().contains("go.read_cpu_budget"), "{bad}: {e}");
        }
    }

    #[test]
    fn memory_hooks_values() {
        use crate::attach::MemoryHooks;
        for v in [MemoryHooks::Auto, MemoryHooks::FexitOrTracepoints, MemoryHooks::Tracepoints, MemoryHooks::Off] {
            let c = Config::from_toml(&format!("[collect]\nmemory_hooks = \"{}\"\n", v.as_str()), "t").unwrap();
            assert_eq!(c.collect.memory_hooks, v);
        }
        let e = Config::from_toml("[collect]\nmemory_hooks = \"kprobes\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("fexit-or-tracepoints"), "the error lists the values: {e}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = Config::load(Some(Path::new("/nonexistent/chainprobe.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/chainprobe.toml"), "{e}");
    }
}
