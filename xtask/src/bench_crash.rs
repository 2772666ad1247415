//! `cargo xtask bench crash [--goroutines 1000,10000,100000] [--rounds R]`: what a crash capsule
//! costs the dying process, side by side in one run.
//!
//! The `crasher` fixture (Go 1.27.3, stripped) parks N goroutines and panics on command
//! (`crash panic-string`). Each round, for each N:
//!   - without chainprobe: the time from the command to the process's exit (Go prints its panic
//!     and exits 2);
//!   - with the release daemon (default `[crash]` settings, `cooldown_seconds = 0` so every
//!     crash gets a capsule): the same time, the capsule's `held_seconds` (from the kernel's
//!     SIGSTOP to the SIGCONT), `seconds_to_capsule` (from the fatal call to the capsule on disk)
//!     and the files it holds.
//!
//! The extra time the dying process is held is the difference of the two exit times (medians);
//! target: held ≤ 200 ms for a 10k-goroutine program.
use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::bench_util::{self, json, median};

/// A crasher with N parked goroutines, ready to crash.
struct Crasher {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
    pid: u32,
}

impl Crasher {
    fn start(bin: &Path) -> Result<Crasher> {
        let mut child = Command::new(bin).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().with_context(|| format!("starting {}", bin.display()))?;
        let (stdin, stdout) = (child.stdin.take().context("stdin")?, child.stdout.take().context("stdout")?);
        let mut c = Crasher { pid: child.id(), child, stdin, stdout: BufReader::new(stdout) };
        let mut line = String::new();
        c.stdout.read_line(&mut line)?;
        if !line.starts_with("ready") {
            bail!("crasher said {line:?}");
        }
        Ok(c)
    }

    /// Parks `n` more goroutines.
    fn park(&mut self, n: u64) -> Result<()> {
        writeln!(self.stdin, "park {n}")?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if !line.starts_with("ok") {
            bail!("crasher: park {n} -> {line:?}");
        }
        Ok(())
    }

