//! `cargo xtask bench syscalls [--seconds S] [--rounds R]`: the cost of chainprobe's tracepoint
//! programs on the paths they watch, measured side by side in one run.
//!
//! Each round measures, for S seconds each, (1) loopback TCP connect+accept+close and (2) mmap +
//! munmap of 64 KiB, first without chainprobe, then with `chainprobe run` (release build): the
//! default configuration for (1), the memory system calls counted on any kernel for (2)
//! (`memory_hooks = "fexit-or-tracepoints"`: the default counts them only by fexit). Rounds
//! alternate so drift affects both sides alike; medians are reported with the ratio with/without,
//! and the daemon's CPU and RSS while under that load.
use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

use crate::bench_util::{http, median, start_daemon};
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

/// (CPU seconds used so far, RSS bytes) of process `pid`.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    (ticks / hz, rss)
}

/// The mmap workload's daemon configuration: the memory system calls counted on any kernel (fexit
/// where the kernel allows it, else the syscall tracepoints), since their cost is what it measures.
const COUNT_MEMORY: &str = "[collect]\nmemory_hooks = \"fexit-or-tracepoints\"\n";

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Connect,
    Mmap,
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
    let dir = crate::repo_root().join("target/bench-syscalls");
    std::fs::create_dir_all(&dir)?;

    let (mut c_off, mut c_on, mut m_off, mut m_on) = (vec![], vec![], vec![], vec![]);
    let (mut cpu, mut rss_max) = (vec![], 0u64);
    for r in 0..rounds {
        c_off.push(connect_rate(secs)?);
        m_off.push(mmap_rate(secs)?);
        // The connect workload against the default configuration; the mmap one with the memory
        // system calls counted (on a kernel without BPF trampolines the default counts none).
        for (config, workload) in [("", Workload::Connect), (COUNT_MEMORY, Workload::Mmap)] {
            let (d, port) = start_daemon(&bin, &dir, config)?;
            let pid = d.pid();
            let (cpu0, _) = usage(pid);
            let t0 = Instant::now();
            match workload {
                Workload::Connect => c_on.push(connect_rate(secs)?),
                Workload::Mmap => m_on.push(mmap_rate(secs)?),
            }
            let (cpu1, rss) = usage(pid);
            cpu.push((cpu1 - cpu0) / t0.elapsed().as_secs_f64());
            rss_max = rss_max.max(rss);
            if workload == Workload::Mmap && !http(port, "GET", "/metrics", "")?.1.contains("chainprobe_mmap_calls_total") {
                bail!("chainprobe did not count the benchmark's mmaps");
            }
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
