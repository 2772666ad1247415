//! Health rules and snapshots end to end: the real daemon, the `leaky` Go fixture
//! (tests/fixtures/go/src/leaky, built by `cargo xtask fixtures`), real pprof endpoints, the
//! out-of-process goroutine dump, and `go tool pprof` reading what was written.
mod common;

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{pprof, serial, Daemon};
use serde_json::Value;

const TOKEN: &str = "test-token-7f3a";

/// Tests poll the API faster than the default rate limit allows (it has its own test).
const FAST_API: &str = "[api]\nrate_limit_per_second = 1000.0\nrate_limit_burst = 1000\n";

/// Fast evaluations and a low goroutine threshold: 400 goroutines are critical.
const HEALTH: &str = "[api]\nrate_limit_per_second = 1000.0\nrate_limit_burst = 1000\n[go]\nread_interval_seconds = 0.2\ncreation_probes = \"manual\"\n[health]\ninterval_seconds = 0.5\ndegraded_interval_seconds = 0.5\n[health.signals.goroutines]\nwarn = 200.0\ncritical = 400.0\n";

fn leaky_path(minor: &str, variant: &str) -> PathBuf {
    common::go_fixture(minor, variant, "leaky")
}

/// A running leaky (see its main.go for the commands); `port` is its pprof port (0 without).
struct Leaky {
    g: common::GoProgram,
    port: u16,
}

impl Leaky {
    fn start(path: &Path, pprof: bool) -> Leaky {
        let mut cmd = Command::new(path);
        if pprof {
            cmd.args(["-pprof", "127.0.0.1:0"]);
        }
        Self::spawn(cmd)
    }

    fn spawn(cmd: Command) -> Leaky {
        let g = common::GoProgram::spawn("leaky", cmd);
        let port = g.ready.get(1).and_then(|p| p.parse().ok()).expect("leaky prints its pprof port");
        Leaky { g, port }
    }
}

impl std::ops::Deref for Leaky {
    type Target = common::GoProgram;
    fn deref(&self) -> &common::GoProgram {
        &self.g
    }
}

impl std::ops::DerefMut for Leaky {
    fn deref_mut(&mut self) -> &mut common::GoProgram {
        &mut self.g
    }
}

/// The on-call API over HTTP.
struct Api {
    base: String,
    http: reqwest::blocking::Client,
    token: Option<String>,
}

impl Api {
    fn new(d: &Daemon, token: Option<&str>) -> Api {
        Api {
            base: format!("http://{}", d.addr),
            http: reqwest::blocking::Client::builder().timeout(Duration::from_secs(20)).build().unwrap(),
            token: token.map(str::to_string),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<String>) -> (u16, Vec<u8>) {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "POST" => self.http.post(&url).header("content-type", "application/json").body(body.unwrap_or_default()),
            _ => self.http.get(&url),
        };
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (resp.status().as_u16(), resp.bytes().unwrap().to_vec())
    }

