//! `cargo xtask bench libssl-hold [--rounds R] [--execs N] [--new-files K]`: what holding the
//! first process of a new libssl file costs (issue #18 (a)), measured side by side in one run.
//!
//! The hold's kernel side is two raw tracepoints on page faults of files
//! (`filemap:mm_filemap_map_pages`, `mm_filemap_fault`): they run at every fault-in of a file's
//! pages by any process on the node, and read the file's name to find libssl. Their cost falls on
//! every exec (a new process faults in its binary and libraries). Each round measures, in a
//! rotating order: no chainprobe; chainprobe with `[tls] hold_new_libssl = false` (the programs
//! not attached); and the default (holds on):
//! - N execs of `curl --version` (dynamically linked, maps the system's libssl: faulted in, its
//!   name matched, the file known) and N of `/bin/true` (faults, no libssl): wall time per exec
//!   (spawn to reap), and the programs' runs per exec;
//! - K execs of `curl --version` each through a fresh copy of libssl (`LD_LIBRARY_PATH`; a new
//!   file each, so each is held with holds on): wall time per exec.
//!
//! Ratios are medians over rounds of same-round ratios. Then, with the default daemon and
//! `kernel.bpf_stats_enabled` on for that window only, the two programs' runs and run time per
//! exec of each (what the exec-time ratios cannot resolve on a noisy VM).
use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::bench_util::{self, median};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Setup {
    None,
    HoldsOff,
    Default,
}

impl Setup {
    const ALL: [Setup; 3] = [Setup::None, Setup::HoldsOff, Setup::Default];

    fn name(self) -> &'static str {
        match self {
            Setup::None => "without chainprobe",
            Setup::HoldsOff => "chainprobe, hold_new_libssl = false",
            Setup::Default => "chainprobe, default (holds on)",
        }
    }

    fn toml(self) -> Option<&'static str> {
        match self {
            Setup::None => None,
            Setup::HoldsOff => Some("[tls]\nhold_new_libssl = false\n"),
            Setup::Default => Some(""),
        }
    }
}

/// One window: µs per exec of curl, of true, of curl through a new libssl; the hold programs'
/// runs per exec of curl and of true.
#[derive(Default, Clone, Copy)]
struct Window {
    curl_us: f64,
    true_us: f64,
    new_lib_us: f64,
    curl_hits: f64,
    true_hits: f64,
}

