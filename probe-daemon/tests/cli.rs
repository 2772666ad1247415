//! The `chainprobe` command line: check, config, errors a user sees, graceful shutdown.
mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn chainprobe(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chainprobe")).args(args).stdin(Stdio::null()).output().expect("run chainprobe")
}

#[test]
fn check_reports_each_requirement_and_passes_here() {
    let out = chainprobe(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for item in ["BTF", "tracefs", "tracepoint sock:inet_sock_set_state", "tracepoint sched:sched_process_exit", "uprobes", "capabilities: load BPF", "memlock", "fexit (mmap, munmap, brk)"] {
        assert!(text.lines().any(|l| l.contains(item)), "no line for {item}:\n{text}");
    }
    assert!(!text.contains("[FAIL]"), "{text}");
    assert!(text.contains("chainprobe can run here"));
}

#[test]
fn config_prints_the_documented_defaults() {
    let out = chainprobe(&["config"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = \"0.0.0.0:9479\""), "{text}");
    assert!(text.contains("scrape_interval_seconds"));
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = common::TempDir::new("badcfg");
    let f = dir.0.join("c.toml");
    std::fs::write(&f, "[server]\nlisten = \"not an address\"\n").unwrap();
    let out = chainprobe(&["run", "--config", f.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid config file") && err.contains("c.toml"), "{err}");

    let out = chainprobe(&["run", "--config", "/nonexistent/chainprobe.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file /nonexistent/chainprobe.toml"));
}

#[test]
fn busy_listen_address_is_a_clear_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = chainprobe(&["run", "--listen", &addr]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")) && err.contains("--listen"), "{err}");
}

/// Spawns `cmd` (a `chainprobe run` listening on `port`) and waits until /readyz answers 200
/// through 127.0.0.1.
fn start_ready(mut cmd: Command, port: u16) -> (std::process::Child, std::net::SocketAddr) {
    let mut child = cmd.stdout(Stdio::null()).spawn().unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(common::http_get(addr, "/readyz"), Ok((200, _))) {
        assert!(Instant::now() < deadline, "not ready within 60 s");
        assert!(child.try_wait().unwrap().is_none(), "exited early");
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, addr)
}

#[test]
fn sigterm_detaches_and_exits_cleanly_with_json_logs() {
    let dir = common::TempDir::new("sigterm");
    let log = dir.0.join("log");
    let port = common::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chainprobe"));
    cmd.args(["run", "--log-format", "json", "--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::fs::File::create(&log).unwrap());
    let (mut child, _) = start_ready(cmd, port);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not stop within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect();
    assert!(lines.iter().any(|v| v["fields"]["message"].as_str().is_some_and(|m| m.contains("detached"))), "{text}");
    assert!(lines.iter().any(|v| v["fields"]["message"].as_str().is_some_and(|m| m.contains("SIGTERM"))), "{text}");
}

fn get_with(addr: std::net::SocketAddr, path: &str, auth: Option<&str>) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let h = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n{h}Connection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn api_requires_the_bearer_token_when_one_is_set() {
    let port = common::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chainprobe"));
    cmd.args(["run", "--listen", &format!("127.0.0.1:{port}")]).env("CHAINPROBE_API_TOKEN", "s3cret-token").stderr(Stdio::null());
    let (mut child, addr) = start_ready(cmd, port);
    assert_eq!(get_with(addr, "/api/v1/targets", None), 401);
    assert_eq!(get_with(addr, "/api/v1/targets", Some("Bearer wrong")), 401);
    assert_eq!(get_with(addr, "/api/v1/targets", Some("s3cret-token")), 401, "scheme required");
    assert_eq!(get_with(addr, "/api/v1/targets", Some("Bearer s3cret-token")), 200);
    // /metrics and the probes stay open for Prometheus and the kubelet.
    assert_eq!(get_with(addr, "/metrics", None), 200);
    assert_eq!(get_with(addr, "/healthz", None), 200);
    common::stop_child(&mut child);
}

#[test]
fn api_without_a_token_answers_only_on_loopback() {
    let port = common::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chainprobe"));
    cmd.args(["run", "--listen", &format!("0.0.0.0:{port}")]).env_remove("CHAINPROBE_API_TOKEN").stderr(Stdio::null());
    let (mut child, addr) = start_ready(cmd, port);
    assert_eq!(get_with(addr, "/api/v1/targets", None), 403, "no token and not loopback-only: API off");
    assert_eq!(get_with(addr, "/metrics", None), 200);
    common::stop_child(&mut child);
}
