//! TLS handshake health end to end (issue #6): the real daemon probing real handshakes.
//! - Go: tests/fixtures/go/src/tlsprobe (built by `cargo xtask fixtures` with every Go minor,
//!   stripped and not, PIE, externally linked) runs exact numbers of loopback handshakes (TLS 1.2 / 1.3, ALPN h2 /
//!   http/1.1) and forced failures (untrusted certificate, ALPN mismatch, version mismatch), with
//!   Reads/Writes after each handshake; the scraped counts and labels must match exactly.
//! - OpenSSL: `curl` against the Go server (client side counted in curl, server side in Go) and
//!   `openssl s_client` against `openssl s_server` (server side counted: s_server calls
//!   SSL_accept; s_client handshakes implicitly inside SSL_read/SSL_write, which is not probed).
//! - OpenSSL failure reasons (untrusted certificate, ALPN mismatch, version) on both sides, and
//!   the first handshakes of the first process right after the daemon started (issue #18).
//! - TCP cross-check: a connection reset right after a ClientHello shows up as a failed Go
//!   handshake (timeout_eof) and as a TCP reset of the same process.
mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Daemon, Metrics, TempDir};

/// The ways release binaries are built: with symbols, `-s -w`, PIE + `-s -w`, externally linked
/// PIE + `-s -w`.
const VARIANTS: &[&str] = &["default", "stripped", "pie-stripped", "pie-ext-stripped"];

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn fixture(version: &str, variant: &str) -> PathBuf {
    common::go_fixture(version, variant, "tlsprobe")
}

/// A running tlsprobe (see its main.go for the commands).
type TlsProbe = common::GoProgram;

/// `hs`: returns (client ok, client fail, server ok, server fail).
fn hs(g: &mut TlsProbe, args: &str) -> (i64, i64, i64, i64) {
    let r = g.cmd(&format!("hs {args}"));
    (r[0], r[1], r[2], r[3])
}

