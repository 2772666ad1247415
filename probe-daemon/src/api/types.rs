//! Typed API answers (what the handlers serialize; the OpenAPI document describes them).
use serde::Serialize;

use crate::{
    attach::ProbeState,
    collector::{ProcessSummary, View},
    discovery::GoView,
    goruntime::{creation::CreationStatus, GoTarget, OffsetsStatus},
    health::Health,
    snapshot::Status,
    tls::SslLibrary,
};

/// `GET /api/v1/targets`.
#[derive(Debug, Serialize)]
pub struct TargetsResponse {
    pub targets: Vec<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go_tracking: Option<&'static str>,
    pub openssl_libraries: OpensslLibraries,
    /// Processes held at their first mapping of a new libssl file (`[tls] hold_new_libssl`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openssl_holds: Option<crate::tls::hold::HoldStats>,
}

/// The probed libssl files, or why there are none.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum OpensslLibraries {
    Probed(Vec<SslLibrary>),
    Disabled(&'static str),
}

/// One tracked Go process.
#[derive(Debug, Serialize)]
pub struct Target {
    pub pid: u32,
    pub comm: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub health: Option<Health>,
    pub exe: std::path::PathBuf,
    pub go_version: String,
    pub build: Build,
    pub abi: String,
    pub supported: bool,
    pub probes: Vec<ProbeState>,
    pub creation_probes: CreationStatus,
    /// "ok", or why the runtime is not read.
    pub runtime_reads: String,
    pub offsets: OffsetsStatus,
    pub runtime: Runtime,
    /// A tracer attached (a debugger) or the process stopped, as last read; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug: Option<Debug>,
    /// HTTP/2 control frames (None before the first).
    pub http2: Option<Http2Summary>,
    /// TLS handshakes with every label (the metrics sum over version and ALPN, and time the
    /// successful ones only); null before the first handshake.
    pub tls: Option<TlsDetail>,
}

/// See [`Target::debug`].
#[derive(Debug, Serialize)]
pub struct Debug {
    /// The tracer (TracerPid) and its command name; absent when only stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracer_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracer_comm: Option<String>,
    /// How long it has been seen traced / stopped (lower bounds: between two readings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traced_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_seconds: Option<f64>,
}

/// `Target.http2`.
#[derive(Debug, Serialize)]
pub struct Http2Summary {
    pub frames: Vec<Http2Count>,
    pub recent_goaways: Vec<crate::http2::GoAwayRecord>,
}

#[derive(Debug, Serialize)]
pub struct Http2Count {
    pub frame: &'static str,
    pub direction: &'static str,
    pub code: &'static str,
    pub count: u64,
}

impl Http2Summary {
    fn of(h: &crate::http2::Http2State) -> Self {
        Http2Summary {
            frames: h.frames.iter().map(|(&(frame, direction, code), &count)| Http2Count { frame, direction, code, count }).collect(),
            recent_goaways: h.recent_goaways.iter().cloned().collect(),
        }
    }
}

/// The TLS handshakes the probes saw of one process.
#[derive(Debug, Serialize)]
pub struct TlsDetail {
    pub handshakes: Vec<TlsHandshakes>,
    pub durations: Vec<TlsDurations>,
    pub failures: Vec<TlsFailures>,
}

#[derive(Debug, Serialize)]
pub struct TlsHandshakes {
    pub library: &'static str,
    pub role: &'static str,
    pub result: &'static str,
    pub version: &'static str,
    pub alpn: &'static str,
    pub count: u64,
}

/// Handshake durations of one (library, role, result).
#[derive(Debug, Serialize)]
pub struct TlsDurations {
    pub library: &'static str,
    pub role: &'static str,
    pub result: &'static str,
    pub count: u64,
    pub sum_seconds: f64,
    /// (upper bound in seconds as Prometheus writes it, "+Inf" last; handshakes at or below it).
    pub buckets: Vec<(String, u64)>,
}

#[derive(Debug, Serialize)]
pub struct TlsFailures {
    pub library: &'static str,
    pub reason: &'static str,
    pub count: u64,
}

