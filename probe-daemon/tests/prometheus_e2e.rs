//! End to end with a real Prometheus server (Debian's `prometheus`, on 127.0.0.1 with a temp data
//! dir): it scrapes a real `chainprobe run`, loads deploy/'s alert rules, and a PromQL query
//! through its HTTP API returns chainprobe's series for a process this test starts. Also:
//! `promtool check metrics` is clean on chainprobe's exposition. Needs root (eBPF) and
//! tests/tools/install.sh (prometheus, promtool); a missing tool fails the test.
mod common;

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{fork_child, free_port, Daemon, TempDir};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
        .or_else(|| Some(PathBuf::from("/usr/bin").join(name)).filter(|p| p.is_file()));
    found.unwrap_or_else(|| {
        panic!("{name} not found: install the test tools with `bash tests/tools/install.sh` (Debian package prometheus)")
    })
}

/// A Prometheus server, SIGTERM then SIGKILL on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        common::stop_child(&mut self.child);
    }
}

impl Prometheus {
    fn log_text(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn get(&self, path_and_query: &str) -> Value {
        let url = format!("http://{}{}", self.addr, path_and_query);
        let resp = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
            .get(&url)
            .send()
            .unwrap_or_else(|e| panic!("GET {url}: {e}\n--- prometheus log:\n{}", self.log_text()));
        let status = resp.status();
        let body = resp.text().unwrap_or_default();
        assert!(status.is_success(), "GET {url}: {status}\n{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
    }

    fn query(&self, promql: &str) -> Vec<Value> {
        let v = self.get(&format!("/api/v1/query?query={}", encode(promql)));
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn start_prometheus(dir: &Path, target: SocketAddr) -> Prometheus {
    let rules = repo().join("deploy/prometheus/chainprobe-rules.yaml");
    assert!(rules.is_file(), "{} missing", rules.display());
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: chainprobe\n    static_configs:\n      - targets: ['{target}']\n        labels:\n          node: e2e-node\n",
            rules.display()
        ),
    )
    .expect("write prometheus.yml");
    let (ok, out) = run(Command::new(tool("promtool")).arg("check").arg("config").arg(&cfg));
    assert!(ok, "promtool check config:\n{out}");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let log = dir.join("prometheus.log");
    let logf = std::fs::File::create(&log).expect("log");
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--storage.tsdb.retention.time=1h")
        .stdin(Stdio::null())
        .stdout(logf.try_clone().expect("dup"))
        .stderr(logf)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start prometheus: {e} (bash tests/tools/install.sh)"));
    let mut p = Prometheus { child, addr, log };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(st)) = p.child.try_wait() {
            panic!("prometheus exited ({st}):\n{}", p.log_text());
        }
        if let Ok((200, _)) = common::http_get(addr, "/-/ready") {
            return p;
        }
        assert!(Instant::now() < deadline, "prometheus not ready within 60 s:\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run(cmd: &mut Command) -> (bool, String) {
    let o = cmd.output().unwrap_or_else(|e| panic!("cannot run {:?}: {e} (bash tests/tools/install.sh)", cmd.get_program()));
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// Kills and reaps a forked child on drop.
struct Kid(i32);
impl Drop for Kid {
    fn drop(&mut self) {
        // SAFETY: our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            let mut st = 0;
            libc::waitpid(self.0, &mut st, 0);
        }
    }
}

/// Runs `cmd` with `input` on its standard input: (exit status success, stdout + stderr).
fn run_with_input(cmd: &mut Command, input: &str) -> (bool, String) {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the checker");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("feed the checker");
    let out = child.wait_with_output().expect("the checker");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Parses `om` with the OpenMetrics parser of the Python client library (a second, independent
/// implementation of the format); Err holds its complaint.
fn openmetrics_parse(om: &str) -> Result<usize, String> {
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nprint(sum(1 for _ in p(sys.stdin.read())))\n";
    let (ok, out) = run_with_input(Command::new("python3").args(["-c", script]), om);
    if !ok {
        return Err(format!("{out} (install the test tools with `bash tests/tools/install.sh`)"));
    }
    out.trim().parse().map_err(|e| format!("{e}: {out}"))
}

const K: usize = 7;

#[test]
fn prometheus_scrapes_chainprobe_and_loads_the_alerts() {
    let promtool = tool("promtool");
    tool("prometheus");
    // The fixture's mmaps are counted on any kernel (fexit, else syscall tracepoints).
    let d = Daemon::start("prom-e2e", "memory_hooks = \"fexit-or-tracepoints\"\n");

    // A fixture process: K anonymous mmaps, then it waits to be killed.
    let child = fork_child(|| unsafe {
        for _ in 0..K {
            libc::mmap(std::ptr::null_mut(), 8192, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
        }
        let ts = libc::timespec { tv_sec: 1, tv_nsec: 0 };
        for _ in 0..180 {
            libc::nanosleep(&ts, std::ptr::null_mut());
        }
        0
    });
    let _kid = Kid(child);
    let pid = child.to_string();
    // Wait for every per-process family of the child (map count included) so the lint below
    // sees all of them.
    d.wait_metrics("the child's mmaps and map count", Duration::from_secs(20), |m| {
        m.value("chainprobe_mmap_calls_total", &[("pid", &pid)]) >= K as f64 && m.has("chainprobe_process_memory_maps", &[("pid", &pid)])
    });

    // Both expositions are clean: the classic text format (what a plain GET gets) for promtool,
    // OpenMetrics (what Prometheus asks for) for an OpenMetrics parser.
    let (status, body) = d.get("/metrics").expect("scrape");
    assert_eq!(status, 200);
    assert!(!body.contains("# EOF"), "a plain GET gets the text format");
    let (_, om) = d.get_openmetrics();
    assert!(om.trim_end().ends_with("# EOF"), "OpenMetrics exposition must end with # EOF");
    let families = openmetrics_parse(&om).unwrap_or_else(|e| panic!("the OpenMetrics exposition does not parse: {e}\n{om}"));
    assert!(families >= 20, "{families} families");
    let (ok, text) = run_with_input(Command::new(&promtool).args(["check", "metrics"]), &body);
    // Asserted at the end, so that the Prometheus half runs (and reports) either way.
    let lint_clean = ok && text.trim().is_empty();

    let dir = TempDir::new("prometheus");
    let prom = start_prometheus(&dir.0, d.addr);

    // The alert rules are loaded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let names = loop {
        let v = prom.get("/api/v1/rules?type=alert");
        let names: Vec<String> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["name"].as_str().map(String::from))
            .collect();
        if names.len() >= 6 || Instant::now() > deadline {
            break names;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for a in [
        "ChainprobeHealthScoreLow",
        "ChainprobeSnapshotFailures",
        "ChainprobeAttachFailures",
        "ChainprobeEventsLost",
        "ChainprobeTargetDown",
        "ChainprobeSeriesDropped",
    ] {
        assert!(names.iter().any(|n| n == a), "alert {a} not loaded; loaded: {names:?}\n{}", prom.log_text());
    }

    // The target is up and the fixture's series are queryable through Prometheus.
    let deadline = Instant::now() + Duration::from_secs(30);
    let q = format!("chainprobe_mmap_calls_total{{job=\"chainprobe\", pid=\"{pid}\"}}");
    let series = loop {
        let r = prom.query(&q);
        let up = prom.query("up{job=\"chainprobe\"}");
        if !r.is_empty() && up.first().is_some_and(|s| s["value"][1] == "1") {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no {q} in Prometheus within 30 s; targets: {}\n{}",
            prom.get("/api/v1/targets"),
            prom.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(series.len(), 1, "{series:?}");
    let s = &series[0];
    assert_eq!(s["metric"]["pid"], pid.as_str());
    assert_eq!(s["metric"]["node"], "e2e-node");
    let v: f64 = s["value"][1].as_str().and_then(|v| v.parse().ok()).expect("sample value");
    assert!(v >= K as f64, "{v} < {K}: {s}");

    // Every rule evaluates without error against real chainprobe data.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = prom.get("/api/v1/rules?type=alert");
        let rules: Vec<Value> =
            v["data"]["groups"].as_array().into_iter().flatten().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect();
        let bad: Vec<&Value> = rules.iter().filter(|r| r["health"] != "ok").collect();
        if bad.is_empty() {
            // No alert fires for a healthy run (the target is up, nothing failed to attach).
            let firing: Vec<&Value> = rules.iter().filter(|r| r["state"] == "firing").collect();
            assert!(firing.is_empty(), "alerts firing on a healthy chainprobe: {firing:?}");
            break;
        }
        assert!(Instant::now() < deadline, "rules not healthy: {bad:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(prom);
    assert!(lint_clean, "promtool check metrics is not clean:\n{text}\n--- exposition (text format):\n{body}");
}
