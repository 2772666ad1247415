//! `cargo xtask bench tls [--rounds R] [--handshakes N] [--roundtrips M] [--openssl-seconds S]
//! [--chunks C] [--programs]`:
//! what the TLS handshake probes cost the programs they watch, measured side by side in one run.
//!
//! - Go handshakes/s: tests/fixtures/go/src/tlsprobe (Go 1.27) runs N loopback handshakes, client
//!   and server in one process (`hs N any any h2 h2,http/1.1 trusted`: TLS 1.3, ALPN h2), without
//!   chainprobe and with it: TLS probes off, Go results read at the RETs (`go_result_site =
//!   "rets"`), the default (results read at handshakeContext's call site), and the default with
//!   the memory system calls counted on any kernel (`memory_hooks = "fexit-or-tracepoints"`: where
//!   the kernel refuses fexit, syscall tracepoints, which slow every system call on the node).
//! - Go bulk: one long-lived TLS 1.3 connection, M round trips of 64 bytes (many small Reads and
//!   Writes, which must not hit any probe).
//! - OpenSSL handshakes/s: `openssl s_time -new` (SSL_connect) against `openssl s_server`
//!   (SSL_accept), both probed through libssl.
//! - The cost of the two Go placements, broken down in one process: bare uprobes switched on and
//!   off chunk by chunk (traps), plus the BPF programs' run time (`kernel.bpf_stats_enabled`).
//!   `--programs` measures only the programs' run time, per program (quick, to compare builds).
//!
//! One tlsprobe process serves every configuration (each daemon finds it running): a new process
//! brings its own memory layout, which moves a handshake's cost as much as the probes do. Each
//! round measures every configuration (the daemon ones in a rotating order); within one, the Go
//! work runs in C chunks (N/C handshakes, M/C round trips), and the median and best chunk are
//! reported, with the hypervisor's steal share. Ratios are medians over rounds of same-round
//! ratios, so drift between rounds cancels.
use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::bench_util::{self, median, GoProgram, Proc};

/// The chainprobe configurations measured against "no chainprobe".
#[derive(Clone, Copy, PartialEq)]
enum Config {
    /// TLS probes off: what the daemon's presence costs.
    Off,
    /// TLS probes on, Go results read at every RET of clientHandshake / serverHandshake.
    Rets,
    /// The default: Go results read at handshakeContext's call site (one emulated jump).
    Default,
    /// The default with the memory system calls counted on any kernel (`[collect] memory_hooks =
    /// "fexit-or-tracepoints"`): on a kernel that refuses fexit programs, syscall tracepoints,
    /// which send every system call through the kernel's slow path.
    SyscallTracepoints,
}

impl Config {
    const ALL: [Config; 4] = [Config::Off, Config::Rets, Config::Default, Config::SyscallTracepoints];

    fn toml(self) -> &'static str {
        match self {
            Config::Off => "[tls]\ngo = false\nopenssl = false\n",
            Config::Rets => "[tls]\ngo_result_site = \"rets\"\n",
            Config::Default => "",
            Config::SyscallTracepoints => "[collect]\nmemory_hooks = \"fexit-or-tracepoints\"\n",
        }
    }
}

/// Windows per round: no chainprobe, then each [`Config`].
const WINDOWS: usize = 1 + Config::ALL.len();

/// Starts chainprobe with configuration `c`, once its start-up scan is over: the scan inspects
/// every process's binary, and a round would otherwise measure a daemon busy on one of the two
/// cores rather than the probes.
fn start_daemon(bin: &Path, dir: &Path, c: Config) -> Result<(bench_util::Daemon, u16)> {
    let (p, port) = bench_util::start_daemon(bin, dir, c.toml())?;
    wait_idle(p.pid())?;
    Ok((p, port))
}

/// Waits until `pid` used under 2% of a CPU over half a second (at most 30 s).
fn wait_idle(pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = cpu_seconds(pid)?;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = cpu_seconds(pid)?;
        if now - last < 0.01 {
            return Ok(());
        }
        last = now;
    }
    bail!("chainprobe stayed busy for 30 s after start")
}

/// A running tlsprobe (see its main.go for the commands).
type TlsProbe = GoProgram;

