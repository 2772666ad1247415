//! Shared helpers of the integration tests (what benchmarks share too is in the test-support
//! crate): start the real daemon binary, scrape it, parse the exposition, and run exact workloads in forked children (raw syscalls only, so their counts are
//! exactly what the test asks for).
#![allow(dead_code)]
use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

#[allow(unused_imports)]
pub use test_support::{fixtures_root, go_versions, stop_child as stop_child_within, tail, GoProgram};

/// Daemons evaluate every Go process on the machine: the tests of one file that start daemons
/// take this, one at a time.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The directory of the fixtures built with Go `version` ("1.19", "1.27" or a full version).
pub fn go_version_dir(version: &str) -> PathBuf {
    test_support::go_version_dir(version).unwrap_or_else(|e| panic!("{e}"))
}

/// The built-in offset tables (what the daemon embeds).
pub fn builtin_go_tables() -> serde_json::Value {
    serde_json::from_str(goinspect::tables::TABLES_JSON).unwrap()
}

/// The offsets and code references the runtime reader and its checks use.
pub const RUNTIME_KEYS: &[&str] = &[
    "g.goid", "g.atomicstatus", "g.waitreason", "g.stack", "g.sched", "stack.lo", "stack.hi", "gobuf.sp", "gobuf.pc",
    "schedt.goidgen", "schedt.ngsys", "mstats.numgc", "mstats.pause_ns", "mstats.pause_total_ns",
    "gcControllerState.heapLive", "gcControllerState.gcPercentHeapGoal",
    "schedt.gFree.n", "schedt.gFree.stack.size", "schedt.gFree.noStack.size", "p.gFree.n", "p.gFree.size",
];

/// (minor, its amd64 table, the table the daemon falls back to without it) for the newest minor
/// of the matrix whose nearest table has the same runtime layout: hiding its own table must give
/// the same numbers.
pub fn minor_with_a_lookalike_neighbour(tables: &serde_json::Value) -> (u32, String, String) {
    let t = tables["tables"].as_object().unwrap();
    let same = |a: &serde_json::Value, b: &serde_json::Value| {
        RUNTIME_KEYS.iter().all(|k| a["offsets"][k] == b["offsets"][k]) && a["code_refs"] == b["code_refs"]
    };
    let mut minors: Vec<u32> = go_versions().iter().map(|v| v.split('.').nth(1).unwrap().parse().unwrap()).filter(|m| *m >= 21).collect();
    minors.sort_unstable();
    for &m in minors.iter().rev() {
        let own = format!("1.{m}/amd64");
        // The daemon's choice: the closest minor (1.20 format), the newer one on a tie.
        let mut near: Vec<u32> = minors.iter().copied().filter(|&x| x != m).collect();
        near.sort_by_key(|&x| (x.abs_diff(m), std::cmp::Reverse(x)));
        let fallback = format!("1.{}/amd64", near[0]);
        if t.contains_key(&own) && t.keys().filter(|k| k.starts_with(&format!("1.{m}."))).count() == 0 && same(&t[&own], &t[&fallback]) {
            return (m, own, fallback);
        }
    }
    panic!("no minor of the matrix has a neighbour with the same runtime layout: pick another pair for this test");
}

/// Writes `tables` where a daemon can be pointed at it (`CHAINPROBE_GO_OFFSETS_FILE`).
pub fn write_go_tables(dir: &TempDir, tables: &serde_json::Value) -> PathBuf {
    let file = dir.0.join("go-offsets.json");
    std::fs::write(&file, serde_json::to_string(tables).unwrap()).unwrap();
    file
}

/// Fixture `program` built with Go `version` as `variant`; fails when it was not built.
pub fn go_fixture(version: &str, variant: &str, program: &str) -> PathBuf {
    let p = go_version_dir(version).join(variant).join(program);
    assert!(p.is_file(), "missing fixture {}: run `cargo xtask fixtures`", p.display());
    p
}

