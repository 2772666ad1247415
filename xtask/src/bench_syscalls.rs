//! `cargo xtask bench syscalls [--seconds S] [--rounds R]`: the cost of chainprobe's tracepoint
//! programs on the paths they watch, measured side by side in one run.
//!
//! Each round measures, for S seconds each, (1) loopback TCP connect+accept+close and (2) mmap +
//! munmap of 64 KiB, first without chainprobe, then with `chainprobe run` (release build)
//! attached. Rounds alternate so drift affects both sides alike; medians are reported with the
//! ratio with/without, and the daemon's CPU and RSS while under that load.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::bench_util::median;
use anyhow::{bail, Context, Result};

fn connect_rate(secs: f64) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // The server closes first, so TIME_WAIT stays on its side and the client's
                // ephemeral ports never run out (which would measure port search, not probes).
                match listener.accept() {
                    Ok((s, _)) => drop(s),
                    Err(_) => break,
                }
            }
        })
    };
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let mut s = TcpStream::connect(addr)?;
        let mut b = [0u8; 1];
        let _ = s.read(&mut b); // EOF once the server closed
        drop(s);
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = TcpStream::connect(addr); // unblock accept
    let _ = acceptor.join();
    Ok(rate)
}

fn mmap_rate(secs: f64) -> Result<f64> {
    const LEN: usize = 64 * 1024;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..256 {
            // SAFETY: anonymous private mapping, unmapped right away, never dereferenced.
            unsafe {
                let p = libc::mmap(std::ptr::null_mut(), LEN, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
                if p == libc::MAP_FAILED {
                    bail!("mmap failed: {}", std::io::Error::last_os_error());
                }
                libc::munmap(p, LEN);
            }
            n += 1;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(bin: &Path) -> Result<Daemon> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(bin)
            .args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let d = Daemon { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if d.get("/readyz").map(|b| b.contains("ready")).unwrap_or(false) {
                return Ok(d);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("chainprobe did not become ready within 30 s")
    }

    fn get(&self, path: &str) -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// (CPU seconds used so far, RSS bytes).
    fn usage(&self) -> (f64, u64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let ticks = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        (ticks / hz, rss)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let mut secs = 3.0;
    let mut rounds = 5;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => secs = it.next().context("--seconds needs a value")?.parse()?,
            "--rounds" => rounds = it.next().context("--rounds needs a value")?.parse()?,
            other => bail!("unknown argument {other:?} (use --seconds S, --rounds R)"),
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark starts chainprobe, which loads eBPF programs: run as root");
    }
    crate::build_release()?;
    let bin = crate::repo_root().join("target/release/chainprobe");

    let (mut c_off, mut c_on, mut m_off, mut m_on) = (vec![], vec![], vec![], vec![]);
    let (mut cpu, mut rss_max) = (vec![], 0u64);
    for r in 0..rounds {
        c_off.push(connect_rate(secs)?);
        m_off.push(mmap_rate(secs)?);
        let d = Daemon::start(&bin)?;
        let (cpu0, _) = d.usage();
        let t0 = Instant::now();
        c_on.push(connect_rate(secs)?);
        m_on.push(mmap_rate(secs)?);
        let body = d.get("/metrics")?;
        let (cpu1, rss) = d.usage();
        cpu.push((cpu1 - cpu0) / t0.elapsed().as_secs_f64());
        rss_max = rss_max.max(rss);
        if !body.contains("chainprobe_mmap_calls_total") {
            bail!("chainprobe did not count the benchmark's mmaps");
        }
        eprintln!(
            "round {}: connect/s {:.0} -> {:.0}, mmap+munmap/s {:.0} -> {:.0}",
            r + 1,
            c_off[r],
            c_on[r],
            m_off[r],
            m_on[r]
        );
    }
    let (c0, c1, m0, m1) = (median(&mut c_off), median(&mut c_on), median(&mut m_off), median(&mut m_on));
    let cpu = median(&mut cpu);
    println!("| workload | without chainprobe | with chainprobe | ratio |");
    println!("|---|---|---|---|");
    println!("| loopback connect+accept+close /s | {c0:.0} | {c1:.0} | {:.3}× |", c1 / c0);
    println!("| mmap+munmap 64 KiB /s | {m0:.0} | {m1:.0} | {:.3}× |", m1 / m0);
    println!();
    println!(
        "chainprobe under that load: {:.1}% of one CPU (median over rounds), peak RSS {:.1} MiB; {rounds} rounds × {secs} s per measurement",
        cpu * 100.0,
        rss_max as f64 / 1048576.0
    );
    Ok(())
}