/// Waits until the daemon tracks `pid` (with the Go TLS probes on it when `tls`).
fn wait_tracked(port: u16, pid: u32, tls: bool) -> Result<()> {
    let what = if tls { "tracked with the Go TLS probes attached" } else { "tracked" };
    bench_util::wait_target(port, pid, Duration::from_secs(15), what, |t| {
        !tls || t["probes"].as_array().into_iter().flatten().any(|p| p["name"] == "go_tls_handshake_enter" && p["state"] == "attached")
    })
}

/// CPU time (seconds) `pid` has used so far, uprobe hits and BPF programs included: the sum of its
/// threads' `schedstat` run times (nanoseconds; `/proc/PID/stat` counts 10 ms ticks, too coarse
/// for a few µs per handshake). A Go program keeps its threads, so none is lost between samples.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(text) = std::fs::read_to_string(t?.path().join("schedstat")) else { continue };
        ns += text.split_whitespace().next().context("schedstat")?.parse::<u64>()?;
    }
    Ok(ns as f64 / 1e9)
}

/// One measured chunk: operations per second, CPU µs per operation, and the share of the
/// machine's CPU time stolen by the hypervisor meanwhile.
#[derive(Clone, Copy)]
struct Chunk {
    rate: f64,
    cpu_us: f64,
    steal: f64,
}

/// Runs tlsprobe command `cmd` (`ops` operations; `elapsed_ns` takes the time they took from its
/// reply) and measures it as a chunk.
fn chunk(g: &mut TlsProbe, cmd: &str, ops: u64, elapsed_ns: impl Fn(&[i64]) -> Result<i64>) -> Result<Chunk> {
    let (s0, c0) = (bench_util::steal_seconds()?, cpu_seconds(g.pid)?);
    let r = g.try_cmd(cmd)?;
    let (s1, c1) = (bench_util::steal_seconds()?, cpu_seconds(g.pid)?);
    let secs = elapsed_ns(&r)? as f64 / 1e9;
    let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    Ok(Chunk { rate: ops as f64 / secs, cpu_us: (c1 - c0) * 1e6 / ops as f64, steal: (s1 - s0) / (secs * ncpu) })
}

/// `chunks` chunks of n/chunks handshakes, then `chunks` chunks of m/chunks 64-byte round trips
/// on one connection each, in the running tlsprobe `g` (the same process for every configuration:
/// a new process would bring its own memory layout, whose effect on a handshake's cost here is
/// as large as the probes').
fn go_window(g: &mut TlsProbe, n: u64, m: u64, chunks: u64, daemon: Option<(u16, bool)>) -> Result<(Vec<Chunk>, Vec<Chunk>)> {
    if let Some((port, tls)) = daemon {
        wait_tracked(port, g.pid, tls)?;
    }
    g.try_cmd("hs 100 any any h2 h2,http/1.1 trusted")?; // warm-up
    let (hn, bm) = ((n / chunks).max(1), (m / chunks).max(1));
    let mut hs = Vec::new();
    let mut bulk = Vec::new();
    for _ in 0..chunks {
        hs.push(chunk(g, &format!("hs {hn} any any h2 h2,http/1.1 trusted"), hn, |r| {
            if r.len() < 5 || r[0] != hn as i64 || r[2] != hn as i64 {
                bail!("handshakes failed: {r:?}");
            }
            Ok(r[4])
        })?);
    }
    for _ in 0..chunks {
        bulk.push(chunk(g, &format!("bulk {bm} 64"), bm, |r| r.first().copied().context("bulk: no elapsed time"))?);
    }
    Ok((hs, bulk))
}

/// Bare uprobes (tracefs, no BPF program) at the Go TLS probe sites of `bin`, removed when dropped.
struct TraceUprobes {
    dir: std::path::PathBuf,
    names: Vec<String>,
    tracing_on: String,
}

const TRACE: &str = "/sys/kernel/tracing";
const TRACE_GROUP: &str = "chainprobe_bench";

