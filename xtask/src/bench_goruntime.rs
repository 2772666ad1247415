//! `cargo xtask bench goruntime [--rounds R] [--goroutines N] [--http-seconds S]`: what chainprobe's
//! Go runtime probing costs the programs it watches, measured side by side in one run.
//!
//! Goroutine-spawn microbenchmark (tests/fixtures/go/src/spawnbench, Go 1.27), ns per goroutine:
//!   none     no probe at all
//!   floor    an empty uprobe on runtime.newproc1 (bpftrace `uprobe:…:runtime.newproc1 {}`)
//!   default  chainprobe in its default mode (GC/STW probes, memory reads; no per-goroutine probe)
//!   forced   chainprobe with the goroutine-creation probes switched on for the benchmark process
//!            (newproc1 RET + goexit1: two probe hits per goroutine)
//! HTTP: tests/fixtures/go/src/httpbench under `wrk` with and without chainprobe (default mode).
//! Rounds alternate the configurations so drift hits all alike; medians are reported.
use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::bench_util::{self, http, median, Proc};

fn start_daemon(bin: &Path, dir: &Path) -> Result<(bench_util::Daemon, u16)> {
    bench_util::start_daemon(bin, dir, "[go]\ncreation_probes = \"manual\"\ncreation_max_rate = 1e12\ncreation_window_seconds = 3600.0\n")
}

/// Runs spawnbench; `before_go` runs once it printed its pid and before it starts.
fn spawn_round(bench: &Path, n: u64, before_go: impl FnOnce(u32) -> Result<()>) -> Result<f64> {
    let mut child = Command::new(bench)
        .args(["-n", &n.to_string(), "-rounds", "3"])
        .env("GOMAXPROCS", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    let pid = child.id();
    // Give discovery time to find the process (and attach per-binary probes).
    std::thread::sleep(Duration::from_millis(1500));
    before_go(pid)?;
    child.stdin.take().context("stdin")?.write_all(b"go\n")?;
    line.clear();
    out.read_line(&mut line)?;
    let _ = child.wait();
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).with_context(|| format!("unexpected spawnbench output {line:?}"))
}

fn wrk_rate(port: u16, secs: u64) -> Result<f64> {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", &format!("-d{secs}s"), &format!("http://127.0.0.1:{port}/")])
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))
}

pub fn run(args: &[String]) -> Result<()> {
    let (mut rounds, mut n, mut http_secs) = (5usize, 200_000u64, 5u64);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().context("missing value");
        match a.as_str() {
            "--rounds" => rounds = val()?.parse()?,
            "--goroutines" => n = val()?.parse()?,
            "--http-seconds" => http_secs = val()?.parse()?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    crate::bench_util::require_root()?;
    for tool in ["bpftrace", "wrk"] {
        if Command::new("which").arg(tool).output().map(|o| !o.status.success()).unwrap_or(true) {
            bail!("{tool} is needed: apt-get install -y bpftrace wrk");
        }
    }
    crate::build_release()?;
    let root = crate::repo_root();
    let fx = crate::bench_util::go_programs("spawnbench httpbench", "default")?;
    let spawn = fx.join("default/spawnbench");
    let httpb = fx.join("default/httpbench");
    let daemon = root.join("target/release/chainprobe");
    let dir = std::env::temp_dir().join(format!("chainprobe-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let (mut none, mut floor, mut default, mut forced) = (vec![], vec![], vec![], vec![]);
    for r in 0..rounds {
        none.push(spawn_round(&spawn, n, |_| Ok(()))?);
        {
            let bt = Proc::new(
                Command::new("bpftrace")
                    .args(["-e", &format!("uprobe:{}:runtime.newproc1 {{}}", spawn.display())])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting bpftrace")?,
            );
            std::thread::sleep(Duration::from_secs(3));
            floor.push(spawn_round(&spawn, n, |_| Ok(()))?);
            drop(bt);
        }
        {
            let (_d, port) = start_daemon(&daemon, &dir)?;
            default.push(spawn_round(&spawn, n, |_| Ok(()))?);
            forced.push(spawn_round(&spawn, n, |pid| {
                let (status, body) = http(port, "POST", &format!("/api/v1/targets/{pid}/creation-probes"), r#"{"enabled": true}"#)?;
                if status != 200 {
                    bail!("could not switch on creation probes: HTTP {status}: {body}");
                }
                Ok(())
            })?);
        }
        eprintln!("round {}: ns/goroutine none {:.0}, floor {:.0}, default {:.0}, forced {:.0}", r + 1, none[r], floor[r], default[r], forced[r]);
    }

    let (mut h_off, mut h_on) = (vec![], vec![]);
    for r in 0..rounds.min(3) {
        let mut srv = Command::new(&httpb).stdout(Stdio::piped()).spawn()?;
        let mut line = String::new();
        BufReader::new(srv.stdout.take().context("stdout")?).read_line(&mut line)?;
        let srv = Proc::new(srv);
        let port: u16 = line.trim().rsplit(':').next().and_then(|p| p.parse().ok()).context("httpbench address")?;
        h_off.push(wrk_rate(port, http_secs)?);
        let (_d, _) = start_daemon(&daemon, &dir)?;
        std::thread::sleep(Duration::from_secs(2));
        h_on.push(wrk_rate(port, http_secs)?);
        drop(srv);
        eprintln!("round {}: HTTP req/s {:.0} -> {:.0}", r + 1, h_off[r], h_on[r]);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let (n0, f, d, c) = (median(&mut none), median(&mut floor), median(&mut default), median(&mut forced));
    let (ho, hn) = (median(&mut h_off), median(&mut h_on));
    println!("| goroutine spawn (Go 1.27, GOMAXPROCS=2) | ns/goroutine | throughput vs none |");
    println!("|---|---|---|");
    println!("| none | {n0:.0} | 1.000× |");
    println!("| floor: empty uprobe on newproc1 (bpftrace) | {f:.0} | {:.3}× |", n0 / f);
    println!("| chainprobe default | {d:.0} | {:.3}× |", n0 / d);
    println!("| chainprobe, creation probes forced on | {c:.0} | {:.3}× |", n0 / c);
    println!();
    println!(
        "cost per probe hit: floor {:.0} ns (1 hit per goroutine), forced {:.0} ns ({:.0} ns per goroutine, 2 hits: newproc1 RET + goexit1) = {:.2}× the floor per hit",
        f - n0,
        (c - n0) / 2.0,
        c - n0,
        ((c - n0) / 2.0) / (f - n0)
    );
    println!();
    println!("| HTTP (httpbench under wrk -t2 -c32) | req/s | ratio |");
    println!("|---|---|---|");
    println!("| without chainprobe | {ho:.0} | 1.000× |");
    println!("| with chainprobe (default) | {hn:.0} | {:.3}× |", hn / ho);
    Ok(())
}
