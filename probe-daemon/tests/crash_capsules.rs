//! Crash capsules end to end: the real daemon and the `crasher` fixture (tests/fixtures/go/src/
//! crasher) dying each way a Go service dies, on Go 1.19, 1.26 and 1.27, plain and stripped. Each
//! capsule's kind, message and top frame (function and the line the fixture marks with
//! `// CRASH:<kind>`) are exact; the process was paused, its goroutine profile holds the parked
//! goroutines; its exit status and panic output are the same as without chainprobe. Then the
//! safety of pauses: a daemon killed while a process is stopped, a bound too short, 50 crashes
//! at once, and a debugger-attached process that is never paused.
mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{pprof, serial, trace, wait_child, Daemon, MemCgroup};
use serde_json::Value;

const VERSIONS: [&str; 3] = ["1.19", "1.26", "1.27"];
const VARIANTS: [&str; 2] = ["default", "stripped"];
const PARKED: usize = 50;

/// (kind, capsule kind, message) of each crash the fixture offers. A panic's message is what Go
/// prints after "panic: ": by the time runtime.fatalpanic runs, the runtime has replaced error
/// values with their Error() text (preprintpanics), so custom errors read exactly too.
const KINDS: [(&str, &str, &str); 10] = [
    ("panic-string", "panic", "chainprobe fixture: boom"),
    ("panic-error", "panic", "chainprobe fixture: error value"),
    ("panic-wrapped", "panic", "chainprobe fixture: saving state: disk full"),
    ("panic-custom", "panic", "config line 7: chainprobe fixture: bad port"),
    ("nil-map", "panic", "assignment to entry in nil map"),
    ("nil-deref", "panic", "runtime error: invalid memory address or nil pointer dereference"),
    ("index", "panic", "runtime error: index out of range [5] with length 3"),
    ("concurrent-map", "fatal_error", "concurrent map writes"),
    ("stack-overflow", "fatal_error", "stack overflow"),
    ("log-fatal", "exit", "os.Exit(1)"),
];

fn crasher(version: &str, variant: &str) -> PathBuf {
    common::go_fixture(version, variant, "crasher")
}

/// The line of the fixture's source marked `// CRASH:<kind>`.
fn marked_line(kind: &str) -> i64 {
    let src = include_str!("../../tests/fixtures/go/src/crasher/main.go");
    let tag = format!("// CRASH:{kind}");
    src.lines().position(|l| l.trim_end().ends_with(&tag)).map(|i| i as i64 + 1).unwrap_or_else(|| panic!("no {tag} in crasher/main.go"))
}

/// A running crasher: commands on stdin, replies on stdout, stderr to a file.
struct Crasher {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
    stderr: PathBuf,
    pid: u32,
}

impl Crasher {
    fn start(bin: &Path, stderr: PathBuf) -> Crasher {
        Self::start_with(bin, stderr, |_| {})
    }

    /// As [`Crasher::start`], `setup` changing the command first (e.g. a cgroup to start in).
    fn start_with(bin: &Path, stderr: PathBuf, setup: impl FnOnce(&mut Command)) -> Crasher {
        let err = std::fs::File::create(&stderr).expect("stderr file");
        let mut cmd = Command::new(bin);
        cmd.env("GOMAXPROCS", "2").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(err);
        setup(&mut cmd);
        let mut child = cmd.spawn().expect("start crasher");
        let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        let mut c = Crasher { pid: child.id(), child, stdin, stdout: BufReader::new(stdout), stderr };
        let ready = c.line();
        assert!(ready.starts_with("ready "), "crasher said {ready:?}");
        c
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.stdout.read_line(&mut l).expect("read crasher");
        l.trim().to_string()
    }

    fn cmd(&mut self, c: &str) -> String {
        writeln!(self.stdin, "{c}").expect("write crasher");
        self.stdin.flush().unwrap();
        let l = self.line();
        assert!(l.starts_with("ok"), "crasher: {c} -> {l:?}");
        l
    }

    fn crash(&mut self, kind: &str) {
        writeln!(self.stdin, "crash {kind}").expect("write crasher");
        self.stdin.flush().unwrap();
    }

    /// Waits for it to die (bounded): (exit status text, the first block of stderr normalised).
    fn wait(&mut self, within: Duration) -> (String, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("crasher {} did not exit within {within:?}", self.pid);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        (format!("{status}"), first_block(&std::fs::read_to_string(&self.stderr).unwrap_or_default()))
    }
}