/// A running `chainprobe run`, killed (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    inner: test_support::Daemon,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: TempDir,
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("chainprobe-test-{tag}-{}-{}", std::process::id(), nanos()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

impl Daemon {
    /// Starts the daemon with `extra_toml` appended to a test config (fast drains, 1 s grace)
    /// and waits until /readyz says ready.
    pub fn start(tag: &str, extra_toml: &str) -> Daemon {
        Self::start_with(tag, extra_toml, &[])
    }

    /// As [`Daemon::start`], with environment variables. Snapshots go to the test's directory
    /// unless `extra_toml` has a [snapshot] section (which must then name a dir).
    pub fn start_with(tag: &str, extra_toml: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = TempDir::new(tag);
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Per-pid series for every process (the tests follow processes by pid; folding has its
        // own tests, which set the fold_ settings, and get the default TLS scope too). A [metrics] section of the test's gets these
        // too (TOML allows one).
        // The same for TLS (per pod by default): per pid unless the test chooses.
        let metrics_defaults = match (extra_toml.contains("fold_"), extra_toml.contains("tls =")) {
            (true, _) => "scrape_interval_seconds = 1.0\n",
            (false, true) => "scrape_interval_seconds = 1.0\nfold_non_go = false\nfold_young_seconds = 0.0\n",
            (false, false) => "scrape_interval_seconds = 1.0\nfold_non_go = false\nfold_young_seconds = 0.0\ntls = \"process\"\n",
        };
        let (metrics, extra_toml) = if extra_toml.contains("[metrics]\n") {
            (String::new(), extra_toml.replacen("[metrics]\n", &format!("[metrics]\n{metrics_defaults}"), 1))
        } else {
            (format!("[metrics]\n{metrics_defaults}"), extra_toml.to_string())
        };
        let toml = format!(
            "[server]\nlisten = \"{addr}\"\n{metrics}[collect]\ndrain_interval_seconds = 0.2\nmap_count_interval_seconds = 0.5\n{extra_toml}"
        );
        // Tests poll the API faster than the default rate limit allows (it has its own test).
        let toml = if extra_toml.contains("[api]") {
            toml
        } else {
            format!("{toml}\n[api]\nrate_limit_per_second = 1000.0\nrate_limit_burst = 1000\n")
        };
        let toml = if extra_toml.contains("[snapshot]") {
            toml
        } else {
            format!("{toml}\n[snapshot]\ndir = \"{}\"\n", dir.0.join("snapshots").display())
        };
        let inner = test_support::Daemon::launch(Path::new(env!("CARGO_BIN_EXE_chainprobe")), &dir.0, addr, &toml, env, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        Daemon { addr, log: inner.log.clone(), inner, _dir: dir }
    }

    /// The test's own directory (config, log, snapshots).
    pub fn dir(&self) -> &std::path::Path {
        &self._dir.0
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// A plain HTTP/1.1 GET; returns (status, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.addr, path)
    }

    /// `/metrics` as Prometheus asks for it (OpenMetrics preferred): (response headers, body).
    pub fn get_openmetrics(&self) -> (String, String) {
        let (status, head, body) = http_get_with(self.addr, "/metrics", &[("Accept", PROMETHEUS_ACCEPT)]).expect("scrape /metrics");
        assert_eq!(status, 200, "{body}");
        (head, body)
    }

    pub fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics").expect("scrape /metrics");
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }

    /// Scrapes until `pred` holds (bounded); returns the last scrape.
    pub fn wait_metrics(&self, what: &str, timeout: Duration, pred: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics();
            if pred(&m) {
                return m;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; last scrape:\n{}\n--- daemon log tail:\n{}", m.text, tail(&self.log_text(), 30));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }
}

/// SIGTERM, up to 10 s to exit, then SIGKILL; always reaped.
pub fn stop_child(child: &mut Child) {
    stop_child_within(child, Duration::from_secs(10));
}

/// The Accept header Prometheus scrapes with.
pub const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_get_with(addr, path, &[]).map(|(status, _, body)| (status, body))
}

/// A plain HTTP/1.1 GET with extra request headers; returns (status, response headers, body).
pub fn http_get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, String, String)> {
    test_support::http(addr, "GET", path, headers, "", Duration::from_secs(10))
}

/// One parsed sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (head, value) = match line.rsplit_once(' ') {
                Some(x) => x,
                None => continue,
            };
            let (name, labels) = match head.find('{') {
                Some(i) => (&head[..i], parse_labels(&head[i + 1..head.len() - 1])),
                None => (head, BTreeMap::new()),
            };
            if let Ok(v) = value.parse::<f64>() {
                samples.push(Sample { name: name.to_string(), labels, value: v });
            }
        }
        Metrics { text: text.to_string(), samples }
    }

    /// Value of the one sample named `name` whose labels include all of `labels`; 0 when absent
    /// (chainprobe does not expose zero counters).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let hits: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect();
        assert!(hits.len() <= 1, "{name} {labels:?} matches {} samples: {hits:?}", hits.len());
        hits.first().map(|s| s.value).unwrap_or(0.0)
    }

    /// The sum of the samples named `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.value)
            .sum()
    }

    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.samples
            .iter()
            .any(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
    }

    pub fn pids(&self) -> std::collections::BTreeSet<String> {
        self.samples.iter().filter_map(|s| s.labels.get("pid").cloned()).collect()
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').to_string();
        let after = &rest[eq + 2..];
        let mut end = 0;
        let bytes = after.as_bytes();
        while end < bytes.len() {
            if bytes[end] == b'\\' {
                end += 2;
                continue;
            }
            if bytes[end] == b'"' {
                break;
            }
            end += 1;
        }
        out.insert(key, after[..end.min(after.len())].to_string());
        rest = after.get(end + 1..).unwrap_or("");
    }
    out
}

/// Forks a child that runs `f` (which must only make raw syscalls: no allocation, no locks) and
/// then `_exit`s with its return value.
pub fn fork_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only runs `f` (raw syscalls by contract) and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = f();
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Waits for a child; returns the raw wait status.
pub fn wait_child(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    status
}

