//! Prometheus exposition (OpenMetrics text) of the aggregate and of chainprobe itself.
//!
//! A scrape takes a [`ScrapeView`] (a copy made under the aggregate's lock) and encodes it with
//! prometheus-client. Per-process series carry `pid` and `comm`; a counter is exposed once it is
//! non-zero, so idle processes cost no series. Names are a contract: see README.md.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{text::encode, DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, histogram::Histogram, info::Info, MetricType},
    registry::Registry,
};
use probe_common::{MemSyscall, ProcCounters, ProgId, ProgStats};

use crate::{
    aggregate::{errno_name, merge_go, Aggregate, ExitReason, Exposure, FoldKey, GoState},
    attach::ProgramStatus,
    health::Health,
    hist::Buckets,
    k8s::{LabelPolicy, PodLabels, SeriesLimiter},
};

/// Which per-process detail becomes series (the `[metrics]` settings that trade detail for
/// series; the API keeps all of it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeriesOptions {
    /// `chainprobe_go_goroutines_by_state` also by `wait_reason` (off: by `state` only).
    pub goroutine_wait_reasons: bool,
    /// Where the GC and stop-the-world histograms are kept.
    pub histograms: HistogramScope,
    /// Where the TLS families are kept (`[metrics] tls`).
    pub tls: HistogramScope,
}

/// `[metrics] histograms` and `[metrics] tls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistogramScope {
    /// One series set per process (`pid`, `comm`, pod labels).
    #[default]
    Process,
    /// One per (namespace, pod, container) — per `comm` outside pods — summed over its processes.
    Pod,
}

/// OpenMetrics content type for `GET /metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format's content type.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An exposition format `GET /metrics` can answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// Prometheus text format 0.0.4 (promtool, older scrapers, `curl`).
    Text,
}

impl Format {
    /// Chooses from a request's `Accept` header as exporters do: OpenMetrics when the client
    /// prefers it (a higher q than text/plain; Prometheus sends
    /// `application/openmetrics-text;version=1.0.0;q=0.5,…,text/plain;version=0.0.4;q=0.3,*/*;q=0.2`),
    /// the classic text format otherwise, and without an `Accept` header.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::Text };
        let (mut om, mut text) = (0.0f64, 0.0f64);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f64>().ok())
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            match media.as_str() {
                "application/openmetrics-text" => om = om.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if om > text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => CONTENT_TYPE,
            Format::Text => TEXT_CONTENT_TYPE,
        }
    }
}

/// OpenMetrics text → Prometheus text format 0.0.4, the way Prometheus itself reads OpenMetrics
/// families: a counter family `x` is `x_total` (its samples already are), an info family `x` is a
/// gauge `x_info`; `# UNIT`, `# EOF` and exemplars are dropped. Samples pass through unchanged.
/// (prometheus-client encodes OpenMetrics only; both answers come from the same registry.)
pub fn openmetrics_to_text(om: &str) -> String {
    let mut kinds: HashMap<&str, &str> = HashMap::new();
    for l in om.lines() {
        if let Some((name, kind)) = l.strip_prefix("# TYPE ").and_then(|r| r.split_once(' ')) {
            kinds.insert(name, kind.trim());
        }
    }
    let rename = |name: &str| -> String {
        match kinds.get(name).copied() {
            Some("counter") if !name.ends_with("_total") => format!("{name}_total"),
            Some("info") => format!("{name}_info"),
            _ => name.to_string(),
        }
    };
    let mut out = String::with_capacity(om.len());
    for l in om.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = match kind.trim() {
                "info" | "stateset" => "gauge",
                "unknown" => "untyped",
                k => k,
            };
            out.push_str(&format!("# TYPE {} {kind}\n", rename(name)));
        } else if let Some(rest) = l.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", rename(name)));
        } else {
            // An exemplar follows " # {".
            out.push_str(l.find(" # {").map_or(l, |i| &l[..i]));
            out.push('\n');
        }
    }
    out
}

/// One process — or the folded processes of one (pod, container, comm) — as a scrape sees it.
#[derive(Debug, Clone)]
pub struct ProcView {
    /// `None`: folded series (no `pid` label).
    pub pid: Option<u32>,
    pub comm: String,
    pub counters: ProcCounters,
    pub active_connections: u64,
    pub failures: Vec<(MemSyscall, u16, u64)>,
    /// Folded: the largest of its running processes'.
    pub map_count: Option<u64>,
    /// Running (folded: any of its processes).
    pub live: bool,
    /// Exits by (reason, code): 0 or 1 of a process, any number folded.
    pub exits: Vec<(ExitReason, String, u64)>,
    pub go: Option<GoState>,
    pub pod: Option<PodLabels>,
    pub health: Option<Health>,
    /// TLS handshakes.
    pub tls: Option<crate::tls::TlsState>,
    /// A tracer attached / stopped (per-pid series only).
    pub traced: bool,
    pub stopped: bool,
    /// HTTP/2 GOAWAY and RST_STREAM frames.
    pub http2: Option<crate::http2::Http2State>,
}

/// Everything a scrape encodes, copied out of the shared state.
#[derive(Debug, Clone, Default)]
pub struct ScrapeView {
    pub version: String,
    pub kernel: String,
    pub procs: Vec<ProcView>,
    pub prog_stats: Vec<(ProgId, ProgStats)>,
    pub programs: Vec<ProgramStatus>,
    pub max_map_count: Option<u64>,
    pub dropped_exited: u64,
    pub decode_errors: u64,
    pub discovery_dropped: u64,
    pub go_offsets_sources: std::collections::BTreeMap<&'static str, u64>,
    pub tracked: usize,
    /// Which labels are kept (dropped ones merge series by summing).
    pub policy: LabelPolicy,
    /// The cap on exposed series (shared across scrapes, so admitted series stay stable).
    pub limiter: Option<Arc<Mutex<SeriesLimiter>>>,
    pub snapshots: Option<crate::snapshot::SnapshotStats>,
    /// The crash workers' and pause keeper's counters.
    pub crashes: Option<crate::snapshot::crash::CrashStats>,
    pub options: SeriesOptions,
    /// GC-duration and pause histograms of departed per-pid Go processes, per fold key (per-pod
    /// histograms).
    pub pod_hists: Vec<(FoldKey, Buckets, Buckets)>,
    /// TLS handshakes of departed per-pid processes, per fold key (per-pod TLS families).
    pub pod_tls: Vec<(FoldKey, crate::tls::TlsState)>,
}

impl ProcView {
    /// The folded series of `key`, before any process is added.
    fn fold(key: &FoldKey) -> ProcView {
        ProcView {
            pid: None,
            comm: key.comm.clone(),
            counters: ProcCounters::default(),
            active_connections: 0,
            failures: Vec::new(),
            map_count: None,
            live: false,
            exits: Vec::new(),
            go: None,
            pod: Some(key.pod.clone()),
            health: None,
            tls: None,
            traced: false,
            stopped: false,
            http2: None,
        }
    }

