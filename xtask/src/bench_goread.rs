//! `cargo xtask bench goread [--goroutines N] [--seconds S] [--rounds R] [--baseline BIN]`: what
//! the periodic Go runtime read costs the daemon for one big Go process (the `leaky` fixture, Go
//! 1.27, stripped, with N parked goroutines, default 500,000), read every second: the daemon's CPU
//! time over S seconds (default 20), as % of one core, with the release build, and side by side
//! (alternating, R rounds) with `--baseline BIN`, another chainprobe build (e.g. one built from
//! an earlier commit), so a change is measured against what it replaces in the same run.
use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};

use crate::bench_util::{self, cpu_seconds, median};

/// One measurement: the daemon `bin`'s CPU % of a core while it reads one process of `n` parked
/// goroutines every second for `seconds`.
fn measure(bin: &Path, leaky: &Path, n: u64, seconds: u64) -> Result<f64> {
    let dir = std::env::temp_dir().join(format!("chainprobe-bench-goread-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let extra = "[go]\nread_interval_seconds = 1.0\ncreation_probes = \"manual\"\n[snapshot]\nenabled = false\n";
    let (d, port) = bench_util::start_daemon(bin, &dir, extra)?;
    let mut app = bench_util::go_program(leaky, &[])?;
    app.try_cmd(&format!("leak {n}"))?;
    bench_util::wait_target(port, app.pid, Duration::from_secs(60), &format!("read with {n} goroutines"), |t| {
        t["runtime"]["goroutines"].as_u64().is_some_and(|g| g >= n)
    })?;
    let pid = d.pid();
    let c0 = cpu_seconds(pid)?;
    std::thread::sleep(Duration::from_secs(seconds));
    let c1 = cpu_seconds(pid)?;
    drop(app);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(100.0 * (c1 - c0) / seconds as f64)
}

pub fn run(args: &[String]) -> Result<()> {
    let (mut n, mut seconds, mut rounds, mut baseline) = (500_000u64, 20u64, 2usize, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().context("missing value");
        match a.as_str() {
            "--goroutines" => n = val()?.parse()?,
            "--seconds" => seconds = val()?.parse()?,
            "--rounds" => rounds = val()?.parse()?,
            "--baseline" => baseline = Some(std::path::PathBuf::from(val()?)),
            other => bail!("unknown argument {other:?}"),
        }
    }
    bench_util::require_root()?;
    crate::build_release()?;
    let current = crate::repo_root().join("target/release/chainprobe");
    let leaky = bench_util::go_programs("leaky", "stripped")?.join("stripped/leaky");
    let (mut cur, mut base) = (vec![], vec![]);
    for r in 0..rounds {
        if let Some(b) = &baseline {
            base.push(measure(b, &leaky, n, seconds)?);
        }
        cur.push(measure(&current, &leaky, n, seconds)?);
        eprintln!("round {}: current {:.2}% of a core{}", r + 1, cur[r], base.get(r).map(|b| format!(", baseline {b:.2}%")).unwrap_or_default());
    }
    println!("| one Go process, {n} parked goroutines, read every 1 s (median of {rounds}) | daemon CPU, % of one core |");
    println!("|---|---|");
    if baseline.is_some() {
        println!("| baseline | {:.2} |", median(&mut base));
    }
    println!("| this build | {:.2} |", median(&mut cur));
    Ok(())
}
