//! `cargo xtask bench http2 [--rounds R] [--requests N] [--concurrency C] [--resets K]`:
//! what the HTTP/2 control-frame probes cost the programs they watch, side by side in one run.
//!
//! tests/fixtures/go/src/h2probe (Go 1.27.3) runs as a server and a client process (std's HTTP/2
//! over TLS on loopback, one connection). Each round measures, without chainprobe and with it
//! (the default configuration: the HTTP/2 probes on):
//! - requests/s: N GET requests over C concurrent streams (`bench`): HEADERS and DATA frames
//!   only, which must hit no probe (target ≥ 0.99×); and the CPU time per request of both
//!   processes, which a probe on the per-frame path would raise and the daemon's own work on the
//!   shared cores does not; and chainprobe's kernel events during those requests, by program
//!   (the HTTP/2 programs must show none);
//! - the cost of a control frame: K requests cancelled after their headers (`cancel`: one
//!   RST_STREAM written by the client, one read by the server: 2 probe hits each), as the extra
//!   CPU time of both processes and the extra wall time per event.
//! The same two processes serve every window (a new process brings its own memory layout). Ratios
//! are medians over rounds of same-round ratios; rounds alternate which window comes first.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::bench_util::{self, median, GoProgram};

/// CPU time (s) of `pid` from its threads' schedstat (ns resolution).
fn cpu_ns(pid: u32) -> Result<f64> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(text) = std::fs::read_to_string(t?.path().join("schedstat")) else { continue };
        ns += text.split_whitespace().next().context("schedstat")?.parse::<u64>()?;
    }
    Ok(ns as f64)
}

struct Window {
    rps: f64,
    /// GET requests: CPU µs per request of both processes (what a probe on the per-frame path
    /// would add to; the daemon's own CPU is not in it).
    get_cpu_us: f64,
    /// Cancelled requests: wall µs and CPU µs (both processes) per request.
    cancel_wall_us: f64,
    cancel_cpu_us: f64,
    /// With chainprobe: its kernel programs' events during the GET requests, by program.
    get_hits: BTreeMap<String, f64>,
}

/// `chainprobe_events_processed_total` by program, from the daemon on `dport`.
fn events_by_program(dport: u16) -> Result<BTreeMap<String, f64>> {
    let (status, body) = bench_util::http(dport, "GET", "/metrics", "")?;
    if status != 200 {
        bail!("GET /metrics: {status}");
    }
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| l.starts_with("chainprobe_events_processed_total{")) {
        let program = line.split("program=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?");
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        out.insert(program.to_string(), value);
    }
    Ok(out)
}

fn window(server: &GoProgram, client: &mut GoProgram, port: i64, n: u64, conc: u64, k: u64, dport: Option<u16>) -> Result<Window> {
    let hits0 = dport.map(events_by_program).transpose()?;
    let get0 = cpu_ns(server.pid)? + cpu_ns(client.pid)?;
    let r = client.try_cmd(&format!("bench {port} {n} {conc}"))?;
    let get_cpu_us = (cpu_ns(server.pid)? + cpu_ns(client.pid)? - get0) / 1e3 / n as f64;
    let mut get_hits = BTreeMap::new();
    if let (Some(dport), Some(hits0)) = (dport, hits0) {
        for (program, v) in events_by_program(dport)? {
            let d = v - hits0.get(&program).copied().unwrap_or(0.0);
            if d > 0.0 {
                get_hits.insert(program, d);
            }
        }
    }
    let ns = *r.first().context("bench: no elapsed time")?;
    let rps = n as f64 / (ns as f64 / 1e9);
    let cpu0 = cpu_ns(server.pid)? + cpu_ns(client.pid)?;
    let t0 = Instant::now();
    let r = client.try_cmd(&format!("cancel {port} {k}"))?;
    let wall = t0.elapsed().as_secs_f64() * 1e6 / k as f64;
    let cpu = (cpu_ns(server.pid)? + cpu_ns(client.pid)? - cpu0) / 1e3 / k as f64;
    if r.first() != Some(&(k as i64)) {
        bail!("cancel: {r:?}");
    }
    Ok(Window { rps, get_cpu_us, cancel_wall_us: wall, cancel_cpu_us: cpu, get_hits })
}