fn targets(d: &Daemon) -> serde_json::Value {
    let (code, body) = d.get("/api/v1/targets").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Where the daemon reads a Go handshake's result.
#[derive(Clone, Copy, PartialEq)]
enum ResultSite {
    /// One probe in handshakeContext after its call of c.handshakeFn (amd64 default).
    Caller,
    /// Every RET of clientHandshake and serverHandshake (`go_result_site = "rets"`).
    Rets,
}

/// Waits until the daemon tracks `pid` with the Go TLS probes attached where `site` says.
fn wait_go_tls_attached(d: &Daemon, label: &str, pid: u32, site: ResultSite) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let t = targets(d);
        let x = t["targets"].as_array().and_then(|a| a.iter().find(|x| x["pid"].as_u64() == Some(u64::from(pid))).cloned());
        if let Some(x) = x {
            let probes = x["probes"].as_array().unwrap();
            let tls: Vec<(&str, &str, u64)> = probes
                .iter()
                .filter(|p| p["name"].as_str().unwrap().contains("tls"))
                .map(|p| {
                    assert_eq!(p["state"], "attached", "{label}: {p}");
                    (p["name"].as_str().unwrap(), p["function"].as_str().unwrap(), p["sites"].as_u64().unwrap())
                })
                .collect();
            let (client, server) = ("crypto/tls.(*Conn).clientHandshake", "crypto/tls.(*Conn).serverHandshake");
            assert!(tls.contains(&("go_tls_handshake_enter", client, 1)), "{label}: {tls:?}");
            assert!(tls.contains(&("go_tls_handshake_enter", server, 1)), "{label}: {tls:?}");
            let returns: Vec<_> = tls.iter().filter(|p| p.0 == "go_tls_handshake_return").collect();
            match site {
                ResultSite::Caller => assert_eq!(returns, [&("go_tls_handshake_return", "crypto/tls.(*Conn).handshakeContext", 1)], "{label}"),
                ResultSite::Rets => {
                    assert_eq!(returns.len(), 2, "{label}: {tls:?}");
                    assert!(returns.iter().all(|p| (p.1 == client || p.1 == server) && p.2 >= 1), "{label}: {tls:?}");
                }
            }
            assert_eq!(tls.len(), 2 + returns.len(), "{label}: {tls:?}");
            return;
        }
        assert!(Instant::now() < deadline, "{label} (pid {pid}) not tracked: {t}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sum of the samples named `name` whose labels include all of `labels`.
fn sum(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

const HS: &str = "chainprobe_tls_handshakes_total";
const FAIL: &str = "chainprobe_tls_handshake_failures_total";
const DUR_COUNT: &str = "chainprobe_tls_handshake_duration_seconds_count";

#[test]
fn go_handshakes_are_counted_exactly_with_their_labels_on_every_build() {
    let _serial = serial();
    let d = Daemon::start("tls-go", "");
    for v in common::go_versions() {
        for variant in VARIANTS {
            go_handshakes_counted_exactly(&d, &format!("go{v}-{variant}"), v, variant, ResultSite::Caller);
        }
    }
}

/// A Go version without its own table (here: one whose table is hidden) gets the nearest
/// table: its handshakes are counted exactly, with role, result and duration, once the table has
/// proven right for the runtime on the live process; version and ALPN, which sit in a part of
/// crypto/tls.Conn that moves between releases, are "unknown" rather than a guess.
#[test]
fn go_handshakes_with_the_nearest_table_are_counted_without_guessed_labels() {
    let _serial = serial();
    let mut tables = common::builtin_go_tables();
    let (minor, _own, fallback) = common::minor_with_a_lookalike_neighbour(&tables);
    tables["tables"].as_object_mut().unwrap().retain(|k, _| !k.starts_with(&format!("1.{minor}/")) && !k.starts_with(&format!("1.{minor}.")));
    let dir = TempDir::new("tls-tables");
    let file = common::write_go_tables(&dir, &tables);
    let d = Daemon::start_with("tls-go-nearest", "", &[("CHAINPROBE_GO_OFFSETS_FILE", file.to_str().unwrap())]);
    let label = format!("go1.{minor}-stripped-nearest");
    let mut g = TlsProbe::start(&label, &fixture(&format!("1.{minor}"), "stripped"));
    let pid = g.pid.to_string();
    // TLS reads start once the nearest table is accepted for the runtime.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = targets(&d);
        let x = t["targets"].as_array().unwrap().iter().find(|x| x["pid"].as_u64() == Some(u64::from(g.pid))).cloned();
        if let Some(x) = x {
            if x["offsets"]["validation"].as_str().is_some_and(|v| v.starts_with("accepted")) {
                assert_eq!(x["offsets"]["source"], "nearest", "{x}");
                assert_eq!(x["offsets"]["table"], fallback.as_str(), "{x}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "{label}: nearest table never accepted: {t}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(hs(&mut g, "3 1.3 any h2 h2,http/1.1 trusted"), (3, 0, 3, 0), "{label}");
    assert_eq!(hs(&mut g, "2 any any h2 http/1.1 trusted"), (0, 2, 0, 2), "{label}");
    let m = d.wait_metrics(&format!("{label}: all handshakes"), Duration::from_secs(10), |m| sum(m, HS, &[("pid", &pid)]) >= 10.0);
    for role in ["client", "server"] {
        // A failed handshake negotiated no ALPN ("none", as with a table of its own).
        let n = |result: &str, alpn: &str| m.value(HS, &[("pid", &pid), ("library", "go"), ("role", role), ("result", result), ("version", "unknown"), ("alpn", alpn)]);
        assert_eq!(n("ok", "unknown"), 3.0, "{label} {role}:\n{}", m.text);
        assert_eq!(n("error", "none"), 2.0, "{label} {role}:\n{}", m.text);
    }
    assert_eq!(sum(&m, HS, &[("pid", &pid)]), 10.0, "{label}: nothing else, no guessed label:\n{}", m.text);
    assert_eq!(m.value(FAIL, &[("pid", &pid), ("library", "go"), ("reason", "other")]), 4.0, "{label}:\n{}", m.text);
    assert!(g.alive());
}

/// The same with the results read at every RET of the handshake functions (the placement used
/// where handshakeContext's call site is not recognised, and on arm64).
#[test]
fn go_handshakes_read_at_the_rets_when_asked() {
    let _serial = serial();
    let d = Daemon::start("tls-go-rets", "[tls]\ngo_result_site = \"rets\"\n");
    for (v, variant) in [("1.19", "pie-stripped"), ("1.27", "stripped")] {
        go_handshakes_counted_exactly(&d, &format!("go{v}-{variant}-rets"), v, variant, ResultSite::Rets);
    }
}

/// Runs exact handshake workloads in tlsprobe built with Go `v` as `variant` and checks every
/// count and label the daemon reports for it.
fn go_handshakes_counted_exactly(d: &Daemon, label: &str, v: &str, variant: &str, site: ResultSite) {
    let mut g = TlsProbe::start(label, &fixture(v, variant));
    wait_go_tls_attached(d, label, g.pid, site);
    let pid = g.pid.to_string();

    assert_eq!(hs(&mut g, "5 1.3 any h2 h2,http/1.1 trusted"), (5, 0, 5, 0), "{label}");
    assert_eq!(hs(&mut g, "4 1.2 any http/1.1 h2,http/1.1 trusted"), (4, 0, 4, 0), "{label}");
    assert_eq!(hs(&mut g, "3 any any - - trusted"), (3, 0, 3, 0), "{label}");
    // One long-lived connection with many small Reads/Writes: one handshake per side.
    g.cmd("bulk 300 64");
    assert_eq!(hs(&mut g, "2 any any h2 h2 untrusted"), (0, 2, 0, 2), "{label}");
    assert_eq!(hs(&mut g, "2 any any h2 http/1.1 trusted"), (0, 2, 0, 2), "{label}");
    assert_eq!(hs(&mut g, "2 1.2 1.3 - - trusted"), (0, 2, 0, 2), "{label}");

    let total_expected = 2.0 * (5.0 + 4.0 + 3.0 + 1.0 + 6.0);
    let m = d.wait_metrics(&format!("{label}: all handshakes"), Duration::from_secs(10), |m| {
        sum(m, HS, &[("pid", &pid)]) >= total_expected
    });
    for role in ["client", "server"] {
        let ok = |version: &str, alpn: &str| {
            m.value(HS, &[("pid", &pid), ("library", "go"), ("role", role), ("result", "ok"), ("version", version), ("alpn", alpn)])
        };
        assert_eq!(ok("1.3", "h2"), 5.0, "{label} {role}:\n{}", m.text);
        assert_eq!(ok("1.2", "http/1.1"), 4.0, "{label} {role}");
        assert_eq!(ok("1.3", "none"), 3.0 + 1.0, "{label} {role}: hs + bulk");
        assert_eq!(sum(&m, HS, &[("pid", &pid), ("role", role), ("result", "ok")]), 13.0, "{label} {role}: no Read/Write re-entry counted");
        assert_eq!(sum(&m, HS, &[("pid", &pid), ("role", role), ("result", "error")]), 6.0, "{label} {role}");
        assert_eq!(m.value(DUR_COUNT, &[("pid", &pid), ("library", "go"), ("role", role)]), 13.0, "{label} {role}: successful ones");
        assert!(!m.samples.iter().any(|s| s.name == DUR_COUNT && s.labels.contains_key("result")), "{label}: no result label");
        // Failed handshakes' durations are in the API (its view is republished within 500 ms).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let t = targets(d);
            let x = t["targets"].as_array().and_then(|a| a.iter().find(|x| x["pid"].as_u64() == Some(u64::from(g.pid))).cloned()).expect("the process in the API");
            let failed = x["tls"]["durations"].as_array().into_iter().flatten().find(|d| d["role"] == role && d["result"] == "error").and_then(|d| d["count"].as_u64());
            if failed == Some(6) {
                break;
            }
            assert!(Instant::now() < deadline, "{label} {role}: failed handshakes' durations {failed:?} in {}", x["tls"]);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(sum(&m, HS, &[("pid", &pid)]), total_expected, "{label}");
    for reason in ["certificate", "alpn", "version"] {
        // Both sides of each of the 2 failed handshakes.
        assert_eq!(m.value(FAIL, &[("pid", &pid), ("library", "go"), ("reason", reason)]), 4.0, "{label} {reason}:\n{}", m.text);
    }
    assert_eq!(sum(&m, FAIL, &[("pid", &pid)]), 12.0, "{label}");
    assert!(m.has(HS, &[("pid", &pid), ("comm", "tlsprobe")]), "{label}");
    assert!(g.alive(), "{label}: the probed program must survive");
    assert_eq!(g.cmd("quit"), Vec::<i64>::new());
}

/// Waits for `child` and returns its exit code.
fn run(label: &str, cmd: &mut Command) -> (u32, i32) {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(|e| panic!("{label}: {e}"));
    let pid = child.id();
    let status = child.wait().unwrap();
    (pid, status.code().unwrap_or(-1))
}

fn which(tool: &str) {
    let ok = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(ok, "{tool} is missing: run tests/tools/install.sh");
}

/// Waits until the daemon probes a libssl; returns what it reads from its SSL objects
/// (`reads`: version, alpn, role).
fn wait_openssl_probed(d: &Daemon) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let t = targets(d);
        if let Some(libs) = t["openssl_libraries"].as_array() {
            if let Some(l) = libs.iter().find(|l| l["path"].as_str().is_some_and(|p| p.contains("libssl.so"))) {
                for p in l["probes"].as_array().unwrap() {
                    assert_eq!(p["state"], "attached", "{p}");
                }
                return l["reads"].clone();
            }
        }
        assert!(Instant::now() < deadline, "no libssl probed: {t}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

type Key = (String, String, String, String);

/// The handshake counts of one (short-lived) process by (role, result, version, alpn), read
/// before its series expire.
fn counts_of(d: &Daemon, pid: u32, expect: f64) -> BTreeMap<Key, f64> {
    counts_and_metrics(d, pid, expect).0
}

/// [`counts_of`], and the scrape they come from.
fn counts_and_metrics(d: &Daemon, pid: u32, expect: f64) -> (BTreeMap<Key, f64>, Metrics) {
    let p = pid.to_string();
    let m = d.wait_metrics(&format!("handshakes of pid {pid}"), Duration::from_secs(10), |m| sum(m, HS, &[("pid", &p)]) >= expect);
    let mut out = BTreeMap::new();
    for s in m.samples.iter().filter(|s| s.name == HS && s.labels.get("pid") == Some(&p)) {
        let k = (s.labels["role"].clone(), s.labels["result"].clone(), s.labels["version"].clone(), s.labels["alpn"].clone());
        *out.entry(k).or_insert(0.0) += s.value;
        assert_eq!(s.labels["library"], "openssl", "{s:?}");
    }
    (out, m)
}

fn key(role: &str, result: &str, version: &str, alpn: &str) -> Key {
    (role.to_string(), result.to_string(), version.to_string(), alpn.to_string())
}

#[test]
fn openssl_handshakes_of_curl_and_s_server_and_the_go_server_side() {
    let _serial = serial();
    which("openssl");
    which("curl");
    let d = Daemon::start("tls-openssl", "");
    let dir = TempDir::new("tls-openssl");
    let (cert, keyf, ca) = (dir.0.join("cert.pem"), dir.0.join("key.pem"), dir.0.join("ca.pem"));
    let (_, rc) = run(
        "openssl req",
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
            .arg("-keyout")
            .arg(&keyf)
            .arg("-out")
            .arg(&cert),
    );
    assert_eq!(rc, 0, "openssl req");

    // openssl s_server: TLS 1.3 only, one connection after another, stdin kept open.
    let (port, mut server, _out) = s_server(&cert, &keyf, &["-tls1_3", "-naccept", "3"]);
    let reads = wait_openssl_probed(&d);
    // Version and ALPN are read where this libssl build's accessors show where they are (Debian's
    // OpenSSL 3.0 does); otherwise the labels say "unknown".
    let (v13, alpn_none, alpn_http11) = match (reads["version"].as_bool(), reads["alpn"].as_bool()) {
        (Some(true), Some(true)) => ("1.3", "none", "http/1.1"),
        (Some(true), _) => ("1.3", "unknown", "unknown"),
        (_, Some(true)) => ("unknown", "none", "http/1.1"),
        _ => ("unknown", "unknown", "unknown"),
    };
    let spid = server.id();

    // s_client → s_server: 2 successes, then a version mismatch (TLS 1.2 client, 1.3 server).
    let s_client = |extra: &[&str]| {
        run("s_client", Command::new("openssl").args(["s_client", "-connect", &format!("127.0.0.1:{port}")]).args(extra)).1
    };
    assert_eq!(s_client(&[]), 0);
    assert_eq!(s_client(&[]), 0);
    assert_ne!(s_client(&["-tls1_2"]), 0, "version mismatch must fail");
    let status = server.wait().unwrap();
    assert!(status.success(), "s_server: {status}");
    drop(server.stdin.take());
    let (c, m) = counts_and_metrics(&d, spid, 3.0);
    // Failed handshakes: version and ALPN are not read (nothing was negotiated).
    assert_eq!(c, BTreeMap::from([(key("server", "ok", v13, alpn_none), 2.0), (key("server", "error", "unknown", "unknown"), 1.0)]), "reads {reads}");
    // The server finds no version in common (its UNSUPPORTED_PROTOCOL error).
    let sp = spid.to_string();
    assert_eq!(m.value(FAIL, &[("pid", &sp), ("library", "openssl"), ("reason", "version")]), 1.0, "{}", m.text);

    // curl → the Go server: 3 trusted (ok on both sides), 2 without the CA (error on both sides).
    let mut g = TlsProbe::start("go-serve", &fixture("1.27", "default"));
    wait_go_tls_attached(&d, "go-serve", g.pid, ResultSite::Caller);
    let gport = g.cmd(&format!("serve http/1.1 {}", ca.display()))[0];
    let url = format!("https://127.0.0.1:{gport}/");
    for i in 0..3 {
        let (pid, rc) = run("curl", Command::new("curl").args(["-s", "-m", "5", "--cacert"]).arg(&ca).arg(&url));
        assert_eq!(rc, 0, "curl {i}");
        let c = counts_of(&d, pid, 1.0);
        assert_eq!(c, BTreeMap::from([(key("client", "ok", v13, alpn_http11), 1.0)]), "curl {i}: reads {reads}");
    }
    // TLS 1.2: OpenSSL's client sends its unknown_ca alert before switching keys, which a TLS 1.3
    // server cannot decrypt (Go then reports bad_record_mac, reason "other"); over 1.2 the alert
    // arrives as such.
    for i in 0..2 {
        let (pid, rc) = run("curl", Command::new("curl").args(["-s", "-m", "5", "--tls-max", "1.2", "--cacert"]).arg(&cert).arg(&url));
        assert_eq!(rc, 60, "curl {i}: certificate verification must fail");
        let (c, m) = counts_and_metrics(&d, pid, 1.0);
        assert_eq!(c, BTreeMap::from([(key("client", "error", "unknown", "unknown"), 1.0)]), "curl {i}");
        let cp = pid.to_string();
        assert_eq!(m.value(FAIL, &[("pid", &cp), ("library", "openssl"), ("reason", "certificate")]), 1.0, "curl {i}: {}", m.text);
    }
    let p = g.pid.to_string();
    let m = d.wait_metrics("Go server side", Duration::from_secs(10), |m| sum(m, HS, &[("pid", &p)]) >= 5.0);
    assert_eq!(m.value(HS, &[("pid", &p), ("library", "go"), ("role", "server"), ("result", "ok"), ("version", "1.3"), ("alpn", "http/1.1")]), 3.0, "{}", m.text);
    assert_eq!(sum(&m, HS, &[("pid", &p), ("role", "server"), ("result", "error")]), 2.0);
    assert_eq!(m.value(FAIL, &[("pid", &p), ("library", "go"), ("reason", "certificate")]), 2.0, "{}", m.text);

    // TCP cross-check: a ClientHello, then a reset (SO_LINGER 0): a failed handshake without an
    // alert on the Go side, and a TCP reset received by the same process.
    let resets0 = m.value("chainprobe_tcp_resets_received_total", &[("pid", &p)]);
    {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gport as u16)).unwrap();
        // A TLS handshake record header announcing more than is sent: the server waits in read.
        s.write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01, 0x00, 0x00, 0xfc, 0x03, 0x03]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let l = libc_linger_zero(&s);
        assert_eq!(l, 0, "setsockopt SO_LINGER");
    }
    let m = d.wait_metrics("reset after ClientHello", Duration::from_secs(10), |m| {
        m.value(FAIL, &[("pid", &p), ("library", "go"), ("reason", "timeout_eof")]) >= 1.0
    });
    assert_eq!(m.value(FAIL, &[("pid", &p), ("library", "go"), ("reason", "timeout_eof")]), 1.0);
    assert!(m.value("chainprobe_tcp_resets_received_total", &[("pid", &p)]) >= resets0 + 1.0, "{}", m.text);
    assert!(g.alive());
}

/// Sets SO_LINGER {on, 0} so that closing the socket sends a RST.
fn libc_linger_zero(s: &std::net::TcpStream) -> i32 {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Linger {
        l_onoff: i32,
        l_linger: i32,
    }
    extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, val: *const std::ffi::c_void, len: u32) -> i32;
    }
    let l = Linger { l_onoff: 1, l_linger: 0 };
    // SOL_SOCKET = 1, SO_LINGER = 13 on Linux.
    unsafe { setsockopt(s.as_raw_fd(), 1, 13, &l as *const Linger as *const _, std::mem::size_of::<Linger>() as u32) }
}

/// Runs `curl` (three handshakes with the Go server) to its end and waits for its counts: the
/// handshakes missed, if any. Counted or not: the handshakes come with the ring buffer (every
/// 50 ms), the TCP connects with the map drain (every 0.2 s here); once curl's 3 connects show,
/// its handshakes have had a second more. An exited process's series are gone after the scrape
/// that showed them: the largest values seen are kept.
fn curl_three_handshakes(d: &Daemon, round: usize, curl: &mut Command) -> Option<f64> {
    let (pid, rc) = run("curl", curl);
    assert_eq!(rc, 0, "run {round}: curl");
    let p = pid.to_string();
    let seen = poll_max(d, Duration::from_secs(10), &format!("run {round}: curl {pid}"), |m| {
        BTreeMap::from([
            ("ok", m.value(HS, &[("pid", &p), ("library", "openssl"), ("role", "client"), ("result", "ok")])),
            ("all", sum(m, HS, &[("pid", &p)])),
            ("connects", sum(m, "chainprobe_tcp_connects_total", &[("pid", &p)])),
        ])
    }, |v, since_connects| v["all"] >= 3.0 || since_connects(v["connects"] >= 3.0) > Duration::from_secs(1));
    assert_eq!(seen["all"], seen["ok"], "run {round}: only successful client handshakes");
    (seen["ok"] != 3.0).then(|| 3.0 - seen["ok"])
}

/// Issue #18 (a): the first handshakes of the first process using the system's libssl, started
/// right after chainprobe is ready, are all counted (the system's libssl files are probed before
/// the daemon is ready; a process's exec is noticed only after its loader mapped libssl, up to a
/// ring-buffer poll later). 20 daemon starts, each followed at once by a curl that handshakes
/// three times (the Go server closes each connection), against a Go server (no libssl in it).
#[test]
fn openssl_first_handshakes_right_after_start_are_all_counted() {
    let _serial = serial();
    which("curl");
    let dir = TempDir::new("tls-first");
    let ca = dir.0.join("ca.pem");
    let mut g = TlsProbe::start("go-serve", &fixture("1.27", "default"));
    let gport = g.cmd(&format!("serve http/1.1 {}", ca.display()))[0];
    let url = format!("https://127.0.0.1:{gport}/");
    let started = Instant::now();
    let mut missed = Vec::new();
    for round in 0..20 {
        let d = Daemon::start("tls-first", "");
        if let Some(n) = curl_three_handshakes(&d, round, Command::new("curl").args(["-s", "-m", "5", "--cacert"]).arg(&ca).args([&url, &url, &url])) {
            missed.push((round, n));
        }
    }
    assert!(missed.is_empty(), "handshakes missed (run, count): {missed:?}");
    assert!(started.elapsed() < Duration::from_secs(480), "20 runs took {:?}", started.elapsed());
    assert!(g.alive());
    assert_eq!(g.cmd("quit"), Vec::<i64>::new());
}

/// The system's libssl.so.3.
fn system_libssl3() -> PathBuf {
    ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/aarch64-linux-gnu/libssl.so.3", "/usr/lib64/libssl.so.3", "/usr/lib/libssl.so.3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("no system libssl.so.3: run tests/tools/install.sh")
}

/// A fresh copy of `system` (a new file: a libssl the daemon does not know) as `dir`/libssl.so.3.
fn copy_libssl(system: &std::path::Path, dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(system, dir.join("libssl.so.3")).unwrap();
}

/// `cmd` in a new session, without a controlling terminal, as services run (a process with one is
/// never held: its shell would report it stopped), whatever terminal the tests run in.
fn no_terminal(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        })
    }
}

