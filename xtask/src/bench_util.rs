//! What the benchmarks share: a child process stopped on drop, starting chainprobe and waiting
//! for it to track a process, driving a Go fixture program, the median, the root check, and
//! building the Go programs they run.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

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

/// `method path` with `body` (JSON) to chainprobe on 127.0.0.1:`port`: (status, body).
pub fn http(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    // Small JSON bodies: drop chunk framing if any.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b >= a => body[a..=b].to_string(),
        _ => body,
    };
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
/// (written to `dir/bench.toml`) and waits until /readyz answers 200 (at most 30 s).
pub fn start_daemon(bin: &Path, dir: &Path, extra: &str) -> Result<(Proc, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let cfg = dir.join("bench.toml");
    std::fs::write(&cfg, format!("[server]\nlisten = \"127.0.0.1:{port}\"\n{extra}"))?;
    let child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http(port, "GET", "/readyz", "").is_ok_and(|r| r.0 == 200) {
            return Ok((p, port));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("chainprobe did not become ready")
}

/// A Go fixture program driven over stdin (tests/fixtures/go/src: one command a line, answered
/// by `ok N…` or an error line), started with GOMAXPROCS=2; it first prints `ready …`.
pub struct GoProgram {
    _p: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
}

impl GoProgram {
    pub fn start(bin: &Path, args: &[&str]) -> Result<GoProgram> {
        let mut child = Command::new(bin).args(args).env("GOMAXPROCS", "2").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let pid = child.id();
        let p = Proc(child);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if !line.starts_with("ready") {
            bail!("{}: {line}", bin.display());
        }
        Ok(GoProgram { _p: p, stdin, stdout, pid })
    }

    /// Sends `c`; the numbers of its `ok` reply.
    pub fn cmd(&mut self, c: &str) -> Result<Vec<i64>> {
        writeln!(self.stdin, "{c}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let mut w = line.split_whitespace();
        if w.next() != Some("ok") {
            bail!("{c}: {line}");
        }
        w.map(|x| x.parse().context("reply")).collect()
    }
}
