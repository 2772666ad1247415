//! The debug chain: a Go service with a debugger attached, or stopped (at a breakpoint, by
//! SIGSTOP), is an outage. chainprobe reads each process's TracerPid and state with its
//! memory-map counts and shows them: `chainprobe_process_traced` / `chainprobe_process_stopped`,
//! the `traced` and `stopped_seconds` health signals, and the tracer (pid, comm) in
//! `GET /api/v1/targets`; all of it clears when the tracer detaches or the process runs again.
mod common;

use std::time::{Duration, Instant};

use common::{serial, trace, wait_child, Daemon};
use serde_json::Value;

fn target(d: &Daemon, pid: u32) -> Option<Value> {
    let (status, body) = d.get("/api/v1/targets").expect("GET /api/v1/targets");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v["targets"].as_array()?.iter().find(|t| t["pid"] == pid).cloned()
}

/// Waits (bounded) until `pred` holds for the target `pid`; the target.
fn wait_target(d: &Daemon, pid: u32, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(t) = target(d, pid).filter(|t| pred(t)) {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: target {pid} is {:?}\n{}", target(d, pid), test_support::tail(&d.log_text(), 20));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal_state(t: &Value, name: &str) -> String {
    t["health"]["signals"].as_array().into_iter().flatten().find(|s| s["name"] == name).map(|s| s["state"].as_str().unwrap_or("").to_string()).unwrap_or_default()
}

#[test]
fn a_traced_or_stopped_go_process_shows_with_its_tracer_and_clears() {
    let _g = serial();
    let d = Daemon::start("debug-chain", "[health]\ninterval_seconds = 0.5\n");
    let bin = common::go_fixture("1.27", "stripped", "crasher");
    let mut app = test_support::GoProgram::start("crasher", &bin);
    app.cmd("park 10");
    let pid = app.pid;
    let ps = pid.to_string();
    wait_target(&d, pid, "tracked", |t| t["exe"].is_string());
    assert!(!d.metrics().has("chainprobe_process_traced", &[("pid", &ps)]), "not traced yet");

    // A tracer attaches (PTRACE_SEIZE from a child of this test, passing signals on).
    let stop = d.dir().join("detach");
    let tracer = trace(pid, &stop);
    let t = wait_target(&d, pid, "the tracer named", |t| t["debug"]["tracer_pid"] == tracer);
    let tracer_comm = std::fs::read_to_string(format!("/proc/{tracer}/comm")).unwrap_or_default().trim().to_string();
    assert!(!tracer_comm.is_empty());
    assert_eq!(t["debug"]["tracer_comm"], tracer_comm.as_str(), "the tracer's comm: {t}");
    let t = wait_target(&d, pid, "the traced signal", |t| signal_state(t, "traced") == "warn");
    assert!(t["debug"]["traced_seconds"].as_f64().is_some(), "{t}");
    let m = d.wait_metrics("chainprobe_process_traced", Duration::from_secs(10), |m| m.value("chainprobe_process_traced", &[("pid", &ps)]) == 1.0);
    assert!(!m.has("chainprobe_process_stopped", &[("pid", &ps)]), "traced but running: not stopped");
    // The process still runs under the tracer.
    assert!(app.cmd("park 1").first().is_some_and(|&n| n >= 11));

    // It detaches: everything clears.
    std::fs::write(&stop, b"").expect("stop file");
    assert_eq!(wait_child(tracer) & 0xff00, 0, "the tracer ended cleanly");
    wait_target(&d, pid, "the tracer gone", |t| t["debug"].is_null() && signal_state(t, "traced") != "warn");
    d.wait_metrics("chainprobe_process_traced gone", Duration::from_secs(10), |m| !m.has("chainprobe_process_traced", &[("pid", &ps)]));

    // Stopped (SIGSTOP) for a few seconds: the stopped series and the signal, growing to
    // critical past 10 s is left out (bounded test); warn after a second.
    // SAFETY: stops the process this test started.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let t = wait_target(&d, pid, "stopped for a second", |t| t["debug"]["stopped_seconds"].as_f64().is_some_and(|s| s >= 1.0) && signal_state(t, "stopped_seconds") == "warn");
    assert!(t["debug"]["tracer_pid"].is_null(), "stopped, no tracer: {t}");
    d.wait_metrics("chainprobe_process_stopped", Duration::from_secs(10), |m| m.value("chainprobe_process_stopped", &[("pid", &ps)]) == 1.0);
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    wait_target(&d, pid, "running again", |t| t["debug"].is_null());
    d.wait_metrics("chainprobe_process_stopped gone", Duration::from_secs(10), |m| !m.has("chainprobe_process_stopped", &[("pid", &ps)]));
    assert!(app.cmd("park 1").first().is_some_and(|&n| n >= 12), "it runs again");
}