/// Issue #18 (a), a libssl file outside the system directories (a container's own, an
/// application's copy): the kernel holds the first process that faults in its pages until the
/// daemon has probed it. 10 runs on one daemon, each with a fresh copy of the system's libssl (a
/// new file: a new inode) loaded through LD_LIBRARY_PATH by a curl that handshakes three times at
/// once: every handshake counted, each copy's first process held once and resumed once its file
/// was probed (never by the bound), and /api/v1/targets says so. (Without the hold: 0 of 30
/// counted in 10 runs, the curl was gone before its exec was noticed.)
#[test]
fn openssl_first_handshakes_through_a_new_libssl_file_are_all_counted() {
    let _serial = serial();
    which("curl");
    let system = system_libssl3();
    let dir = TempDir::new("tls-new-lib");
    let ca = dir.0.join("ca.pem");
    let mut g = TlsProbe::start("go-serve", &fixture("1.27", "default"));
    let gport = g.cmd(&format!("serve http/1.1 {}", ca.display()))[0];
    let url = format!("https://127.0.0.1:{gport}/");
    let d = Daemon::start("tls-new-lib", "");
    let runs = 10;
    let mut missed = Vec::new();
    for round in 0..runs {
        let lib = dir.0.join(format!("lib{round}"));
        copy_libssl(&system, &lib);
        if let Some(n) = curl_three_handshakes(&d, round, no_terminal(Command::new("curl").env("LD_LIBRARY_PATH", &lib).args(["-s", "-m", "5", "--cacert"]).arg(&ca).args([&url, &url, &url]))) {
            missed.push((round, n));
        }
    }
    assert!(missed.is_empty(), "handshakes missed (run, count): {missed:?}");
    // The API's view follows discovery's (published after each command it handles).
    let deadline = Instant::now() + Duration::from_secs(10);
    let t = loop {
        let t = targets(&d);
        if t["openssl_holds"]["held"] == runs || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let holds = &t["openssl_holds"];
    assert_eq!(holds["held"], runs, "{t}");
    assert_eq!(holds["resumed_probed"], runs, "{t}");
    assert_eq!(holds["resumed_bound"], 0, "{t}");
    assert!(holds["held_max_seconds"].as_f64().unwrap() < 1.0, "{t}");
    let libs = t["openssl_libraries"].as_array().unwrap();
    for round in 0..runs {
        let path = dir.0.join(format!("lib{round}")).join("libssl.so.3");
        let l = libs.iter().find(|l| l["path"] == path.display().to_string()).unwrap_or_else(|| panic!("{} not probed: {t}", path.display()));
        assert!(l["first_process_held"]["held_seconds"].as_f64().is_some(), "{l}");
        assert!(l["probes"].as_array().unwrap().iter().all(|p| p["state"] == "attached"), "{l}");
    }
    assert!(g.alive());
    assert_eq!(g.cmd("quit"), Vec::<i64>::new());
}

/// Issue #18 (a), nothing left stopped: a daemon that dies while the kernel holds a process for
/// a new libssl (here: stopped itself, so it never sees the event, then killed) leaves that process
/// stopped; the next daemon finds it at start (stopped at a page fault in its dynamic loader, a
/// libssl mapped, untraced, no hold on record) and resumes it, and the curl then finishes.
#[test]
fn a_process_held_by_a_daemon_that_died_is_resumed_by_the_next() {
    let _serial = serial();
    which("curl");
    let system = system_libssl3();
    let dir = TempDir::new("tls-orphan");
    let lib = dir.0.join("lib");
    copy_libssl(&system, &lib);
    let first = Daemon::start("tls-orphan-1", "");
    // SAFETY: signals to processes this test started.
    unsafe { libc::kill(first.pid() as i32, libc::SIGSTOP) };
    let mut curl = no_terminal(Command::new("curl").env("LD_LIBRARY_PATH", &lib).args(["-s", "--version"])).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let pid = curl.id();
    let state = || std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| s[s.rfind(')')? + 2..].chars().next());
    let t = Instant::now();
    while state() != Some('T') && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(state(), Some('T'), "curl {pid} not held by the kernel");
    unsafe { libc::kill(first.pid() as i32, libc::SIGKILL) };
    drop(first);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(state(), Some('T'), "curl {pid} stays stopped while no daemon runs");
    let second = Daemon::start("tls-orphan-2", "");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = curl.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "curl {pid} not resumed: {}", second.log_text());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "curl {status}");
    assert_eq!(targets(&second)["openssl_holds"]["resumed_orphans"], 1);
}