    /// Crashes it; the seconds until it exited (bounded at 60 s).
    fn crash(&mut self) -> Result<f64> {
        let t0 = Instant::now();
        writeln!(self.stdin, "crash panic-string")?;
        self.stdin.flush()?;
        loop {
            if let Some(st) = self.child.try_wait()? {
                if st.code() != Some(2) {
                    bail!("crasher {} ended with {st}, not exit 2", self.pid);
                }
                return Ok(t0.elapsed().as_secs_f64());
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                bail!("crasher {} did not exit within 60 s", self.pid);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

impl Drop for Crasher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The capsule of `pid` (waits at most 30 s).
fn capsule(port: u16, pid: u32) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let v = json(port, "GET", "/api/v1/snapshots", "")?;
        if let Some(s) = v["snapshots"].as_array().into_iter().flatten().find(|s| s["pid"] == pid && s["trigger"] == "crash" && s["status"] == "done") {
            return Ok(s.clone());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("no crash capsule for {pid}")
}

#[derive(Default)]
struct Series {
    exit_without: Vec<f64>,
    exit_with: Vec<f64>,
    held: Vec<f64>,
    to_capsule: Vec<f64>,
    files: Vec<String>,
    partial: Vec<String>,
}

pub fn run(args: &[String]) -> Result<()> {
    let mut sizes: Vec<u64> = vec![1_000, 10_000, 100_000];
    let mut rounds = 3usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--goroutines" => sizes = it.next().context("missing value")?.split(',').map(|n| n.trim().parse()).collect::<Result<_, _>>()?,
            "--rounds" => rounds = it.next().context("missing value")?.parse()?,
            other => bail!("unknown argument {other:?} (--goroutines N,N,… --rounds R)"),
        }
    }
    bench_util::require_root()?;
    crate::build_release()?;
    let bin = crate::repo_root().join("target/release/chainprobe");
    let crasher = bench_util::go_programs("crasher", "stripped")?.join("stripped/crasher");
    let mut series: Vec<Series> = sizes.iter().map(|_| Series::default()).collect();
    for round in 0..rounds {
        // Without chainprobe.
        for (i, &n) in sizes.iter().enumerate() {
            let mut c = Crasher::start(&crasher)?;
            c.park(n)?;
            series[i].exit_without.push(c.crash()?);
        }
        // With the daemon (a fresh one a round: its store starts empty).
        let dir = std::env::temp_dir().join(format!("chainprobe-bench-crash-{}-{round}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let extra = format!(
            "[api]\nrate_limit_per_second = 1000.0\nrate_limit_burst = 1000\n[go]\nread_interval_seconds = 1.0\ncreation_probes = \"manual\"\n[snapshot]\ndir = \"{}\"\nmax_goroutines = 1000000\n[crash]\ncooldown_seconds = 0.0\n",
            dir.join("snapshots").display()
        );
        let (d, port) = bench_util::start_daemon(&bin, &dir, &extra)?;
        for (i, &n) in sizes.iter().enumerate() {
            // Tracked and its offsets checked first (a burst of 100k new goroutines can make the
            // check of a table inconclusive for a while), then the goroutines.
            let mut c = Crasher::start(&crasher)?;
            bench_util::wait_target(port, c.pid, Duration::from_secs(60), "tracked with its runtime read", |t| t["runtime_reads"] == "ok")?;
            c.park(n)?;
            bench_util::wait_target(port, c.pid, Duration::from_secs(120), "read with its goroutines", |t| t["runtime"]["goroutines"].as_u64().is_some_and(|g| g >= n))?;
            // The crash probes' settings are refreshed every read interval.
            std::thread::sleep(Duration::from_millis(1500));
            let exit = c.crash()?;
            let s = capsule(port, c.pid)?;
            let cap = &s["capsule"];
            let se = &mut series[i];
            se.exit_with.push(exit);
            se.held.push(cap["held_seconds"].as_f64().unwrap_or(f64::NAN));
            se.to_capsule.push(cap["seconds_to_capsule"].as_f64().unwrap_or(f64::NAN));
            let mut files: Vec<String> = s["files"].as_object().map(|f| f.keys().cloned().collect()).unwrap_or_default();
            files.sort();
            se.files.push(files.join("+"));
            if let Some(p) = cap["partial"].as_str() {
                se.partial.push(p.to_string());
            }
            eprintln!("round {round}, {n} goroutines: exit {:.1} ms, held {:.1} ms, capsule {:.1} ms after the crash", exit * 1e3, se.held.last().copied().unwrap_or(f64::NAN) * 1e3, se.to_capsule.last().copied().unwrap_or(f64::NAN) * 1e3);
        }
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("\n## Crash capsules: how long a crashing process is held (`cargo xtask bench crash`)\n");
    println!("crasher (Go 1.27.3, stripped), `crash panic-string`, {rounds} rounds, medians (max in brackets); release daemon, default [crash] settings:\n");
    println!("| parked goroutines | exit without chainprobe (ms) | exit with (ms) | extra (ms) | held (ms) | fatal call → capsule on disk (ms) | files |");
    println!("|---|---|---|---|---|---|---|");
    for (i, &n) in sizes.iter().enumerate() {
        let s = &mut series[i];
        let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max) * 1e3;
        let (hmax, cmax) = (max(&s.held), max(&s.to_capsule));
        let (without, with) = (median(&mut s.exit_without), median(&mut s.exit_with));
        let mut files = s.files.clone();
        files.dedup();
        println!(
            "| {n} | {:.1} | {:.1} | {:.1} | {:.1} ({hmax:.1}) | {:.1} ({cmax:.1}) | {} |",
            without * 1e3,
            with * 1e3,
            (with - without) * 1e3,
            median(&mut s.held) * 1e3,
            median(&mut s.to_capsule) * 1e3,
            files.join(", ")
        );
    }
    for (i, &n) in sizes.iter().enumerate() {
        for p in &series[i].partial {
            println!("- {n} goroutines, partial capsule: {p}");
        }
    }
    Ok(())
}