impl TraceUprobes {
    /// Registers one uprobe per file offset in `sites` (name, offset), tracing off so that a hit
    /// costs the trap and a handler that finds no buffer: what any probe costs before its program.
    fn new(bin: &Path, sites: &[(String, u64)]) -> Result<TraceUprobes> {
        let tracing_on = std::fs::read_to_string(format!("{TRACE}/tracing_on")).context("tracefs not mounted at /sys/kernel/tracing")?;
        std::fs::write(format!("{TRACE}/tracing_on"), "0")?;
        let mut t = TraceUprobes { dir: format!("{TRACE}/events/{TRACE_GROUP}").into(), names: Vec::new(), tracing_on: tracing_on.trim().to_string() };
        let mut f = std::fs::OpenOptions::new().append(true).open(format!("{TRACE}/uprobe_events"))?;
        for (name, off) in sites {
            // One write() per definition: tracefs parses each write on its own.
            f.write_all(format!("p:{TRACE_GROUP}/{name} {}:{off:#x}\n", bin.display()).as_bytes()).with_context(|| format!("registering uprobe {name}"))?;
            t.names.push(name.clone());
        }
        Ok(t)
    }

    /// Switches the uprobes whose names start with one of `prefixes` on, the others off.
    fn enable_only(&self, prefixes: &[&str]) -> Result<()> {
        for n in &self.names {
            let on = prefixes.iter().any(|p| n.starts_with(p));
            std::fs::write(self.dir.join(n).join("enable"), if on { "1" } else { "0" })?;
        }
        Ok(())
    }
}

impl Drop for TraceUprobes {
    fn drop(&mut self) {
        let _ = self.enable_only(&[]);
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(format!("{TRACE}/uprobe_events")) {
            for n in &self.names {
                let _ = f.write_all(format!("-:{TRACE_GROUP}/{n}\n").as_bytes());
            }
        }
        let _ = std::fs::write(format!("{TRACE}/tracing_on"), &self.tracing_on);
    }
}

/// What the uprobe traps alone cost per Go handshake pair, per placement: one tlsprobe process
/// runs chunks of n/chunks handshakes with no uprobe, with bare uprobes at the entries and every
/// RET, and at the entries and handshakeContext's call site, in rotating order, `rounds` times;
/// chunk by chunk, so drift cannot favour one. Returns CPU µs per pair of (none, RETs, call site):
/// the medians, and the best (lowest) chunks.
fn trap_cost(bin: &Path, n: u64, chunks: u64, rounds: usize) -> Result<([f64; 3], [f64; 3])> {
    let b = goinspect::inspect_path(bin)?;
    let mut sites = Vec::new();
    for (i, name) in ["crypto/tls.(*Conn).clientHandshake", "crypto/tls.(*Conn).serverHandshake"].iter().enumerate() {
        let f = b.function(name).with_context(|| format!("{name} not in {}", bin.display()))?;
        sites.push((format!("entry{i}"), f.entry_probe_file_offset));
        for (k, off) in f.ret_file_offsets.iter().enumerate() {
            sites.push((format!("ret{i}_{k}"), *off));
        }
    }
    let call = b.tls_result_site.as_ref().context("no TLS result site in handshakeContext")?;
    sites.push(("call".to_string(), call.file_offset));
    let probes = TraceUprobes::new(bin, &sites)?;
    let placements: [&[&str]; 3] = [&[], &["entry", "ret"], &["entry", "call"]];
    let mut g = bench_util::go_program(bin, &[])?;
    g.try_cmd("hs 100 any any h2 h2,http/1.1 trusted")?;
    let hn = (n / chunks).max(1);
    let mut cpu: [Vec<f64>; 3] = Default::default();
    for r in 0..rounds * chunks as usize {
        for k in 0..3 {
            let p = (k + r) % 3;
            probes.enable_only(placements[p])?;
            cpu[p].push(chunk(&mut g, &format!("hs {hn} any any h2 h2,http/1.1 trusted"), hn, |r| Ok(r[4]))?.cpu_us);
        }
    }
    drop(probes);
    let _ = g.try_cmd("quit");
    let best = |v: &Vec<f64>| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (b0, b1, b2) = (best(&cpu[0]), best(&cpu[1]), best(&cpu[2]));
    let [mut c0, mut c1, mut c2] = cpu;
    Ok(([median(&mut c0), median(&mut c1), median(&mut c2)], [b0, b1, b2]))
}