/// Issue #18 (b): OpenSSL failure reasons, exact on both sides: an untrusted certificate (the
/// client's CERTIFICATE_VERIFY_FAILED; the server receives the client's alert) and an ALPN
/// mismatch (the server's NO_APPLICATION_PROTOCOL; the client receives no_application_protocol).
/// curl against `openssl s_server -alpn h2`.
#[test]
fn openssl_failure_reasons_for_an_untrusted_certificate_and_an_alpn_mismatch() {
    let _serial = serial();
    which("openssl");
    which("curl");
    let d = Daemon::start("tls-reasons", "");
    let dir = TempDir::new("tls-reasons");
    let (cert, keyf, other) = (dir.0.join("cert.pem"), dir.0.join("key.pem"), dir.0.join("other.pem"));
    for (c, k) in [(&cert, &keyf), (&other, &dir.0.join("other-key.pem"))] {
        let (_, rc) = run(
            "openssl req",
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
                .args(["-addext", "subjectAltName=IP:127.0.0.1"])
                .arg("-keyout")
                .arg(k)
                .arg("-out")
                .arg(c),
        );
        assert_eq!(rc, 0, "openssl req");
    }
    let reads = wait_openssl_probed(&d);
    assert_eq!(reads["reasons"], true, "failure reasons read: {reads}");
    for (tls, label) in [("1.3", "tls1.3"), ("1.2", "tls1.2")] {
        let (port, mut server, _out) = s_server(&cert, &keyf, &["-alpn", "h2", "-naccept", "2"]);
        let url = format!("https://127.0.0.1:{port}/");
        let curl = |extra: &[&str]| run("curl", Command::new("curl").args(["-s", "-m", "5", "--tls-max", tls]).args(extra).arg(&url));
        // Trusting another certificate only: the server's is untrusted.
        let (untrusted, rc) = curl(&["--cacert", other.to_str().unwrap()]);
        assert_eq!(rc, 60, "{label}: certificate verification must fail");
        // Trusted, but offering http/1.1 only to a server that speaks h2 only.
        let (mismatch, rc) = curl(&["--http1.1", "--cacert", cert.to_str().unwrap()]);
        assert_ne!(rc, 0, "{label}: the ALPN mismatch must fail");
        let status = server.wait().unwrap();
        assert!(status.success(), "s_server: {status}");
        let spid = server.id().to_string();
        let (u, a) = (untrusted.to_string(), mismatch.to_string());
        let seen = poll_max(&d, Duration::from_secs(10), &format!("{label}: failures"), |m| {
            let fail = |pid: &str, reason: &str| m.value(FAIL, &[("pid", pid), ("library", "openssl"), ("reason", reason)]);
            BTreeMap::from([
                ("untrusted certificate", fail(&u, "certificate")),
                ("untrusted all", sum(m, FAIL, &[("pid", &u)])),
                ("mismatch alpn", fail(&a, "alpn")),
                ("mismatch all", sum(m, FAIL, &[("pid", &a)])),
                ("server certificate", fail(&spid, "certificate")),
                ("server alpn", fail(&spid, "alpn")),
                ("server all", sum(m, FAIL, &[("pid", &spid)])),
                ("server ok", sum(m, HS, &[("pid", &spid), ("result", "ok")])),
            ])
        }, |v, _| v["untrusted all"] + v["mismatch all"] + v["server all"] >= 4.0);
        let expect = BTreeMap::from([
            ("untrusted certificate", 1.0),
            ("untrusted all", 1.0),
            ("mismatch alpn", 1.0),
            ("mismatch all", 1.0),
            ("server certificate", 1.0),
            ("server alpn", 1.0),
            ("server all", 2.0),
            ("server ok", 0.0),
        ]);
        assert_eq!(seen, expect, "{label}");
        drop(server.stdin.take());
    }
}

