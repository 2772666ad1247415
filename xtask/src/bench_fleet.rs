//! `cargo xtask bench fleet [--seconds S] [--rate R] [--comms C] [--scrape-interval I]`: series
//! churn of short-lived processes. R execs per second (default 50) of a small C program that makes
//! one refused loopback connect and exits (C distinct program names, default 5, as a node's cron
//! jobs and scripts), for S seconds (default 120), scraped every I seconds (default 15, as
//! Prometheus would) by the release build: the distinct series seen over the run (what
//! Prometheus would have created), as series created per hour, the largest exposition, and events
//! lost — with the default folding and, side by side in the same run, with every process's own
//! series (`fold_non_go = false`, `fold_young_seconds = 0`: chainprobe before folding).
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::bench_util;

const JOB_C: &str = r#"#include <arpa/inet.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connect(s, (struct sockaddr *)&a, sizeof a);
    return 1;
}
"#;

/// Builds the job as `comms` programs of distinct names in `dir`.
pub(crate) fn build_jobs(dir: &Path, comms: usize) -> Result<Vec<PathBuf>> {
    let src = dir.join("job.c");
    std::fs::write(&src, JOB_C)?;
    let first = dir.join("cronjob0");
    let out = Command::new("gcc").arg("-O1").arg("-o").arg(&first).arg(&src).output().context("running gcc")?;
    if !out.status.success() {
        bail!("gcc failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut v = vec![first.clone()];
    for i in 1..comms {
        let p = dir.join(format!("cronjob{i}"));
        std::fs::copy(&first, &p)?;
        v.push(p);
    }
    Ok(v)
}

/// Series identities (name and labels) of one exposition.
pub(crate) fn series(text: &str) -> Vec<String> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string())).collect()
}

pub(crate) fn sample(text: &str, name: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok()).sum()
}

struct Outcome {
    /// Series of the benchmark's own processes (comm `cronjob…`) seen over the run, and those
    /// first seen in its second half (the steady rate, without the warm-up).
    jobs: usize,
    jobs_late: usize,
    created: usize,
    first: usize,
    largest: usize,
    largest_bytes: usize,
    execs: u64,
    lost: f64,
}

fn measure(bin: &Path, jobs: &[PathBuf], extra: &str, seconds: u64, rate: u64, scrape: Duration) -> Result<Outcome> {
    let dir = std::env::temp_dir().join(format!("chainprobe-bench-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (d, port) = bench_util::start_daemon(bin, &dir, &format!("[snapshot]\nenabled = false\n{extra}"))?;
    let closed = test_support::free_addr()?.port();
    let mut seen: HashSet<String> = HashSet::new();
    let mut late: HashSet<String> = HashSet::new();
    let half = Instant::now() + Duration::from_secs(seconds / 2);
    let (mut first, mut largest, mut largest_bytes) = (None, 0usize, 0usize);
    let mut scrape_now = |seen: &mut HashSet<String>, late: &mut HashSet<String>| -> Result<()> {
        let (code, body) = bench_util::http(port, "GET", "/metrics", "")?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        let s = series(&body);
        first.get_or_insert(s.len());
        largest = largest.max(s.len());
        largest_bytes = largest_bytes.max(body.len());
        for series in s {
            if Instant::now() >= half && series.contains("comm=\"cronjob") && !seen.contains(&series) {
                late.insert(series.clone());
            }
            seen.insert(series);
        }
        Ok(())
    };
    scrape_now(&mut seen, &mut late)?;
    let start = Instant::now();
    let (mut next_exec, mut next_scrape) = (start, start + scrape);
    let mut running: Vec<Child> = Vec::new();
    let mut execs = 0u64;
    let every = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    while start.elapsed() < Duration::from_secs(seconds) {
        let now = Instant::now();
        if now >= next_exec {
            let job = &jobs[execs as usize % jobs.len()];
            running.push(Command::new(job).arg(closed.to_string()).stdin(Stdio::null()).spawn().with_context(|| format!("spawn {}", job.display()))?);
            execs += 1;
            next_exec += every;
        }
        running.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        if now >= next_scrape {
            scrape_now(&mut seen, &mut late)?;
            next_scrape += scrape;
        }
        std::thread::sleep(next_exec.min(next_scrape).saturating_duration_since(Instant::now()).min(Duration::from_millis(5)));
    }
    for mut c in running {
        let _ = c.wait();
    }
    // The last exits' series, as the next scrapes would see them.
    std::thread::sleep(Duration::from_secs(2));
    scrape_now(&mut seen, &mut late)?;
    let (_, body) = bench_util::http(port, "GET", "/metrics", "")?;
    let lost = sample(&body, "chainprobe_events_lost_total");
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
    let jobs = seen.iter().filter(|s| s.contains("comm=\"cronjob")).count();
    Ok(Outcome { jobs, jobs_late: late.len(), created: seen.len().saturating_sub(first.unwrap_or(0)), first: first.unwrap_or(0), largest, largest_bytes, execs, lost })
}

pub fn run(args: &[String]) -> Result<()> {
    let (mut seconds, mut rate, mut comms, mut scrape) = (120u64, 50u64, 5usize, 15.0f64);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().context("missing value");
        match a.as_str() {
            "--seconds" => seconds = val()?.parse()?,
            "--rate" => rate = val()?.parse()?,
            "--comms" => comms = val()?.parse()?,
            "--scrape-interval" => scrape = val()?.parse()?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    bench_util::require_root()?;
    crate::build_release()?;
    let bin = crate::repo_root().join("target/release/chainprobe");
    let dir = std::env::temp_dir().join(format!("chainprobe-bench-fleet-jobs-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let jobs = build_jobs(&dir, comms.max(1))?;
    let interval = format!("[metrics]\nscrape_interval_seconds = {scrape:.1}\n");
    let modes = [
        ("default (folded)", interval.clone()),
        ("per-pid (fold_non_go = false, fold_young_seconds = 0)", format!("{interval}fold_non_go = false\nfold_young_seconds = 0.0\n")),
    ];
    println!("| {rate} execs/s of short-lived processes ({comms} names), {seconds} s, scraped every {scrape} s | execs | series of the jobs | created per hour (second half) | all series created (the machine's other processes too) | largest scrape (series, bytes) | events lost |");
    println!("|---|---|---|---|---|---|---|");
    for (name, extra) in modes {
        let o = measure(&bin, &jobs, &extra, seconds, rate, Duration::from_secs_f64(scrape))?;
        // The steady rate: series first seen in the second half of the run (folded, the jobs'
        // series are created once; per pid, with every exec).
        let per_hour = o.jobs_late as f64 * 3600.0 / (seconds as f64 / 2.0);
        println!("| {name} | {} | {} | {per_hour:.0} | {} (from {} at start) | {}, {} | {} |", o.execs, o.jobs, o.created, o.first, o.largest, o.largest_bytes, o.lost);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