/// Spawns `cmd` `n` times, one after the other, each in a new session without a controlling
/// terminal (as services run; a process with one is never held); wall µs per exec (spawn to reap).
fn execs(n: usize, mut cmd: impl FnMut() -> Command) -> Result<f64> {
    use std::os::unix::process::CommandExt;
    let t = Instant::now();
    for _ in 0..n {
        let mut c = cmd();
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let status = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().context("spawn")?;
        if !status.success() {
            bail!("{:?} failed: {status}", cmd());
        }
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// Runs of the hold programs so far (`chainprobe_events_processed_total`).
fn hold_hits(port: Option<u16>) -> Result<f64> {
    let Some(port) = port else { return Ok(0.0) };
    let (status, body) = bench_util::http(port, "GET", "/metrics", "")?;
    if status != 200 {
        bail!("GET /metrics: {status}");
    }
    Ok(body
        .lines()
        .filter(|l| l.starts_with("chainprobe_events_processed_total{") && (l.contains("program=\"libssl_map_pages\"") || l.contains("program=\"libssl_fault\"")))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum())
}

fn window(n: usize, k: usize, libssl: &Path, dir: &Path, round: usize, setup: Setup, port: Option<u16>) -> Result<Window> {
    let mut w = Window::default();
    let h0 = hold_hits(port)?;
    w.curl_us = execs(n, || {
        let mut c = Command::new("curl");
        c.arg("--version");
        c
    })?;
    let h1 = hold_hits(port)?;
    w.true_us = execs(n, || Command::new("/bin/true"))?;
    let h2 = hold_hits(port)?;
    w.curl_hits = (h1 - h0) / n as f64;
    w.true_hits = (h2 - h1) / n as f64;
    // Fresh copies first (the copy is not part of the time), then one exec through each.
    let libs: Vec<_> = (0..k)
        .map(|i| {
            let d = dir.join(format!("lib-{round}-{setup:?}-{i}"));
            std::fs::create_dir_all(&d)?;
            std::fs::copy(libssl, d.join("libssl.so.3"))?;
            Ok(d)
        })
        .collect::<Result<_>>()?;
    let mut it = libs.iter();
    w.new_lib_us = execs(k, || {
        let mut c = Command::new("curl");
        c.arg("--version");
        if let Some(d) = it.next() {
            c.env("LD_LIBRARY_PATH", d);
        }
        c
    })?;
    Ok(w)
}

pub fn run(args: &[String]) -> Result<()> {
    let (mut rounds, mut n, mut k) = (5usize, 1000usize, 5usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || -> Result<usize> { it.next().context("missing value")?.parse().context("not a number") };
        match a.as_str() {
            "--rounds" => rounds = val()?,
            "--execs" => n = val()?,
            "--new-files" => k = val()?,
            other => bail!("unknown option {other:?} (--rounds R, --execs N, --new-files K)"),
        }
    }
    if rounds == 0 || n == 0 || k == 0 {
        bail!("--rounds, --execs and --new-files must be at least 1");
    }
    bench_util::require_root()?;
    let libssl = ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/aarch64-linux-gnu/libssl.so.3", "/usr/lib64/libssl.so.3"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("no system libssl.so.3 (install libssl3)")?;
    crate::build_release()?;
    let daemon = crate::repo_root().join("target/release/chainprobe");
    let dir = std::env::temp_dir().join(format!("chainprobe-bench-libssl-hold-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&daemon, &dir, libssl, rounds, n, k).and_then(|()| program_cost(&daemon, &dir, n));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(daemon: &Path, dir: &Path, libssl: &Path, rounds: usize, n: usize, k: usize) -> Result<()> {
    let mut all: BTreeMap<usize, Vec<Window>> = BTreeMap::new();
    for round in 0..rounds {
        let mut got = [Window::default(); 3];
        for j in 0..Setup::ALL.len() {
            let i = (j + round) % Setup::ALL.len();
            let setup = Setup::ALL[i];
            let d = match setup.toml() {
                Some(toml) => {
                    let sub = dir.join(format!("daemon-{round}-{i}"));
                    std::fs::create_dir_all(&sub)?;
                    let (d, port) = bench_util::start_daemon(daemon, &sub, toml)?;
                    // Past its start-up scan.
                    std::thread::sleep(std::time::Duration::from_secs(2));
                    Some((d, port))
                }
                None => None,
            };
            got[i] = window(n, k, libssl, dir, round, setup, d.as_ref().map(|(_, p)| *p))?;
            drop(d);
        }
        eprintln!(
            "round {round}: curl µs {:.0} / {:.0} / {:.0}; true µs {:.0} / {:.0} / {:.0}; new libssl µs {:.0} / {:.0} / {:.0}",
            got[0].curl_us, got[1].curl_us, got[2].curl_us, got[0].true_us, got[1].true_us, got[2].true_us, got[0].new_lib_us, got[1].new_lib_us, got[2].new_lib_us
        );
        for (i, w) in got.into_iter().enumerate() {
            all.entry(i).or_default().push(w);
        }
    }
    let med = |i: usize, f: fn(&Window) -> f64| median(&mut all[&i].iter().map(f).collect::<Vec<_>>());
    let ratio = |i: usize, base: usize, f: fn(&Window) -> f64| median(&mut all[&i].iter().zip(&all[&base]).map(|(a, b)| f(a) / f(b)).collect::<Vec<_>>());
    let diff = |i: usize, base: usize, f: fn(&Window) -> f64| median(&mut all[&i].iter().zip(&all[&base]).map(|(a, b)| f(a) - f(b)).collect::<Vec<_>>());
    println!("cargo xtask bench libssl-hold --rounds {rounds} --execs {n} --new-files {k}  (medians of {rounds} rounds; ratios of same-round windows)");
    println!("| measure | {} | {} | {} |", Setup::ALL[0].name(), Setup::ALL[1].name(), Setup::ALL[2].name());
    println!("|---|---|---|---|");
    println!("| `curl --version` (maps the system libssl), µs per exec | {:.0} | {:.3}× | {:.3}× (vs holds off: {:.3}×, {:+.1} µs) |", med(0, |w| w.curl_us), ratio(1, 0, |w| w.curl_us), ratio(2, 0, |w| w.curl_us), ratio(2, 1, |w| w.curl_us), diff(2, 1, |w| w.curl_us));
    println!("| `/bin/true`, µs per exec | {:.0} | {:.3}× | {:.3}× (vs holds off: {:.3}×, {:+.1} µs) |", med(0, |w| w.true_us), ratio(1, 0, |w| w.true_us), ratio(2, 0, |w| w.true_us), ratio(2, 1, |w| w.true_us), diff(2, 1, |w| w.true_us));
    println!("| hold programs' runs per exec: curl / true | — | 0 / 0 | {:.1} / {:.1} |", med(2, |w| w.curl_hits), med(2, |w| w.true_hits));
    println!("| `curl --version` through a new libssl file (held once with holds on), µs per exec | {:.0} | {:.0} | {:.0} ({:+.0} µs vs holds off) |", med(0, |w| w.new_lib_us), med(1, |w| w.new_lib_us), med(2, |w| w.new_lib_us), diff(2, 1, |w| w.new_lib_us));
    Ok(())
}

/// The hold programs' runs and run time (`kernel.bpf_stats_enabled`) per exec of curl and of true,
/// with the default daemon.
fn program_cost(daemon: &Path, dir: &Path, n: usize) -> Result<()> {
    let sub = dir.join("daemon-stats");
    std::fs::create_dir_all(&sub)?;
    let (_d, _port) = bench_util::start_daemon(daemon, &sub, "")?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(sysctl)?;
    std::fs::write(sysctl, "1")?;
    let totals = || -> Result<(u64, u64)> {
        let mut t = (0, 0);
        for prefix in ["libssl_map_pag", "libssl_fault"] {
            for p in crate::bench_tls::bpf_prog_stats(prefix)? {
                t.0 += p.run_cnt;
                t.1 += p.run_time_ns;
            }
        }
        Ok(t)
    };
    let measured = (|| -> Result<[(f64, f64); 2]> {
        let a = totals()?;
        execs(n, || {
            let mut c = Command::new("curl");
            c.arg("--version");
            c
        })?;
        let b = totals()?;
        execs(n, || Command::new("/bin/true"))?;
        let c = totals()?;
        let per = |x: (u64, u64), y: (u64, u64)| ((y.0 - x.0) as f64 / n as f64, (y.1 - x.1) as f64 / n as f64 / 1e3);
        Ok([per(a, b), per(b, c)])
    })();
    std::fs::write(sysctl, before.trim())?;
    let [curl, tru] = measured?;
    println!("| hold programs, kernel.bpf_stats_enabled: runs and µs of BPF run time per exec | curl: {:.1} runs, {:.2} µs ({:.0} ns a run) | true: {:.1} runs, {:.2} µs ({:.0} ns a run) | |", curl.0, curl.1, curl.1 * 1e3 / curl.0.max(1.0), tru.0, tru.1, tru.1 * 1e3 / tru.0.max(1.0));
    Ok(())
}