/// Scrapes until `done` (given the largest values seen so far, and a clock that starts when its
/// argument is first true) or `timeout`; returns the largest value seen of each of `values`.
/// (The series of an exited process are gone after the scrape that showed them.)
fn poll_max(
    d: &Daemon,
    timeout: Duration,
    what: &str,
    values: impl Fn(&Metrics) -> BTreeMap<&'static str, f64>,
    done: impl Fn(&BTreeMap<&'static str, f64>, &dyn Fn(bool) -> Duration) -> bool,
) -> BTreeMap<&'static str, f64> {
    let deadline = Instant::now() + timeout;
    let mut seen: BTreeMap<&'static str, f64> = BTreeMap::new();
    let since: std::cell::Cell<Option<Instant>> = std::cell::Cell::new(None);
    let clock = |start: bool| {
        if start && since.get().is_none() {
            since.set(Some(Instant::now()));
        }
        since.get().map(|t| t.elapsed()).unwrap_or_default()
    };
    loop {
        let m = d.metrics();
        for (k, v) in values(&m) {
            let e = seen.entry(k).or_insert(0.0);
            *e = e.max(v);
        }
        if done(&seen, &clock) {
            return seen;
        }
        assert!(Instant::now() < deadline, "{what}: not seen within {timeout:?}: {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `openssl s_server` on a free loopback port with `cert`/`key` and `args`, stdin kept open,
/// once it accepts: (port, the child, its stdout).
fn s_server(cert: &std::path::Path, key: &std::path::Path, args: &[&str]) -> (u16, std::process::Child, BufReader<std::process::ChildStdout>) {
    let port = common::free_port();
    let mut server = Command::new("openssl")
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
        .args(args)
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start openssl s_server");
    let mut out = BufReader::new(server.stdout.take().expect("s_server stdout"));
    let mut line = String::new();
    while !line.contains("ACCEPT") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap_or(0) > 0, "s_server ended before accepting");
    }
    (port, server, out)
}
