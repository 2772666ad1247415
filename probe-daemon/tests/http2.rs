//! HTTP/2 control frames end to end (issue #18): the real daemon probing real Go programs.
//! tests/fixtures/go/src/h2probe runs as two processes, a server and a client (Go's HTTP/2 over
//! TLS on loopback), and provokes every path deterministically: handlers that abort (RST_STREAM
//! INTERNAL_ERROR from the server), requests the client cancels (RST_STREAM CANCEL), a stream past
//! the server's limit (REFUSED_STREAM), a malformed frame (GOAWAY PROTOCOL_ERROR), a peer's GOAWAY
//! with an error code and debug data (and the server's graceful answer) and a graceful shutdown
//! (GOAWAY NO_ERROR). The counts of both processes, by direction and code, must be exact; for Go
//! 1.19, 1.26 (the common release in production) and 1.27 (newest), stripped and not; and the
//! same over h2c (HTTP/2 without TLS, net/http's Protocols: Go 1.24+). The server's health shows
//! the peer's GOAWAY with an error code. One daemon serves every case.
mod common;

use std::time::{Duration, Instant};

use common::{Daemon, GoProgram, Metrics};

const GOAWAYS: &str = "chainprobe_http2_goaways_total";
const RESETS: &str = "chainprobe_http2_stream_resets_total";
const CASES: &[(&str, &str)] = &[("1.19", "default"), ("1.19", "stripped"), ("1.26", "stripped"), ("1.27", "default"), ("1.27", "stripped")];