/// One loaded BPF program's statistics (BPF_OBJ_GET_INFO_BY_FD).
#[derive(Clone, Debug)]
pub(crate) struct ProgInfo {
    pub id: u32,
    /// Size of the program after verification, in instructions.
    pub insns: u32,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// Each loaded BPF program whose name starts with `prefix` (the kernel keeps 15 characters:
/// go_tls_handshake_enter and _return are both "go_tls_handshak", told apart by their size); the
/// kernel counts runs and run time only while `kernel.bpf_stats_enabled` is 1.
pub(crate) fn bpf_prog_stats(prefix: &str) -> Result<Vec<ProgInfo>> {
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let bpf = |cmd: libc::c_long, attr: &mut [u8; 128]| -> libc::c_long {
        // SAFETY: attr is a valid, zero-padded `union bpf_attr` of the size passed.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) }
    };
    let (mut id, mut progs) = (0u32, Vec::new());
    loop {
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&id.to_ne_bytes());
        if bpf(BPF_PROG_GET_NEXT_ID, &mut attr) < 0 {
            break; // ENOENT: no more programs
        }
        id = u32::from_ne_bytes([attr[4], attr[5], attr[6], attr[7]]);
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&id.to_ne_bytes());
        let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr);
        if fd < 0 {
            continue;
        }
        // struct bpf_prog_info: xlated_prog_len at 20, name at 64 (16 bytes), run_time_ns at
        // 192, run_cnt at 200.
        let mut info = [0u8; 256];
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
        let r = bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr);
        // SAFETY: fd is ours.
        unsafe { libc::close(fd as i32) };
        if r < 0 {
            continue;
        }
        let name = &info[64..80];
        let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(16)];
        let word = |o: usize| u64::from_ne_bytes(info[o..o + 8].try_into().unwrap_or([0; 8]));
        if name.starts_with(prefix.as_bytes()) {
            progs.push(ProgInfo {
                id,
                insns: u32::from_ne_bytes([info[20], info[21], info[22], info[23]]) / 8,
                run_cnt: word(200),
                run_time_ns: word(192),
            });
        }
    }
    Ok(progs)
}

/// For each of `prefixes`, the run time of the programs whose names start with it (per program,
/// smaller first: for the Go TLS programs the entry), with chainprobe running by default
/// (`kernel.bpf_stats_enabled` on only for this measurement), over `n` handshake pairs: (runs per
/// pair, ns per run).
fn bpf_cost(bin: &Path, daemon: &Path, dir: &Path, n: u64, prefixes: &[&str]) -> Result<Vec<Vec<(f64, f64)>>> {
    let (_d, port) = start_daemon(daemon, dir, Config::Default)?;
    let mut g = bench_util::go_program(bin, &[])?;
    wait_tracked(port, g.pid, true)?;
    g.try_cmd("hs 100 any any h2 h2,http/1.1 trusted")?;
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(sysctl)?;
    std::fs::write(sysctl, "1")?;
    let measured = (|| -> Result<Vec<Vec<(f64, f64)>>> {
        let p0 = prefixes.iter().map(|p| bpf_prog_stats(p)).collect::<Result<Vec<_>>>()?;
        g.try_cmd(&format!("hs {n} any any h2 h2,http/1.1 trusted"))?;
        let p1 = prefixes.iter().map(|p| bpf_prog_stats(p)).collect::<Result<Vec<_>>>()?;
        Ok(p0
            .iter()
            .zip(p1)
            .map(|(p0, mut p1)| {
                p1.sort_by_key(|p| p.insns);
                p1.iter()
                    .filter_map(|b| {
                        let a = p0.iter().find(|a| a.id == b.id)?;
                        let runs = b.run_cnt - a.run_cnt;
                        Some((runs as f64 / n as f64, (b.run_time_ns - a.run_time_ns) as f64 / runs.max(1) as f64))
                    })
                    .collect()
            })
            .collect())
    })();
    std::fs::write(sysctl, before.trim())?;
    let _ = g.try_cmd("quit");
    measured
}