    /// Adds a process to folded series (its gauges only while it runs).
    fn absorb(&mut self, o: ProcView) {
        self.counters.accumulate(&o.counters);
        if o.live {
            self.active_connections += o.active_connections;
        }
        for (sc, errno, n) in o.failures {
            match self.failures.iter_mut().find(|f| f.0 == sc && f.1 == errno) {
                Some(f) => f.2 += n,
                None => self.failures.push((sc, errno, n)),
            }
        }
        self.map_count = match (self.map_count, o.map_count.filter(|_| o.live)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.live |= o.live;
        for (r, c, n) in o.exits {
            match self.exits.iter_mut().find(|e| e.0 == r && e.1 == c) {
                Some(e) => e.2 += n,
                None => self.exits.push((r, c, n)),
            }
        }
        if let Some(g) = &o.go {
            merge_go(&mut self.go, g);
        }
        if let Some(t) = &o.tls {
            self.tls.get_or_insert_with(Default::default).merge(t);
        }
        if let Some(h) = &o.http2 {
            self.http2.get_or_insert_with(Default::default).merge(h);
        }
        if let Some(h) = o.health.filter(|_| o.live) {
            if self.health.as_ref().is_none_or(|mine| h.score < mine.score) {
                self.health = Some(h);
            }
        }
    }
}

impl ScrapeView {
    /// Copies what a scrape encodes out of the aggregate and the latest health results.
    /// `max_map_count` is the node's `vm.max_map_count` (the collector reads it).
    pub fn new(agg: &Aggregate, health: &HashMap<u32, Health>, max_map_count: Option<u64>, programs: &[ProgramStatus], kernel: &str) -> Self {
        Self::with_policy(agg, health, max_map_count, programs, kernel, LabelPolicy::default(), None)
    }

    pub fn with_policy(
        agg: &Aggregate,
        health: &HashMap<u32, Health>,
        max_map_count: Option<u64>,
        programs: &[ProgramStatus],
        kernel: &str,
        policy: LabelPolicy,
        limiter: Option<Arc<Mutex<SeriesLimiter>>>,
    ) -> Self {
        let now = std::time::Instant::now();
        let mut procs: Vec<ProcView> = Vec::new();
        // Folds: what their departed processes left, plus their current ones.
        let mut folded: BTreeMap<FoldKey, ProcView> = BTreeMap::new();
        let mut pod_hists = Vec::new();
        let mut pod_tls = Vec::new();
        for (k, f) in agg.folds() {
            if let Some((gc, stw)) = &f.pid_hists {
                pod_hists.push((k.clone(), gc.clone(), stw.clone()));
            }
            if let Some(t) = &f.pid_tls {
                pod_tls.push((k.clone(), t.clone()));
            }
            if f.counters == ProcCounters::default() && f.exits.is_empty() && f.go.is_none() && f.tls.is_none() && f.http2.is_none() && f.failures.is_empty() {
                continue;
            }
            folded.insert(
                k.clone(),
                ProcView {
                    counters: f.counters,
                    failures: f.failures.iter().map(|((s, e), n)| (*s, *e, *n)).collect(),
                    exits: f.exits.iter().map(|((r, c), n)| (*r, c.clone(), *n)).collect(),
                    go: f.go.clone(),
                    tls: f.tls.clone(),
                    http2: f.http2.clone(),
                    ..ProcView::fold(k)
                },
            );
        }
        for p in agg.processes() {
            let exposure = agg.exposure(p, now);
            // Held (its pod's names awaited, or young): its series appear once, with final labels.
            if exposure == Exposure::Held {
                continue;
            }
            let v = ProcView {
                pid: Some(p.pid),
                comm: p.comm.clone(),
                counters: p.counters(),
                active_connections: p.active_connections(),
                failures: p.failures().into_iter().map(|((s, e), n)| (s, e, n)).collect(),
                map_count: p.map_count,
                live: p.exit.is_none(),
                exits: p.exit.iter().map(|e| (e.reason, e.code.clone(), 1)).collect(),
                go: p.go.clone(),
                pod: p.pod.clone(),
                health: health.get(&p.pid).cloned(),
                tls: p.tls.clone(),
                traced: p.debug.as_ref().is_some_and(|d| d.tracer_pid != 0),
                stopped: p.debug.as_ref().is_some_and(|d| d.stopped_since.is_some()),
                http2: p.http2.clone(),
            };
            if exposure == Exposure::Folded {
                let key = Aggregate::fold_key(p);
                folded.entry(key.clone()).or_insert_with(|| ProcView::fold(&key)).absorb(v);
            } else {
                procs.push(v);
            }
        }
        procs.sort_by_key(|p| p.pid);
        procs.extend(folded.into_values());
        ScrapeView {
            version: env!("CARGO_PKG_VERSION").to_string(),
            kernel: kernel.to_string(),
            procs,
            prog_stats: agg.prog_stats().to_vec(),
            programs: programs.to_vec(),
            max_map_count,
            dropped_exited: agg.dropped_exited,
            decode_errors: agg.decode_errors,
            discovery_dropped: agg.discovery_dropped,
            go_offsets_sources: agg.go_offsets_sources.clone(),
            tracked: agg.tracked(),
            policy,
            limiter,
            snapshots: None,
            crashes: None,
            options: SeriesOptions::default(),
            pod_hists,
            pod_tls,
        }
    }

    /// Sets which detail becomes series.
    pub fn with_options(mut self, options: SeriesOptions) -> Self {
        self.options = options;
        self
    }

    /// Adds the snapshotter's counters.
    pub fn with_snapshots(mut self, stats: Option<crate::snapshot::SnapshotStats>) -> Self {
        self.snapshots = stats;
        self
    }

    /// Adds the crash capsules' counters.
    pub fn with_crashes(mut self, stats: Option<crate::snapshot::crash::CrashStats>) -> Self {
        self.crashes = stats;
        self
    }

    /// The OpenMetrics text of this view.
    pub fn render(self) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        encode(&mut out, &registry)?;
        Ok(out)
    }
}

