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

/// A Go process busy with TCP and TLS on loopback: handshakes as client and server (TLS 1.3 with
/// h2, TLS 1.2 with http/1.1, failed ones against an unknown CA), connections accepted, a peer
/// that sends plain text to its TLS server (a failed server handshake, closed with unread data:
/// a reset sent) and peers that abort (SO_LINGER 0: resets received). Its per-pid series stay
/// within the budget; the TLS families are per pod by default (`[metrics] tls`; per comm outside
/// pods), and they too fit in one process's budget. Prints the count of every family.
#[test]
fn a_tcp_and_tls_busy_go_process_stays_within_30_series() {
    use std::io::{Read, Write};
    let _serial = common::serial();
    let v = *common::go_versions().last().expect("a Go version");
    let dir = common::TempDir::new("series-budget-tls");
    let mut tls = GoProgram::start(&format!("tlsprobe go{v}"), &common::go_fixture(v, "stripped", "tlsprobe"));
    let d = Daemon::start("series-budget-tls", "[metrics]\nfold_non_go = true\nfold_young_seconds = 30.0\n[health]\ninterval_seconds = 1.0\n[go]\nread_interval_seconds = 0.5\n");
    let pid = tls.pid.to_string();
    d.wait_metrics("the TLS process probed and read", Duration::from_secs(90), |m| m.has("chainprobe_go_goroutines", &[("pid", &pid)]));
    // Go's TLS probes attach once the process is tracked; handshakes from now on are seen.
    tls.cmd("hs 20 1.3 1.3 h2 h2 trusted");
    tls.cmd("hs 10 1.2 1.2 http/1.1 http/1.1 trusted");
    tls.cmd("hs 5 1.3 1.3 - - untrusted");
    let ca = dir.0.join("ca.pem");
    let port = tls.cmd(&format!("serve h2 {}", ca.display()))[0] as u16;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..5 {
        // Plain text to a TLS server: its handshake fails, and it closes with our bytes unread.
        let mut s = std::net::TcpStream::connect(addr).expect("connect to the TLS server");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&vec![b'G'; 256 * 1024]);
        let mut buf = [0u8; 4096];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    }
    for _ in 0..5 {
        // An abort: SO_LINGER 0 makes close send a reset.
        let s = std::net::TcpStream::connect(addr).expect("connect to the TLS server");
        std::thread::sleep(Duration::from_millis(50));
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: setsockopt on our own socket with a valid linger struct.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            )
        };
        drop(s);
    }
    let m = d.wait_metrics("the TLS process's handshakes, accepts and resets", Duration::from_secs(60), |m| {
        let p = [("pid", pid.as_str())];
        m.has("chainprobe_tls_handshakes_total", &[("comm", "tlsprobe")])
            && m.value("chainprobe_tcp_accepts_total", &p) >= 45.0
            && m.value("chainprobe_tcp_resets_received_total", &p) >= 1.0
            && m.has("chainprobe_tls_handshake_failures_total", &[("comm", "tlsprobe")])
            && m.has("chainprobe_health_score", &p)
    });
    // Every TLS label is in the API, whatever the metrics leave out.
    let (status, body) = d.get("/api/v1/targets").expect("GET /api/v1/targets");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("targets JSON");
    let t = v["targets"].as_array().into_iter().flatten().find(|t| t["pid"].as_u64() == Some(u64::from(tls.pid))).expect("the TLS process in the API");
    let hs = t["tls"]["handshakes"].as_array().cloned().unwrap_or_default();
    assert!(hs.iter().any(|h| h["role"] == "server" && h["result"] == "ok" && h["version"] == "1.2" && h["alpn"] == "http/1.1"), "{}", t["tls"]);
    assert!(t["tls"]["durations"].as_array().is_some_and(|d| !d.is_empty()) && t["tls"]["failures"].as_array().is_some_and(|f| !f.is_empty()), "{}", t["tls"]);
    let fam = per_pid(&m).get(&pid).cloned().unwrap_or_default();
    let n: usize = fam.values().sum();
    eprintln!("{} (pid {pid}), TCP and TLS busy: {n} series {fam:#?}", tls.label);
    assert!(!fam.keys().any(|f| f.starts_with("chainprobe_tls_")), "TLS per pod by default, not per pid: {fam:?}");
    assert!(n <= GO_BUDGET, "{} has {n} series (budget {GO_BUDGET}): {fam:?}", tls.label);
    // The TLS families of its scope (comm outside pods), no pid.
    let mut tls_fam: BTreeMap<String, usize> = BTreeMap::new();
    for s in m.samples.iter().filter(|s| s.name.starts_with("chainprobe_tls_") && s.labels.get("comm").map(String::as_str) == Some("tlsprobe")) {
        assert!(!s.labels.contains_key("pid"), "{s:?}");
        let family = s.name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count").to_string();
        *tls_fam.entry(family).or_default() += 1;
    }
    let t: usize = tls_fam.values().sum();
    eprintln!("its TLS families (per comm): {t} series {tls_fam:#?}");
    assert!(tls_fam.contains_key("chainprobe_tls_handshake_duration_seconds"), "{tls_fam:?}");
    assert!(t <= GO_BUDGET, "the TLS families have {t} series: {tls_fam:?}");
}
