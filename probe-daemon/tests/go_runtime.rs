//! Go runtime health end to end: real Go programs (tests/fixtures/go/src/gorun, built by
//! `cargo xtask fixtures` with every Go minor, stripped and not, PIE and externally linked) driven over stdin,
//! the real daemon probing them, and the scraped numbers checked against what the programs say.
mod common;

use std::{
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use common::{Daemon, Metrics};

/// The ways release binaries are built: with symbols, `-s -w`, PIE + `-s -w`, externally linked
/// PIE + `-s -w`.
const VARIANTS: &[&str] = &["default", "stripped", "pie-stripped", "pie-ext-stripped"];

/// Every (label, path) of the gorun fixture matrix; fails when the fixtures were not built.
fn fixtures() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for v in common::go_versions() {
        let ver = common::go_version_dir(v).file_name().unwrap().to_string_lossy().to_string();
        for variant in VARIANTS {
            out.push((format!("go{ver}-{variant}"), common::go_fixture(v, variant, "gorun")));
        }
    }
    out
}

/// A running gorun (see its main.go for the commands).
type Gorun = common::GoProgram;

fn targets(d: &Daemon) -> serde_json::Value {
    let (code, body) = d.get("/api/v1/targets").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn target(t: &serde_json::Value, pid: u32) -> Option<serde_json::Value> {
    t["targets"].as_array()?.iter().find(|x| x["pid"].as_u64() == Some(u64::from(pid))).cloned()
}

fn go_value(m: &Metrics, name: &str, pid: u32, extra: &[(&str, &str)]) -> f64 {
    let p = pid.to_string();
    let mut l = vec![("pid", p.as_str())];
    l.extend_from_slice(extra);
    m.value(name, &l)
}

/// Wait reasons on (the test compares them); the default has states only.
const GO_CFG: &str = "[go]\nread_interval_seconds = 0.2\ngoroutine_states_interval_seconds = 0.2\n[metrics]\ngoroutine_wait_reasons = true\n";

/// The tests of this file each run a daemon and a dozen Go processes: one at a time, so timing
/// assertions (attach within 1 s) measure chainprobe, not a machine overloaded by the others.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn attaches_to_running_and_new_go_processes_of_every_build() {
    let _serial = serial();
    let fx = fixtures();
    let before: Vec<Gorun> = fx.iter().map(|(l, p)| Gorun::start(&format!("{l}-before"), p)).collect();
    let d = Daemon::start("go-attach", GO_CFG);
    // Processes that were running before the daemon: found by the /proc scan.
    let deadline = Instant::now() + Duration::from_secs(20);
    for g in &before {
        loop {
            let t = targets(&d);
            if let Some(x) = target(&t, g.pid) {
                if x["runtime"]["goroutines"].is_number() {
                    // The four GC/pause probes, and the crash probes (at least fatalpanic,
                    // throw, fatal and os.Exit; linkname'd copies where the version has them).
                    let probes = x["probes"].as_array().unwrap();
                    let runtime: Vec<&serde_json::Value> = probes.iter().filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("go_gc") || n.starts_with("go_stw"))).collect();
                    assert_eq!(runtime.len(), 4, "{}: {x}", g.label);
                    let crash: Vec<&serde_json::Value> = probes.iter().filter(|p| matches!(p["name"].as_str(), Some("go_fatalpanic" | "go_throw" | "go_fatal" | "go_os_exit"))).collect();
                    assert!(crash.len() >= 4, "{}: {x}", g.label);
                    for pr in runtime.iter().chain(&crash) {
                        assert_eq!(pr["state"], "attached", "{}: {pr}", g.label);
                    }
                    assert_eq!(x["runtime_reads"], "ok", "{}: {x}", g.label);
                    break;
                }
            }
            assert!(Instant::now() < deadline, "{} (pid {}) not tracked: {t}", g.label, g.pid);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Processes started afterwards: tracked within 1 s of exec.
    for (l, p) in &fx {
        let g = Gorun::start(&format!("{l}-after"), p);
        let t0 = Instant::now();
        loop {
            if target(&targets(&d), g.pid).is_some() {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(1), "{} not tracked within 1 s of starting", g.label);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn goroutines_gc_cycles_pauses_and_heap_agree_with_the_programs() {
    let _serial = serial();
    let fx = fixtures();
    let d = Daemon::start("go-counts", GO_CFG);
    let mut gs: Vec<Gorun> = fx.iter().map(|(l, p)| Gorun::start(l, p)).collect();
    // Wait until every process has been read at least once.
    for g in &gs {
        let p = g.pid.to_string();
        d.wait_metrics(&format!("{} tracked", g.label), Duration::from_secs(10), |m| m.has("chainprobe_go_goroutines", &[("pid", &p)]));
    }
    for g in gs.iter_mut() {
        let label = g.label.clone();
        let pid = g.pid;
        let p = pid.to_string();
        let minor: u32 = label.trim_start_matches("go1.").split(['.', '-']).next().unwrap().parse().unwrap();

        // Goroutines: park some, spawn-and-exit many.
        let created0 = go_value(&d.metrics(), "chainprobe_go_goroutines_created_total", pid, &[]);
        g.cmd("park 40");
        g.cmd("spawn 200");
        // A spawned goroutine may still be on its way out when the program answers: compare with
        // the program's count until both agree (bounded).
        let deadline = Instant::now() + Duration::from_secs(15);
        let m = loop {
            let n = g.cmd("count")[0];
            let m = d.metrics();
            let seen = go_value(&m, "chainprobe_go_goroutines", pid, &[]);
            // The breakdown by state is read under the CPU budget, possibly a little later than
            // the count (every interval while the budget allows: a dozen small processes here).
            let parked = go_value(&m, "chainprobe_go_goroutines_by_state", pid, &[("state", "waiting"), ("wait_reason", "chan receive")]);
            if seen == n as f64 && parked >= 40.0 && go_value(&m, "chainprobe_go_goroutines_created_total", pid, &[]) >= created0 + 240.0 - 32.0 {
                assert!(n >= 41, "{label}: 40 parked + main");
                break m;
            }
            assert!(Instant::now() < deadline, "{label}: chainprobe_go_goroutines {seen} never matched runtime.NumGoroutine {n}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let created = go_value(&m, "chainprobe_go_goroutines_created_total", pid, &[]) - created0;
        // goidgen hands ids to each P in batches of 16, so it runs up to 16 per P (GOMAXPROCS=2)
        // ahead of the goroutines really created, on either side of the measurement.
        assert!((240.0 - 32.0..=240.0 + 32.0).contains(&created), "{label}: created {created} for 240 goroutines");
        assert!(go_value(&m, "chainprobe_go_goroutines_by_state", pid, &[("state", "waiting"), ("wait_reason", "chan receive")]) >= 40.0, "{label}");

        // GC: exactly K cycles, 2 pauses per cycle.
        let before = d.metrics();
        let gc0 = go_value(&before, "chainprobe_go_gc_cycles_total", pid, &[]);
        let dur0 = go_value(&before, "chainprobe_go_gc_duration_seconds_count", pid, &[]);
        // The GC's own two pauses per cycle are in the API (the metric has the other reasons).
        let stw = |reason: &str| {
            target(&targets(&d), pid).and_then(|t| t["runtime"]["stw_pauses_by_reason"][reason]["count"].as_f64()).unwrap_or(0.0)
        };
        std::thread::sleep(Duration::from_millis(600));
        let (sweep0, mark0, unk0) = (stw("gc_sweep_termination"), stw("gc_mark_termination"), stw("unknown"));
        let unk_metric0 = go_value(&before, "chainprobe_go_stw_pauses_total", pid, &[("reason", "unknown")]);
        g.cmd("gc 4");
        let m = d.wait_metrics(&format!("{label}: 4 GC cycles"), Duration::from_secs(15), |m| {
            go_value(m, "chainprobe_go_gc_cycles_total", pid, &[]) >= gc0 + 4.0
        });
        std::thread::sleep(Duration::from_millis(300));
        let m2 = d.metrics();
        assert_eq!(go_value(&m2, "chainprobe_go_gc_cycles_total", pid, &[]), gc0 + 4.0, "{label}: exactly 4 cycles");
        // A cycle already running when the probes were attached has no known start; these 4 do.
        let _ = m;
        assert_eq!(go_value(&m2, "chainprobe_go_gc_duration_seconds_count", pid, &[]) - dur0, 4.0, "{label}: a duration per cycle");
        if minor >= 21 {
            // The API's view is republished within 500 ms.
            let deadline = Instant::now() + Duration::from_secs(5);
            while stw("gc_mark_termination") - mark0 < 4.0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            assert_eq!(stw("gc_sweep_termination") - sweep0, 4.0, "{label}");
            assert_eq!(stw("gc_mark_termination") - mark0, 4.0, "{label}");
            assert!(!m2.samples.iter().any(|s| s.name == "chainprobe_go_stw_pauses_total" && s.labels.get("reason").is_some_and(|r| r.starts_with("gc_"))), "{label}: GC pauses are not series");
        } else {
            assert_eq!(go_value(&m2, "chainprobe_go_stw_pauses_total", pid, &[("reason", "unknown")]) - unk_metric0, 8.0, "{label}: two pauses per cycle, before 1.21 all as unknown");
            let deadline = Instant::now() + Duration::from_secs(5);
            while stw("unknown") - unk0 < 8.0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            assert_eq!(stw("unknown") - unk0, 8.0, "{label}: the API has them too");
        }

        // Heap: retain 64 MiB, then compare with runtime.ReadMemStats.
        g.cmd("alloc 64");
        g.cmd("gc 1");
        let mem = g.cmd("mem");
        let (heap_alloc, next_gc) = (mem[1] as f64, mem[2] as f64);
        let numgc = mem[0];
        // A read taken while `alloc` ran (its own GC cycles set intermediate goals) is not the one
        // to compare: wait for a read after the forced GC.
        let m = d.wait_metrics(&format!("{label}: heap read after the GC"), Duration::from_secs(15), |m| {
            let goal = go_value(m, "chainprobe_go_heap_goal_bytes", pid, &[]);
            goal > 64.0 * 1048576.0 && (goal - next_gc).abs() <= next_gc * 0.10
        });
        let live = go_value(&m, "chainprobe_go_heap_live_bytes", pid, &[]);
        let goal = go_value(&m, "chainprobe_go_heap_goal_bytes", pid, &[]);
        assert!((live - heap_alloc).abs() <= heap_alloc * 0.10, "{label}: heap live {live} vs HeapAlloc {heap_alloc}");
        assert!((goal - next_gc).abs() <= next_gc * 0.10, "{label}: heap goal {goal} vs NextGC {next_gc}");
        // memstats.numgc read from memory matches the program's own count (the next read).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let t = target(&targets(&d), pid).unwrap();
            if t["runtime"]["gc_cycles_memstats"].as_i64() == Some(numgc) {
                break;
            }
            assert!(Instant::now() < deadline, "{label}: memstats.numgc read from memory is not {numgc}: {t}");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(g.alive());
        let _ = p;
    }
}

#[test]
fn deep_recursion_and_stack_growth_while_probed_never_crash_the_target() {
    let _serial = serial();
    let fx = fixtures();
    let d = Daemon::start("go-stack", GO_CFG);
    let mut gs: Vec<Gorun> = fx.iter().map(|(l, p)| Gorun::start(l, p)).collect();
    for g in &gs {
        let deadline = Instant::now() + Duration::from_secs(10);
        while target(&targets(&d), g.pid).is_none() {
            if Instant::now() > deadline {
                let log = d.log_text();
                let about: Vec<&str> = log.lines().filter(|l| l.contains(&format!("pid={}", g.pid)) || l.contains("WARN") || l.contains("found")).collect();
                panic!("{} (pid {}) not tracked; daemon log about it:\n{}", g.label, g.pid, about.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for g in gs.iter_mut() {
        for depth in [1_000, 20_000, 60_000] {
            assert_eq!(g.cmd(&format!("recurse {depth}")), vec![depth]);
            g.cmd("gc 1");
        }
        g.cmd("spawn 1000");
        assert!(g.alive(), "{} died", g.label);
    }
    // Every probe really fired in these processes (the GC probes did their job while stacks moved).
    let m = d.metrics();
    for g in &gs {
        assert!(go_value(&m, "chainprobe_go_gc_cycles_total", g.pid, &[]) >= 3.0, "{}", g.label);
    }
}

fn post_creation(d: &Daemon, pid: u32, body: &str) -> (u16, serde_json::Value) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /api/v1/targets/{pid}/creation-probes HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json = out.split("\r\n\r\n").nth(1).and_then(|b| serde_json::from_str(b).ok()).unwrap_or(serde_json::Value::Null);
    (code, json)
}

fn creation(d: &Daemon, pid: u32) -> serde_json::Value {
    target(&targets(d), pid).map(|t| t["creation_probes"].clone()).unwrap_or(serde_json::Value::Null)
}

/// Polls the creation-probe state of `pid` until it is `active` (bounded); returns that state.
fn wait_creation(d: &Daemon, pid: u32, active: bool, what: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let c = creation(d, pid);
        if c["active"] == active {
            return c;
        }
        assert!(Instant::now() < deadline, "{what}: {c}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_tracked(d: &Daemon, g: &Gorun) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !target(&targets(d), g.pid).is_some_and(|t| t["runtime"]["goroutines"].is_number()) {
        assert!(Instant::now() < deadline, "{} not tracked", g.label);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn creation_probes_count_exactly_and_name_the_creating_function() {
    let _serial = serial();
    let fx = fixtures();
    let d = Daemon::start("go-creation", "[go]\nread_interval_seconds = 0.2\ncreation_probes = \"manual\"\n");
    for (l, p) in &fx {
        let mut g = Gorun::start(l, p);
        wait_tracked(&d, &g);
        let (code, body) = post_creation(&d, g.pid, r#"{"enabled": true, "seconds": 60}"#);
        assert_eq!(code, 200, "{l}: {body}");
        assert_eq!(body["creation_probes"]["active"], true, "{l}: {body}");
        g.cmd("spawn 300");
        g.cmd("leak 25");
        let deadline = Instant::now() + Duration::from_secs(15);
        let c = loop {
            let c = creation(&d, g.pid);
            if c["created"] == 325 && c["exited"] == 300 {
                break c;
            }
            assert!(Instant::now() < deadline, "{l}: creation counts never reached 325/300: {c}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let top = c["top"].as_array().unwrap();
        assert!(top.iter().any(|f| f[0] == "main.leakOne" && f[1] == 25), "{l}: {c}");
        assert!(top.iter().any(|f| f[0] == "main.main" && f[1] == 300), "{l}: {c}");
        let m = d.metrics();
        let pid = g.pid.to_string();
        assert_eq!(
            m.value("chainprobe_go_goroutine_creations_total", &[("pid", &pid), ("function", "main.leakOne")]),
            25.0,
            "{l}: {}",
            m.text.lines().filter(|x| x.contains("creation")).collect::<Vec<_>>().join("\n")
        );
        assert_eq!(m.value("chainprobe_go_creation_probes_active", &[("pid", &pid)]), 1.0);
        let (code, body) = post_creation(&d, g.pid, r#"{"enabled": false}"#);
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["creation_probes"]["active"], false);
        // Off: further goroutines are not counted, and the target is fine.
        g.cmd("spawn 100");
        assert_eq!(creation(&d, g.pid)["created"], 325, "{l}");
        assert!(g.alive());
    }
    // Bad requests.
    assert_eq!(post_creation(&d, 999_999_999, r#"{"enabled": true}"#).0, 404);
    let g = Gorun::start("any", &fx[0].1);
    wait_tracked(&d, &g);
    assert_eq!(post_creation(&d, g.pid, r#"{"on": true}"#).0, 400);
    assert_eq!(post_creation(&d, g.pid, r#"{"enabled": true, "seconds": -1}"#).0, 400);
}

#[test]
fn a_leak_switches_creation_probes_on_by_itself_then_the_window_switches_them_off() {
    let _serial = serial();
    let fx = fixtures();
    let d = Daemon::start(
        "go-leak",
        "[go]\nread_interval_seconds = 0.2\ncreation_probes = \"auto\"\ncreation_window_seconds = 2.0\nleak_reads = 3\nleak_growth = 60\n",
    );
    let (l, p) = &fx[fx.len() - 1];
    let mut g = Gorun::start(l, p);
    wait_tracked(&d, &g);
    assert_eq!(creation(&d, g.pid)["active"], false);
    // Leak 30 goroutines at every read, until the probes switch on.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        g.cmd("leak 30");
        let c = creation(&d, g.pid);
        if c["active"] == true {
            assert!(c["reason"].as_str().unwrap().contains("leak suspected"), "{c}");
            break;
        }
        assert!(Instant::now() < deadline, "leak never detected: {c}");
        std::thread::sleep(Duration::from_millis(250));
    }
    g.cmd("leak 10");
    // The window (2 s) ends; the leaking function was named meanwhile.
    let c = wait_creation(&d, g.pid, false, "probes never switched off", Duration::from_secs(6));
    assert!(c["reason"].as_str().unwrap().contains("window ended"), "{c}");
    assert!(c["top"].as_array().unwrap().iter().any(|f| f[0] == "main.leakOne"), "{c}");
    // Cooldown: more leaking does not switch them on again right away.
    for _ in 0..5 {
        g.cmd("leak 30");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(creation(&d, g.pid)["active"], false);
    assert!(g.alive());
}

#[test]
fn creation_probes_switch_off_when_goroutines_are_created_too_fast() {
    let _serial = serial();
    let fx = fixtures();
    let d = Daemon::start("go-rate", "[go]\nread_interval_seconds = 0.2\ncreation_probes = \"always\"\ncreation_max_rate = 500.0\n");
    let (l, p) = &fx[0];
    let mut g = Gorun::start(l, p);
    wait_tracked(&d, &g);
    wait_creation(&d, g.pid, true, "always mode did not switch on", Duration::from_secs(15));
    g.cmd("spawn 20000");
    let c = wait_creation(&d, g.pid, false, "rate guard never fired", Duration::from_secs(15));
    assert!(c["reason"].as_str().unwrap().contains("creations/s exceeds"), "{c}");
    assert!(g.alive());
}

fn wait_offsets(d: &Daemon, g: &Gorun, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(x) = target(&targets(d), g.pid) {
            if pred(&x) {
                return x;
            }
            assert!(Instant::now() < deadline, "{}: offsets never settled: {x}", g.label);
        }
        assert!(Instant::now() < deadline, "{} not tracked", g.label);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Go version without a table of its own gets the nearest table, checked on the live process
/// before anything is read with it: with the table of a minor hidden, its processes are read with
/// the neighbour's and report what the programs report. A deliberately wrong table (every g field
/// one word off: what a field added by a new release does) is rejected with the reason, and no
/// runtime number is exported for its processes.
#[test]
fn nearest_table_is_checked_on_the_live_process_and_a_wrong_table_is_rejected() {
    let _serial = serial();
    let mut tables = common::builtin_go_tables();
    let (minor, own, fallback) = common::minor_with_a_lookalike_neighbour(&tables);
    let t = tables["tables"].as_object_mut().unwrap();
    t.retain(|k, _| !k.starts_with(&format!("1.{minor}/")) && !k.starts_with(&format!("1.{minor}.")));
    // The wrong table: another minor's, every g.* offset shifted by 8.
    let wrong_minor = common::go_versions().iter().map(|v| v.split('.').nth(1).unwrap().parse::<u32>().unwrap()).find(|&m| m >= 21 && m != minor).unwrap();
    let wrong = format!("1.{wrong_minor}/amd64");
    for (k, v) in t[&wrong]["offsets"].as_object_mut().unwrap().iter_mut() {
        if k.starts_with("g.") {
            *v = serde_json::json!(v.as_u64().unwrap() + 8);
        }
    }
    let dir = common::TempDir::new("go-tables");
    let file = common::write_go_tables(&dir, &tables);

    let d = Daemon::start_with("go-nearest", GO_CFG, &[("CHAINPROBE_GO_OFFSETS_FILE", file.to_str().unwrap())]);
    let vdir = |m: u32| common::go_versions().into_iter().find(|v| v.starts_with(&format!("1.{m}."))).unwrap();
    for variant in ["stripped", "pie-ext-stripped"] {
        let mut g = Gorun::start(&format!("go1.{minor}-{variant}-nearest"), &common::go_fixture(vdir(minor), variant, "gorun"));
        let x = wait_offsets(&d, &g, |x| x["offsets"]["validation"].as_str().is_some_and(|v| !v.starts_with("pending")));
        assert_eq!(x["offsets"]["source"], "nearest", "{}: {x}", g.label);
        assert_eq!(x["offsets"]["table"], fallback.as_str(), "{}: {own} hidden: {x}", g.label);
        let v = x["offsets"]["validation"].as_str().unwrap();
        assert!(v.starts_with(&format!("accepted on pid {}", g.pid)), "{}: {x}", g.label);
        assert_eq!(x["runtime_reads"], "ok", "{}: {x}", g.label);
        g.cmd("park 30");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let n = g.cmd("count")[0];
            if go_value(&d.metrics(), "chainprobe_go_goroutines", g.pid, &[]) == n as f64 {
                break;
            }
            assert!(Instant::now() < deadline, "{}: goroutines read with the nearest table never matched {n}", g.label);
            std::thread::sleep(Duration::from_millis(100));
        }
        let m = d.metrics();
        assert!(m.value("chainprobe_go_processes", &[("offsets_source", "nearest")]) >= 1.0, "{}", m.text);
        // Go TLS reads the same table: enabled once it proved right.
        let probes = x["probes"].as_array().unwrap();
        assert!(!probes.iter().any(|p| p["name"] == "go_tls_offsets"), "{}: {x}", g.label);
    }

    let g = Gorun::start(&format!("go1.{wrong_minor}-stripped-wrong"), &common::go_fixture(vdir(wrong_minor), "stripped", "gorun"));
    let x = wait_offsets(&d, &g, |x| x["offsets"]["validation"].as_str().is_some_and(|v| !v.starts_with("pending")));
    assert_eq!(x["offsets"]["source"], "table", "{x}");
    let v = x["offsets"]["validation"].as_str().unwrap();
    assert!(v.starts_with(&format!("rejected on pid {}", g.pid)), "{x}");
    assert!(v.contains(" is wrong"), "the reason names what is wrong: {v}");
    assert!(x["runtime_reads"].as_str().unwrap().contains("rejected"), "{x}");
    assert!(x["runtime"]["goroutines"].is_null(), "{x}");
    // Reads stay off: nothing is exported for it, while the GC probes (no offsets) still count.
    std::thread::sleep(Duration::from_millis(600));
    let m = d.metrics();
    let p = g.pid.to_string();
    for name in ["chainprobe_go_goroutines", "chainprobe_go_heap_live_bytes", "chainprobe_go_heap_goal_bytes"] {
        assert!(!m.has(name, &[("pid", &p)]), "{name} exported with a rejected table:\n{}", m.text);
    }
    assert!(m.value("chainprobe_go_processes", &[("offsets_source", "none")]) >= 1.0, "{}", m.text);
    assert!(d.log_text().contains("Go offsets rejected on a live process"), "the log says so");
}