type Labels = Vec<(&'static str, String)>;

fn proc_labels(p: &ProcView) -> Labels {
    let mut l = match p.pid {
        Some(pid) => vec![("pid", pid.to_string()), ("comm", p.comm.clone())],
        None => vec![("comm", p.comm.clone())],
    };
    if let Some(pod) = p.pod.as_ref().filter(|pod| !pod.pod.is_empty()) {
        l.push(("namespace", pod.namespace.clone()));
        l.push(("pod", pod.pod.clone()));
        l.push(("container", pod.container.clone()));
    }
    l
}

fn with(mut base: Labels, extra: &[(&'static str, &str)]) -> Labels {
    base.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    base
}

/// A sample value. Counters and gauges of series that the label policy merges are summed (a score
/// keeps the worst: [`Value::Min`] and [`Value::Max`]); a histogram cannot be summed here, so the
/// first of merged histograms is kept.
#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    Gauge(i64),
    /// A gauge whose merge keeps the smallest value (health scores).
    Min(i64),
    /// A gauge whose merge keeps the largest value (signal states).
    Max(i64),
    Histogram(Histogram),
    /// A histogram that merges (summed with the series it coincides with).
    Buckets(Buckets),
}

impl Value {
    fn merge(&mut self, other: Value) {
        match (self, other) {
            (Value::Counter(a), Value::Counter(b)) => *a += b,
            (Value::Gauge(a), Value::Gauge(b)) => *a += b,
            (Value::Min(a), Value::Min(b)) => *a = (*a).min(b),
            (Value::Max(a), Value::Max(b)) => *a = (*a).max(b),
            (Value::Buckets(a), Value::Buckets(b)) => a.merge(&b),
            _ => {}
        }
    }

    fn encode(&self, e: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Value::Counter(v) => ConstCounter::new(*v).encode(e),
            Value::Gauge(v) | Value::Min(v) | Value::Max(v) => ConstGauge::new(*v).encode(e),
            Value::Histogram(h) => h.encode(e),
            Value::Buckets(b) => {
                let mut e = e;
                e.encode_histogram::<prometheus_client::encoding::NoLabelSet>(b.sum(), b.count(), &b.encoder_buckets(), None)
            }
        }
    }
}

impl ScrapeView {
    /// Encodes one family: `series` yields (labels, value). The label policy drops labels (merging
    /// the series that become equal) and the series cap refuses new series beyond it. A family
    /// with no series still gets its HELP and TYPE lines, which tells a reader what exists.
    fn family(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        kind: MetricType,
        series: impl IntoIterator<Item = (Labels, Value)>,
    ) -> Result<(), std::fmt::Error> {
        let mut merged: Vec<(Labels, Value)> = Vec::new();
        let mut index: HashMap<Labels, usize> = HashMap::new();
        for (labels, v) in series {
            let labels = self.policy.apply(labels);
            match index.get(&labels) {
                Some(&i) => merged[i].1.merge(v),
                None => {
                    index.insert(labels.clone(), merged.len());
                    merged.push((labels, v));
                }
            }
        }
        // The cap applies to per-process series (they carry `comm`); chainprobe's own are exempt.
        if let Some(limiter) = &self.limiter {
            let mut lim = crate::sync::lock(limiter);
            merged.retain(|(l, _)| !l.iter().any(|(k, _)| *k == "comm") || lim.admit(name, l));
        }
        let mut me = enc.encode_descriptor(name, help, None, kind)?;
        for (labels, v) in &merged {
            v.encode(me.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// Encodes one family that has a single series without labels.
fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: Value,
) -> Result<(), std::fmt::Error> {
    value.encode(enc.encode_descriptor(name, help, None, kind)?)
}

type CounterField = (&'static str, &'static str, fn(&ProcCounters) -> u64);

/// Per-process counters without extra labels: (name without _total, help, field).
const PROC_COUNTERS: &[CounterField] = &[
    ("chainprobe_tcp_accepts", "TCP connections accepted (passive opens that reached ESTABLISHED).", |c| c.tcp_accepts),
    ("chainprobe_tcp_resets_sent", "TCP resets sent on the process's sockets.", |c| c.tcp_resets_sent),
    ("chainprobe_tcp_resets_received", "TCP resets received on the process's sockets.", |c| c.tcp_resets_received),
    ("chainprobe_tcp_retransmits", "TCP segments retransmitted (SYNs included).", |c| c.tcp_retransmits),
    ("chainprobe_mmap_calls", "Successful mmap calls.", |c| c.mmap_calls),
    ("chainprobe_mmap_bytes", "Bytes requested by successful mmap calls.", |c| c.mmap_bytes),
    ("chainprobe_munmap_calls", "munmap calls (failures are also in chainprobe_mmap_failures_total).", |c| c.munmap_calls),
    ("chainprobe_munmap_bytes", "Bytes munmap calls asked to release.", |c| c.munmap_bytes),
    ("chainprobe_brk_calls", "brk calls.", |c| c.brk_calls),
];

const CONNECT_RESULTS: &[(&str, fn(&ProcCounters) -> u64)] = &[
    ("ok", |c| c.tcp_connect_ok),
    ("refused", |c| c.tcp_connect_refused),
    ("timeout", |c| c.tcp_connect_timeout),
    ("reset", |c| c.tcp_connect_reset),
    ("error", |c| c.tcp_connect_error),
];

impl Collector for ScrapeView {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let procs = &self.procs;
        self.family(
            &mut enc,
            "chainprobe_tcp_connects",
            "TCP connect outcomes: ok, refused (RST), timeout (no answer, or the application gave up first), reset, error.",
            MetricType::Counter,
            procs.iter().flat_map(|p| {
                CONNECT_RESULTS.iter().filter_map(move |(result, f)| {
                    let v = f(&p.counters);
                    (v > 0).then(|| (with(proc_labels(p), &[("result", result)]), Value::Counter(v)))
                })
            }),
        )?;
        for (name, help, f) in PROC_COUNTERS {
            self.family(
                &mut enc,
                name,
                help,
                MetricType::Counter,
                procs.iter().filter_map(|p| {
                    let v = f(&p.counters);
                    (v > 0).then(|| (proc_labels(p), Value::Counter(v)))
                }),
            )?;
        }
        self.family(
            &mut enc,
            "chainprobe_tcp_active_connections",
            "TCP connections of the process currently established.",
            MetricType::Gauge,
            procs
                .iter()
                .filter(|p| p.counters.tcp_established_opened > 0)
                .map(|p| (proc_labels(p), Value::Gauge(p.active_connections as i64))),
        )?;
        self.family(
            &mut enc,
            "chainprobe_mmap_failures",
            "Failed memory-mapping calls by syscall (mmap, munmap, brk) and errno.",
            MetricType::Counter,
            procs.iter().flat_map(|p| {
                p.failures.iter().map(move |(sc, errno, n)| {
                    let errno = errno_name(*errno);
                    (with(proc_labels(p), &[("syscall", sc.name()), ("errno", &errno)]), Value::Counter(*n))
                })
            }),
        )?;
        self.family(
            &mut enc,
            "chainprobe_process_memory_maps",
            "Memory mappings of the process (lines of /proc/PID/maps); compare with chainprobe_vm_max_memory_maps.",
            MetricType::Gauge,
            procs
                .iter()
                .filter(|p| p.live)
                .filter_map(|p| p.map_count.map(|n| (proc_labels(p), Value::Gauge(n as i64)))),
        )?;
        self.family(
            &mut enc,
            "chainprobe_process_exits",
            "Process exits: reason exit (code = status), signal (code = signal name) or oom (killed by the OOM killer).",
            MetricType::Counter,
            procs.iter().flat_map(|p| p.exits.iter().map(move |(reason, code, n)| (with(proc_labels(p), &[("reason", reason.as_str()), ("code", code)]), Value::Counter(*n)))),
        )?;
        if let Some(n) = self.max_map_count {
            single(
                &mut enc,
                "chainprobe_vm_max_memory_maps",
                "The kernel's per-process limit on memory mappings (vm.max_map_count).",
                MetricType::Gauge,
                Value::Gauge(n as i64),
            )?;
        }

        self.encode_go(&mut enc)?;
        self.encode_health(&mut enc)?;
        self.encode_tls(&mut enc)?;
        self.encode_crashes(&mut enc)?;
        self.family(
            &mut enc,
            "chainprobe_process_traced",
            "1 while a tracer (a debugger: dlv, gdb, strace) is attached to the process (TracerPid); only such processes have the series. GET /api/v1/targets names the tracer.",
            MetricType::Gauge,
            self.procs.iter().filter(|p| p.pid.is_some() && p.traced && p.live).map(|p| (proc_labels(p), Value::Gauge(1))),
        )?;
        self.family(
            &mut enc,
            "chainprobe_process_stopped",
            "1 while the process is stopped (at a breakpoint, or by SIGSTOP); only such processes have the series. For how long: GET /api/v1/targets and the stopped_seconds signal.",
            MetricType::Gauge,
            self.procs.iter().filter(|p| p.pid.is_some() && p.stopped && p.live).map(|p| (proc_labels(p), Value::Gauge(1))),
        )?;
        self.encode_http2(&mut enc)?;

        // Self metrics.
        let info = Info::new(vec![("version", self.version.clone()), ("kernel", self.kernel.clone())]);
        info.encode(enc.encode_descriptor("chainprobe_build", "chainprobe version and the kernel it runs on.", None, MetricType::Info)?)?;
        let prog = |id: ProgId| vec![("program", id.program_name().to_string())];
        self.family(
            &mut enc,
            "chainprobe_events_processed",
            "Events handled by each kernel program.",
            MetricType::Counter,
            self.prog_stats.iter().map(|(id, s)| (prog(*id), Value::Counter(s.events))),
        )?;
        self.family(
            &mut enc,
            "chainprobe_events_lost",
            "Events dropped by each kernel program: reason ringbuf_full or map_full.",
            MetricType::Counter,
            self.prog_stats.iter().flat_map(|(id, s)| {
                [("ringbuf_full", s.lost_ringbuf), ("map_full", s.lost_map_full)]
                    .into_iter()
                    .map(move |(reason, n)| (with(prog(*id), &[("reason", reason)]), Value::Counter(n)))
            }),
        )?;
        self.family(
            &mut enc,
            "chainprobe_attach_failures",
            "Kernel programs that could not be attached (see the log or `chainprobe check` for why).",
            MetricType::Counter,
            self.programs.iter().map(|s| (prog(s.prog), Value::Counter(u64::from(!s.attached)))),
        )?;
        self.family(
            &mut enc,
            "chainprobe_program_attached",
            "1 when the kernel program is attached.",
            MetricType::Gauge,
            self.programs.iter().map(|s| (prog(s.prog), Value::Gauge(i64::from(s.attached)))),
        )?;
        single(
            &mut enc,
            "chainprobe_tracked_processes",
            "Processes whose series chainprobe currently exposes (exited ones included until scraped).",
            MetricType::Gauge,
            Value::Gauge(self.tracked as i64),
        )?;
        single(
            &mut enc,
            "chainprobe_exited_series_dropped",
            "Exited processes whose series were dropped early because metrics.max_exited_processes was reached.",
            MetricType::Counter,
            Value::Counter(self.dropped_exited),
        )?;
        let series_dropped = self.limiter.as_ref().map(|l| crate::sync::lock(l).dropped_total()).unwrap_or(0);
        single(
            &mut enc,
            "chainprobe_series_dropped",
            "Series refused because metrics.max_series was reached.",
            MetricType::Counter,
            Value::Counter(series_dropped),
        )?;
        single(
            &mut enc,
            "chainprobe_go_discovery_dropped",
            "Exec/exit notifications Go discovery could not take because its queue was full (those processes are found at their next exec, or not at all).",
            MetricType::Counter,
            Value::Counter(self.discovery_dropped),
        )?;
        self.family(
            &mut enc,
            "chainprobe_go_processes",
            "Tracked Go processes by where their struct offsets come from: dwarf (the binary's own), table (generated for its Go version), nearest (the closest version's table, checked on the live process), pending (not checked yet: no runtime numbers), none (unknown or rejected: no runtime numbers; GET /api/v1/targets says why).",
            MetricType::Gauge,
            ["dwarf", "table", "nearest", "pending", "none"]
                .into_iter()
                .map(|s| (vec![("offsets_source", s.to_string())], Value::Gauge(self.go_offsets_sources.get(s).copied().unwrap_or(0) as i64))),
        )?;
        single(
            &mut enc,
            "chainprobe_event_decode_errors",
            "Ring-buffer records that could not be decoded.",
            MetricType::Counter,
            Value::Counter(self.decode_errors),
        )?;
        Ok(())
    }
}

impl ScrapeView {
    fn encode_health(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let scored = || self.procs.iter().filter(|p| p.live).filter_map(|p| p.health.as_ref().map(|h| (p, h)));
        self.family(
            enc,
            "chainprobe_health_score",
            "Health score of the process, 0 (bad) to 100, from its signals (GET /api/v1/targets shows the reasons).",
            MetricType::Gauge,
            scored().map(|(p, h)| (proc_labels(p), Value::Min(i64::from(h.score)))),
        )?;
        self.family(
            enc,
            "chainprobe_health_signal_state",
            "State of the health signals of the process that are not ok: 1 warn, 2 critical (all of them, ok ones included, in GET /api/v1/targets).",
            MetricType::Gauge,
            scored().flat_map(|(p, h)| {
                h.signals
                    .iter()
                    .filter(|s| s.state != crate::health::State::Ok)
                    .map(move |s| (with(proc_labels(p), &[("signal", s.name)]), Value::Max(s.state as i64)))
            }),
        )?;
        self.family(
            enc,
            "chainprobe_pod_health_score",
            "Health score of the pod: the lowest score of its processes.",
            MetricType::Gauge,
            scored().filter_map(|(p, h)| {
                let pod = p.pod.as_ref().filter(|l| !l.pod.is_empty())?;
                Some((vec![("namespace", pod.namespace.clone()), ("pod", pod.pod.clone())], Value::Min(i64::from(h.score))))
            }),
        )?;
        let Some(st) = &self.snapshots else { return Ok(()) };
        self.family(
            enc,
            "chainprobe_snapshots",
            "Snapshot files by trigger (rule, api), kind (heap, goroutine) and result: ok, failed, unavailable (no source for that kind, e.g. a heap profile without a pprof endpoint), refused (cooldown, hourly cap, queue full, circuit open).",
            MetricType::Counter,
            st.totals.iter().map(|((t, k, r), n)| (vec![("trigger", t.to_string()), ("kind", k.to_string()), ("result", r.to_string())], Value::Counter(*n))),
        )?;
        single(enc, "chainprobe_snapshot_duration_seconds", "Time to take a snapshot, queueing excluded.", MetricType::Histogram, Value::Histogram(st.duration.clone()))?;
        single(
            enc,
            "chainprobe_snapshot_circuit_open",
            "1 while snapshots are stopped (node under memory pressure, or too many failures in a row); GET /api/v1/snapshots says why.",
            MetricType::Gauge,
            Value::Gauge(i64::from(st.circuit_open)),
        )?;
        single(enc, "chainprobe_snapshots_stored", "Snapshots in the snapshot directory.", MetricType::Gauge, Value::Gauge(st.stored as i64))?;
        single(enc, "chainprobe_snapshots_stored_bytes", "Bytes of the snapshots in the snapshot directory.", MetricType::Gauge, Value::Gauge(st.stored_bytes as i64))?;
        Ok(())
    }

    /// The crash capsules' node-wide counters (the per-process crashes are
    /// chainprobe_go_crashes_total).
    fn encode_crashes(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(c) = &self.crashes else { return Ok(()) };
        let p = &c.pauses;
        self.family(
            enc,
            "chainprobe_crash_capsules",
            "Crashes seen by the crash workers, by result: stored (a capsule), crash_loop (counted, no capsule: [crash] cooldown_seconds), queue_full (the workers' queue was full).",
            MetricType::Counter,
            [("stored", c.capsules), ("crash_loop", c.suppressed), ("queue_full", c.dropped)].into_iter().map(|(r, n)| (vec![("result", r.to_string())], Value::Counter(n))),
        )?;
        self.family(
            enc,
            "chainprobe_crash_pauses",
            "Crashing processes stopped by the kernel, by how they were resumed: done (capsule read), bound ([crash] max_pause_ms), limit (over [crash] max_concurrent_pauses: resumed at once), aborted (error or shutdown), orphan (found stopped at a crash with no pause on record).",
            MetricType::Counter,
            [("done", p.resumed_done), ("bound", p.resumed_bound), ("limit", p.resumed_limit), ("aborted", p.resumed_aborted), ("orphan", p.resumed_orphans)]
                .into_iter()
                .map(|(r, n)| (vec![("result", r.to_string())], Value::Counter(n))),
        )
    }

    /// TLS handshake families. Labels: the process's (pid, comm, pod labels) or, with
    /// `[metrics] tls = "pod"`, the pod's (comm outside pods: [`scope_labels`]), departed
    /// processes included; then library and role / result / version / alpn / reason as
    /// documented in README.md. Durations of successful handshakes only (failed ones: the API).
    fn encode_tls(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let tls = || {
            let live = self.procs.iter().filter_map(|p| {
                p.tls.as_ref().map(|t| {
                    let labels = match self.options.tls {
                        HistogramScope::Process => proc_labels(p),
                        HistogramScope::Pod => pod_scope_labels(p),
                    };
                    (labels, t)
                })
            });
            live.chain(self.pod_tls.iter().map(|(k, t)| (scope_labels(Some(&k.pod), &k.comm), t)))
        };
        self.family(
            enc,
            "chainprobe_tls_handshakes",
            "TLS handshakes completed or failed, by library (go, openssl), role, result (ok, error), negotiated version and ALPN protocol (\"unknown\" where not read).",
            MetricType::Counter,
            tls().flat_map(|(l, t)| {
                t.handshakes.iter().map(move |(k, n)| {
                    (with(l.clone(), &[("library", k.library), ("role", k.role), ("result", k.result), ("version", k.version), ("alpn", k.alpn)]), Value::Counter(*n))
                })
            }),
        )?;
        self.family(
            enc,
            "chainprobe_tls_handshake_duration_seconds",
            "Duration of successful TLS handshakes by library and role (Go: clientHandshake/serverHandshake; OpenSSL: from the first SSL_do_handshake/SSL_connect/SSL_accept call to the one that finished it). Failed handshakes' durations: GET /api/v1/targets.",
            MetricType::Histogram,
            tls().flat_map(|(l, t)| {
                t.durations
                    .iter()
                    .filter(|((_, _, result), _)| *result == "ok")
                    .map(move |((library, role, _), h)| (with(l.clone(), &[("library", library), ("role", role)]), Value::Buckets(h.clone())))
            }),
        )?;
        self.family(
            enc,
            "chainprobe_tls_handshake_failures",
            "Failed TLS handshakes by reason: certificate, alpn, version (Go: from the TLS alert sent or received; OpenSSL: from the first error libssl raises, or the alert received), timeout_eof (no alert: closed, reset or timed out), other.",
            MetricType::Counter,
            tls().flat_map(|(l, t)| t.failures.iter().map(move |((library, reason), n)| (with(l.clone(), &[("library", library), ("reason", reason)]), Value::Counter(*n)))),
        )?;
        Ok(())
    }
}

impl ScrapeView {
    /// HTTP/2 control-frame families: only (direction, code) pairs seen, so a process has no
    /// series until its first GOAWAY or RST_STREAM and at most 2 × 15 per family.
    fn encode_http2(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let h2 = || self.procs.iter().filter_map(|p| p.http2.as_ref().map(|h| (p, h)));
        for (family, frame, help) in [
            (
                "chainprobe_http2_goaways",
                "goaway",
                "HTTP/2 GOAWAY frames a Go process sent or received, by direction (sent, received) and error code (NO_ERROR, PROTOCOL_ERROR, ..., other); their debug data is in GET /api/v1/targets.",
            ),
            (
                "chainprobe_http2_stream_resets",
                "rst_stream",
                "HTTP/2 RST_STREAM frames a Go process sent or received, by direction (sent, received) and error code (CANCEL, REFUSED_STREAM, ..., other).",
            ),
        ] {
            self.family(
                enc,
                family,
                help,
                MetricType::Counter,
                h2().flat_map(|(p, h)| {
                    h.frames
                        .iter()
                        .filter(move |((f, _, _), _)| *f == frame)
                        .map(move |((_, direction, code), n)| (with(proc_labels(p), &[("direction", *direction), ("code", *code)]), Value::Counter(*n)))
                }),
            )?;
        }
        Ok(())
    }
}

/// The stop-the-world reasons of every GC cycle (two a cycle, so `chainprobe_go_gc_cycles_total`
/// tells their count): not series of `chainprobe_go_stw_pauses_total`.
const GC_STW_REASONS: [&str; 2] = ["gc_sweep_termination", "gc_mark_termination"];

fn go_labels(p: &ProcView, go: &GoState) -> Labels {
    with(proc_labels(p), &[("go_version", &go.go_version)])
}

/// Labels of per-pod histograms: the pod's, or `comm` outside pods.
fn pod_scope_labels(p: &ProcView) -> Labels {
    scope_labels(p.pod.as_ref(), &p.comm)
}

fn scope_labels(pod: Option<&PodLabels>, comm: &str) -> Labels {
    match pod.filter(|pod| !pod.pod.is_empty()) {
        Some(pod) => vec![("namespace", pod.namespace.clone()), ("pod", pod.pod.clone()), ("container", pod.container.clone())],
        None => vec![("comm", comm.to_string())],
    }
}

impl ScrapeView {
    fn go_procs(&self) -> impl Iterator<Item = (&ProcView, &GoState)> {
        self.procs.iter().filter_map(|p| p.go.as_ref().map(|g| (p, g)))
    }

    fn encode_go(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.family(
            enc,
            "chainprobe_go_gc_cycles",
            "Go GC cycles completed (uprobes on the runtime; counted since chainprobe began tracking the process).",
            MetricType::Counter,
            self.go_procs().map(|(p, g)| (go_labels(p, g), Value::Counter(g.gc_cycles))),
        )?;
        let hist_labels = |p: &ProcView, g: &GoState| match self.options.histograms {
            HistogramScope::Process => go_labels(p, g),
            HistogramScope::Pod => pod_scope_labels(p),
        };
        self.family(
            enc,
            "chainprobe_go_gc_duration_seconds",
            "Go GC cycle duration, from gcStart to the start of mark termination (the end of marking).",
            MetricType::Histogram,
            self.go_procs()
                .map(|(p, g)| (hist_labels(p, g), Value::Buckets(g.gc_duration.clone())))
                .chain(self.pod_hists.iter().map(|(k, gc, _)| (scope_labels(Some(&k.pod), &k.comm), Value::Buckets(gc.clone())))),
        )?;
        self.family(
            enc,
            "chainprobe_go_stw_pause_seconds",
            "Go stop-the-world pauses, all reasons (chainprobe_go_stw_pauses_total counts those other than the GC's by reason).",
            MetricType::Histogram,
            self.go_procs()
                .map(|(p, g)| (hist_labels(p, g), Value::Buckets(g.stw_pause.clone())))
                .chain(self.pod_hists.iter().map(|(k, _, stw)| (scope_labels(Some(&k.pod), &k.comm), Value::Buckets(stw.clone())))),
        )?;
        self.family(
            enc,
            "chainprobe_go_stw_pauses",
            "Go stop-the-world pauses by reason, other than the GC's own two a cycle (chainprobe_go_gc_cycles_total; GET /api/v1/targets has them): read_mem_stats, goroutine_profile, gomaxprocs, …; \"unknown\" before Go 1.21, all pauses.",
            MetricType::Counter,
            self.go_procs().flat_map(|(p, g)| {
                g.stw_by_reason
                    .iter()
                    .filter(|(reason, _)| !GC_STW_REASONS.contains(reason))
                    .map(move |(reason, (n, _))| (with(go_labels(p, g), &[("reason", reason)]), Value::Counter(*n)))
            }),
        )?;
        self.family(
            enc,
            "chainprobe_go_crashes",
            "Go process crashes by kind: panic (unrecovered), fatal_error (runtime.throw/fatal), exit (os.Exit with a non-zero code: log.Fatal), signal (SIGSEGV, SIGABRT …), oom_kill. The crash capsule (snapshot trigger crash) holds the message, the stack and the profiles.",
            MetricType::Counter,
            self.go_procs().flat_map(|(p, g)| g.crashes.iter().map(move |(kind, n)| (with(go_labels(p, g), &[("kind", kind.as_str())]), Value::Counter(*n)))),
        )?;
        let sampled = || self.go_procs().filter_map(|(p, g)| g.sample.as_ref().map(|s| (p, g, s)));
        self.family(
            enc,
            "chainprobe_go_goroutines",
            "Live goroutines, as runtime.NumGoroutine counts them (read from the process's memory).",
            MetricType::Gauge,
            sampled().map(|(p, g, s)| (go_labels(p, g), Value::Gauge(s.goroutines))),
        )?;
        self.family(
            enc,
            "chainprobe_go_goroutines_by_state",
            "Live goroutines (system ones included) by status, the statuses present only (with [metrics] goroutine_wait_reasons also by wait reason; GET /api/v1/targets always has both).",
            MetricType::Gauge,
            sampled().flat_map(|(p, g, s)| {
                let by_wait = self.options.goroutine_wait_reasons;
                s.by_state.iter().map(move |((state, wait), n)| {
                    let labels = if by_wait { with(go_labels(p, g), &[("state", state), ("wait_reason", wait)]) } else { with(go_labels(p, g), &[("state", state)]) };
                    (labels, Value::Gauge(*n as i64))
                })
            }),
        )?;
        self.family(
            enc,
            "chainprobe_go_goroutines_created",
            "Goroutine ids handed out since the process started (sched.goidgen): goroutines created, within 16 per P.",
            MetricType::Counter,
            sampled().map(|(p, g, s)| (go_labels(p, g), Value::Counter(s.goidgen))),
        )?;
        self.family(
            enc,
            "chainprobe_go_heap_live_bytes",
            "Go heap live bytes as the GC pacer sees them (gcController.heapLive).",
            MetricType::Gauge,
            sampled().map(|(p, g, s)| (go_labels(p, g), Value::Gauge(s.heap_live as i64))),
        )?;
        self.family(
            enc,
            "chainprobe_go_heap_goal_bytes",
            "Go heap size at which the next GC cycle is due (gcController.gcPercentHeapGoal).",
            MetricType::Gauge,
            sampled().map(|(p, g, s)| (go_labels(p, g), Value::Gauge(s.heap_goal as i64))),
        )?;
        self.family(
            enc,
            "chainprobe_go_creation_probes_active",
            "1 while the goroutine-creation probes are on for the process, absent while off (see /api/v1/targets for why).",
            MetricType::Gauge,
            self.go_procs().filter(|(_, g)| g.creation.as_ref().is_some_and(|c| c.active)).map(|(p, g)| (go_labels(p, g), Value::Gauge(1))),
        )?;
        self.family(
            enc,
            "chainprobe_go_goroutine_creations",
            "Goroutines created per creating function while the creation probes are on (top N functions).",
            MetricType::Counter,
            self.go_procs().flat_map(|(p, g)| {
                g.creation
                    .iter()
                    .filter(|c| c.active)
                    .flat_map(move |c| c.top.iter().map(move |(f, n)| (with(go_labels(p, g), &[("function", f)]), Value::Counter(*n))))
            }),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ScrapeView {
        ScrapeView {
            version: "0.1.0".into(),
            kernel: "6.1.0".into(),
            procs: vec![
                ProcView {
                    pid: Some(10),
                    comm: "svc".into(),
                    counters: ProcCounters { tcp_connect_ok: 3, tcp_connect_refused: 1, tcp_established_opened: 3, tcp_established_closed: 1, mmap_calls: 2, mmap_bytes: 8192, ..Default::default() },
                    active_connections: 2,
                    failures: vec![(MemSyscall::Mmap, 22, 1)],
                    map_count: Some(40),
                    live: true,
                    exits: vec![],
                    go: None,
                    tls: None,
                    http2: Some({
                        let mut h = crate::http2::Http2State::default();
                        h.frames.insert(("rst_stream", "received", "CANCEL"), 4);
                        h.frames.insert(("goaway", "sent", "NO_ERROR"), 1);
                        h
                    }),
                    pod: Some(PodLabels { namespace: "shop".into(), pod: "cart-1".into(), container: "app".into() }),
                    health: Some(Health { score: 70, signals: vec![crate::health::Signal { name: "goroutines", value: 6000.0, threshold: Some(5000.0), state: crate::health::State::Critical }] }),
                    traced: true,
                    stopped: false,
                },
                ProcView {
                    pid: Some(11),
                    comm: "gone".into(),
                    counters: ProcCounters::default(),
                    active_connections: 0,
                    failures: vec![],
                    map_count: None,
                    go: None,
                    tls: None,
                    http2: None,
                    pod: None,
                    health: None,
                    live: false,
                    exits: vec![(ExitReason::Signal, "SIGKILL".into(), 1)],
                    traced: false,
                    stopped: false,
                },
            ],
            prog_stats: vec![(ProgId::SysExitMmap, ProgStats { events: 5, lost_ringbuf: 0, lost_map_full: 1 })],
            programs: vec![],
            max_map_count: Some(65530),
            dropped_exited: 0,
            decode_errors: 0,
            discovery_dropped: 0,
            go_offsets_sources: Default::default(),
            tracked: 2,
            policy: LabelPolicy::default(),
            limiter: None,
            snapshots: None,
            crashes: None,
            options: SeriesOptions::default(),
            pod_hists: vec![],
            pod_tls: vec![],
        }
    }

    #[test]
    fn renders_contract_names_and_labels() {
        let text = view().render().unwrap();
        for line in [
            r#"chainprobe_tcp_connects_total{pid="10",comm="svc",namespace="shop",pod="cart-1",container="app",result="ok"} 3"#,
            r#"chainprobe_tcp_connects_total{pid="10",comm="svc",namespace="shop",pod="cart-1",container="app",result="refused"} 1"#,
            r#"chainprobe_tcp_active_connections{pid="10",comm="svc",namespace="shop",pod="cart-1",container="app"} 2"#,
            r#"chainprobe_mmap_calls_total{pid="10",comm="svc",namespace="shop",pod="cart-1",container="app"} 2"#,
            r#"chainprobe_mmap_bytes_total{pid="10",comm="svc",namespace="shop",pod="cart-1",container="app"} 8192"#,
            r#"chainprobe_mmap_failures_total{pid="10",comm="svc",namespace="shop",pod="cart-1",container="app",syscall="mmap",errno="EINVAL"} 1"#,
            r#"chainprobe_process_memory_maps{pid="10",comm="svc",namespace="shop",pod="cart-1",container="app"} 40"#,
            r#"chainprobe_process_exits_total{pid="11",comm="gone",reason="signal",code="SIGKILL"} 1"#,
            r#"chainprobe_vm_max_memory_maps 65530"#,
            r#"chainprobe_health_score{pid="10",comm="svc",namespace="shop",pod="cart-1",container="app"} 70"#,
            r#"chainprobe_health_signal_state{pid="10",comm="svc",namespace="shop",pod="cart-1",container="app",signal="goroutines"} 2"#,
            r#"chainprobe_pod_health_score{namespace="shop",pod="cart-1"} 70"#,
            r#"chainprobe_build_info{version="0.1.0",kernel="6.1.0"} 1"#,
            r#"chainprobe_events_lost_total{program="sys_exit_mmap",reason="map_full"} 1"#,
            r#"chainprobe_http2_stream_resets_total{pid="10",comm="svc",namespace="shop",pod="cart-1",container="app",direction="received",code="CANCEL"} 4"#,
            r#"chainprobe_http2_goaways_total{pid="10",comm="svc",namespace="shop",pod="cart-1",container="app",direction="sent",code="NO_ERROR"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(!text.contains(r#"result="timeout""#), "zero counters are not exposed");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn accept_header_picks_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text")), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("text/plain;version=0.0.4")), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text, "curl");
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("text/plain;q=0.9, application/openmetrics-text;q=0.8")), Format::Text);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;q=0, text/plain;q=0")), Format::Text);
        assert_eq!(Format::negotiate(Some("garbage;;;q=x,,")), Format::Text);
    }

    #[test]
    fn text_format_renames_families_like_prometheus() {
        let text = openmetrics_to_text(&view().render().unwrap());
        assert!(text.contains("# TYPE chainprobe_tcp_connects_total counter\n"), "{text}");
        assert!(text.contains("# HELP chainprobe_tcp_connects_total "), "{text}");
        assert!(text.contains("# TYPE chainprobe_build_info gauge\n"), "{text}");
        assert!(text.contains("\nchainprobe_tcp_connects_total{pid=\"10\""), "samples unchanged");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        assert!(!text.contains(" info\n") && !text.contains(" unknown\n"), "{text}");
    }

    fn go_process_view(a: &mut Aggregate, pid: u32, t0: std::time::Instant) -> HashMap<u32, Health> {
        a.on_go_tracked(pid, "go1.27.3", 27, t0);
        for i in 0..50u64 {
            a.on_go_gc(pid, 300_000 + i * 50_000);
            a.on_go_stw(pid, 20_000 + i * 1000, 1);
            a.on_go_stw(pid, 40_000, 2);
        }
        let mut by_state = std::collections::BTreeMap::new();
        for (st, wait) in [("waiting", "chan receive"), ("waiting", "select"), ("waiting", "IO wait"), ("waiting", "GC worker (idle)"), ("runnable", ""), ("running", ""), ("syscall", "")] {
            by_state.insert((st, wait.to_string()), 3);
        }
        a.set_go_sample(pid, crate::goruntime::GoSample { goroutines: 20, by_state: by_state.into(), goidgen: 100, numgc: 50, heap_live: 1 << 20, heap_goal: 4 << 20, breakdown: None, ..Default::default() });
        a.set_map_count(pid, Some(30));
        let signals = crate::health::SIGNALS
            .iter()
            .map(|(name, _, _)| crate::health::Signal { name, value: 0.0, threshold: None, state: crate::health::State::Ok })
            .collect();
        HashMap::from([(pid, Health { score: 100, signals })])
    }

    #[test]
    fn a_go_process_stays_within_its_series_budget() {
        let t0 = std::time::Instant::now();
        let me = std::process::id();
        let mut a = Aggregate::new(std::time::Duration::from_secs(1), 10);
        let health = go_process_view(&mut a, me, t0);
        let text = ScrapeView::new(&a, &health, None, &[], "k").render().unwrap();
        let mine = format!("pid=\"{me}\"");
        let n = text.lines().filter(|l| l.contains(&mine)).count();
        assert!(n <= 30, "{n} series:\n{text}");
        // The GC's own pauses are not series (the API has them); other reasons are.
        assert!(!text.contains("reason=\"gc_mark_termination\""), "{text}");
        a.on_go_stw(me, 30_000, 7);
        let text = ScrapeView::new(&a, &health, None, &[], "k").render().unwrap();
        assert!(text.contains(&format!("chainprobe_go_stw_pauses_total{{{mine},comm=\"unknown\",go_version=\"go1.27.3\",reason=\"read_mem_stats\"}} 1")), "{text}");
        assert!(text.contains(&format!("chainprobe_go_goroutines_by_state{{{mine},comm=\"unknown\",go_version=\"go1.27.3\",state=\"waiting\"}} 12")), "{text}");
        assert!(!text.contains("chainprobe_health_signal_state{"), "ok signals have no series");
        assert!(!text.contains("chainprobe_go_creation_probes_active{"), "absent while off");
        // Wait reasons on request.
        let v = ScrapeView::new(&a, &health, None, &[], "k").with_options(SeriesOptions { goroutine_wait_reasons: true, ..Default::default() });
        assert!(v.render().unwrap().contains("wait_reason=\"chan receive\"} 3"));
    }

    #[test]
    fn short_lived_and_non_go_processes_fold_into_per_comm_series_that_only_grow() {
        use crate::aggregate::{FoldRule, Identity};
        use crate::decode::Event;
        let t0 = std::time::Instant::now();
        let s = std::time::Duration::from_secs;
        let rule = FoldRule { non_go: true, young: s(30), ..FoldRule::OFF };
        let (go_old, old_job, job1, job2, go_young) = (0x7ff0_0001, 0x7ff0_0005, 0x7ff0_0002, 0x7ff0_0003, 0x7ff0_0004);
        let mut a = Aggregate::new(s(1), 100)
            .with_folding(rule)
            .with_identify(Box::new(move |pid| Identity::Live(if pid == go_old { "svc" } else { "job" }.into())));
        let refused = |n| ProcCounters { tcp_connect_refused: n, ..Default::default() };
        // Exec'd now (young): job1, job2, go_young; running before: go_old, old_job.
        for pid in [job1, job2, go_young] {
            a.apply(Event::Exec { tgid: pid, comm: "job".into(), filename: "/job".into(), cgroup_id: 0, cgroup1_id: 0 }, t0);
        }
        a.on_go_tracked(go_old, "go1.27.3", 27, t0);
        a.on_go_tracked(go_young, "go1.27.3", 27, t0);
        let snap = |a: &mut Aggregate, at| {
            let procs = vec![(old_job, refused(16)), (job1, refused(1)), (job2, refused(2)), (go_young, refused(4)), (go_old, refused(8))];
            a.apply_kernel(crate::decode::KernelSnapshot { procs, ..Default::default() }, at)
        };
        snap(&mut a, t0);
        let render = |a: &Aggregate| ScrapeView::new(a, &HashMap::new(), None, &[], "k").render().unwrap();
        let job_refused = |text: &str| -> Vec<String> {
            text.lines().filter(|l| l.starts_with("chainprobe_tcp_connects_total") && l.contains("comm=\"job\"")).map(str::to_string).collect()
        };
        let line = |n: u64| vec![format!(r#"chainprobe_tcp_connects_total{{comm="job",result="refused"}} {n}"#)];
        let text = render(&a);
        assert_eq!(job_refused(&text), line(16), "only the non-Go process running before; the young ones are held: {text}");
        assert!(text.contains(&format!("pid=\"{go_old}\"")), "a Go process running before keeps its own series");
        // A job and the young Go process exit young: folded (the Go one's comm is "job" too).
        a.on_exit(job1, "job".into(), 1 << 8, t0 + s(1));
        a.on_exit(go_young, "job".into(), 2 << 8, t0 + s(2));
        snap(&mut a, t0 + s(2));
        let text = render(&a);
        assert_eq!(job_refused(&text), line(21), "{text}");
        assert!(text.contains(r#"chainprobe_process_exits_total{comm="job",reason="exit",code="1"} 1"#), "{text}");
        assert!(text.contains(r#"chainprobe_go_gc_cycles_total{comm="job",go_version="go1.27.3"} 0"#), "{text}");
        assert!(!text.contains(&format!("pid=\"{go_young}\"")), "{text}");
        // Scraped and past the grace period, the exited processes leave; the fold keeps their counts.
        a.prune_for_scrape(t0 + s(5));
        a.prune_for_scrape(t0 + s(6));
        assert!(a.process(job1).is_none() && a.process(go_young).is_none());
        assert_eq!(job_refused(&render(&a)), line(21));
        // The last ones leave; the fold stays for its retention, then goes.
        a.on_exit(job2, "job".into(), 0, t0 + s(7));
        a.on_exit(old_job, "job".into(), 0, t0 + s(7));
        a.prune_for_scrape(t0 + s(8));
        a.prune_for_scrape(t0 + s(9));
        assert!(a.process(job2).is_none() && a.process(old_job).is_none());
        assert_eq!(job_refused(&render(&a)), line(23));
        a.prune_for_scrape(t0 + s(9) + rule.retention);
        assert!(job_refused(&render(&a)).is_empty());
        assert_eq!(a.take_pruned_folds().len(), 1);
    }

    #[test]
    fn per_pod_histograms_sum_the_pods_processes_departed_ones_included() {
        use crate::aggregate::FoldRule;
        let t0 = std::time::Instant::now();
        let s = std::time::Duration::from_secs;
        let mut a = Aggregate::new(s(1), 100).with_folding(FoldRule { pod_histograms: true, ..FoldRule::OFF });
        let (p1, p2) = (0x7ff1_0001, 0x7ff1_0002);
        for pid in [p1, p2] {
            go_process_view(&mut a, pid, t0);
        }
        let opts = SeriesOptions { histograms: HistogramScope::Pod, ..Default::default() };
        let render = |a: &Aggregate| ScrapeView::new(a, &HashMap::new(), None, &[], "k").with_options(opts).render().unwrap();
        let count = r#"chainprobe_go_gc_duration_seconds_count{comm="unknown"} 100"#;
        let text = render(&a);
        assert!(text.contains(count), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("chainprobe_go_gc_duration_seconds") && l.contains("pid=")), "{text}");
        a.on_exit(p1, "unknown".into(), 0, t0);
        a.prune_for_scrape(t0 + s(2));
        a.prune_for_scrape(t0 + s(3));
        assert!(a.process(p1).is_none());
        assert!(render(&a).contains(count), "the departed process's observations stay");
    }

    #[test]
    fn per_pod_tls_sums_the_pods_processes_departed_ones_included() {
        use crate::aggregate::FoldRule;
        let t0 = std::time::Instant::now();
        let s = std::time::Duration::from_secs;
        let mut a = Aggregate::new(s(1), 100).with_folding(FoldRule { pod_tls: true, ..FoldRule::OFF });
        let (p1, p2) = (0x7ff2_0001, 0x7ff2_0002);
        let ok = |pid: u32, role: u8, failed: u8| crate::tls::test_event(pid, role, failed, 2_000_000);
        for pid in [p1, p2] {
            go_process_view(&mut a, pid, t0);
            a.on_tls(&ok(pid, probe_common::TLS_ROLE_SERVER, 0), t0);
            a.on_tls(&ok(pid, probe_common::TLS_ROLE_SERVER, 1), t0);
        }
        let render = |a: &Aggregate, tls| ScrapeView::new(a, &HashMap::new(), None, &[], "k").with_options(SeriesOptions { tls, ..Default::default() }).render().unwrap();
        let text = render(&a, HistogramScope::Pod);
        // Successful handshakes only, summed over the pod's (here: comm's) processes, no pid.
        let count = r#"chainprobe_tls_handshake_duration_seconds_count{comm="unknown",library="go",role="server"} 2"#;
        assert!(text.contains(count), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("chainprobe_tls_") && (l.contains("pid=") || l.contains("result=\"error\"") && l.contains("duration"))), "{text}");
        assert!(text.contains(r#"chainprobe_tls_handshake_failures_total{comm="unknown",library="go",reason="certificate"} 2"#), "{text}");
        // Per process when asked.
        let per_pid = render(&a, HistogramScope::Process);
        assert!(per_pid.contains(&format!(r#"chainprobe_tls_handshake_duration_seconds_count{{pid="{p1}",comm="unknown",library="go",role="server"}} 1"#)), "{per_pid}");
        // A departed process's handshakes stay in its pod's counters.
        a.on_exit(p1, "unknown".into(), 0, t0);
        a.prune_for_scrape(t0 + s(2));
        a.prune_for_scrape(t0 + s(3));
        assert!(a.process(p1).is_none());
        let text = render(&a, HistogramScope::Pod);
        assert!(text.contains(count), "{text}");
        assert!(text.contains(r#"chainprobe_tls_handshakes_total{comm="unknown",library="go",role="server",result="ok",version="1.3",alpn="none"} 2"#), "{text}");
    }

    #[test]
    fn dropping_pid_sums_series_and_the_cap_refuses_new_ones() {
        let mut v = view();
        // A second process of the same comm: without pid their series merge.
        let mut twin = v.procs[0].clone();
        twin.pid = Some(12);
        twin.counters.mmap_calls = 5;
        v.procs.push(twin);
        v.policy = LabelPolicy::from_config(&crate::k8s::LabelPolicyConfig { drop_labels: vec!["pid".into()], keep_labels: vec![], max_series: 0 }).unwrap();
        let text = v.clone().render().unwrap();
        assert!(text.lines().any(|l| l == r#"chainprobe_mmap_calls_total{comm="svc",namespace="shop",pod="cart-1",container="app"} 7"#), "{text}");
        // Scores are not summed: the worst is kept.
        assert!(text.lines().any(|l| l == r#"chainprobe_health_score{comm="svc",namespace="shop",pod="cart-1",container="app"} 70"#), "{text}");
        assert!(!text.contains("pid=\"10\""));

        let limiter = Arc::new(Mutex::new(SeriesLimiter::new(3)));
        let mut capped = view();
        capped.limiter = Some(limiter.clone());
        let text = capped.render().unwrap();
        let per_process = text.lines().filter(|l| l.contains("pid=\"")).count();
        assert_eq!(per_process, 3, "{text}");
        assert!(limiter.lock().unwrap().dropped_total() > 0);
        assert!(text.contains("chainprobe_series_dropped_total"));
    }
}
