//! Go runtime health end to end: real Go programs (tests/fixtures/go/src/gorun, built by
//! `cargo xtask fixtures` with Go 1.19 and 1.27, stripped and not, PIE and not) driven over stdin,
//! the real daemon probing them, and the scraped numbers checked against what the programs say.
mod common;

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Daemon, Metrics};

const VERSIONS: &[&str] = &["1.19", "1.27"];
const VARIANTS: &[&str] = &["default", "stripped", "pie", "pie-stripped"];

fn fixtures_root() -> PathBuf {
    std::env::var_os("CHAINPROBE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/go-fixtures"))
}

/// Every (label, path) of the gorun fixture matrix; fails when the fixtures were not built.
fn fixtures() -> Vec<(String, PathBuf)> {
    let root = fixtures_root();
    let mut out = Vec::new();
    for v in VERSIONS {
        let dir = std::fs::read_dir(&root)
            .unwrap_or_else(|e| panic!("no Go fixtures in {} ({e}): run `cargo xtask fixtures` first", root.display()))
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n == *v || n.starts_with(&format!("{v}."))))
            .unwrap_or_else(|| panic!("no Go {v} fixtures in {}: run `cargo xtask fixtures`", root.display()));
        for variant in VARIANTS {
            let p = dir.join(variant).join("gorun");
            assert!(p.is_file(), "missing fixture {}: run `cargo xtask fixtures`", p.display());
            out.push((format!("go{}-{variant}", dir.file_name().unwrap().to_string_lossy()), p));
        }
    }
    out
}

/// A running gorun, killed when dropped.
struct Gorun {
    label: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
}

impl Gorun {
    fn start(label: &str, path: &PathBuf) -> Gorun {
        let mut child = Command::new(path)
            .env("GOMAXPROCS", "2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready"), "{label}: {line}");
        let pid = child.id();
        Gorun { label: label.to_string(), child, stdin, stdout, pid }
    }

    /// Sends a command; returns the reply's words after "ok".
    fn cmd(&mut self, c: &str) -> Vec<i64> {
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("ok"), "{}: {c} -> {line:?}", self.label);
        words.map(|w| w.parse().unwrap()).collect()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Gorun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

const GO_CFG: &str = "[go]\nread_interval_seconds = 0.2\n";

#[test]
fn attaches_to_running_and_new_go_processes_of_every_build() {
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
                    let probes = x["probes"].as_array().unwrap();
                    assert_eq!(probes.len(), 4, "{}: {x}", g.label);
                    for pr in probes {
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
        let deadline = Instant::now() + Duration::from_secs(5);
        let m = loop {
            let n = g.cmd("count")[0];
            let m = d.metrics();
            let seen = go_value(&m, "chainprobe_go_goroutines", pid, &[]);
            if seen == n as f64 && go_value(&m, "chainprobe_go_goroutines_created_total", pid, &[]) >= created0 + 240.0 - 32.0 {
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
        let stw = |m: &Metrics, reason: &str| go_value(m, "chainprobe_go_stw_pause_seconds_count", pid, &[("reason", reason)]);
        let (sweep0, mark0, unk0) = (stw(&before, "gc_sweep_termination"), stw(&before, "gc_mark_termination"), stw(&before, "unknown"));
        g.cmd("gc 4");
        let m = d.wait_metrics(&format!("{label}: 4 GC cycles"), Duration::from_secs(5), |m| {
            go_value(m, "chainprobe_go_gc_cycles_total", pid, &[]) >= gc0 + 4.0
        });
        std::thread::sleep(Duration::from_millis(300));
        let m2 = d.metrics();
        assert_eq!(go_value(&m2, "chainprobe_go_gc_cycles_total", pid, &[]), gc0 + 4.0, "{label}: exactly 4 cycles");
        // A cycle already running when the probes were attached has no known start; these 4 do.
        let _ = m;
        assert_eq!(go_value(&m2, "chainprobe_go_gc_duration_seconds_count", pid, &[]) - dur0, 4.0, "{label}: a duration per cycle");
        if minor >= 21 {
            assert_eq!(stw(&m2, "gc_sweep_termination") - sweep0, 4.0, "{label}");
            assert_eq!(stw(&m2, "gc_mark_termination") - mark0, 4.0, "{label}");
        } else {
            assert_eq!(stw(&m2, "unknown") - unk0, 8.0, "{label}: two pauses per cycle");
        }

        // Heap: retain 64 MiB, then compare with runtime.ReadMemStats.
        g.cmd("alloc 64");
        g.cmd("gc 1");
        let mem = g.cmd("mem");
        let (heap_alloc, next_gc) = (mem[1] as f64, mem[2] as f64);
        let numgc = mem[0];
        let m = d.wait_metrics(&format!("{label}: heap read after the GC"), Duration::from_secs(5), |m| {
            go_value(m, "chainprobe_go_heap_goal_bytes", pid, &[]) > 64.0 * 1048576.0
        });
        let live = go_value(&m, "chainprobe_go_heap_live_bytes", pid, &[]);
        let goal = go_value(&m, "chainprobe_go_heap_goal_bytes", pid, &[]);
        assert!((live - heap_alloc).abs() <= heap_alloc * 0.10, "{label}: heap live {live} vs HeapAlloc {heap_alloc}");
        assert!((goal - next_gc).abs() <= next_gc * 0.10, "{label}: heap goal {goal} vs NextGC {next_gc}");
        // memstats.numgc read from memory matches the program's own count (the next read).
        let deadline = Instant::now() + Duration::from_secs(5);
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