fn targets(d: &Daemon) -> serde_json::Value {
    let (code, body) = d.get("/api/v1/targets").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn target(d: &Daemon, pid: u32) -> Option<serde_json::Value> {
    targets(d)["targets"].as_array().and_then(|a| a.iter().find(|x| x["pid"].as_u64() == Some(u64::from(pid))).cloned())
}

/// Waits until `pid` is tracked with all four HTTP/2 programs attached (one site each: std's
/// HTTP/2 only in this program). Generous: a debug build of the daemon reads a net/http
/// binary's DWARF in seconds, more while other builds share the two cores.
fn wait_http2_attached(d: &Daemon, label: &str, pid: u32) {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(60);
    loop {
        if let Some(t) = target(d, pid) {
            let h2: Vec<(String, String, String, u64)> = t["probes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["name"].as_str().unwrap().starts_with("go_http2_"))
                .map(|p| (p["name"].as_str().unwrap().into(), p["function"].as_str().unwrap().into(), p["state"].as_str().unwrap().into(), p["sites"].as_u64().unwrap()))
                .collect();
            assert_eq!(h2.len(), 4, "{label}: {h2:?}");
            for (name, function, state, sites) in &h2 {
                assert_eq!((state.as_str(), *sites), ("attached", 1), "{label}: {name} {function}");
                assert!(function.starts_with("net/http"), "{label}: {function}");
            }
            eprintln!("{label}: pid {pid} tracked with the HTTP/2 probes after {:?}", t0.elapsed());
            return;
        }
        assert!(Instant::now() < deadline, "{label} (pid {pid}) not tracked; daemon log:\n{}", common::tail(&d.log_text(), 40));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sum(m: &Metrics, name: &str, pid: &str) -> f64 {
    m.samples.iter().filter(|s| s.name == name && s.labels.get("pid").map(String::as_str) == Some(pid)).map(|s| s.value).sum()
}

/// (direction, code) → count of `name` for `pid`.
fn counts(m: &Metrics, name: &str, pid: &str) -> Vec<(String, String, f64)> {
    let mut v: Vec<(String, String, f64)> = m
        .samples
        .iter()
        .filter(|s| s.name == name && s.labels.get("pid").map(String::as_str) == Some(pid))
        .map(|s| (s.labels["direction"].clone(), s.labels["code"].clone(), s.value))
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

fn c(direction: &str, code: &str, n: f64) -> (String, String, f64) {
    (direction.to_string(), code.to_string(), n)
}

type Frames = Vec<(String, String, f64)>;

/// Waits until the server (`sp`) and the client (`cp`) have as many GOAWAYs and RST_STREAMs as
/// expected, then checks the exact counts by direction and code in that scrape and in one 300 ms
/// later (late frames would show there). Returns the first scrape.
fn expect_frames(d: &Daemon, label: &str, (sp, cp): (&str, &str), server: (Frames, Frames), client: (Frames, Frames)) -> Metrics {
    let total = |f: &Frames| f.iter().map(|x| x.2).sum::<f64>();
    let m = d.wait_metrics(&format!("{label}: every frame"), Duration::from_secs(30), |m| {
        sum(m, GOAWAYS, sp) >= total(&server.0) && sum(m, RESETS, sp) >= total(&server.1) && sum(m, GOAWAYS, cp) >= total(&client.0) && sum(m, RESETS, cp) >= total(&client.1)
    });
    std::thread::sleep(Duration::from_millis(300));
    for m in [&m, &d.metrics()] {
        assert_eq!(counts(m, GOAWAYS, sp), server.0, "{label} server GOAWAYs:\n{}", m.text);
        assert_eq!(counts(m, RESETS, sp), server.1, "{label} server RST_STREAMs:\n{}", m.text);
        assert_eq!(counts(m, GOAWAYS, cp), client.0, "{label} client GOAWAYs:\n{}", m.text);
        assert_eq!(counts(m, RESETS, cp), client.1, "{label} client RST_STREAMs:\n{}", m.text);
    }
    m
}

#[test]
fn goaways_and_stream_resets_are_counted_exactly_on_both_sides() {
    let _serial = common::serial();
    // Health evaluated every 2 s, degraded or not: a window with the peer's GOAWAY shows soon
    // after, for longer than the 1 s between the test's /metrics encodings.
    let d = Daemon::start("http2", "[health]\ninterval_seconds = 2.0\ndegraded_interval_seconds = 2.0\n");
    for (v, variant) in CASES {
        one_case(&d, &format!("go{v}-{variant}"), v, variant);
        if *v != "1.19" {
            h2c_case(&d, &format!("go{v}-{variant}-h2c"), v, variant);
        }
    }
}

/// An h2probe server and client of Go `v` (`variant` build), both tracked with the HTTP/2 probes.
fn h2probe_pair(d: &Daemon, label: &str, v: &str, variant: &str) -> (GoProgram, GoProgram) {
    let bin = common::go_fixture(v, variant, "h2probe");
    let server = GoProgram::start(&format!("{label}-server"), &bin);
    let client = GoProgram::start(&format!("{label}-client"), &bin);
    wait_http2_attached(d, label, server.pid);
    wait_http2_attached(d, label, client.pid);
    (server, client)
}

/// h2c (prior knowledge, no TLS): the same frames through the same code.
fn h2c_case(d: &Daemon, label: &str, v: &str, variant: &str) {
    let (mut server, mut client) = h2probe_pair(d, label, v, variant);
    let (sp, cp) = (server.pid.to_string(), client.pid.to_string());
    let port = format!("h2c:{}", server.cmd("serve-h2c")[0]);
    assert_eq!(client.cmd(&format!("get {port} 3")), [3], "{label}: plain requests over HTTP/2");
    assert_eq!(client.cmd(&format!("abort {port} 2")), [2], "{label}: aborted by the handler");
    assert_eq!(client.cmd(&format!("cancel {port} 3")), [3], "{label}: cancelled by the client");
    assert_eq!(server.cmd("waitconns 1"), [1], "{label}");
    assert_eq!(server.cmd("shutdown"), [0], "{label}");
    expect_frames(
        d,
        label,
        (&sp, &cp),
        (vec![c("sent", "NO_ERROR", 1.0)], vec![c("received", "CANCEL", 3.0), c("sent", "INTERNAL_ERROR", 2.0)]),
        (vec![c("received", "NO_ERROR", 1.0)], vec![c("received", "INTERNAL_ERROR", 2.0), c("sent", "CANCEL", 3.0)]),
    );
    assert!(server.alive() && client.alive(), "{label}: the probed programs must survive");
    assert_eq!(client.cmd("quit"), Vec::<i64>::new());
    assert_eq!(server.cmd("quit"), Vec::<i64>::new());
}

fn one_case(d: &Daemon, label: &str, v: &str, variant: &str) {
    let t0 = Instant::now();
    let (mut server, mut client) = h2probe_pair(d, label, v, variant);
    let (sp, cp) = (server.pid.to_string(), client.pid.to_string());

    let port = server.cmd("serve")[0].to_string();
    assert_eq!(client.cmd(&format!("get {port} 3")), [3], "{label}: plain requests");
    assert_eq!(client.cmd(&format!("abort {port} 2")), [2], "{label}: aborted by the handler");
    assert_eq!(client.cmd(&format!("cancel {port} 3")), [3], "{label}: cancelled by the client");
    assert_eq!(client.cmd(&format!("refuse {port}")), [501, 7], "{label}: the 251st stream is refused");
    assert_eq!(client.cmd(&format!("badping {port}")), [1], "{label}: PROTOCOL_ERROR");
    assert_eq!(client.cmd(&format!("goaway {port}")), [0], "{label}: the server's graceful answer");
    // The peer's ENHANCE_YOUR_CALM: the server's http2_goaways_received_error signal (warn at 1).
    let deadline = Instant::now() + Duration::from_secs(15);
    let (t_goaway, mut seen) = (Instant::now(), Vec::new());
    loop {
        let m = d.metrics();
        if m.value("chainprobe_health_signal_state", &[("pid", &sp), ("signal", "http2_goaways_received_error")]) >= 1.0 {
            break;
        }
        let health = target(d, server.pid).map(|t| t["health"]["signals"].as_array().into_iter().flatten().filter(|s| s["name"] == "http2_goaways_received_error").cloned().collect::<Vec<_>>());
        seen.push(format!("{:.1}s {health:?}", t_goaway.elapsed().as_secs_f64()));
        if Instant::now() >= deadline {
            let log = d.log_text();
            panic!("{label}: no http2_goaways_received_error signal for the server {sp}: {seen:#?}\n{}", common::tail(&log, 20));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Only the Go client's connection is left; then the graceful shutdown closes it.
    assert_eq!(server.cmd("waitconns 1"), [1], "{label}");
    assert_eq!(server.cmd("shutdown"), [0], "{label}");

    let server_goaways = vec![c("received", "ENHANCE_YOUR_CALM", 1.0), c("sent", "NO_ERROR", 2.0), c("sent", "PROTOCOL_ERROR", 1.0)];
    let server_resets = vec![c("received", "CANCEL", 3.0), c("sent", "INTERNAL_ERROR", 2.0), c("sent", "REFUSED_STREAM", 1.0)];
    let client_goaways = vec![c("received", "NO_ERROR", 1.0)];
    let client_resets = vec![c("received", "INTERNAL_ERROR", 2.0), c("sent", "CANCEL", 3.0)];
    let m = expect_frames(d, label, (&sp, &cp), (server_goaways, server_resets), (client_goaways, client_resets));
    assert!(m.has(RESETS, &[("pid", &sp), ("comm", "h2probe")]), "{label}");

    // The peer's GOAWAY, with its debug data, in the server's target.
    let t = target(d, server.pid).expect("server tracked");
    let recent = t["http2"]["recent_goaways"].as_array().unwrap_or_else(|| panic!("{label}: {t}"));
    let calm: Vec<&serde_json::Value> = recent.iter().filter(|g| g["direction"] == "received").collect();
    assert_eq!(calm.len(), 1, "{label}: {recent:?}");
    assert_eq!(calm[0]["code"], "ENHANCE_YOUR_CALM", "{label}");
    assert_eq!(calm[0]["debug_data"], "chainprobe: calm down", "{label}");
    assert_eq!(calm[0]["debug_len"], 21, "{label}");
    let frames = t["http2"]["frames"].as_array().unwrap();
    assert!(frames.iter().any(|f| f["frame"] == "rst_stream" && f["direction"] == "sent" && f["code"] == "REFUSED_STREAM" && f["count"] == 1), "{label}: {frames:?}");

    assert!(server.alive() && client.alive(), "{label}: the probed programs must survive");
    assert_eq!(client.cmd("quit"), Vec::<i64>::new());
    assert_eq!(server.cmd("quit"), Vec::<i64>::new());
    eprintln!("{label}: {:?}", t0.elapsed());
}

/// gRPC-go 1.33 (golang.org/x/net/http2's framer), built in GOPATH mode from Debian's packages by
/// tests/fixtures/go/build-gopath.sh with Go 1.19 and 1.27: cancelled calls and a server stopped
/// gracefully are counted like std's HTTP/2, plain and stripped.
#[test]
fn grpc_cancelled_calls_and_a_stopped_server_are_counted_through_x_net() {
    let _serial = common::serial();
    let d = Daemon::start("http2-grpc", "");
    for (v, variant) in [("1.19", "default"), ("1.19", "stripped"), ("1.27", "stripped")] {
        let label = format!("grpc-go{v}-{variant}");
        let bin = common::go_fixture(v, variant, "grpcprobe");
        let mut server = GoProgram::start(&format!("{label}-server"), &bin);
        let mut client = GoProgram::start(&format!("{label}-client"), &bin);
        for pid in [server.pid, client.pid] {
            wait_attached_to(&d, &label, pid, "golang.org/x/net/http2.");
        }
        let (sp, cp) = (server.pid.to_string(), client.pid.to_string());
        let port = server.cmd("serve")[0].to_string();
        assert_eq!(client.cmd(&format!("call {port} 3")), [3], "{label}");
        assert_eq!(client.cmd(&format!("cancel {port} 2")), [2], "{label}");
        assert_eq!(server.cmd("started"), [2], "{label}: both cancelled calls reached the handler");
        // Invoke returns before the client's RST_STREAM is flushed: the server has read both once
        // their handlers returned (else the stop's GOAWAY could make the client close first).
        assert_eq!(server.cmd("waitended 2"), [2], "{label}: both calls ended on the server");
        assert_eq!(server.cmd("stop"), [0], "{label}");
        // grpc-go's graceful stop announces it with a GOAWAY (last stream 2^32-1) and a PING;
        // the client, with no call in flight, closes the connection on it, so the second, final
        // GOAWAY (after the PING's answer) is never written.
        expect_frames(
            &d,
            &label,
            (&sp, &cp),
            (vec![c("sent", "NO_ERROR", 1.0)], vec![c("received", "CANCEL", 2.0)]),
            (vec![c("received", "NO_ERROR", 1.0)], vec![c("sent", "CANCEL", 2.0)]),
        );
        assert!(server.alive() && client.alive(), "{label}");
        assert_eq!(client.cmd("quit"), Vec::<i64>::new());
        assert_eq!(server.cmd("quit"), Vec::<i64>::new());
    }
}

/// Waits until `pid` is tracked with each HTTP/2 program attached at a function of `package`.
fn wait_attached_to(d: &Daemon, label: &str, pid: u32, package: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(t) = target(d, pid) {
            let probes = t["probes"].as_array().unwrap();
            for prog in ["go_http2_goaway_sent", "go_http2_rst_sent", "go_http2_goaway_received", "go_http2_rst_received"] {
                let at: Vec<&serde_json::Value> = probes.iter().filter(|p| p["name"] == prog).collect();
                assert!(at.iter().all(|p| p["state"] == "attached"), "{label}: {at:?}");
                assert!(at.iter().any(|p| p["function"].as_str().unwrap().starts_with(package)), "{label}: {prog} not on {package}: {at:?}");
            }
            return;
        }
        assert!(Instant::now() < deadline, "{label} (pid {pid}) not tracked; daemon log:\n{}", common::tail(&d.log_text(), 40));
        std::thread::sleep(Duration::from_millis(50));
    }
}