impl Drop for Crasher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The panic/fatal error line(s) Go prints first, up to the first blank line, with addresses
/// and timestamps masked.
fn first_block(stderr: &str) -> String {
    let block: Vec<String> = stderr
        .lines()
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let mut out = String::new();
            let mut it = l.split(' ');
            while let Some(w) = it.next() {
                if !out.is_empty() {
                    out.push(' ');
                }
                let masked = if w.contains("0x") || w.chars().filter(|c| *c == ':' || *c == '/').count() >= 2 && w.chars().any(|c| c.is_ascii_digit()) { "#" } else { w };
                out.push_str(masked);
            }
            out
        })
        .collect();
    block.join("\n")
}

/// The daemon for these tests: every crash gets a capsule (no crash-loop cooldown); a generous
/// pause bound for a loaded CI machine. `extra`: more `[crash]` settings.
fn daemon(tag: &str, extra: &str) -> Daemon {
    let bound = if extra.contains("max_pause_ms") { "" } else { "max_pause_ms = 2000\n" };
    Daemon::start(tag, &format!("[go]\nread_interval_seconds = 0.5\n[crash]\ncooldown_seconds = 0.0\n{bound}{extra}"))
}

fn json(d: &Daemon, path: &str) -> Value {
    let (status, body) = d.get(path).expect("GET");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

fn wait_tracked(d: &Daemon, pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let t = json(d, "/api/v1/targets");
        if t["targets"].as_array().is_some_and(|a| a.iter().any(|t| t["pid"] == pid && t["exe"].is_string())) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("process {pid} not tracked within 30 s:\n{}", test_support::tail(&d.log_text(), 30));
}

/// The crash snapshot of `pid` (waits for it).
fn capsule_of(d: &Daemon, pid: u32) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = json(d, "/api/v1/snapshots");
        let found = list["snapshots"].as_array().and_then(|a| a.iter().find(|s| s["pid"] == pid && s["trigger"] == "crash").cloned());
        if let Some(s) = found.filter(|s| s["status"] == "done") {
            return s;
        }
        if Instant::now() > deadline {
            panic!("no crash capsule for {pid}; snapshots: {list}\n{}", test_support::tail(&d.log_text(), 40));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `kind` without chainprobe: (status, first block of stderr).
fn baseline(bin: &Path, kind: &str, dir: &Path) -> (String, String) {
    let mut c = Crasher::start(bin, dir.join(format!("baseline-{kind}.stderr")));
    c.cmd(&format!("park {PARKED}"));
    c.crash(kind);
    c.wait(Duration::from_secs(20))
}

#[test]
fn every_kind_of_crash_gets_an_exact_capsule() {
    let _g = serial();
    let tmp = std::env::temp_dir().join(format!("chainprobe-crash-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    // Without chainprobe first: what each crash prints and how it exits.
    let mut base = BTreeMap::new();
    for v in VERSIONS {
        for var in VARIANTS {
            for (kind, ..) in KINDS {
                base.insert((v, var, kind), baseline(&crasher(v, var), kind, &tmp));
            }
        }
    }
    let d = daemon("crash-kinds", "");
    let mut failures = Vec::new();
    for v in VERSIONS {
        for var in VARIANTS {
            let bin = crasher(v, var);
            for (kind, want_kind, want_msg) in KINDS {
                let ctx = format!("go {v} {var} {kind}");
                let mut c = Crasher::start(&bin, tmp.join(format!("{v}-{var}-{kind}.stderr")));
                c.cmd(&format!("park {PARKED}"));
                wait_tracked(&d, c.pid);
                c.crash(kind);
                let outcome = c.wait(Duration::from_secs(20));
                let (status, block) = &base[&(v, var, kind)];
                if &outcome.0 != status || (kind != "concurrent-map" && &outcome.1 != block) || !outcome.1.starts_with(block.lines().next().unwrap_or("")) {
                    failures.push(format!("{ctx}: with chainprobe {outcome:?}, without {:?}", (status, block)));
                }
                let s = capsule_of(&d, c.pid);
                let cap = &s["capsule"];
                let check = |ok: bool, what: &str, failures: &mut Vec<String>| {
                    if !ok {
                        failures.push(format!("{ctx}: {what}: {}", serde_json::to_string(&s).unwrap_or_default()));
                    }
                };
                check(cap["kind"] == want_kind, "kind", &mut failures);
                check(cap["message"]["text"] == want_msg, "message", &mut failures);
                check(cap["paused"] == true, "paused", &mut failures);
                let top = &cap["top_frame"];
                let want_fn = match kind {
                    "panic-string" => "main.panicString",
                    "panic-error" => "main.panicError",
                    "panic-wrapped" => "main.panicWrapped",
                    "panic-custom" => "main.panicCustom",
                    "nil-map" => "main.nilMap",
                    "nil-deref" => "main.nilDeref",
                    "index" => "main.index",
                    "concurrent-map" => "main.mapWriter",
                    "stack-overflow" => "main.recurse",
                    _ => "main.logFatal",
                };
                check(top["function"] == want_fn && top["line"] == marked_line(kind), &format!("top frame (want {want_fn}:{})", marked_line(kind)), &mut failures);
                check(cap["goid"].as_u64().is_some_and(|g| g > 0), "goroutine id", &mut failures);
                let pid = c.pid.to_string();
                let counted = d.metrics().value("chainprobe_go_crashes_total", &[("pid", &pid), ("kind", want_kind)]);
                check(counted == 1.0, &format!("chainprobe_go_crashes_total{{kind={want_kind}}} = {counted}"), &mut failures);
                // The goroutine profile, read while the process was paused: the parked ones.
                match s["files"]["goroutine"]["file"].as_str() {
                    Some(f) => {
                        let top = pprof("1.27", &["-top", "-nodecount=200"], &d.dir().join("snapshots").join(f));
                        // flat flat% sum% cum cum% name: the cumulative count.
                        let parked = top.lines().find(|l| l.contains("main.parked")).and_then(|l| l.split_whitespace().nth(3)).and_then(|n| n.parse::<usize>().ok());
                        check(parked.is_some_and(|n| n >= PARKED), &format!("{PARKED} parked goroutines in the profile:\n{top}"), &mut failures);
                    }
                    None => check(false, "a goroutine profile", &mut failures),
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
}

/// The state letter of /proc/PID/stat.
fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}

fn wait_state(pid: u32, want: char, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if proc_state(pid) == Some(want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Each thread of `pid`: its state letter and /proc/PID/task/TID/syscall (what the keeper reads).
fn thread_report(pid: u32) -> String {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let state = stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3)).unwrap_or("?").to_string();
        let syscall = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
        out.push(format!("{} {state} [{}]", t.file_name().to_string_lossy(), syscall.trim()));
    }
    out.join("; ")
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill with plain integers; the pid is a process this test started.
    unsafe { libc::kill(pid as i32, sig) };
}

#[test]
fn a_daemon_killed_while_a_process_is_stopped_resumes_it_when_it_starts_again() {
    let _g = serial();
    let state = std::env::temp_dir().join(format!("chainprobe-crash-state-{}", std::process::id()));
    let extra = format!("state_dir = \"{}\"\nmax_pause_ms = 10000\n", state.display());
    let bin = crasher("1.27", "stripped");
    let a = daemon("crash-restart-a", &extra);
    let mut c = Crasher::start(&bin, a.dir().join("crasher.stderr"));
    c.cmd("park 10");
    wait_tracked(&a, c.pid);
    // The daemon cannot act (stopped), the kernel still stops the crashing process.
    signal(a.pid(), libc::SIGSTOP);
    c.crash("panic-string");
    assert!(wait_state(c.pid, 'T', Duration::from_secs(5)), "the crashing process is stopped by the kernel: state {:?}", proc_state(c.pid));
    signal(a.pid(), libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(proc_state(c.pid), Some('T'), "still stopped after the daemon died");
    let threads = thread_report(c.pid);
    let b = daemon("crash-restart-b", &extra);
    let resumed = (0..400).any(|_| proc_state(c.pid) != Some('T') || {
        std::thread::sleep(Duration::from_millis(50));
        false
    });
    assert!(resumed, "the new daemon did not resume {} within 20 s (state {:?}; its threads before it started: {threads}):\n{}", c.pid, proc_state(c.pid), test_support::tail(&b.log_text(), 40));
    let (status, block) = c.wait(Duration::from_secs(20));
    assert_eq!(status, "exit status: 2", "{}", test_support::tail(&b.log_text(), 30));
    assert!(block.starts_with("panic: chainprobe fixture: boom"), "{block}");
    assert!(b.log_text().contains("resumed"), "the new daemon says it resumed it:\n{}", test_support::tail(&b.log_text(), 30));
    drop(a);
    let _ = std::fs::remove_dir_all(state);
}

#[test]
fn a_pause_bound_too_short_resumes_the_process_with_a_partial_capsule() {
    let _g = serial();
    let d = daemon("crash-bound", "max_pause_ms = 1\n");
    let mut c = Crasher::start(&crasher("1.27", "default"), d.dir().join("crasher.stderr"));
    c.cmd("park 2000");
    wait_tracked(&d, c.pid);
    c.crash("nil-map");
    let (status, block) = c.wait(Duration::from_secs(20));
    assert_eq!(status, "exit status: 2");
    assert!(block.starts_with("panic: assignment to entry in nil map"), "{block}");
    let s = capsule_of(&d, c.pid);
    let cap = &s["capsule"];
    assert_eq!(cap["message"]["text"], "assignment to entry in nil map", "{s}");
    assert_eq!(cap["top_frame"]["function"], "main.nilMap", "{s}");
    assert!(cap["partial"].as_str().is_some_and(|p| p.contains("pause bound")), "the capsule says the bound ended the pause: {s}");
}

/// The crash workers' counters (GET /api/v1/snapshots, `crashes`).
fn crash_stats(d: &Daemon) -> Value {
    json(d, "/api/v1/snapshots")["crashes"].clone()
}

#[test]
fn fifty_crashes_at_once_are_all_counted_and_pauses_stay_bounded() {
    let _g = serial();
    const N: usize = 50;
    let d = daemon("crash-fifty", "");
    let bin = crasher("1.27", "stripped");
    let mut procs: Vec<Crasher> = (0..N).map(|i| Crasher::start(&bin, d.dir().join(format!("crasher-{i}.stderr")))).collect();
    for c in &mut procs {
        c.cmd("park 20");
    }
    for c in &procs {
        wait_tracked(&d, c.pid);
    }
    // Let every process's crash probes and pause permission be in place (read every 0.5 s).
    std::thread::sleep(Duration::from_secs(1));
    for c in &mut procs {
        c.crash("panic-string");
    }
    let mut problems = Vec::new();
    for c in &mut procs {
        let (status, block) = c.wait(Duration::from_secs(30));
        if status != "exit status: 2" || !block.starts_with("panic: chainprobe fixture: boom") {
            problems.push(format!("{}: {status}: {block}", c.pid));
        }
    }
    assert!(problems.is_empty(), "crashes that did not end as without chainprobe:\n{}", problems.join("\n"));
    // Every crash reaches the workers: a capsule each (no crash-loop cooldown here).
    let deadline = Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let s = crash_stats(&d);
        if s["capsules"].as_u64().unwrap_or(0) + s["suppressed"].as_u64().unwrap_or(0) + s["dropped"].as_u64().unwrap_or(0) >= N as u64 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(stats["capsules"], N as u64, "a capsule for each crash: {stats}\n{}", test_support::tail(&d.log_text(), 30));
    let p = &stats["pauses"];
    assert!(p["held_at_once_max"].as_u64().is_some_and(|n| (1..=4).contains(&n)), "at most max_concurrent_pauses (4) held at once: {stats}");
    assert!(p["held_max_seconds"].as_f64().is_some_and(|s| s <= 2.5), "no pause beyond the bound (2 s here): {stats}");
    let paused = p["paused"].as_u64().unwrap_or(0);
    let resumed = ["resumed_done", "resumed_bound", "resumed_aborted"].iter().map(|k| p[*k].as_u64().unwrap_or(0)).sum::<u64>();
    assert_eq!(paused, resumed, "every pause ended: {stats}");
    let list = json(&d, "/api/v1/snapshots");
    let capsules: Vec<&Value> = list["snapshots"].as_array().into_iter().flatten().filter(|s| s["trigger"] == "crash").collect();
    for c in &procs {
        let s = capsules.iter().find(|s| s["pid"] == c.pid);
        assert!(s.is_some_and(|s| s["capsule"]["message"]["text"] == "chainprobe fixture: boom"), "the capsule of {}: {s:?}", c.pid);
    }
    // Counted per process (each exited process's series lasts until it was scraped once) and
    // node-wide.
    let m = d.metrics();
    let counted = m.sum("chainprobe_go_crashes_total", &[("kind", "panic")]);
    assert_eq!(counted, N as f64, "chainprobe_go_crashes_total{{kind=panic}} over the {N} processes");
    assert_eq!(m.value("chainprobe_crash_capsules_total", &[("result", "stored")]), N as f64);
    assert_eq!(m.value("chainprobe_crash_pauses_total", &[("result", "limit")]), p["resumed_limit"].as_f64().unwrap_or(-1.0));
}

#[test]
fn a_process_under_a_debugger_is_not_paused_and_dies_as_it_would() {
    let _g = serial();
    let d = daemon("crash-traced", "");
    let mut c = Crasher::start(&crasher("1.27", "default"), d.dir().join("crasher.stderr"));
    c.cmd("park 10");
    wait_tracked(&d, c.pid);
    let tracer = trace(c.pid, &d.dir().join("never"));
    let traced = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default().lines().any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !traced(c.pid) {
        assert!(Instant::now() < deadline, "the test's tracer did not attach");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The daemon re-checks TracerPid every read interval (0.5 s here).
    std::thread::sleep(Duration::from_millis(1500));
    c.crash("panic-string");
    let (status, block) = c.wait(Duration::from_secs(20));
    assert_eq!(status, "exit status: 2");
    assert!(block.starts_with("panic: chainprobe fixture: boom"), "{block}");
    assert_eq!(wait_child(tracer) & 0xff00, 0, "the tracer ended cleanly");
    let s = capsule_of(&d, c.pid);
    let cap = &s["capsule"];
    assert_eq!(cap["paused"], false, "a traced process is never stopped: {s}");
    assert!(cap["partial"].as_str().is_some_and(|p| p.contains("debugger")), "the capsule says why it has no profiles: {s}");
    assert_eq!(cap["message"]["text"], "chainprobe fixture: boom", "{s}");
    assert_eq!(crash_stats(&d)["pauses"]["paused"], 0, "nothing paused");
}

#[test]
fn an_oom_kill_gets_a_capsule_with_the_heap_profile_taken_near_the_limit() {
    let _g = serial();
    let d = daemon("crash-oom", "memory_watch_ratio = 0.7\nmemory_watch_interval_seconds = 0.5\n");
    for v in VERSIONS {
        for var in VARIANTS {
            oom_case(&d, v, var);
        }
    }
}

/// One OOM kill of the Go `version`/`variant` crasher in a memory cgroup of its own.
fn oom_case(d: &Daemon, version: &str, variant: &str) {
    let cg = MemCgroup::create(&format!("crash-oom-{version}-{variant}"), 256 << 20);
    let bin = crasher(version, variant);
    let mut c = Crasher::start_with(&bin, d.dir().join(format!("crasher-{version}-{variant}.stderr")), |cmd| cg.place(cmd));
    wait_tracked(&d, c.pid);
    // 200 MiB kept by main.hoard: above 70% of the 256 MiB limit.
    c.cmd("alloc 204800");
    // Near the limit: the watch takes a heap snapshot (more as usage grows; the newest counts).
    let pid = c.pid;
    let near_limit = |d: &Daemon| -> Vec<Value> {
        json(d, "/api/v1/snapshots")["snapshots"].as_array().into_iter().flatten().filter(|s| s["pid"] == pid && s["trigger"] == "memory-limit" && s["status"] == "done").cloned().collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while near_limit(&d).is_empty() {
        assert!(Instant::now() < deadline, "go {version} {variant}: no memory-limit heap snapshot of {}\n{}", c.pid, test_support::tail(&d.log_text(), 30));
        std::thread::sleep(Duration::from_millis(100));
    }
    c.crash("oom");
    let (status, _) = c.wait(Duration::from_secs(60));
    assert_eq!(status, "signal: 9 (SIGKILL)", "go {version} {variant}: OOM-killed");
    // The series of an exited process that nobody scrapes go after four scrape intervals (4 s
    // here): read the count first, before the slow checks below (pprof is built on first use).
    let pid = c.pid.to_string();
    let m = d.wait_metrics(&format!("go {version} {variant}: the OOM kill of {pid} counted"), Duration::from_secs(3), |m| m.has("chainprobe_go_crashes_total", &[("pid", &pid), ("kind", "oom_kill")]));
    assert_eq!(m.value("chainprobe_go_crashes_total", &[("pid", &pid), ("kind", "oom_kill")]), 1.0);
    let s = capsule_of(&d, c.pid);
    let cap = &s["capsule"];
    assert_eq!(cap["kind"], "oom_kill", "{s}");
    // The capsule names the newest heap profile of the process, one the watch took.
    let taken = near_limit(&d);
    let newest = taken.iter().max_by_key(|m| m["created_ms"].as_u64()).expect("memory-limit snapshots");
    assert_eq!(cap["heap_profile_snapshot"], newest["id"], "the capsule points at the newest heap profile taken near the limit: {s}\n{taken:?}");
    let age = cap["heap_profile_age_seconds"].as_f64().unwrap_or(-1.0);
    let expected = (s["created_ms"].as_f64().unwrap_or(0.0) - newest["created_ms"].as_f64().unwrap_or(0.0)) / 1e3;
    assert!(age >= 0.0 && (age - expected).abs() < 1.0, "its age {age} s, from the two snapshots' times {expected} s: {s}");
    let heap = d.dir().join("snapshots").join(newest["files"]["heap"]["file"].as_str().expect("a heap file"));
    let top = pprof("1.27", &["-top", "-sample_index=inuse_space"], &heap);
    assert!(top.lines().any(|l| l.contains("main.hoard")), "the heap profile shows the hoarding function:\n{top}");
}