pub fn run(args: &[String]) -> Result<()> {
    bench_util::require_root()?;
    let (mut rounds, mut n, mut conc, mut k) = (5usize, 20_000u64, 8u64, 2_000u64);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || -> Result<u64> { Ok(it.next().with_context(|| format!("{a} needs a value"))?.parse()?) };
        match a.as_str() {
            "--rounds" => rounds = val()? as usize,
            "--requests" => n = val()?,
            "--concurrency" => conc = val()?,
            "--resets" => k = val()?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    crate::build_release()?;
    let root = crate::repo_root();
    let daemon_bin = root.join("target/release/chainprobe");
    let dir = bench_util::go_programs("h2probe", "default")?;
    let bin = dir.join("default/h2probe");
    let mut server = bench_util::go_program(&bin, &[])?;
    let mut client = bench_util::go_program(&bin, &[])?;
    let port = *server.try_cmd("serve")?.first().context("serve: no port")?;
    client.try_cmd(&format!("bench {port} 2000 {conc}"))?; // warm-up
    let tmp = std::env::temp_dir().join(format!("chainprobe-bench-http2-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let (mut rps, mut wall, mut cpu, mut get_cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut hits: BTreeMap<String, f64> = BTreeMap::new();
    let (mut base_rps, mut base_wall, mut base_cpu, mut base_get_cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let with_daemon = |server: &GoProgram, client: &mut GoProgram| -> Result<Window> {
        let (d, dport) = bench_util::start_daemon(&daemon_bin, &tmp, "")?;
        for pid in [server.pid, client.pid] {
            bench_util::wait_target(dport, pid, Duration::from_secs(20), "tracked with the HTTP/2 probes attached", |t| {
                t["probes"].as_array().into_iter().flatten().filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("go_http2_")) && p["state"] == "attached").count() == 4
            })?;
        }
        // The start-up scan settles: the daemon under 2% of a core for a second (10 s at most),
        // so what the window sees is the probes, not the daemon's start on the shared cores.
        let settle = Instant::now() + Duration::from_secs(10);
        loop {
            let c0 = bench_util::cpu_seconds(d.pid())?;
            std::thread::sleep(Duration::from_secs(1));
            if bench_util::cpu_seconds(d.pid())? - c0 < 0.02 || Instant::now() > settle {
                break;
            }
        }
        let on = window(server, client, port, n, conc, k, Some(dport));
        drop(d);
        on
    };
    for round in 0..rounds {
        // Alternate the order, so a drift within a round (the machine, the programs' heaps)
        // favours neither side.
        let (off, on) = if round % 2 == 0 {
            let off = window(&server, &mut client, port, n, conc, k, None)?;
            (off, with_daemon(&server, &mut client)?)
        } else {
            let on = with_daemon(&server, &mut client)?;
            (window(&server, &mut client, port, n, conc, k, None)?, on)
        };
        eprintln!(
            "round {round}: {:.0} → {:.0} req/s ({:.3}×), {:.1} → {:.1} CPU µs a request; cancelled request {:.1} → {:.1} µs wall, {:.1} → {:.1} µs CPU",
            off.rps,
            on.rps,
            on.rps / off.rps,
            off.get_cpu_us,
            on.get_cpu_us,
            off.cancel_wall_us,
            on.cancel_wall_us,
            off.cancel_cpu_us,
            on.cancel_cpu_us
        );
        for (program, h) in &on.get_hits {
            *hits.entry(program.clone()).or_insert(0.0) += h;
        }
        rps.push(on.rps / off.rps);
        get_cpu.push(on.get_cpu_us / off.get_cpu_us);
        base_get_cpu.push(off.get_cpu_us);
        wall.push((on.cancel_wall_us - off.cancel_wall_us) / 2.0);
        cpu.push((on.cancel_cpu_us - off.cancel_cpu_us) / 2.0);
        base_rps.push(off.rps);
        base_wall.push(off.cancel_wall_us);
        base_cpu.push(off.cancel_cpu_us);
    }
    let _ = client.try_cmd("quit");
    let _ = server.try_cmd("quit");
    let _ = std::fs::remove_dir_all(&tmp);
    println!("cargo xtask bench http2 --rounds {rounds} --requests {n} --concurrency {conc} --resets {k}  (Go 1.27.3, h2 over TLS, loopback; medians of {rounds} rounds)");
    println!("| measure | without chainprobe | with / extra |");
    println!("|---|---|---|");
    println!("| GET requests/s, {conc} concurrent streams, one connection | {:.0} | {:.3}× |", median(&mut base_rps), median(&mut rps));
    println!("| GET request, CPU µs of both processes | {:.1} | {:.3}× |", median(&mut base_get_cpu), median(&mut get_cpu));
    let per_1000 = |h: f64| h * 1000.0 / (n as f64 * rounds as f64);
    let listed: Vec<String> = hits.iter().map(|(p, h)| format!("{p} {:.2}", per_1000(*h))).collect();
    println!(
        "| chainprobe's kernel events during the GET requests, per 1000 requests (both processes) | — | {:.2} ({}) |",
        per_1000(hits.values().sum()),
        if listed.is_empty() { "none".to_string() } else { listed.join(", ") }
    );
    println!("| cancelled request (RST_STREAM sent + received), wall µs | {:.1} | +{:.1} µs per event |", median(&mut base_wall), median(&mut wall));
    println!("| cancelled request, CPU µs (both processes) | {:.1} | +{:.1} µs per event |", median(&mut base_cpu), median(&mut cpu));
    Ok(())
}