/// `--programs`: only the Go TLS programs' own run time, `rounds` times (a fresh daemon and
/// tlsprobe each), per program and per handshake pair, then the TCP state-change program's (a
/// handshake's connection runs it ~10 times): quick to compare two builds of the programs.
fn programs(bin: &Path, daemon: &Path, dir: &Path, n: u64, rounds: usize) -> Result<()> {
    let mut per_pair = Vec::new();
    let mut per_run: [Vec<f64>; 2] = Default::default();
    let mut tcp = Vec::new();
    for r in 0..rounds {
        // The kernel keeps 15 characters of a name.
        let [p, tcp_prog] = &bpf_cost(bin, daemon, dir, n, &["go_tls_handshak", "inet_sock_set_s"])?[..] else {
            bail!("bpf_cost returns one list per prefix")
        };
        let [(tcp_runs, tcp_ns)] = tcp_prog[..] else { bail!("expected one inet_sock_set_state program, found {}", tcp_prog.len()) };
        tcp.push(tcp_ns);
        if p.len() != 2 {
            bail!("expected the 2 Go TLS programs to be loaded, found {}", p.len());
        }
        let pair: f64 = p.iter().map(|x| x.0 * x.1).sum();
        eprintln!(
            "round {}: entry {:.2} runs/pair {:.0} ns/run, result {:.2} runs/pair {:.0} ns/run: {:.0} ns per handshake pair; inet_sock_set_state {tcp_runs:.2} runs/pair {tcp_ns:.0} ns/run",
            r + 1,
            p[0].0,
            p[0].1,
            p[1].0,
            p[1].1,
            pair
        );
        per_pair.push(pair);
        per_run[0].push(p[0].1);
        per_run[1].push(p[1].1);
    }
    println!(
        "Go TLS programs' run time, median of {rounds} rounds of {n} handshakes: entry {:.0} ns/run, result {:.0} ns/run, {:.0} ns per handshake pair",
        median(&mut per_run[0]),
        median(&mut per_run[1]),
        median(&mut per_pair)
    );
    println!("inet_sock_set_state's run time, median of {rounds} rounds of {n} handshakes (one connection each): {:.0} ns/run", median(&mut tcp));
    Ok(())
}

/// OpenSSL handshakes/s: `s_time -new` against `s_server` for `secs` seconds.
fn openssl_round(cert: &Path, key: &Path, secs: u64) -> Result<f64> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut srv = Command::new("openssl")
        .args(["s_server", "-quiet", "-accept", &format!("127.0.0.1:{port}"), "-tls1_3"])
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting openssl s_server")?;
    let _keep_stdin = srv.stdin.take();
    let _srv = Proc::new(srv);
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new("openssl")
        .args(["s_time", "-connect", &format!("127.0.0.1:{port}"), "-new", "-time", &secs.to_string()])
        .output()
        .context("running openssl s_time")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "1234 connections in 5.01 real seconds, ..." (or "... in 5 real seconds")
    text.lines()
        .find(|l| l.contains("connections in") && l.contains("real seconds"))
        .and_then(|l| {
            let mut w = l.split_whitespace();
            let n: f64 = w.next()?.parse().ok()?;
            let s: f64 = l.split("connections in").nth(1)?.split_whitespace().next()?.parse().ok()?;
            Some(n / s)
        })
        .with_context(|| format!("no rate in s_time output:\n{text}"))
}

