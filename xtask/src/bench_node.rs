//! `cargo xtask bench node --scenario NAME [options]`: what chainprobe costs on a busy node.
//!
//! Scenario `goroutines` (`--goroutines N`, default 500,000; `--seconds S`, default 120;
//! `--rounds R`, default 1): one Go process (the `leaky` fixture, Go 1.27.3, stripped) with N
//! parked goroutines, the release daemon with its default configuration (runtime read every 5 s,
//! `[go] read_cpu_budget = 0.005`; snapshots and automatic creation probes off, the API's rate
//! limit raised for the benchmark's polling), and the daemon's CPU time (utime + stime of /proc/PID/stat)
//! over the window, as % of one core. Side by side in one run, each round:
//!   - `idle`: the same process without the parked goroutines (what the daemon costs anyway);
//!   - `O(P) count + budgeted breakdown`: the default;
//!   - `every g each interval`: `[go] every_g_read_each_interval = true`, the read as it was
//!     before (every g of the process at every interval).
//!
//! The window of the default starts right after a breakdown read and spans whole periods of the
//! breakdown schedule (the period the API reports), so it holds the breakdown reads the budget
//! allows in the long run, not a lucky or unlucky phase.
//!
//! Scenario `fleet`: 500 Go processes plus 100 execs/s of short-lived non-Go processes for 10
//! minutes (see [`fleet`]).
mod fleet;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::bench_util::{self, cpu_seconds, json, median};

/// One configuration measured.
struct Measured {
    cpu_percent: f64,
    window: f64,
    /// Seconds between breakdown reads as the API reported them, and one read's CPU time.
    period: Option<f64>,
    read_cpu: Option<f64>,
}

fn target(port: u16, pid: u32) -> Result<serde_json::Value> {
    let v = json(port, "GET", "/api/v1/targets", "")?;
    v["targets"].as_array().into_iter().flatten().find(|t| t["pid"].as_u64() == Some(u64::from(pid))).cloned().context("target gone")
}

