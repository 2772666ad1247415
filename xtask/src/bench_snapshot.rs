//! `cargo xtask bench snapshot [--rounds R]`: how fast evidence lands on disk, and what taking it
//! costs the target, measured side by side in one run with the release daemon and the `leaky`
//! fixture (Go 1.27).
//!
//! 1. Breach → files: a rule (goroutines critical at 400, 3 evaluations 0.5 s apart) breaches;
//!    time from the breach (the snapshot's creation) to its summary on disk, for the pprof source
//!    and the out-of-process source.
//! 2. Goroutine profile of 10k and 100k goroutines, from the target's own pprof endpoint (Go stops
//!    the world to take it) and out of process (/proc/PID/mem; nothing stops): snapshot time and
//!    the target's worst scheduling lateness (a 1 ms ticker inside it) during the snapshot, next
//!    to the same measure over a quiet window.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::bench_util::{self, json, median, GoProgram};

fn start_daemon(bin: &Path, dir: &Path, rules: bool) -> Result<(bench_util::Daemon, u16)> {
    let extra = format!(
            "[api]\nrate_limit_per_second = 1000.0\nrate_limit_burst = 1000\n[go]\nread_interval_seconds = 0.2\ncreation_probes = \"manual\"\n[health]\ninterval_seconds = 0.5\ndegraded_interval_seconds = 0.5\n{}[health.signals.goroutines]\nwarn = 200.0\ncritical = 400.0\n[snapshot]\ndir = \"{}\"\nmax_per_target_per_hour = 100\nmax_snapshots = 1000\nmax_goroutines = 1000000\nfetch_timeout_seconds = 60.0\nmax_profile_bytes = 1073741824\n",
            if rules { "" } else { "rules = []\n" },
            dir.join("snapshots").display()
        );
    bench_util::start_daemon(bin, dir, &extra)
}

/// The leaky fixture (see its main.go for the commands), serving pprof when asked.
struct Leaky(GoProgram);

impl Leaky {
    fn start(bin: &Path, pprof: bool) -> Result<Leaky> {
        let args: &[&str] = if pprof { &["-pprof", "127.0.0.1:0"] } else { &[] };
        Ok(Leaky(bench_util::go_program(bin, args)?))
    }

    /// Sends `c`; the first number of the reply (0 when it has none).
    fn cmd(&mut self, c: &str) -> Result<i64> {
        Ok(self.0.try_cmd(c)?.first().copied().unwrap_or(0))
    }
}

fn wait_tracked(port: u16, pid: u32) -> Result<()> {
    bench_util::wait_target(port, pid, Duration::from_secs(20), "tracked with its runtime read", |t| t["runtime_reads"] == "ok")
}

/// Waits for a finished snapshot of `pid` (or of id `id`); returns its metadata.
fn wait_done(port: u16, pid: u32, id: Option<&str>) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let v = json(port, "GET", "/api/v1/snapshots", "")?;
        let hit = v["snapshots"].as_array().into_iter().flatten().find(|s| s["pid"] == pid && id.is_none_or(|i| s["id"] == i)).cloned();
        if let Some(s) = hit.filter(|s| s["status"] == "done" || s["status"] == "failed") {
            if s["status"] == "failed" {
                bail!("snapshot failed: {}", s["reason"]);
            }
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("no snapshot of {pid}")
}

fn summary_mtime_ms(dir: &Path, meta: &serde_json::Value) -> Result<u64> {
    let f = meta["files"].as_object().and_then(|f| f.values().next()).and_then(|f| f["file"].as_str()).context("no file")?;
    let stem = f.split('.').take_while(|p| !matches!(*p, "heap" | "goroutine")).collect::<Vec<_>>().join(".");
    let m = std::fs::metadata(dir.join(format!("{stem}.summary.json")))?.modified()?;
    Ok(m.duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64)
}

