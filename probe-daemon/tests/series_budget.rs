//! The series budget, measured on the real daemon's /metrics with the default configuration: N Go
//! processes (the gorun fixture of several Go versions, stripped PIE builds, with GC cycles,
//! stop-the-world pauses and parked goroutines) get at most 30 series each, non-Go processes with
//! events (TCP connects) at most 10 each, plus a constant (chainprobe's own series). Prints the
//! count of every family per Go process, and the GC and pause distributions the histograms saw.
mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{Daemon, GoProgram, Metrics};

const GO_BUDGET: usize = 30;
const NON_GO_BUDGET: usize = 10;
/// chainprobe's own series (per kernel program, build info, …) and the node's: independent of
/// the number of processes.
const CONSTANT: usize = 400;

/// Non-Go children, each connecting (refused) to a closed loopback port every 100 ms for at most
/// `secs` seconds; raw syscalls only.
fn connecting_child(port: u16, secs: u64) -> i32 {
    common::fork_child(move || {
        for _ in 0..secs * 10 {
            // SAFETY: raw syscalls on stack memory.
            unsafe {
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let mut a: libc::sockaddr_in = std::mem::zeroed();
                a.sin_family = libc::AF_INET as u16;
                a.sin_port = port.to_be();
                a.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
                libc::connect(s, (&a as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as u32);
                libc::close(s);
                let t = libc::timespec { tv_sec: 0, tv_nsec: 100_000_000 };
                libc::nanosleep(&t, std::ptr::null_mut());
            }
        }
        0
    })
}

fn per_pid(m: &Metrics) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut out: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for s in &m.samples {
        if let Some(pid) = s.labels.get("pid") {
            let family = s.name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count").to_string();
            *out.entry(pid.clone()).or_default().entry(family).or_default() += 1;
        }
    }
    out
}

#[test]
fn go_processes_stay_within_30_series_and_others_within_10() {
    let _serial = common::serial();
    let versions: Vec<&str> = common::go_versions().into_iter().rev().take(3).collect();
    let mut gos: Vec<GoProgram> = Vec::new();
    for v in &versions {
        for variant in ["stripped", "pie-ext-stripped"] {
            gos.push(GoProgram::start(&format!("go{v}-{variant}"), &common::go_fixture(v, variant, "gorun")));
        }
    }
    let port = common::free_port();
    let kids: Vec<i32> = (0..4).map(|_| connecting_child(port, 120)).collect();
    // Defaults, except a faster health evaluation (so every process has its score) and runtime read.
    // The default folding (the test harness gives other tests per-pid series).
    let d = Daemon::start("series-budget", "[metrics]\nfold_non_go = true\nfold_young_seconds = 30.0\n[health]\ninterval_seconds = 1.0\n[go]\nread_interval_seconds = 0.5\n");
    let pids: Vec<String> = gos.iter().map(|g| g.pid.to_string()).collect();
    d.wait_metrics("every Go process probed and read", Duration::from_secs(90), |m| pids.iter().all(|p| m.has("chainprobe_go_goroutines", &[("pid", p)])));
    for g in gos.iter_mut() {
        g.cmd("park 20");
        g.cmd("alloc 16");
        g.cmd("gc 10");
    }
    d.wait_metrics("every Go process's GC histograms and score", Duration::from_secs(60), |m| {
        pids.iter().all(|p| m.value("chainprobe_go_gc_duration_seconds_count", &[("pid", p)]) >= 10.0 && m.has("chainprobe_health_score", &[("pid", p)]))
    });
    std::thread::sleep(Duration::from_secs(2));
    let m = d.metrics();
    let counts = per_pid(&m);
    let mut worst = 0;
    for (g, pid) in gos.iter().zip(&pids) {
        let fam = counts.get(pid).cloned().unwrap_or_default();
        let n: usize = fam.values().sum();
        eprintln!("{} (pid {pid}): {n} series {fam:?}", g.label);
        worst = worst.max(n);
        assert!(n <= GO_BUDGET, "{} has {n} series (budget {GO_BUDGET}): {fam:?}", g.label);
    }
    // The non-Go children: their comm is this test binary's; count every series of that comm.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", kids[0])).expect("comm of a child").trim().to_string();
    let non_go: usize = m.samples.iter().filter(|s| s.labels.get("comm") == Some(&comm)).count();
    eprintln!("{} non-Go processes ({comm}): {non_go} series", kids.len());
    assert!(m.samples.iter().any(|s| s.name == "chainprobe_tcp_connects_total" && s.labels.get("comm") == Some(&comm)), "the children's connects are counted:\n{}", m.text);
    // The children and this test process itself (it connects to the daemon).
    assert!(non_go <= NON_GO_BUDGET * (kids.len() + 1), "{non_go} series for {} non-Go processes", kids.len() + 1);
    let unlabelled = m.samples.iter().filter(|s| !s.labels.contains_key("pid") && !s.labels.contains_key("comm")).count();
    let total = m.samples.len();
    let others = total - unlabelled - non_go - counts.iter().filter(|(p, _)| pids.contains(p)).map(|(_, f)| f.values().sum::<usize>()).sum::<usize>();
    eprintln!("total {total} series: {unlabelled} without pid/comm, {others} of other processes on the machine; worst Go process {worst}");
    assert!(unlabelled <= CONSTANT, "{unlabelled} series of chainprobe itself");
    // The distributions the budget's buckets were chosen from.
    for fam in ["chainprobe_go_gc_duration_seconds", "chainprobe_go_stw_pause_seconds"] {
        let mut b: BTreeMap<String, f64> = BTreeMap::new();
        for s in m.samples.iter().filter(|s| s.name == format!("{fam}_bucket") && s.labels.get("pid").is_some_and(|p| pids.contains(p))) {
            *b.entry(s.labels["le"].clone()).or_default() += s.value;
        }
        eprintln!("{fam} over the Go processes (cumulative by le): {b:?}");
    }
    for k in kids {
        // SAFETY: our own children.
        unsafe { libc::kill(k, libc::SIGKILL) };
        common::wait_child(k);
    }
}