/// The daemon `bin` with `extra` TOML, one leaky process with `n` parked goroutines: the daemon's
/// CPU over at least `seconds` (whole breakdown periods when `whole_periods`).
fn measure(bin: &Path, leaky: &Path, extra: &str, n: u64, seconds: u64, whole_periods: bool) -> Result<Measured> {
    let dir = std::env::temp_dir().join(format!("chainprobe-bench-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The benchmark polls the API faster than its default rate limit allows.
    let extra = format!("[api]\nrate_limit_per_second = 1000.0\nrate_limit_burst = 1000\n[snapshot]\nenabled = false\n[go]\ncreation_probes = \"manual\"\n{extra}");
    let (d, port) = bench_util::start_daemon(bin, &dir, &extra)?;
    let mut app = bench_util::go_program(leaky, &[])?;
    if n > 0 {
        app.try_cmd(&format!("leak {n}"))?;
    }
    // The default read interval is 5 s; the first read of every g of a big process takes a while.
    bench_util::wait_target(port, app.pid, Duration::from_secs(120), &format!("read with {n} goroutines"), |t| {
        t["runtime"]["goroutines"].as_u64().is_some_and(|g| g >= n) && t["runtime"]["goroutines_by_state"].is_array()
    })?;
    let pid = d.pid();
    let mut window = seconds as f64;
    let (mut period, mut read_cpu) = (None, None);
    if whole_periods {
        // Wait for a breakdown read to have just happened (its age restarts), then span whole
        // periods from there.
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut last_age = f64::MAX;
        loop {
            let t = target(port, app.pid)?;
            let rt = &t["runtime"];
            let age = rt["goroutines_by_state_age_seconds"].as_f64().unwrap_or(f64::MAX);
            period = rt["goroutines_by_state_period_seconds"].as_f64();
            read_cpu = rt["goroutines_by_state_read_cpu_seconds"].as_f64();
            if age < last_age && age < 1.0 && rt["goroutines_counted_by"].as_str().is_some_and(|s| s.starts_with("runtime counters")) {
                break;
            }
            last_age = age;
            if Instant::now() > deadline {
                bail!("no breakdown read within 600 s: {rt}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // The read that just finished is before the window; the one `period` later is in it.
        std::thread::sleep(Duration::from_secs(2));
        if let Some(p) = period.filter(|p| *p > 0.0) {
            window = (window / p).ceil().max(1.0) * p;
        }
    }
    let c0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(window));
    let c1 = cpu_seconds(pid)?;
    let elapsed = t0.elapsed().as_secs_f64();
    if !whole_periods {
        let t = target(port, app.pid)?;
        period = t["runtime"]["goroutines_by_state_period_seconds"].as_f64();
        read_cpu = t["runtime"]["goroutines_by_state_read_cpu_seconds"].as_f64();
    }
    drop(app);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Measured { cpu_percent: 100.0 * (c1 - c0) / elapsed, window: elapsed, period, read_cpu })
}

fn goroutines(args: &[String]) -> Result<()> {
    let (mut n, mut seconds, mut rounds) = (500_000u64, 120u64, 1usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().context("missing value");
        match a.as_str() {
            "--goroutines" => n = val()?.parse()?,
            "--seconds" => seconds = val()?.parse()?,
            "--rounds" => rounds = val()?.parse()?,
            other => bail!("unknown argument {other:?} (scenario goroutines: --goroutines N --seconds S --rounds R)"),
        }
    }
    if rounds == 0 || seconds == 0 || seconds > 3600 {
        bail!("--rounds must be at least 1, --seconds 1 to 3600");
    }
    bench_util::require_root()?;
    crate::build_release()?;
    let bin = crate::repo_root().join("target/release/chainprobe");
    let leaky = bench_util::go_programs("leaky", "stripped")?.join("stripped/leaky");
    let (mut idle, mut budgeted, mut every_g) = (vec![], vec![], vec![]);
    let (mut periods, mut read_cpus) = (vec![], vec![]);
    for r in 0..rounds {
        let i = measure(&bin, &leaky, "", 0, seconds.min(60), false)?;
        let b = measure(&bin, &leaky, "", n, seconds, true)?;
        let e = measure(&bin, &leaky, "every_g_read_each_interval = true\n", n, seconds.min(60), false)?;
        eprintln!(
            "round {}: idle {:.3}% ({:.0} s), default {:.3}% ({:.0} s; breakdown every {:.1} s, {:.3} s CPU each), every g {:.3}% ({:.0} s)",
            r + 1,
            i.cpu_percent,
            i.window,
            b.cpu_percent,
            b.window,
            b.period.unwrap_or(f64::NAN),
            b.read_cpu.unwrap_or(f64::NAN),
            e.cpu_percent,
            e.window
        );
        idle.push(i.cpu_percent);
        budgeted.push(b.cpu_percent);
        every_g.push(e.cpu_percent);
        periods.push(b.period.unwrap_or(f64::NAN));
        read_cpus.push(b.read_cpu.unwrap_or(f64::NAN));
    }
    let (i, b, e) = (median(&mut idle), median(&mut budgeted), median(&mut every_g));
    println!("| one Go process, {n} parked goroutines, default read interval (5 s), median of {rounds} | daemon CPU, % of one core | over idle |");
    println!("|---|---|---|");
    println!("| idle (the same process, no parked goroutines) | {i:.3} | |");
    println!(
        "| O(P) count + breakdown under `read_cpu_budget = 0.005` (breakdown every {:.1} s, {:.3} s CPU each) | {b:.3} | {:+.3} |",
        median(&mut periods),
        median(&mut read_cpus),
        b - i
    );
    println!("| every g each interval (before) | {e:.3} | {:+.3} |", e - i);
    println!();
    println!("every g / O(P)+budget: {:.1}× the daemon's CPU ({:.1}× over idle)", e / b, (e - i) / (b - i).max(1e-9));
    Ok(())
}

/// `cargo xtask bench node …`
pub fn run(args: &[String]) -> Result<()> {
    let (scenario, rest) = match args {
        [flag, name, rest @ ..] if flag == "--scenario" => (name.as_str(), rest),
        _ => bail!(
            "usage: cargo xtask bench node --scenario goroutines [--goroutines N] [--seconds S] [--rounds R]\n       cargo xtask bench node --scenario fleet [--seconds S] [--processes N] [--churn-per-second R] [--scrape-interval I]"
        ),
    };
    match scenario {
        "goroutines" => goroutines(rest),
        "fleet" => fleet::run(rest),
        other => bail!("unknown scenario {other:?}; available: goroutines, fleet"),
    }
}