/// The `go` command of the toolchain that built the fixtures of `minor`.
pub fn go_tool(minor: &str) -> PathBuf {
    let ver = go_version_dir(minor).file_name().unwrap().to_string_lossy().to_string();
    if ver.starts_with("1.19") {
        return PathBuf::from("/usr/lib/go-1.19/bin/go");
    }
    let cache = std::env::var_os("CHAINPROBE_GO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/chainprobe/go"));
    cache.join(ver).join("go/bin/go")
}

/// `go tool pprof <args> FILE`: its output, asserting it could read the file.
pub fn pprof(minor: &str, args: &[&str], file: &std::path::Path) -> String {
    let out = std::process::Command::new(go_tool(minor))
        .args(["tool", "pprof", "-symbolize=none"])
        .args(args)
        .arg(file)
        .env("PPROF_TMPDIR", std::env::temp_dir())
        .output()
        .expect("run go tool pprof");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "go tool pprof {args:?} {} failed:\n{text}", file.display());
    text
}

/// A memory cgroup made for one test (v1 `memory.limit_in_bytes` or v2 `memory.max`), removed
/// when dropped.
pub struct MemCgroup {
    pub dir: std::path::PathBuf,
    /// Directories to remove after `dir` (parents created for a nested layout), innermost first.
    parents: Vec<std::path::PathBuf>,
}

impl MemCgroup {
    /// A cgroup-v1 memory cgroup at `<own cgroup>/<rel...>` (no limit), e.g. a kubepods layout.
    pub fn nested_v1(rel: &[String]) -> MemCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let path = own
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
                ctrl.split(',').any(|c| c == "memory").then(|| path.to_string())
            })
            .expect("this test needs the cgroup-v1 memory controller (as on this project's machines)");
        let mut dir = std::path::Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
        let mut parents = Vec::new();
        for c in rel {
            dir = dir.join(c);
            std::fs::create_dir_all(&dir).expect("create cgroup");
            parents.push(dir.clone());
        }
        parents.pop();
        parents.reverse();
        MemCgroup { dir, parents }
    }

    pub fn create(tag: &str, limit: u64) -> MemCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let name = format!("chainprobe-test-{tag}-{}", std::process::id());
        // cgroup v1 memory controller
        if let Some(path) = own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
            ctrl.split(',').any(|c| c == "memory").then(|| path.to_string())
        }) {
            let dir = std::path::Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')).join(&name);
            std::fs::create_dir_all(&dir).expect("create v1 memory cgroup");
            std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).expect("set limit");
            let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), limit.to_string());
            return MemCgroup { dir, parents: Vec::new() };
        }
        // cgroup v2
        let path = own.lines().find_map(|l| l.strip_prefix("0::")).expect("no memory cgroup (v1 or v2) for this process");
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            let parent = std::path::Path::new(root).join(path.trim_start_matches('/'));
            let ctrls = std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
            if ctrls.split_whitespace().any(|c| c == "memory") {
                let dir = parent.join(&name);
                std::fs::create_dir_all(&dir).expect("create v2 cgroup");
                std::fs::write(dir.join("memory.max"), limit.to_string()).expect("set memory.max");
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                return MemCgroup { dir, parents: Vec::new() };
            }
        }
        panic!("this machine has no usable memory cgroup controller (v1 memory or v2 memory in subtree_control): the OOM test needs one");
    }
}

impl MemCgroup {
    /// Puts `cmd`'s process into this cgroup before it executes (as a container runtime does).
    pub fn place(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let procs = std::ffi::CString::new(self.dir.join("cgroup.procs").to_string_lossy().into_owned()).expect("path");
        // SAFETY: between fork and exec only async-signal-safe calls (open, write, close).
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for p in &self.parents {
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// Traces the main thread of `pid` from a forked child (PTRACE_SEIZE), passing every signal
/// on, until the tracee exits or the file `stop` exists (then it detaches). The tracer's pid.
pub fn trace(pid: u32, stop: &Path) -> i32 {
    let stop = std::ffi::CString::new(stop.to_string_lossy().into_owned()).unwrap();
    // SAFETY: raw syscalls only in the child (fork_child's contract).
    fork_child(move || unsafe {
        let pid = pid as libc::pid_t;
        if libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) != 0 {
            return 10;
        }
        loop {
            if libc::access(stop.as_ptr(), libc::F_OK) == 0 {
                // Detaching needs a stopped tracee: interrupt, wait, detach.
                libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0);
                let mut st = 0;
                libc::waitpid(pid, &mut st, libc::__WALL);
                libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
                return 0;
            }
            let mut st = 0;
            let r = libc::waitpid(pid, &mut st, libc::__WALL | libc::WNOHANG);
            if r < 0 || (r == pid && (libc::WIFEXITED(st) || libc::WIFSIGNALED(st))) {
                return 0;
            }
            if r == pid && libc::WIFSTOPPED(st) {
                let sig = if (st >> 16) == libc::PTRACE_EVENT_STOP { 0 } else { libc::WSTOPSIG(st) };
                libc::ptrace(libc::PTRACE_CONT, pid, 0, sig);
                continue;
            }
            libc::usleep(1000);
        }
    })
}