pub fn run(args: &[String]) -> Result<()> {
    let (mut rounds, mut n, mut m, mut ossl_secs, mut chunks) = (7usize, 3000u64, 30_000u64, 3u64, 6u64);
    let mut programs_only = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().context("missing value");
        match a.as_str() {
            "--rounds" => rounds = val()?.parse()?,
            "--handshakes" => n = val()?.parse()?,
            "--roundtrips" => m = val()?.parse()?,
            "--openssl-seconds" => ossl_secs = val()?.parse()?,
            "--chunks" => chunks = val()?.parse::<u64>()?.max(1),
            "--programs" => programs_only = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    crate::bench_util::require_root()?;
    if Command::new("which").arg("openssl").output().map(|o| !o.status.success()).unwrap_or(true) {
        bail!("openssl is needed: apt-get install -y openssl");
    }
    crate::build_release()?;
    let root = crate::repo_root();
    let fx = crate::bench_util::go_programs("tlsprobe", "default")?;
    let tlsprobe = fx.join("default/tlsprobe");
    let daemon = root.join("target/release/chainprobe");
    let dir = std::env::temp_dir().join(format!("chainprobe-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    if programs_only {
        let r = programs(&tlsprobe, &daemon, &dir, n, rounds);
        let _ = std::fs::remove_dir_all(&dir);
        return r;
    }
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("openssl req failed");
    }

    // Five configurations per round: no chainprobe, then chainprobe with the TLS probes off,
    // with them on but the Go results read at the RETs (the placement without a recognised call
    // site), by default, and by default with the memory system calls counted on any kernel. "off" vs the others isolates what the TLS probes cost from what the
    // daemon's presence costs on a 2-core machine; the order of the daemon configurations rotates
    // between rounds so drift hits all alike. Each configuration runs its work in short chunks:
    // on a VM whose neighbours steal CPU in bursts, the best chunk is the least disturbed one.
    let names = ["no chainprobe", "TLS probes off", "on, Go results at RETs", "on (default)", "default + memory syscalls by fexit or tracepoints"];
    // Per configuration, per round: the chunks of that configuration's window.
    let mut hs: [Vec<Vec<Chunk>>; WINDOWS] = Default::default();
    let mut bulk: [Vec<Vec<Chunk>>; WINDOWS] = Default::default();
    let mut ossl: [Vec<f64>; WINDOWS] = Default::default();
    // One tlsprobe for all windows: each daemon finds it running (its start-up scan) and attaches.
    let mut g = bench_util::go_program(&tlsprobe, &[])?;
    for r in 0..rounds {
        let mut order = Config::ALL;
        order.rotate_left(r % Config::ALL.len());
        let mut line = format!("round {}:", r + 1);
        for c in std::iter::once(None).chain(order.into_iter().map(Some)) {
            let d = match c {
                Some(c) => Some(start_daemon(&daemon, &dir, c)?),
                None => None,
            };
            let i = c.map_or(0, |c| 1 + c as usize);
            let (h, b) = go_window(&mut g, n, m, chunks, d.as_ref().map(|(_, port)| (*port, c != Some(Config::Off))))?;
            let o = openssl_round(&cert, &key, ossl_secs)?;
            let best = h.iter().map(|x| x.rate).fold(0.0, f64::max);
            let steal = h.iter().map(|x| x.steal).fold(0.0, f64::max);
            line += &format!(" | {}: hs/s best {best:.0} (max steal {:.1}%), OpenSSL {o:.0}", names[i], steal * 100.0);
            hs[i].push(h);
            bulk[i].push(b);
            ossl[i].push(o);
        }
        eprintln!("{line}");
    }
    // A window's (or all windows') median chunk, or best chunk: the highest rate, the lowest cost.
    let stat = |v: &mut dyn Iterator<Item = f64>, best: bool, cost: bool| -> f64 {
        let mut x: Vec<f64> = v.collect();
        match (best, cost) {
            (false, _) => median(&mut x),
            (true, false) => x.into_iter().fold(0.0, f64::max),
            (true, true) => x.into_iter().fold(f64::INFINITY, f64::min),
        }
    };
    println!("Values: all chunks of a configuration pooled. Ratios: the median over rounds of the ratio between two configurations' windows of the same round (drift between rounds cancels).");
    println!();
    println!(
        "| TLS on loopback ({rounds} rounds × {chunks} chunks) | no chainprobe | TLS probes off | on, Go results at RETs | on (default) | default + memory syscalls by fexit or tracepoints | RETs / off | default / off | default / none | fexit-or-tracepoints / none |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    type Row<'a> = (&'a str, &'a [Vec<Vec<Chunk>>; WINDOWS], fn(&Chunk) -> f64, bool, bool);
    let rows: [Row; 8] = [
        ("Go handshakes/s, median chunk", &hs, |c| c.rate, false, false),
        ("Go handshakes/s, best chunk", &hs, |c| c.rate, true, false),
        ("Go CPU µs per handshake pair, median", &hs, |c| c.cpu_us, false, true),
        ("Go CPU µs per handshake pair, best", &hs, |c| c.cpu_us, true, true),
        ("Go bulk 64-byte round trips/s, median chunk", &bulk, |c| c.rate, false, false),
        ("Go bulk 64-byte round trips/s, best chunk", &bulk, |c| c.rate, true, false),
        ("Go CPU µs per round trip, median", &bulk, |c| c.cpu_us, false, true),
        ("Go CPU µs per round trip, best", &bulk, |c| c.cpu_us, true, true),
    ];
    for (name, data, f, best, cost) in rows {
        let pooled: Vec<f64> = data.iter().map(|w| stat(&mut w.iter().flatten().map(f), best, cost)).collect();
        // For costs (CPU per operation) the ratio is inverted so that < 1 always means slower.
        let paired = |a: usize, base: usize| {
            let mut v: Vec<f64> = (0..rounds)
                .map(|r| {
                    let (x, y) = (stat(&mut data[a][r].iter().map(f), best, cost), stat(&mut data[base][r].iter().map(f), best, cost));
                    if cost { y / x } else { x / y }
                })
                .collect();
            median(&mut v)
        };
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3}× | {:.3}× | {:.3}× | {:.3}× |",
            pooled[0],
            pooled[1],
            pooled[2],
            pooled[3],
            pooled[4],
            paired(2, 1),
            paired(3, 1),
            paired(3, 0),
            paired(4, 0)
        );
    }
    let paired_ossl = |a: usize, base: usize| {
        let mut v: Vec<f64> = (0..rounds).map(|r| ossl[a][r] / ossl[base][r]).collect();
        median(&mut v)
    };
    let (p21, p31, p30, p40) = (paired_ossl(2, 1), paired_ossl(3, 1), paired_ossl(3, 0), paired_ossl(4, 0));
    let o: Vec<f64> = ossl.iter().map(|v| median(&mut v.clone())).collect();
    println!(
        "| OpenSSL handshakes/s (s_time -new → s_server, TLS 1.3), median | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {p21:.3}× | {p31:.3}× | {p30:.3}× | {p40:.3}× |",
        o[0], o[1], o[2], o[3], o[4]
    );
    println!();
    // The probes' cost without drift between windows: traps alone (bare uprobes switched chunk
    // by chunk in one process) plus the BPF programs' own run time.
    let (trap_med, trap_best) = trap_cost(&tlsprobe, n, chunks, rounds.min(5))?;
    let progs = bpf_cost(&tlsprobe, &daemon, &dir, n, &["go_tls_handshak"])?.remove(0);
    let _ = std::fs::remove_dir_all(&dir);
    let hits: f64 = progs.iter().map(|p| p.0).sum();
    let bpf_us = progs.iter().map(|p| p.0 * p.1).sum::<f64>() / 1000.0;
    println!("Cost per Go handshake pair, measured in one process: CPU µs per pair of chunks of {} handshakes with bare uprobes (no program) switched on and off chunk by chunk ({} rotations; median chunk / best chunk), plus the BPF programs' own run time (kernel.bpf_stats_enabled, {hits:.2} program runs per pair):", (n / chunks).max(1), rounds.min(5) * chunks as usize);
    println!();
    println!("| placement | no probe | with bare uprobes | traps | + BPF programs | total | ratio no probe / with probes |");
    println!("|---|---|---|---|---|---|---|");
    for (name, k) in [("entries + every RET", 1usize), ("entries + handshakeContext call site (default)", 2)] {
        let (tm, tb) = (trap_med[k] - trap_med[0], trap_best[k] - trap_best[0]);
        println!(
            "| {name} | {:.1} / {:.1} | {:.1} / {:.1} | {tm:.1} / {tb:.1} | {bpf_us:.1} | {:.1} / {:.1} | {:.3}× / {:.3}× |",
            trap_med[0],
            trap_best[0],
            trap_med[k],
            trap_best[k],
            tm + bpf_us,
            tb + bpf_us,
            trap_med[0] / (trap_med[0] + tm + bpf_us),
            trap_best[0] / (trap_best[0] + tb + bpf_us)
        );
    }
    println!();
    let cpu = |i: usize| stat(&mut hs[i].iter().flatten().map(|c| c.cpu_us), true, true);
    let all: Vec<f64> = hs.iter().flatten().flatten().map(|c| c.steal).collect();
    let mean_steal = all.iter().sum::<f64>() / all.len().max(1) as f64;
    println!(
        "CPU added by the TLS probes per Go handshake pair (best chunks; 4 hits: 2 entries + 2 results): results at the RETs {:.1} µs, by default {:.1} µs. Hypervisor steal during the handshake chunks: mean {:.1}%, max {:.1}%.",
        cpu(2) - cpu(1),
        cpu(3) - cpu(1),
        mean_steal * 100.0,
        all.iter().copied().fold(0.0, f64::max) * 100.0
    );
    Ok(())
}
