//! What the benchmarks share: a child process stopped on drop, the median, the root check, and
//! building the Go programs they run.
use std::{
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

/// A child process: SIGTERM when dropped, SIGKILL after 5 s.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The median (NaN for no values).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Benchmarks that start chainprobe load eBPF programs.
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
    let root = crate::repo_root();
    let status = Command::new("bash")
        .arg(root.join("tests/fixtures/go/build.sh"))
        .env("CHAINPROBE_GO_PROGRAMS", programs)
        .env("CHAINPROBE_GO_VERSIONS", "1.27.3")
        .env("CHAINPROBE_GO_VARIANTS", variants)
        .status()?;
    if !status.success() {
        bail!("building the Go programs {programs} failed");
    }
    let fx: PathBuf = std::env::var_os("CHAINPROBE_FIXTURES").map(PathBuf::from).unwrap_or_else(|| root.join("target/go-fixtures"));
    Ok(fx.join("1.27.3"))
}