    fn json(&self, method: &str, path: &str, body: Option<String>) -> (u16, Value) {
        let (s, b) = self.call(method, path, body);
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    fn snapshots(&self) -> Vec<Value> {
        let (s, v) = self.json("GET", "/api/v1/snapshots", None);
        assert_eq!(s, 200, "{v}");
        v["snapshots"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until chainprobe tracks `pid` as a Go process.
    fn wait_tracked(&self, pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, v) = self.json("GET", "/api/v1/targets", None);
            if v["targets"].as_array().into_iter().flatten().any(|t| t["pid"] == pid && t["runtime_reads"] == "ok") {
                return;
            }
            assert!(Instant::now() < deadline, "process {pid} not tracked within 15 s: {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn request(&self, body: Value) -> String {
        let (s, v) = self.json("POST", "/api/v1/snapshots", Some(body.to_string()));
        assert_eq!(s, 202, "{v}");
        assert_eq!(v["status"], "pending");
        v["id"].as_str().unwrap().to_string()
    }

    /// Waits until snapshot `id` is done or failed.
    fn wait_finished(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, v) = self.json("GET", &format!("/api/v1/snapshots/{id}"), None);
            assert_eq!(s, 200, "{v}");
            if v["status"] == "done" || v["status"] == "failed" {
                return v;
            }
            assert!(Instant::now() < deadline, "snapshot {id} still {} after 30 s", v["status"]);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn snapshot_dir(d: &Daemon) -> PathBuf {
    d.dir().join("snapshots")
}

fn for_pid(list: &[Value], pid: u32) -> Vec<Value> {
    list.iter().filter(|s| s["pid"] == pid).cloned().collect()
}

#[test]
fn a_breach_takes_one_heap_and_one_goroutine_snapshot_and_the_cooldown_holds() {
    let _g = serial();
    let d = Daemon::start("snap-rule", HEALTH);
    let api = Api::new(&d, None);
    let mut app = Leaky::start(&leaky_path("1.27", "default"), true);
    api.wait_tracked(app.pid);
    assert!(api.snapshots().is_empty());
    let n = app.cmd("leak 600")[0];
    assert!(n >= 600);

    // The rule needs 3 critical evaluations (0.5 s apart), then the snapshot is taken.
    let deadline = Instant::now() + Duration::from_secs(20);
    let snap = loop {
        let mine = for_pid(&api.snapshots(), app.pid);
        if let Some(s) = mine.iter().find(|s| s["status"] == "done" || s["status"] == "failed") {
            break s.clone();
        }
        assert!(Instant::now() < deadline, "no snapshot within 20 s:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(snap["status"], "done", "{snap}");
    assert_eq!(snap["trigger"], "rule");
    assert_eq!(snap["rule"], "critical");
    assert_eq!(snap["comm"], "leaky");
    assert!(snap["goroutines"].as_u64().unwrap() >= 600, "{snap}");
    let signals = snap["health"]["signals"].as_array().unwrap();
    assert!(signals.iter().any(|s| s["name"] == "goroutines" && s["state"] == "critical"), "{snap}");
    for kind in ["heap", "goroutine"] {
        let f = &snap["files"][kind];
        assert!(f["source"].as_str().unwrap().starts_with("pprof-http 127.0.0.1:"), "{snap}");
        let name = f["file"].as_str().unwrap();
        assert!(name.starts_with("leaky_") && name.ends_with(&format!("_{}.{kind}.pb.gz", snap["goroutines"])), "{name}");
        let path = snapshot_dir(&d).join(name);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), f["bytes"].as_u64().unwrap());
        let top = pprof("1.27", &["-top"], &path);
        if kind == "goroutine" {
            assert!(top.contains("main.leakedWorker"), "{top}");
        } else {
            assert!(top.contains("Type: inuse_space"), "{top}");
        }
    }
    // On disk within 2 s of the breach (the snapshot is queued in the breaching evaluation).
    let summary = snapshot_dir(&d).join(snap["files"]["goroutine"]["file"].as_str().unwrap().replace(".goroutine.pb.gz", ".summary.json"));
    let written_ms = std::fs::metadata(&summary).unwrap().modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let breach_to_disk = written_ms.saturating_sub(snap["created_ms"].as_u64().unwrap());
    assert!(breach_to_disk <= 2000, "breach → files took {breach_to_disk} ms");

    // The rule clears (goroutines back to normal), breaches again, and the cooldown refuses it.
    app.cmd("free");
    // The rule clears after 3 evaluations (0.5 s apart) with no critical signal.
    let mut calm_since: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while calm_since.is_none_or(|t| t.elapsed() < Duration::from_secs(3)) {
        let (_, t) = api.json("GET", "/api/v1/targets", None);
        let me = t["targets"].as_array().unwrap().iter().find(|t| t["pid"] == app.pid).cloned().unwrap_or_default();
        let critical = me["health"]["signals"].as_array().is_none_or(|s| s.iter().any(|s| s["state"] == "critical"));
        calm_since = if critical { None } else { calm_since.or(Some(Instant::now())) };
        assert!(Instant::now() < deadline, "the rule never cleared: {me}");
        std::thread::sleep(Duration::from_millis(200));
    }
    app.cmd("leak 600");
    let m = d.wait_metrics("a refused rule snapshot", Duration::from_secs(20), |m| {
        m.has("chainprobe_snapshots_total", &[("trigger", "rule"), ("kind", "heap"), ("result", "refused")])
    });
    assert_eq!(for_pid(&api.snapshots(), app.pid).len(), 1, "exactly one snapshot");
    assert!(d.log_text().contains("snapshot cooldown"), "the refusal is logged with its reason");
    assert_eq!(m.value("chainprobe_snapshots_total", &[("trigger", "rule"), ("kind", "heap"), ("result", "ok")]), 1.0);
    assert_eq!(m.value("chainprobe_snapshots_total", &[("trigger", "rule"), ("kind", "goroutine"), ("result", "ok")]), 1.0);
    let pid = app.pid.to_string();
    assert_eq!(m.value("chainprobe_health_signal_state", &[("pid", &pid), ("signal", "goroutines")]), 2.0);
    assert!(m.value("chainprobe_health_score", &[("pid", &pid)]) <= 70.0);
    assert_eq!(m.value("chainprobe_snapshot_circuit_open", &[]), 0.0);
    assert_eq!(m.value("chainprobe_snapshots_stored", &[]), 1.0);
    // /api/v1/targets shows the health behind the score.
    let (_, t) = api.json("GET", "/api/v1/targets", None);
    let me = t["targets"].as_array().unwrap().iter().find(|t| t["pid"] == app.pid).unwrap().clone();
    assert!(me["health"]["score"].as_u64().unwrap() <= 70, "{me}");
    let g = me["health"]["signals"].as_array().unwrap().iter().find(|s| s["name"] == "goroutines").unwrap().clone();
    assert_eq!(g["threshold"], 400.0);
    assert_eq!(g["state"], "critical");
}

#[test]
fn stripped_binary_without_pprof_gets_an_out_of_process_goroutine_profile() {
    let _g = serial();
    let d = Daemon::start("snap-stripped", HEALTH);
    let api = Api::new(&d, None);
    // Every Go minor, as release builds come: `-s -w`, and externally linked PIE `-s -w`
    // (alternating, to keep the test short).
    for (i, minor) in common::go_versions().into_iter().enumerate() {
        let variant = if i % 2 == 0 { "stripped" } else { "pie-ext-stripped" };
        let mut app = Leaky::start(&leaky_path(minor, variant), false);
        api.wait_tracked(app.pid);
        app.cmd("leak 500");
        let deadline = Instant::now() + Duration::from_secs(20);
        let snap = loop {
            if let Some(s) = for_pid(&api.snapshots(), app.pid).into_iter().find(|s| s["status"] == "done" || s["status"] == "failed") {
                break s;
            }
            assert!(Instant::now() < deadline, "go{minor}: no snapshot within 20 s:\n{}", d.log_text());
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(snap["status"], "done", "{snap}");
        assert_eq!(snap["files"]["goroutine"]["source"], "proc-mem", "{snap}");
        // The heap profile too, from the runtime's memory-profile buckets (issue #16).
        assert_eq!(snap["files"]["heap"]["source"], "proc-mem", "{snap}");
        // (A small program may have no sampled allocation yet: zero buckets, as Go's own would.)
        assert!(snap["heap_profile"]["buckets"].as_u64().is_some(), "{snap}");
        let heap = snapshot_dir(&d).join(snap["files"]["heap"]["file"].as_str().unwrap());
        let top = pprof(minor, &["-sample_index=alloc_space", "-top"], &heap);
        assert!(top.contains("Type: alloc_space"), "go{minor}: heap profile\n{top}");
        assert!(snap["heap"]["heap_live_bytes"].as_u64().unwrap() > 0, "memstats-style heap numbers: {snap}");
        assert!(snap["heap"]["heap_goal_bytes"].as_u64().unwrap() > 0, "{snap}");
        assert_eq!(snap["goroutines"].as_u64().unwrap(), app.cmd("count")[0] as u64, "{snap}");
        let path = snapshot_dir(&d).join(snap["files"]["goroutine"]["file"].as_str().unwrap());
        let top = pprof(minor, &["-top"], &path);
        // Every leaked goroutine, under its start function, with the function that created it.
        let line = top.lines().find(|l| l.trim_end().ends_with("main.leakedWorker")).unwrap_or_else(|| panic!("go{minor}:\n{top}"));
        let cum: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
        assert!(cum >= 500, "go{minor}: {line}\n{top}");
        let traces = pprof(minor, &["-traces"], &path);
        assert!(traces.contains("created by main.leakMany"), "go{minor}:\n{traces}");
        assert!(traces.contains("runtime.gopark") && traces.contains("chan receive"), "parked stacks unwound, wait reason labelled:\n{traces}");
        app.cmd("free");
    }
}

#[test]
fn pprof_bound_to_loopback_in_another_network_namespace_is_fetched() {
    let _g = serial();
    let d = Daemon::start("snap-netns", FAST_API);
    let api = Api::new(&d, None);
    let leaky = leaky_path("1.27", "default");
    // unshare execs sh, which execs leaky: one pid, in a namespace of its own with only loopback.
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "sh", "-c", &format!("ip link set lo up && exec {} -pprof 127.0.0.1:0", leaky.display())]);
    let app = Leaky::spawn(cmd);
    let ns = |p: &str| std::fs::metadata(format!("/proc/{p}/ns/net")).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    assert_ne!(ns(&app.pid.to_string()), ns("self"), "the fixture runs in another network namespace");
    assert!(std::net::TcpStream::connect(("127.0.0.1", app.port)).is_err(), "its pprof port is not reachable from here");
    api.wait_tracked(app.pid);
    let id = api.request(serde_json::json!({ "pid": app.pid, "kinds": ["heap", "goroutine"] }));
    let snap = api.wait_finished(&id);
    assert_eq!(snap["status"], "done", "{snap}");
    assert_eq!(snap["trigger"], "api");
    for kind in ["heap", "goroutine"] {
        assert_eq!(snap["files"][kind]["source"], format!("pprof-http 127.0.0.1:{}", app.port), "{snap}");
    }
}

#[test]
fn cli_snapshot_waits_and_downloads_the_files() {
    let _g = serial();
    let d = Daemon::start_with("snap-cli", FAST_API, &[("CHAINPROBE_API_TOKEN", TOKEN)]);
    let api = Api::new(&d, Some(TOKEN));
    let app = Leaky::start(&leaky_path("1.27", "stripped"), false);
    api.wait_tracked(app.pid);
    let out_dir = common::TempDir::new("snap-cli-out");
    let server = format!("http://{}", d.addr);
    let run = |args: &[&str], token: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_chainprobe"));
        c.arg("snapshot").args(args).args(["--server", &server]).env_remove("CHAINPROBE_API_TOKEN");
        if let Some(t) = token {
            c.env("CHAINPROBE_API_TOKEN", t);
        }
        c.output().unwrap()
    };
    let pid = app.pid.to_string();
    let out = run(&["--pid", &pid, "--kind", "goroutine", "-o", out_dir.0.to_str().unwrap()], Some(TOKEN));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let files: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
    assert_eq!(files.len(), 2, "goroutine profile and summary: {stdout}");
    assert!(files.iter().all(|f| f.starts_with(&out_dir.0) && f.is_file()), "{files:?}");
    let prof = files.iter().find(|f| f.to_string_lossy().ends_with(".goroutine.pb.gz")).expect("goroutine file");
    assert!(pprof("1.27", &["-top"], prof).contains("main.lateness"));
    // The list shows it; a wrong token is a clear error.
    let out = run(&["--list"], Some(TOKEN));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&pid));
    let out = run(&["--pid", &pid], Some("nope"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
    // A daemon that is not there.
    let out = Command::new(env!("CARGO_BIN_EXE_chainprobe")).args(["snapshot", "--pid", "1", "--server", "http://127.0.0.1:1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach chainprobe"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A raw HTTP request (for paths a client library would normalise).
fn raw(d: &Daemon, request: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn api_auth_validation_files_retention_and_openapi() {
    let _g = serial();
    let toml_dir = common::TempDir::new("snap-api-files");
    let dir = toml_dir.0.join("snaps");
    let d = Daemon::start_with(
        "snap-api",
        &format!("[api]\nmax_body_bytes = 1024\nrate_limit_per_second = 1000.0\nrate_limit_burst = 1000\n[snapshot]\ndir = \"{}\"\nmax_snapshots = 2\nmax_per_target_per_hour = 3\n", dir.display()),
        &[("CHAINPROBE_API_TOKEN", TOKEN)],
    );
    let anon = Api::new(&d, None);
    let wrong = Api::new(&d, Some("wrong"));
    let api = Api::new(&d, Some(TOKEN));
    let app = Leaky::start(&leaky_path("1.27", "default"), true);

    for (who, a) in [("no token", &anon), ("wrong token", &wrong)] {
        for (m, p) in [("GET", "/api/v1/snapshots"), ("POST", "/api/v1/snapshots"), ("GET", "/api/v1/openapi.json"), ("GET", "/api/v1/snapshots/0123456789abcdef/heap")] {
            let (s, body) = a.call(m, p, Some(format!("{{\"pid\": {}}}", app.pid)));
            assert_eq!(s, 401, "{who}: {m} {p}");
            assert!(body.is_empty(), "401 says nothing: {}", String::from_utf8_lossy(&body));
        }
    }
    api.wait_tracked(app.pid);

    // The OpenAPI document lists the routes, and each answers (not 404/405) with the token.
    let (s, doc) = api.json("GET", "/api/v1/openapi.json", None);
    assert_eq!(s, 200);
    let paths = doc["paths"].as_object().unwrap();
    for p in ["/api/v1/targets", "/api/v1/targets/{pid}/creation-probes", "/api/v1/snapshots", "/api/v1/snapshots/{id}", "/api/v1/snapshots/{id}/{kind}", "/api/v1/openapi.json"] {
        assert!(paths.contains_key(p), "{p} missing from the OpenAPI document");
    }

    // Three snapshots; retention keeps the newest two.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = api.request(serde_json::json!({ "pid": app.pid }));
        let snap = api.wait_finished(&id);
        assert_eq!(snap["status"], "done", "{snap}");
        ids.push(id);
    }
    let list = api.snapshots();
    let listed: Vec<&str> = list.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(listed, vec![ids[2].as_str(), ids[1].as_str()], "newest first, oldest removed");
    let summaries = std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".summary.json")).count();
    assert_eq!(summaries, 2);
    let (s, _) = api.call("GET", &format!("/api/v1/snapshots/{}", ids[0]), None);
    assert_eq!(s, 404, "a removed snapshot is gone");
    // The hourly cap of the target (3 here).
    let (s, v) = api.json("POST", "/api/v1/snapshots", Some(format!("{{\"pid\": {}}}", app.pid)));
    assert_eq!(s, 429, "{v}");
    assert!(v["error"].as_str().unwrap().contains("max_per_target_per_hour"), "{v}");

    // Files.
    let id = &ids[2];
    for kind in ["heap", "goroutine"] {
        let (s, body) = api.call("GET", &format!("/api/v1/snapshots/{id}/{kind}"), None);
        assert_eq!(s, 200);
        assert_eq!(&body[..2], &[0x1f, 0x8b], "gzipped pprof");
    }
    let (s, summary) = api.json("GET", &format!("/api/v1/snapshots/{id}/summary"), None);
    assert_eq!(s, 200);
    assert_eq!(summary["id"], id.as_str());
    assert_eq!(summary["go_version"], "go1.27.3");

    // Ids and kinds are validated: no way out of the directory.
    for (p, want) in [
        ("/api/v1/snapshots/..%2F..%2Fetc%2Fpasswd", 400),
        (&format!("/api/v1/snapshots/{id}/..%2F..%2Fetc%2Fpasswd") as &str, 400),
        (&format!("/api/v1/snapshots/{id}/passwd"), 400),
        ("/api/v1/snapshots/ffffffffffffffff", 404),
        ("/api/v1/snapshots/ffffffffffffffff/heap", 404),
    ] {
        assert_eq!(api.call("GET", p, None).0, want, "{p}");
    }
    let s = raw(&d, &format!("GET /api/v1/snapshots/../../../etc/passwd HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"));
    assert!(s == 400 || s == 404, "raw traversal answered {s}");

    // Bodies: malformed, unknown kind, oversized, unknown pid.
    assert_eq!(api.call("POST", "/api/v1/snapshots", Some("{\"pid\": \"x\"}".into())).0, 400);
    assert_eq!(api.call("POST", "/api/v1/snapshots", Some(format!("{{\"pid\": {}, \"kinds\": [\"cpu\"]}}", app.pid))).0, 400);
    assert_eq!(api.call("POST", "/api/v1/snapshots", Some("{\"namespace\": \"x\"}".into())).0, 400);
    let big = format!("{{\"pid\": {}, \"pad\": \"{}\"}}", app.pid, "x".repeat(4096));
    assert_eq!(api.call("POST", "/api/v1/snapshots", Some(big)).0, 413);
    assert_eq!(api.call("POST", "/api/v1/snapshots", Some("{\"pid\": 4000000000}".into())).0, 404);
    let (s, v) = api.json("POST", "/api/v1/snapshots", Some("{\"namespace\": \"shop\", \"pod\": \"nope\"}".into()));
    assert_eq!(s, 404, "{v}");

    // Audit: one line per request, with the client and the result.
    let log = d.log_text();
    assert!(log.lines().any(|l| l.contains("chainprobe::audit") && l.contains("POST /api/v1/snapshots") && l.contains("status=401")), "audit lines");
    assert!(log.lines().any(|l| l.contains("chainprobe::audit") && l.contains("status=202")));
}

#[test]
fn api_rate_limit_answers_429() {
    let _g = serial();
    let d = Daemon::start_with("snap-rate", "[api]\nrate_limit_per_second = 1.0\nrate_limit_burst = 5\n", &[("CHAINPROBE_API_TOKEN", TOKEN)]);
    let api = Api::new(&d, Some(TOKEN));
    let codes: Vec<u16> = (0..12).map(|_| api.call("GET", "/api/v1/snapshots", None).0).collect();
    assert!(codes[..5].iter().all(|&c| c == 200), "{codes:?}");
    assert!(codes[5..].contains(&429), "{codes:?}");
    // Unauthenticated requests are limited too (no free guessing of the token).
    let anon = Api::new(&d, None);
    assert_eq!(anon.call("GET", "/api/v1/snapshots", None).0, 429);
    // /metrics is not part of the API.
    assert_eq!(d.get("/metrics").unwrap().0, 200);
}

#[test]
fn node_memory_pressure_opens_the_circuit() {
    let _g = serial();
    // Asking for 100% available memory: this node is always "under pressure".
    let files = common::TempDir::new("snap-circuit-files");
    let d = Daemon::start("snap-circuit", &format!("{FAST_API}[snapshot]\nmin_available_memory_ratio = 1.0\ndir = \"{}\"\n", files.0.display()));
    let api = Api::new(&d, None);
    let app = Leaky::start(&leaky_path("1.27", "default"), true);
    api.wait_tracked(app.pid);
    let (s, v) = api.json("POST", "/api/v1/snapshots", Some(format!("{{\"pid\": {}}}", app.pid)));
    assert_eq!(s, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("node low on memory"), "{v}");
    let (_, l) = api.json("GET", "/api/v1/snapshots", None);
    assert_eq!(l["circuit"]["open"], true, "{l}");
    let m = d.metrics();
    assert_eq!(m.value("chainprobe_snapshot_circuit_open", &[]), 1.0);
    assert_eq!(m.value("chainprobe_snapshots_total", &[("trigger", "api"), ("kind", "heap"), ("result", "refused")]), 1.0);
}

/// Reads a gzip stream to its end: a partial file fails.
fn gunzip_whole(path: &Path) -> Result<usize, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f).read_to_end(&mut out).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(out.len())
}

#[test]
fn killing_targets_mid_snapshot_loses_nothing_and_leaves_no_partial_file() {
    let _g = serial();
    let toml_dir = common::TempDir::new("snap-kill-files");
    let dir = toml_dir.0.join("snaps");
    let d = Daemon::start(
        "snap-kill",
        &format!("{FAST_API}[go]\nread_interval_seconds = 0.2\ncreation_probes = \"manual\"\n[snapshot]\ndir = \"{}\"\nmax_snapshots = 1000\nfailure_threshold = 3\n", dir.display()),
    );
    let api = Api::new(&d, None);
    let (stripped, plain) = (leaky_path("1.27", "stripped"), leaky_path("1.27", "default"));
    let mut ids = Vec::new();
    for i in 0..100u64 {
        // Alternate the two sources: the pprof fetch and the out-of-process dump.
        let mut app = if i % 2 == 0 { Leaky::start(&stripped, false) } else { Leaky::start(&plain, true) };
        app.cmd("leak 2000");
        api.wait_tracked(app.pid);
        ids.push(api.request(serde_json::json!({ "pid": app.pid })));
        // From at once to after the snapshot finished: dying before, during and after the reads.
        std::thread::sleep(Duration::from_millis((i % 10) * 15));
        let _ = app.child.kill();
        let _ = app.child.wait();
    }
    assert!(d.get("/healthz").map(|r| r.0).unwrap_or(0) == 200, "the daemon survived:\n{}", d.log_text());
    // Every request ends, done or failed (with a reason).
    let deadline = Instant::now() + Duration::from_secs(60);
    let list = loop {
        let l = api.snapshots();
        if l.iter().all(|s| s["status"] == "done" || s["status"] == "failed") {
            break l;
        }
        assert!(Instant::now() < deadline, "snapshots still running after 60 s");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(list.len(), 100, "every snapshot is accounted for");
    for id in &ids {
        assert!(list.iter().any(|s| s["id"] == id.as_str()), "{id} lost");
    }
    let failed: Vec<&Value> = list.iter().filter(|s| s["status"] == "failed").collect();
    for s in &failed {
        assert!(s["reason"].as_str().is_some_and(|r| !r.is_empty()), "{s}");
    }
    // No partial file: every file in the directory is complete and belongs to a summary.
    let mut referenced = std::collections::HashSet::new();
    for s in &list {
        for f in s["files"].as_object().into_iter().flatten() {
            referenced.insert(f.1["file"].as_str().unwrap().to_string());
        }
    }
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        assert!(!name.starts_with(".tmp-"), "temporary file left: {name}");
        if name.ends_with(".pb.gz") {
            assert!(referenced.contains(&name), "{name} belongs to no snapshot");
            gunzip_whole(&e.path()).unwrap();
        }
    }
    // A target dying is not a failure of chainprobe: the circuit stays closed.
    let m = d.metrics();
    assert_eq!(m.value("chainprobe_snapshot_circuit_open", &[]), 0.0, "{} failed", failed.len());
    let mut reasons = std::collections::BTreeMap::new();
    for s in &failed {
        *reasons.entry(s["reason"].as_str().unwrap_or("").to_string()).or_insert(0) += 1;
    }
    eprintln!("kill test: {} done, {} failed: {reasons:?}", list.len() - failed.len(), failed.len());
}