pub fn run(args: &[String]) -> Result<()> {
    let mut rounds = 3usize;
    let mut heap_only = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => rounds = it.next().context("missing value")?.parse()?,
            "--heap-only" => heap_only = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    crate::bench_util::require_root()?;
    crate::build_release()?;
    let root = crate::repo_root();
    if heap_only {
        return heap(rounds);
    }
    let fx = crate::bench_util::go_programs("leaky", "default stripped")?;
    let (plain, stripped) = (fx.join("default/leaky"), fx.join("stripped/leaky"));
    let dir = std::env::temp_dir().join(format!("chainprobe-bench-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let daemon = root.join("target/release/chainprobe");
    let (d, port) = start_daemon(&daemon, &dir, true)?;
    let snaps = dir.join("snapshots");

    // 1. Breach → files on disk.
    let (mut http_ms, mut mem_ms) = (vec![], vec![]);
    for r in 0..rounds {
        for (bin, pprof, out) in [(&plain, true, &mut http_ms), (&stripped, false, &mut mem_ms)] {
            let mut app = Leaky::start(bin, pprof)?;
            wait_tracked(port, app.0.pid)?;
            app.cmd("leak 600")?;
            let meta = wait_done(port, app.0.pid, None)?;
            let ms = summary_mtime_ms(&snaps, &meta)?.saturating_sub(meta["created_ms"].as_u64().unwrap_or(0));
            out.push(ms as f64);
        }
        eprintln!("round {}: breach → files {} ms (pprof endpoint), {} ms (out of process)", r + 1, http_ms[r], mem_ms[r]);
    }

    // 2. Goroutine profiles of many goroutines, requested over the API (no rule competing).
    drop(d);
    let (_d, port) = start_daemon(&daemon, &dir, false)?;
    println!("| breach → snapshot files on disk (median of {rounds}) | ms |");
    println!("|---|---|");
    println!("| pprof endpoint (heap + goroutine) | {:.0} |", median(&mut http_ms));
    println!("| out of process (goroutine; heap numbers in the summary) | {:.0} |", median(&mut mem_ms));
    println!();
    println!("| goroutines | source | snapshot s | profile bytes | target worst lateness during it | quiet window |");
    println!("|---|---|---|---|---|---|");
    for n in [10_000u64, 100_000] {
        for (bin, pprof, source) in [(&stripped, false, "out of process"), (&plain, true, "pprof endpoint (Go's own)")] {
            let (mut secs, mut late, mut quiet, mut bytes) = (vec![], vec![], vec![], 0u64);
            for _ in 0..rounds {
                let mut app = Leaky::start(bin, pprof)?;
                app.cmd(&format!("leak {n}"))?;
                wait_tracked(port, app.0.pid)?;
                std::thread::sleep(Duration::from_millis(500));
                app.cmd("lat")?;
                let t = Instant::now();
                let v = json(port, "POST", "/api/v1/snapshots", &format!("{{\"pid\": {}, \"kinds\": [\"goroutine\"]}}", app.0.pid))?;
                let id = v["id"].as_str().context("id")?.to_string();
                let meta = wait_done(port, app.0.pid, Some(&id))?;
                let window = t.elapsed();
                late.push(app.cmd("lat")? as f64);
                std::thread::sleep(window);
                quiet.push(app.cmd("lat")? as f64);
                secs.push(meta["duration_seconds"].as_f64().unwrap_or(0.0));
                bytes = meta["files"]["goroutine"]["bytes"].as_u64().unwrap_or(0);
                if meta["goroutines"].as_u64().unwrap_or(0) < n {
                    bail!("profile of {} goroutines, expected {n}", meta["goroutines"]);
                }
            }
            println!(
                "| {n} | {source} | {:.3} | {bytes} | {:.1} ms | {:.1} ms |",
                median(&mut secs),
                median(&mut late) / 1000.0,
                median(&mut quiet) / 1000.0
            );
        }
    }
    drop(_d);
    let _ = std::fs::remove_dir_all(&dir);
    heap(rounds)
}

/// 3. Heap profiles: out of process against the process's own, at 1k, 10k and 100k buckets.
fn heap(rounds: usize) -> Result<()> {
    let root = crate::repo_root();
    let fx = crate::bench_util::go_programs("heapprof", "stripped")?;
    let bin = fx.join("stripped/heapprof");
    let dir = std::env::temp_dir().join(format!("chainprobe-bench-heap-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (_d, port) = start_daemon(&root.join("target/release/chainprobe"), &dir, false)?;
    println!();
    println!("| buckets | source | read ms | write ms | snapshot ms | profile bytes | target worst lateness during it | quiet window |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in [1_000u64, 10_000, 100_000] {
        let (mut read, mut write, mut total, mut late, mut quiet, mut own, mut own_late, mut bytes, mut own_bytes) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![], 0u64, 0u64);
        for _ in 0..rounds {
            let mut app = bench_util::go_program(&bin, &[])?;
            app.try_cmd(&format!("buckets {n}"))?;
            app.try_cmd("gc")?;
            wait_tracked(port, app.pid)?;
            std::thread::sleep(Duration::from_millis(300));
            app.try_cmd("lateness")?;
            let t = Instant::now();
            let v = json(port, "POST", "/api/v1/snapshots", &format!("{{\"pid\": {}, \"kinds\": [\"heap\"]}}", app.pid))?;
            let id = v["id"].as_str().context("id")?.to_string();
            let meta = wait_done(port, app.pid, Some(&id))?;
            let window = t.elapsed();
            late.push(app.try_cmd("lateness")?.first().copied().unwrap_or(0) as f64);
            std::thread::sleep(window);
            quiet.push(app.try_cmd("lateness")?.first().copied().unwrap_or(0) as f64);
            let hp = &meta["heap_profile"];
            if hp["buckets"].as_u64().unwrap_or(0) < n {
                bail!("heap profile of {} buckets, expected {n}: {meta}", hp["buckets"]);
            }
            read.push(hp["read_seconds"].as_f64().unwrap_or(0.0) * 1e3);
            write.push(hp["write_seconds"].as_f64().unwrap_or(0.0) * 1e3);
            total.push(meta["duration_seconds"].as_f64().unwrap_or(0.0) * 1e3);
            bytes = meta["files"]["heap"]["bytes"].as_u64().unwrap_or(0);
            // The process's own, right after.
            app.try_cmd("lateness")?;
            let path = dir.join("own.pb.gz");
            own.push(app.try_cmd(&format!("write {}", path.display()))?.first().copied().unwrap_or(0) as f64 / 1e3);
            own_late.push(app.try_cmd("lateness")?.first().copied().unwrap_or(0) as f64);
            own_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        }
        println!(
            "| {n} | out of process (proc-mem) | {:.1} | {:.1} | {:.1} | {bytes} | {:.1} ms | {:.1} ms |",
            median(&mut read),
            median(&mut write),
            median(&mut total),
            median(&mut late) / 1000.0,
            median(&mut quiet) / 1000.0
        );
        println!("| {n} | the process itself (WriteHeapProfile) | | | {:.1} | {own_bytes} | {:.1} ms | |", median(&mut own), median(&mut own_late) / 1000.0);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
