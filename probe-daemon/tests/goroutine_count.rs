//! The goroutine count read in O(P) — runtime.gcount's counters: allglen minus the free g lists
//! (sched's and every P's) minus the system goroutines — against what real Go programs
//! (tests/fixtures/go/src/gorun) say runtime.NumGoroutine is, with free lists that are not empty;
//! and the goroutine-state breakdown, read under the CPU budget, with its age.
//! Go 1.19, 1.27 and the newest fixture toolchain, stripped and not, PIE and externally linked.
mod common;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use common::{Daemon, GoProgram};

const VARIANTS: &[&str] = &["default", "stripped", "pie-stripped", "pie-ext-stripped"];

/// (label, path) of gorun built with Go 1.19, 1.27 and the newest toolchain of the fixtures.
fn fixtures() -> Vec<(String, PathBuf)> {
    let newest = *common::go_versions().last().expect("fixture versions");
    let mut versions = vec!["1.19", "1.27", newest];
    versions.dedup();
    let mut out = Vec::new();
    for v in versions {
        let ver = common::go_version_dir(v).file_name().unwrap().to_string_lossy().to_string();
        for variant in VARIANTS {
            out.push((format!("go{ver}-{variant}"), common::go_fixture(v, variant, "gorun")));
        }
    }
    out
}

fn target(d: &Daemon, pid: u32) -> Option<serde_json::Value> {
    let (code, body) = d.get("/api/v1/targets").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["targets"].as_array()?.iter().find(|x| x["pid"].as_u64() == Some(u64::from(pid))).cloned()
}

/// Waits (bounded) until the daemon's goroutine count of `g` equals the program's own
/// runtime.NumGoroutine and `also` holds; returns the target.
fn wait_count(d: &Daemon, g: &mut GoProgram, what: &str, also: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = g.cmd("count")[0];
        let t = target(d, g.pid);
        if let Some(t) = t.as_ref().filter(|t| t["runtime"]["goroutines"].as_i64() == Some(n) && also(t)) {
            return t.clone();
        }
        assert!(Instant::now() < deadline, "{} ({what}): runtime.NumGoroutine {n}, chainprobe: {t:?}", g.label);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn waiting_on_chan(t: &serde_json::Value) -> u64 {
    t["runtime"]["goroutines_by_state"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["state"] == "waiting" && s["wait_reason"] == "chan receive")
        .map(|s| s["goroutines"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn the_count_from_the_runtimes_counters_is_numgoroutine_and_the_breakdown_has_an_age() {
    let _serial = common::serial();
    // A budget so small that, once each process's counters have agreed with one read of every
    // g, its breakdown is not read again during the test: every count below then comes from the
    // counters alone.
    let d = Daemon::start("goroutine-count", "[go]\nread_interval_seconds = 0.2\nread_cpu_budget = 0.000001\n");
    let mut gs: Vec<GoProgram> = fixtures().iter().map(|(l, p)| GoProgram::start(l, p)).collect();
    for g in gs.iter_mut() {
        // Goroutines that exited leave their g's on the free lists (each P's, then sched's).
        g.cmd("park 300");
        g.cmd("spawn 2000");
    }
    for g in gs.iter_mut() {
        let t = wait_count(&d, g, "after park 300, spawn 2000", |t| t["runtime"]["goroutines_by_state"].is_array());
        let label = &g.label;
        let rt = &t["runtime"];
        assert!(rt["goroutines_counted_by"].as_str().unwrap_or("").starts_with("runtime counters"), "{label}: {rt}");
        assert!(waiting_on_chan(&t) >= 300, "{label}: the breakdown has the parked goroutines: {rt}");
        assert!(rt["goroutines_by_state_age_seconds"].as_f64().is_some_and(|a| a >= 0.0), "{label}: {rt}");
        assert!(rt["goroutines_by_state_read_cpu_seconds"].as_f64().is_some_and(|c| c > 0.0), "{label}: {rt}");
        // The budget spreads the breakdowns far apart.
        assert!(rt["goroutines_by_state_period_seconds"].as_f64().is_some_and(|p| p > 10.0), "{label}: {rt}");
    }
    // More goroutines parked and exited: the count follows at once, the breakdown stays the one
    // read before (and says how old it is).
    let t0 = Instant::now();
    for g in gs.iter_mut() {
        g.cmd("park 100");
        g.cmd("spawn 3000");
        g.cmd("unpark");
        g.cmd("park 50");
    }
    for g in gs.iter_mut() {
        let t = wait_count(&d, g, "after unpark, park 50", |_| true);
        let rt = &t["runtime"];
        assert!(waiting_on_chan(&t) >= 300, "{}: the breakdown is the earlier one: {rt}", g.label);
        let age = rt["goroutines_by_state_age_seconds"].as_f64().unwrap_or(-1.0);
        assert!(age >= t0.elapsed().as_secs_f64() - 0.5, "{}: breakdown age {age} s: {rt}", g.label);
    }
    // The metric is the same count.
    let m = d.metrics();
    for g in gs.iter_mut() {
        let n = g.cmd("count")[0];
        let p = g.pid.to_string();
        assert_eq!(m.value("chainprobe_go_goroutines", &[("pid", &p)]), n as f64, "{}", g.label);
    }
}

#[test]
fn a_binary_without_what_the_count_needs_is_counted_by_reading_every_g() {
    let _serial = common::serial();
    // The tables without the code reference that finds runtime.allp in stripped binaries.
    let mut tables = common::builtin_go_tables();
    for (_, t) in tables["tables"].as_object_mut().unwrap() {
        t["code_refs"].as_object_mut().unwrap().remove("runtime.allp");
    }
    let dir = common::TempDir::new("goroutine-count-tables");
    let file = common::write_go_tables(&dir, &tables);
    let d = Daemon::start_with("goroutine-count-fallback", "[go]\nread_interval_seconds = 0.2\nread_cpu_budget = 0.000001\n", &[("CHAINPROBE_GO_OFFSETS_FILE", file.to_str().unwrap())]);
    let newest = *common::go_versions().last().unwrap();
    let mut stripped = GoProgram::start("stripped", &common::go_fixture(newest, "stripped", "gorun"));
    let mut symbols = GoProgram::start("with symbols", &common::go_fixture(newest, "default", "gorun"));
    for g in [&mut stripped, &mut symbols] {
        g.cmd("park 200");
        g.cmd("spawn 1000");
    }
    let t = wait_count(&d, &mut stripped, "stripped, no allp", |t| t["runtime"]["goroutines_by_state"].is_array());
    let how = t["runtime"]["goroutines_counted_by"].as_str().unwrap_or("").to_string();
    assert!(how.starts_with("every g read") && how.contains("runtime.allp"), "{how}");
    // The .symtab of the other build still names runtime.allp.
    let t = wait_count(&d, &mut symbols, "with symbols", |_| true);
    assert!(t["runtime"]["goroutines_counted_by"].as_str().unwrap_or("").starts_with("runtime counters"), "{t}");
    // Counted by reading every g: right after every change, and the breakdown is fresh each time
    // (read every interval whatever the budget).
    stripped.cmd("park 77");
    let t = wait_count(&d, &mut stripped, "after park 77", |t| waiting_on_chan(t) >= 277);
    assert!(t["runtime"]["goroutines_by_state_age_seconds"].as_f64().is_some_and(|a| a < 2.0), "{t}");
    assert!(d.log_text().contains("counted by reading every g"), "logged: {}", common::tail(&d.log_text(), 20));
}
