//! What chainprobe's integration tests (probe-daemon/tests) and benchmarks (xtask bench) share:
//! a child process stopped on drop, the Go fixture driver, the daemon launcher, a plain HTTP/1.1
//! client, and where the Go fixtures are. Everything returns `io::Result` so benchmarks can report
//! errors; tests `expect` them.
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// A child process: SIGTERM when dropped, SIGKILL after `grace` (always reaped).
pub struct Proc {
    pub child: Child,
    pub grace: Duration,
}

impl Proc {
    pub fn new(child: Child) -> Proc {
        Proc { child, grace: Duration::from_secs(10) }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().map(|s| s.is_none()).unwrap_or(false)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        stop_child(&mut self.child, self.grace);
    }
}

/// SIGTERM, up to `grace` to exit, then SIGKILL; always reaped.
pub fn stop_child(child: &mut Child, grace: Duration) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A Go fixture program (tests/fixtures/go/src) driven over stdin: one command a line, answered
/// by `ok N…` or an error line. Started with GOMAXPROCS=2; it first prints `ready …`. Killed
/// when dropped.
pub struct GoProgram {
    pub label: String,
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
    /// The words of its `ready` line after "ready".
    pub ready: Vec<String>,
}

impl GoProgram {
    /// Starts the program at `path` (see [`Self::spawn`]); panics on failure (tests).
    pub fn start(label: &str, path: &Path) -> GoProgram {
        Self::spawn(label, Command::new(path))
    }

    /// [`Self::try_spawn`], panicking on failure (tests).
    pub fn spawn(label: &str, cmd: Command) -> GoProgram {
        Self::try_spawn(label, cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `cmd` (stdin and stdout are piped; stderr inherited) and reads its `ready` line.
    pub fn try_spawn(label: &str, mut cmd: Command) -> io::Result<GoProgram> {
        let mut child = cmd.env("GOMAXPROCS", "2").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()
            .map_err(|e| other(format!("start {label}: {e}")))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(other(format!("{label}: no stdin/stdout pipe")));
        };
        let mut stdout = BufReader::new(stdout);
        let pid = child.id();
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let mut words = line.split_whitespace().map(str::to_string);
        let problem = match read {
            Err(e) => Some(format!("{label}: reading its first line: {e}")),
            Ok(_) if words.next().as_deref() != Some("ready") => Some(format!("{label}: first line {line:?}, not `ready …`")),
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            let _ = child.kill();
            let _ = child.wait();
            return Err(other(problem));
        }
        Ok(GoProgram { label: label.to_string(), child, stdin, stdout, pid, ready: words.collect() })
    }

    /// [`Self::try_cmd`], panicking on failure (tests).
    pub fn cmd(&mut self, c: &str) -> Vec<i64> {
        self.try_cmd(c).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends a command; the numbers of its `ok` reply.
    pub fn try_cmd(&mut self, c: &str) -> io::Result<Vec<i64>> {
        writeln!(self.stdin, "{c}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let mut words = line.split_whitespace();
        if words.next() != Some("ok") {
            return Err(other(format!("{}: {c} -> {line:?}", self.label)));
        }
        words.map(|w| w.parse().map_err(|e| other(format!("{}: {c} -> {line:?}: {e}", self.label)))).collect()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().map(|s| s.is_none()).unwrap_or(false)
    }
}

impl Drop for GoProgram {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request (`Connection: close`) with a JSON `body` when not empty: (status,
/// response headers lower-cased, body with any chunked framing removed).
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str, timeout: Duration) -> io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(timeout))?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let content = if body.is_empty() && method == "GET" { String::new() } else { format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()) };
    write!(s, "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra}{content}\r\n{body}")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = match text.find("\r\n\r\n") {
        Some(i) => (text[..i].to_ascii_lowercase(), text[i + 4..].to_string()),
        None => (text.to_ascii_lowercase(), String::new()),
    };
    let body = if head.contains("transfer-encoding: chunked") { dechunk(&body) } else { body };
    Ok((status, head, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some(i) = rest.find("\r\n") else { break };
        let Ok(n) = usize::from_str_radix(rest[..i].trim(), 16) else { break };
        if n == 0 {
            break;
        }
        let start = i + 2;
        let end = (start + n).min(rest.len());
        out.push_str(&rest[start..end]);
        rest = rest.get(end + 2..).unwrap_or("");
    }
    out
}

/// A running `chainprobe run`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `bin run --config <dir>/chainprobe.toml` with `toml` (which must set `[server]
    /// listen` to `addr`), logging to `<dir>/daemon.log`, and waits (at most `timeout`) until
    /// /readyz answers 200. An early exit or a timeout is an error with the log's tail.
    pub fn launch(bin: &Path, dir: &Path, addr: SocketAddr, toml: &str, env: &[(&str, &str)], timeout: Duration) -> io::Result<Daemon> {
        let cfg = dir.join("chainprobe.toml");
        std::fs::write(&cfg, toml)?;
        let log = dir.join("daemon.log");
        let logf = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "chainprobe=debug,probe_ebpf=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .map_err(|e| other(format!("starting {}: {e}", bin.display())))?;
        let mut d = Daemon { proc: Proc::new(child), addr, log };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = d.proc.child.try_wait() {
                return Err(other(format!("chainprobe exited early ({status}):\n{}", tail(&d.log_text(), 60))));
            }
            if let Ok((200, _, body)) = http(addr, "GET", "/readyz", &[], "", Duration::from_secs(10)) {
                if body.contains("ready") {
                    return Ok(d);
                }
            }
            if Instant::now() >= deadline {
                return Err(other(format!("chainprobe not ready within {timeout:?}:\n{}", tail(&d.log_text(), 60))));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A free loopback address (bound, then released).
pub fn free_addr() -> io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The repository root (this crate lives in `<root>/test-support`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// Where `cargo xtask fixtures` puts the Go fixtures (`CHAINPROBE_FIXTURES` overrides it):
/// `<root>/<full Go version>/<variant>/<program>`.
pub fn fixtures_root() -> PathBuf {
    std::env::var_os("CHAINPROBE_FIXTURES").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target/go-fixtures"))
}

/// The directory of the fixtures built with Go `version` ("1.19", "1.27" or a full version).
pub fn go_version_dir(version: &str) -> io::Result<PathBuf> {
    let root = fixtures_root();
    std::fs::read_dir(&root)
        .map_err(|e| other(format!("no Go fixtures in {} ({e}): run `cargo xtask fixtures` first", root.display())))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n == version || n.starts_with(&format!("{version}."))))
        .ok_or_else(|| other(format!("no Go {version} fixtures in {}: run `cargo xtask fixtures`", root.display())))
}

/// One toolchain of every Go minor the fixtures are built with (tests/fixtures/go/versions).
pub fn go_versions() -> Vec<&'static str> {
    include_str!("../../tests/fixtures/go/versions").split_whitespace().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }

    #[test]
    fn a_dropped_proc_is_stopped_and_reaped() {
        let child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = child.id() as i32;
        drop(Proc::new(child));
        // SAFETY: signal 0 only checks existence; the pid was our child and has been reaped.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "the child is gone");
    }

    #[test]
    fn go_versions_are_listed() {
        assert!(go_versions().iter().any(|v| v.starts_with("1.19")));
    }
}
