//! What the benchmarks share beyond the test-support crate (child processes, the Go fixture
//! driver, the daemon launcher, HTTP): waiting for chainprobe to track a process, the median, the
//! root check, and building the Go programs they run.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub use test_support::{Daemon, GoProgram, Proc};

/// The median (NaN for no values).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// utime + stime of `pid`, in seconds (/proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("/proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> { Ok(f.get(i).context("stat field")?.parse::<f64>()?) };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// Benchmarks that start chainprobe load eBPF programs.
/// Seconds of CPU time the hypervisor gave to other guests so far (all CPUs, `/proc/stat`).
pub fn steal_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("/proc/stat")?;
    let ticks: f64 = cpu.split_whitespace().nth(8).context("steal")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    Ok(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark starts chainprobe, which loads eBPF programs: run as root");
    }
    Ok(())
}

/// Builds Go fixture `programs` (tests/fixtures/go/src) with Go 1.27.3 as `variants`; returns the
/// directory of the 1.27.3 builds (`<dir>/<variant>/<program>`).
pub fn go_programs(programs: &str, variants: &str) -> Result<PathBuf> {
    Ok(go_programs_for(programs, "1.27.3", variants)?.join("1.27.3"))
}

/// Builds Go fixture `programs` with each Go toolchain of `versions` (full versions, as in
/// tests/fixtures/go/versions) as `variants`; returns the fixtures root
/// (`<root>/<version>/<variant>/<program>`).
pub fn go_programs_for(programs: &str, versions: &str, variants: &str) -> Result<PathBuf> {
    let root = crate::repo_root();
    let status = Command::new("bash")
        .arg(root.join("tests/fixtures/go/build.sh"))
        .env("CHAINPROBE_GO_PROGRAMS", programs)
        .env("CHAINPROBE_GO_VERSIONS", versions)
        .env("CHAINPROBE_GO_VARIANTS", variants)
        .status()?;
    if !status.success() {
        bail!("building the Go programs {programs} ({versions}; {variants}) failed");
    }
    Ok(test_support::fixtures_root())
}

/// `method path` with `body` (JSON) to chainprobe on 127.0.0.1:`port`: (status, body).
pub fn http(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let (status, _, body) = test_support::http(SocketAddr::from(([127, 0, 0, 1], port)), method, path, &[], body, Duration::from_secs(120))?;
    Ok((status, body))
}

/// The JSON body of a 2xx answer to `method path`.
pub fn json(port: u16, method: &str, path: &str, body: &str) -> Result<serde_json::Value> {
    let (s, b) = http(port, method, path, body)?;
    if !(200..300).contains(&s) {
        bail!("{method} {path}: HTTP {s}: {b}");
    }
    serde_json::from_str(&b).with_context(|| format!("{method} {path}: {b}"))
}

/// Waits (at most `timeout`) until the daemon on `port` lists `pid` in /api/v1/targets with
/// `ready(target)` true; `what` names the awaited state in the error.
pub fn wait_target(port: u16, pid: u32, timeout: Duration, what: &str, ready: impl Fn(&serde_json::Value) -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let v = json(port, "GET", "/api/v1/targets", "")?;
        if v["targets"].as_array().into_iter().flatten().any(|t| t["pid"].as_u64() == Some(u64::from(pid)) && ready(t)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("chainprobe did not report pid {pid} as {what} within {timeout:?}")
}

/// Starts `chainprobe run` with `[server] listen` on a free loopback port plus `extra` TOML
/// (in `dir`) and waits until /readyz answers 200 (at most 30 s).
pub fn start_daemon(bin: &Path, dir: &Path, extra: &str) -> Result<(Daemon, u16)> {
    start_daemon_logging(bin, dir, extra, "warn")
}

/// `start_daemon` with `log` as the RUST_LOG filter unless CHAINPROBE_BENCH_LOG sets one.
pub fn start_daemon_logging(bin: &Path, dir: &Path, extra: &str, log: &str) -> Result<(Daemon, u16)> {
    let addr = test_support::free_addr()?;
    let toml = format!("[server]\nlisten = \"{addr}\"\n{extra}");
    // CHAINPROBE_BENCH_LOG (a RUST_LOG filter) to look inside a run; the daemon's log is in `dir`.
    let log = std::env::var("CHAINPROBE_BENCH_LOG").unwrap_or_else(|_| log.into());
    let d = Daemon::launch(bin, dir, addr, &toml, &[("RUST_LOG", log.as_str())], Duration::from_secs(30)).with_context(|| format!("starting {}", bin.display()))?;
    Ok((d, addr.port()))
}

/// Starts the Go fixture program `bin` with `args` and reads its `ready` line.
pub fn go_program(bin: &Path, args: &[&str]) -> Result<GoProgram> {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    Ok(GoProgram::try_spawn(&bin.display().to_string(), cmd)?)
}
