//! `cargo xtask bench tls [--rounds R] [--handshakes N] [--roundtrips M] [--openssl-seconds S]`:
//! what the TLS handshake probes cost the programs they watch, measured side by side in one run.
//!
//! - Go handshakes/s: tests/fixtures/go/src/tlsprobe (Go 1.27) runs N loopback handshakes, client
//!   and server in one process (`hs N any any h2 h2,http/1.1 trusted`: TLS 1.3, ALPN h2), with and
//!   without chainprobe (default configuration: clientHandshake/serverHandshake probed).
//! - Go bulk: one long-lived TLS 1.3 connection, M round trips of 64 bytes (many small Reads and
//!   Writes, which must not hit any probe).
//! - OpenSSL handshakes/s: `openssl s_time -new` (SSL_connect) against `openssl s_server`
//!   (SSL_accept), both probed through libssl.
//! Rounds alternate without/with so drift hits both alike; medians are reported.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::bench_util::{median, Proc};

fn get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Starts chainprobe (default configuration, or with the TLS probes off when `!tls`).
fn start_daemon(bin: &Path, dir: &Path, tls: bool) -> Result<(Proc, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let cfg = dir.join("bench.toml");
    let tls_cfg = if tls { "" } else { "[tls]\ngo = false\nopenssl = false\n" };
    std::fs::write(&cfg, format!("[server]\nlisten = \"127.0.0.1:{port}\"\n{tls_cfg}"))?;
    let child = Command::new(bin).args(["run", "--config"]).arg(&cfg).env("RUST_LOG", "warn").stdout(Stdio::null()).spawn()?;
    let p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if get(port, "/readyz").map(|r| r.contains("ready")).unwrap_or(false) {
            // The start-up scan inspects every process's binary: let it finish, or the round
            // would measure a daemon busy on one of the two cores rather than the probes.
            wait_idle(p.0.id())?;
            return Ok((p, port));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("chainprobe did not become ready")
}

/// Waits until `pid` used under 2% of a CPU over half a second (at most 30 s).
fn wait_idle(pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = cpu_seconds(pid)?;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = cpu_seconds(pid)?;
        if now - last < 0.01 {
            return Ok(());
        }
        last = now;
    }
    bail!("chainprobe stayed busy for 30 s after start")
}

struct TlsProbe {
    _p: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
}

impl TlsProbe {
    fn start(bin: &Path) -> Result<TlsProbe> {
        let mut child = Command::new(bin).env("GOMAXPROCS", "2").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if !line.starts_with("ready") {
            bail!("tlsprobe: {line}");
        }
        let pid = child.id();
        Ok(TlsProbe { _p: Proc(child), stdin, stdout, pid })
    }