impl TlsDetail {
    fn new(t: &crate::tls::TlsState) -> TlsDetail {
        TlsDetail {
            handshakes: t
                .handshakes
                .iter()
                .map(|(k, n)| TlsHandshakes { library: k.library, role: k.role, result: k.result, version: k.version, alpn: k.alpn, count: *n })
                .collect(),
            durations: t
                .durations
                .iter()
                .map(|((library, role, result), b)| TlsDurations {
                    library: *library,
                    role: *role,
                    result: *result,
                    count: b.count(),
                    sum_seconds: b.sum(),
                    buckets: b.cumulative().into_iter().map(|(le, n)| (if le.is_finite() { le.to_string() } else { "+Inf".to_string() }, n)).collect(),
                })
                .collect(),
            failures: t.failures.iter().map(|((library, reason), n)| TlsFailures { library: *library, reason: *reason, count: *n }).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Build {
    pub pie: bool,
    pub stripped: bool,
    pub link_mode: String,
}

/// The latest runtime read and what the probes counted.
#[derive(Debug, Serialize)]
pub struct Runtime {
    pub goroutines: Option<i64>,
    pub goroutines_created: Option<u64>,
    pub gc_cycles_probed: Option<u64>,
    pub gc_cycles_memstats: Option<u32>,
    pub stw_pauses_probed: Option<u64>,
    pub heap_live_bytes: Option<u64>,
    pub heap_goal_bytes: Option<u64>,
    /// Seconds since the counters above were read, and between two reads as scheduled now
    /// (`[go] read_interval_seconds`, longer when many processes share `[go] read_cpu_budget`).
    pub read_age_seconds: Option<f64>,
    pub read_interval_seconds: Option<f64>,
    /// How `goroutines` is counted: the runtime's counters (O(P)), or every g read and why.
    pub goroutines_counted_by: String,
    /// The last breakdown by state (system goroutines included), read less often than the rest
    /// for big processes: see its age.
    pub goroutines_by_state: Option<Vec<StateCount>>,
    /// Seconds since `goroutines_by_state` was read.
    pub goroutines_by_state_age_seconds: Option<f64>,
    /// Seconds between two breakdown reads of this process as scheduled now (`[go]
    /// read_cpu_budget`).
    pub goroutines_by_state_period_seconds: Option<f64>,
    /// CPU seconds the last breakdown read took.
    pub goroutines_by_state_read_cpu_seconds: Option<f64>,
    /// Stop-the-world pauses by reason (the metrics have one histogram of all of them).
    pub stw_pauses_by_reason: std::collections::BTreeMap<&'static str, PauseTotals>,
}

/// Goroutines in one (state, wait reason).
#[derive(Debug, Serialize)]
pub struct StateCount {
    pub state: &'static str,
    /// Empty unless waiting.
    pub wait_reason: String,
    pub goroutines: u64,
}

#[derive(Debug, Serialize)]
pub struct PauseTotals {
    pub count: u64,
    pub seconds: f64,
}

impl TargetsResponse {
    pub fn new(view: &View, go: &GoView) -> Self {
        let openssl_libraries = match &go.openssl {
            Some(libs) => OpensslLibraries::Probed(libs.clone()),
            None => OpensslLibraries::Disabled("disabled in the configuration ([tls] openssl = false)"),
        };
        let Some(targets) = &go.targets else {
            return TargetsResponse { targets: Vec::new(), go_tracking: Some("disabled in the configuration ([go] enabled = false)"), openssl_libraries, openssl_holds: go.openssl_holds.clone() };
        };
        // BTreeMap: by pid.
        let targets = targets.values().map(|t| Target::new(t, view.processes.get(&t.pid).map(|p| &**p))).collect();
        TargetsResponse { targets, go_tracking: None, openssl_libraries, openssl_holds: go.openssl_holds.clone() }
    }
}

impl Target {
    fn new(t: &GoTarget, p: Option<&ProcessSummary>) -> Self {
        let g = p.and_then(|p| p.go.as_ref());
        let s = g.and_then(|g| g.sample.as_ref());
        let b = s.and_then(|s| s.breakdown);
        let pod = p.and_then(|p| p.pod.as_ref()).filter(|l| !l.pod.is_empty());
        Target {
            pid: t.pid,
            comm: p.map(|p| p.comm.clone()),
            namespace: pod.map(|l| l.namespace.clone()),
            pod: pod.map(|l| l.pod.clone()),
            container: pod.map(|l| l.container.clone()),
            health: p.and_then(|p| p.health.clone()),
            debug: p.and_then(|p| p.debug.as_ref()).map(|d| Debug {
                tracer_pid: (d.tracer_pid != 0).then_some(d.tracer_pid),
                tracer_comm: (d.tracer_pid != 0).then(|| d.tracer_comm.clone()),
                traced_seconds: d.traced_seconds(),
                stopped_seconds: d.stopped_seconds(),
            }),
            exe: t.exe.clone(),
            go_version: t.go_version.clone(),
            build: Build { pie: t.pie, stripped: t.stripped, link_mode: t.link_mode.clone() },
            abi: t.abi.clone(),
            supported: t.supported,
            probes: t.probes.clone(),
            creation_probes: g.and_then(|g| g.creation.clone()).unwrap_or_else(|| CreationStatus {
                active: false,
                reason: "off: goroutines are counted from memory reads; the per-goroutine probes switch on for a suspected leak or on request".into(),
                ..Default::default()
            }),
            runtime_reads: match (&t.reads_error, &t.layout) {
                (Some(e), _) => e.clone(),
                (None, Some(_)) => "ok".to_string(),
                (None, None) => t.offsets.validation.clone(),
            },
            offsets: t.offsets.clone(),
            tls: p.and_then(|p| p.tls.as_ref()).map(TlsDetail::new),
            runtime: Runtime {
                goroutines: s.map(|s| s.goroutines),
                goroutines_created: s.map(|s| s.goidgen),
                gc_cycles_probed: g.map(|g| g.gc_cycles),
                gc_cycles_memstats: s.map(|s| s.numgc),
                stw_pauses_probed: g.map(|g| g.stw_count),
                heap_live_bytes: s.map(|s| s.heap_live),
                heap_goal_bytes: s.map(|s| s.heap_goal),
                read_age_seconds: s.and_then(|s| s.read_at).map(|at| round_ms(at.elapsed().as_secs_f64())),
                read_interval_seconds: s.map(|s| round_ms(s.read_interval.as_secs_f64())),
                goroutines_counted_by: t.goroutine_count.clone(),
                goroutines_by_state: s.filter(|s| s.breakdown.is_some()).map(|s| {
                    s.by_state.iter().map(|((state, wait), n)| StateCount { state, wait_reason: wait.clone(), goroutines: *n }).collect()
                }),
                goroutines_by_state_age_seconds: b.map(|b| round_ms(b.at.elapsed().as_secs_f64())),
                goroutines_by_state_period_seconds: b.map(|b| round_ms(b.period.as_secs_f64())),
                goroutines_by_state_read_cpu_seconds: b.map(|b| b.cpu.as_secs_f64()),
                stw_pauses_by_reason: g
                    .map(|g| g.stw_by_reason.iter().map(|(r, (count, seconds))| (*r, PauseTotals { count: *count, seconds: *seconds })).collect())
                    .unwrap_or_default(),
            },
            http2: p.and_then(|p| p.http2.as_ref()).map(Http2Summary::of),
        }
    }
}

/// Seconds to the millisecond.
fn round_ms(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

/// `POST /api/v1/targets/{pid}/creation-probes`.
#[derive(Debug, Serialize)]
pub struct CreationResponse {
    pub pid: u32,
    pub creation_probes: Option<CreationStatus>,
}

/// `POST /api/v1/snapshots` (202).
#[derive(Debug, Serialize)]
pub struct SnapshotAccepted {
    pub id: String,
    pub status: Status,
    pub pid: u32,
}