    fn cmd(&mut self, c: &str) -> Result<Vec<i64>> {
        writeln!(self.stdin, "{c}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let mut w = line.split_whitespace();
        if w.next() != Some("ok") {
            bail!("tlsprobe {c}: {line}");
        }
        w.map(|x| x.parse().context("tlsprobe output")).collect()
    }
}

/// Waits until the daemon tracks `pid` (with the Go TLS probes on it when `tls`).
fn wait_tracked(port: u16, pid: u32, tls: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let body = get(port, "/api/v1/targets")?;
        if let Some(json) = body.split("\r\n\r\n").nth(1) {
            let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_default();
            let attached = v["targets"].as_array().into_iter().flatten().any(|t| {
                t["pid"].as_u64() == Some(u64::from(pid))
                    && (!tls || t["probes"].as_array().into_iter().flatten().any(|p| p["name"] == "go_tls_handshake_enter" && p["state"] == "attached"))
            });
            if attached {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("chainprobe did not attach the Go TLS probes to pid {pid}")
}

/// CPU time (user + system, seconds) `pid` has used so far; uprobe hits are charged to it.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the comm.
    let ticks: f64 = f.get(11).context("utime")?.parse::<f64>()? + f.get(12).context("stime")?.parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// One tlsprobe run: (handshakes/s, CPU µs per handshake pair, round trips/s, CPU µs per round trip).
fn go_round(bin: &Path, n: u64, m: u64, daemon: Option<(u16, bool)>) -> Result<(f64, f64, f64, f64)> {
    let mut g = TlsProbe::start(bin)?;
    if let Some((port, tls)) = daemon {
        wait_tracked(port, g.pid, tls)?;
    }
    g.cmd("hs 50 any any h2 h2,http/1.1 trusted")?; // warm-up
    let c0 = cpu_seconds(g.pid)?;
    let r = g.cmd(&format!("hs {n} any any h2 h2,http/1.1 trusted"))?;
    let c1 = cpu_seconds(g.pid)?;
    if r[0] != n as i64 || r[2] != n as i64 {
        bail!("handshakes failed: {r:?}");
    }
    let hs_rate = n as f64 / (r[4] as f64 / 1e9);
    let b = g.cmd(&format!("bulk {m} 64"))?;
    let c2 = cpu_seconds(g.pid)?;
    let rt_rate = m as f64 / (b[0] as f64 / 1e9);
    let _ = g.cmd("quit");
    Ok((hs_rate, (c1 - c0) * 1e6 / n as f64, rt_rate, (c2 - c1) * 1e6 / m as f64))
}

/// OpenSSL handshakes/s: `s_time -new` against `s_server` for `secs` seconds.
fn openssl_round(cert: &Path, key: &Path, secs: u64) -> Result<f64> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut srv = Command::new("openssl")
        .args(["s_server", "-quiet", "-accept", &format!("127.0.0.1:{port}"), "-tls1_3"])
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting openssl s_server")?;
    let _keep_stdin = srv.stdin.take();
    let _srv = Proc(srv);
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new("openssl")
        .args(["s_time", "-connect", &format!("127.0.0.1:{port}"), "-new", "-time", &secs.to_string()])
        .output()
        .context("running openssl s_time")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "1234 connections in 5.01 real seconds, ..." (or "... in 5 real seconds")
    text.lines()
        .find(|l| l.contains("connections in") && l.contains("real seconds"))
        .and_then(|l| {
            let mut w = l.split_whitespace();
            let n: f64 = w.next()?.parse().ok()?;
            let s: f64 = l.split("connections in").nth(1)?.split_whitespace().next()?.parse().ok()?;
            Some(n / s)
        })
        .with_context(|| format!("no rate in s_time output:\n{text}"))
}

pub fn run(args: &[String]) -> Result<()> {
    let (mut rounds, mut n, mut m, mut ossl_secs) = (7usize, 3000u64, 30_000u64, 3u64);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().context("missing value");
        match a.as_str() {
            "--rounds" => rounds = val()?.parse()?,
            "--handshakes" => n = val()?.parse()?,
            "--roundtrips" => m = val()?.parse()?,
            "--openssl-seconds" => ossl_secs = val()?.parse()?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    crate::bench_util::require_root()?;
    if Command::new("which").arg("openssl").output().map(|o| !o.status.success()).unwrap_or(true) {
        bail!("openssl is needed: apt-get install -y openssl");
    }
    crate::build_release()?;
    let root = crate::repo_root();
    let fx = crate::bench_util::go_programs("tlsprobe", "default")?;
    let tlsprobe = fx.join("default/tlsprobe");
    let daemon = root.join("target/release/chainprobe");
    let dir = std::env::temp_dir().join(format!("chainprobe-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("openssl req failed");
    }

    // Three configurations per round: no chainprobe, chainprobe with the TLS probes off, and
    // chainprobe by default (TLS probes on). "off" vs "on" isolates what the TLS probes cost from
    // what the daemon's presence costs on a 2-core machine; the order of the two daemon
    // configurations alternates between rounds so drift hits both alike.
    let mut res: [Vec<(f64, f64, f64, f64, f64)>; 3] = [vec![], vec![], vec![]];
    for r in 0..rounds {
        let (h, hc, b, bc) = go_round(&tlsprobe, n, m, None)?;
        let o = openssl_round(&cert, &key, ossl_secs)?;
        res[0].push((h, hc, b, bc, o));
        let order = if r % 2 == 0 { [false, true] } else { [true, false] };
        for tls in order {
            let (_d, port) = start_daemon(&daemon, &dir, tls)?;
            let (h, hc, b, bc) = go_round(&tlsprobe, n, m, Some((port, tls)))?;
            let o = openssl_round(&cert, &key, ossl_secs)?;
            res[1 + tls as usize].push((h, hc, b, bc, o));
        }
        let f = |x: &(f64, f64, f64, f64, f64)| format!("hs/s {:.0} (CPU µs/pair {:.0}), rt/s {:.0} (CPU µs {:.2}), OpenSSL hs/s {:.0}", x.0, x.1, x.2, x.3, x.4);
        eprintln!("round {}: none: {} | TLS probes off: {} | on: {}", r + 1, f(&res[0][r]), f(&res[1][r]), f(&res[2][r]));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let med = |i: usize, k: usize| -> f64 {
        let mut v: Vec<f64> = res[i].iter().map(|x| [x.0, x.1, x.2, x.3, x.4][k]).collect();
        median(&mut v)
    };
    println!("| TLS on loopback (medians of {rounds} rounds) | no chainprobe | chainprobe, TLS probes off | chainprobe (default: TLS probes on) | on / off | on / none |");
    println!("|---|---|---|---|---|---|");
    let rows: [(&str, usize, bool); 5] = [
        ("Go 1.27 handshakes/s (client + server in one process, TLS 1.3, ALPN h2)", 0, false),
        ("Go CPU µs per handshake pair (user + system)", 1, true),
        ("Go bulk: 64-byte round trips/s on one connection", 2, false),
        ("Go CPU µs per 64-byte round trip", 3, true),
        ("OpenSSL handshakes/s (s_time -new → s_server, TLS 1.3)", 4, false),
    ];
    for (name, k, cost) in rows {
        let (a, b, c) = (med(0, k), med(1, k), med(2, k));
        // For costs (CPU per operation) the ratio is inverted so that < 1 always means slower.
        let (r_off, r_none) = if cost { (b / c, a / c) } else { (c / b, c / a) };
        println!("| {name} | {a:.2} | {b:.2} | {c:.2} | {r_off:.3}× | {r_none:.3}× |");
    }
    println!();
    let added = med(2, 1) - med(1, 1);
    println!("CPU added by the TLS probes per Go handshake pair (4 probe hits: 2 entries + 2 RETs): {added:.1} µs ({:.2} µs per hit)", added / 4.0);
    Ok(())
}
