//! `cargo xtask bench node --scenario fleet [--seconds S] [--processes N] [--churn-per-second R]
//! [--scrape-interval I]`: chainprobe on a busy node.
//!
//! N Go processes (default 500), round-robin over ten binaries of seven Go versions: `httpbench`
//! (a net/http server on loopback; built here with Go 1.21.13, 1.24.11 and 1.27.3, plain and
//! stripped; every server gets one HTTP/1.0 request every 10 s from the benchmark) and `gorun`
//! (idle, driven over stdin; the builds of `cargo xtask fixtures`: Go 1.19 stripped, 1.22 PIE
//! stripped, 1.25 plain, 1.26 external-link PIE stripped). They start before the daemon (the
//! daemon finds them in its start scan), and the window begins once the API lists every one with
//! a runtime read. During the window (S seconds, default 600): R execs per second (default 100)
//! of a small C program that makes one refused loopback connect and exits (bench fleet's job, 5
//! names), and a scrape every I seconds (default 15), alternately OpenMetrics (Prometheus's
//! Accept header) and the classic text format (no Accept header). The release daemon runs with
//! its default configuration (snapshots into a temporary directory, the API's rate limit raised
//! for the benchmark's polling).
//!
//! Reported: the daemon's CPU (utime + stime over the window, % of one core; per thread too), its
//! peak RSS (VmHWM, start-up included) and RSS sampled every 5 s (halves compared, slope of the
//! second half), scrape time and size per encoding, events lost (every lost/dropped counter the
//! daemon has), and the series against the budget (≤ 30 per Go process, ≤ 10 per other process
//! or fold with series, plus chainprobe's own).
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    bench_fleet,
    bench_util::{self, cpu_seconds, json, median, GoProgram},
};

/// What Prometheus sends (it asks for OpenMetrics first).
const PROMETHEUS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
const HTTPBENCH_VERSIONS: &str = "1.21.13 1.24.11 1.27.3";
const HTTPBENCH_VARIANTS: &[&str] = &["default", "stripped"];
/// gorun builds of `cargo xtask fixtures`: (Go minor, variant).
const GORUN: &[(&str, &str)] = &[("1.19", "stripped"), ("1.22", "pie-stripped"), ("1.25", "default"), ("1.26", "pie-ext-stripped")];
/// Budget per Go process, per other process (or fold) with series, and chainprobe's own series
/// (the constant of the `series_budget` test).
const GO_BUDGET: usize = 30;
const OTHER_BUDGET: usize = 10;
const CONSTANT: usize = 400;

struct Binary {
    label: String,
    path: PathBuf,
    server: bool,
}

fn binaries() -> Result<Vec<Binary>> {
    let root = bench_util::go_programs_for("httpbench", HTTPBENCH_VERSIONS, &HTTPBENCH_VARIANTS.join(" "))?;
    let mut v = Vec::new();
    for ver in HTTPBENCH_VERSIONS.split_whitespace() {
        for variant in HTTPBENCH_VARIANTS {
            v.push(Binary { label: format!("httpbench go{ver} {variant}"), path: root.join(ver).join(variant).join("httpbench"), server: true });
        }
    }
    for (minor, variant) in GORUN {
        let dir = test_support::go_version_dir(minor)?;
        let path = dir.join(variant).join("gorun");
        if !path.is_file() {
            bail!("missing {}: run `cargo xtask fixtures`", path.display());
        }
        let ver = dir.file_name().and_then(|n| n.to_str()).unwrap_or(minor).to_string();
        v.push(Binary { label: format!("gorun go{ver} {variant}"), path, server: false });
    }
    Ok(v)
}

/// One Go process of the fleet.
enum GoProc {
    /// An httpbench server and its address.
    Server(Child, SocketAddr),
    Idle(GoProgram),
}

impl GoProc {
    fn start(b: &Binary) -> Result<GoProc> {
        if !b.server {
            return Ok(GoProc::Idle(bench_util::go_program(&b.path, &[])?));
        }
        let mut child = Command::new(&b.path)
            .args(["-port", "0"])
            .env("GOMAXPROCS", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", b.label))?;
        let mut line = String::new();
        let read = child.stdout.take().context("stdout").and_then(|o| Ok(BufReader::new(o).read_line(&mut line)?));
        let addr = read.ok().and_then(|_| line.trim().strip_prefix("listening ")?.parse::<SocketAddr>().ok());
        match addr {
            Some(a) => Ok(GoProc::Server(child, a)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{}: first line {line:?}, not `listening ADDR`", b.label)
            }
        }
    }

    fn pid(&self) -> u32 {
        match self {
            GoProc::Server(c, _) => c.id(),
            GoProc::Idle(g) => g.pid,
        }
    }
}

/// Kills every process of the fleet first, then reaps them (a GoProgram reaps itself on drop).
fn stop_all(fleet: Vec<GoProc>) {
    let mut servers = Vec::new();
    let mut idle = Vec::new();
    for p in fleet {
        match p {
            GoProc::Server(mut c, _) => {
                let _ = c.kill();
                servers.push(c);
            }
            GoProc::Idle(mut g) => {
                let _ = g.child.kill();
                idle.push(g);
            }
        }
    }
    for mut c in servers {
        let _ = c.wait();
    }
    drop(idle);
}

/// One HTTP/1.0 GET of / (the server closes): whether it answered 200.
fn get(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: fleet\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") && buf.windows(5).take(16).any(|w| w == b" 200 ")
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} of pid {pid}"))
}

/// CPU seconds (utime + stime) of each thread of `pid`, by thread name.
fn thread_cpu(pid: u32) -> BTreeMap<String, f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        *out.entry(name).or_insert(0.0) += (t(11) + t(12)) / hz;
    }
    out
}

/// `name{labels}` → its labels (values unescaped enough for pid and comm).
fn labels(series: &str) -> HashMap<&str, &str> {
    let mut m = HashMap::new();
    let Some(inner) = series.split_once('{').and_then(|(_, r)| r.strip_suffix('}')) else { return m };
    for kv in inner.split("\",") {
        if let Some((k, v)) = kv.split_once("=\"") {
            m.insert(k, v.trim_end_matches('"'));
        }
    }
    m
}

struct Scrape {
    openmetrics: bool,
    seconds: f64,
    bytes: usize,
    series: usize,
}

struct Args {
    seconds: u64,
    processes: usize,
    churn: u64,
    scrape: f64,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut a = Args { seconds: 600, processes: 500, churn: 100, scrape: 15.0 };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut val = || it.next().context("missing value");
        match arg.as_str() {
            "--seconds" => a.seconds = val()?.parse()?,
            "--processes" => a.processes = val()?.parse()?,
            "--churn-per-second" => a.churn = val()?.parse()?,
            "--scrape-interval" => a.scrape = val()?.parse()?,
            other => bail!("unknown argument {other:?} (scenario fleet: --seconds S --processes N --churn-per-second R --scrape-interval I)"),
        }
    }
    if a.seconds < 20 || a.seconds > 7200 || a.processes == 0 || a.processes > 5000 || a.churn > 1000 || !(1.0..=300.0).contains(&a.scrape) {
        bail!("--seconds 20 to 7200, --processes 1 to 5000, --churn-per-second at most 1000, --scrape-interval 1 to 300");
    }
    Ok(a)
}

pub fn run(args: &[String]) -> Result<()> {
    let a = parse(args)?;
    bench_util::require_root()?;
    // ~10 MiB per Go process (httpbench ~8 MiB RSS), and room for the rest of the machine.
    let avail = status_meminfo("MemAvailable:")?;
    if avail < (a.processes as u64) * 10 * 1024 + 2 * 1024 * 1024 {
        bail!("{} Go processes need about {} MiB; {} MiB available", a.processes, a.processes * 10, avail / 1024);
    }
    crate::build_release()?;
    let bin = crate::repo_root().join("target/release/chainprobe");
    let bins = binaries()?;
    let dir = std::env::temp_dir().join(format!("chainprobe-bench-node-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let jobs = bench_fleet::build_jobs(&dir, 5)?;

    eprintln!("starting {} Go processes ({} binaries)", a.processes, bins.len());
    let t_start = Instant::now();
    let mut fleet: Vec<GoProc> = Vec::with_capacity(a.processes);
    for i in 0..a.processes {
        match GoProc::start(&bins[i % bins.len()]) {
            Ok(p) => fleet.push(p),
            Err(e) => {
                stop_all(fleet);
                return Err(e);
            }
        }
    }
    eprintln!("{} Go processes up in {:.1} s", fleet.len(), t_start.elapsed().as_secs_f64());
    let result = measure(&a, &bin, &dir, &jobs, &fleet, &bins);
    stop_all(fleet);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn status_meminfo(field: &str) -> Result<u64> {
    let s = std::fs::read_to_string("/proc/meminfo")?;
    s.lines().find_map(|l| l.strip_prefix(field)?.trim().trim_end_matches("kB").trim().parse().ok()).with_context(|| format!("{field} in /proc/meminfo"))
}

fn measure(a: &Args, bin: &std::path::Path, dir: &std::path::Path, jobs: &[PathBuf], fleet: &[GoProc], bins: &[Binary]) -> Result<()> {
    let extra = format!(
        "[api]\nrate_limit_per_second = 1000.0\nrate_limit_burst = 1000\n[snapshot]\ndir = \"{}\"\n[metrics]\nscrape_interval_seconds = {:.1}\n",
        dir.join("snapshots").display(),
        a.scrape
    );
    let t_daemon = Instant::now();
    // The allocator's own count of live bytes, every 5 s (a debug line of the trim timer): RSS
    // alone cannot tell live data from pages the allocator keeps or code first run late.
    let (d, port) = bench_util::start_daemon_logging(bin, dir, &extra, "warn,chainprobe::procfs=debug")?;
    let dpid = d.pid();
    let pids: HashSet<u32> = fleet.iter().map(GoProc::pid).collect();
    // Every Go process tracked and read (its goroutine count known).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let v = json(port, "GET", "/api/v1/targets", "")?;
        let targets = v["targets"].as_array().cloned().unwrap_or_default();
        let read: HashSet<u32> = targets
            .iter()
            .filter(|t| t["runtime"]["goroutines"].is_i64() || t["runtime"]["goroutines"].is_u64())
            .filter_map(|t| t["pid"].as_u64().map(|p| p as u32))
            .collect();
        let missing: Vec<u32> = pids.iter().copied().filter(|p| !read.contains(p)).collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let why: Vec<String> = targets
                .iter()
                .filter(|t| t["pid"].as_u64().is_some_and(|p| missing.contains(&(p as u32))))
                .take(5)
                .map(|t| format!("{} {}: {}", t["pid"], t["exe"], t["runtime_reads"]))
                .collect();
            bail!("{} of {} Go processes not tracked and read within 600 s (e.g. {:?}; {why:?})", missing.len(), pids.len(), &missing[..missing.len().min(5)]);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let tracked_after = t_daemon.elapsed().as_secs_f64();
    eprintln!("all {} Go processes tracked and read {tracked_after:.1} s after the daemon's start", pids.len());

    // The HTTP load: every server one request every 10 s.
    let servers: Vec<SocketAddr> = fleet.iter().filter_map(|p| if let GoProc::Server(_, a) = p { Some(*a) } else { None }).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed, servers) = (stop.clone(), ok.clone(), failed.clone(), servers.clone());
        std::thread::spawn(move || {
            if servers.is_empty() {
                return;
            }
            let every = Duration::from_secs_f64(10.0 / servers.len() as f64);
            let mut next = Instant::now();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let c = if get(servers[i % servers.len()]) { &ok } else { &failed };
                c.fetch_add(1, Ordering::Relaxed);
                i += 1;
                next += every;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };

    let closed = test_support::free_addr()?.port();
    let mut scrapes: Vec<Scrape> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut first_series = None;
    let mut last_text = String::new();
    let mut rss: Vec<(f64, Rss)> = Vec::new();
    let threads0 = thread_cpu(dpid);
    let c0 = cpu_seconds(dpid)?;
    let steal0 = bench_util::steal_seconds()?;
    let (t0, day0) = (Instant::now(), day_seconds_now());
    let window = Duration::from_secs(a.seconds);
    let scrape_every = Duration::from_secs_f64(a.scrape);
    let (mut next_exec, mut next_scrape, mut next_rss) = (t0, t0, t0);
    let exec_every = Duration::from_secs_f64(1.0 / a.churn.max(1) as f64);
    let mut running: Vec<Child> = Vec::new();
    let (mut execs, mut spawn_failures) = (0u64, 0u64);
    let result: Result<()> = (|| {
        while t0.elapsed() < window {
            let now = Instant::now();
            if a.churn > 0 {
                // At most a second's worth at once when the loop fell behind.
                let mut burst = 0;
                while next_exec <= now && burst < a.churn {
                    let job = &jobs[execs as usize % jobs.len()];
                    match Command::new(job).arg(closed.to_string()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
                        Ok(c) => running.push(c),
                        Err(_) => spawn_failures += 1,
                    }
                    execs += 1;
                    burst += 1;
                    next_exec += exec_every;
                }
                if next_exec + Duration::from_secs(1) < now {
                    next_exec = now;
                }
            }
            running.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
            if now >= next_rss {
                rss.push((t0.elapsed().as_secs_f64(), Rss::of(dpid)?));
                next_rss += Duration::from_secs(5);
            }
            if now >= next_scrape {
                let openmetrics = scrapes.len() % 2 == 0;
                let headers: &[(&str, &str)] = if openmetrics { &[("Accept", PROMETHEUS_ACCEPT)] } else { &[] };
                let s0 = Instant::now();
                let (code, head, body) =
                    test_support::http(SocketAddr::from(([127, 0, 0, 1], port)), "GET", "/metrics", headers, "", Duration::from_secs(60))?;
                let seconds = s0.elapsed().as_secs_f64();
                if code != 200 {
                    bail!("/metrics answered {code}");
                }
                let want = if openmetrics { "application/openmetrics-text" } else { "text/plain" };
                if !head.contains(want) {
                    bail!("/metrics answered {head:?}, not {want}");
                }
                let s = bench_fleet::series(&body);
                first_series.get_or_insert(s.len());
                scrapes.push(Scrape { openmetrics, seconds, bytes: body.len(), series: s.len() });
                seen.extend(s);
                if !openmetrics {
                    last_text = body;
                }
                next_scrape += scrape_every;
            }
            let next = next_scrape.min(next_rss).min(if a.churn > 0 { next_exec } else { next_scrape });
            std::thread::sleep(next.saturating_duration_since(Instant::now()).min(Duration::from_millis(5)));
        }
        Ok(())
    })();
    let c1 = cpu_seconds(dpid)?;
    let steal1 = bench_util::steal_seconds()?;
    let elapsed = t0.elapsed().as_secs_f64();
    let threads1 = thread_cpu(dpid);
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    for mut c in running {
        let _ = c.wait();
    }
    result?;
    let hwm = status_kib(dpid, "VmHWM:")?;
    let alive = pids.iter().filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists()).count();
    // The counters of what was lost, at the end (since the daemon's start).
    let (_, body) = bench_util::http(port, "GET", "/metrics", "")?;
    let lost = |name: &str| bench_fleet::sample(&body, name);
    let lost_events = lost("chainprobe_events_lost_total");
    let others = [
        ("chainprobe_go_discovery_dropped_total", lost("chainprobe_go_discovery_dropped_total")),
        ("chainprobe_event_decode_errors_total", lost("chainprobe_event_decode_errors_total")),
        ("chainprobe_series_dropped_total", lost("chainprobe_series_dropped_total")),
        ("chainprobe_exited_series_dropped_total", lost("chainprobe_exited_series_dropped_total")),
    ];
    let log = d.log_text();
    drop(d);

    // Series of the last text scrape against the budget.
    let series = bench_fleet::series(&last_text);
    let mut per_go: HashMap<&str, usize> = HashMap::new();
    let mut other_ids: HashSet<String> = HashSet::new();
    let (mut other_series, mut constant, mut job_series) = (0usize, 0usize, 0usize);
    let go_pids: HashSet<String> = pids.iter().map(u32::to_string).collect();
    for s in &series {
        let l = labels(s);
        match (l.get("pid"), l.get("comm")) {
            (Some(p), _) if go_pids.contains(*p) => *per_go.entry(*p).or_default() += 1,
            (None, None) => constant += 1,
            (pid, comm) => {
                other_series += 1;
                other_ids.insert(pid.map_or_else(|| format!("comm {}", comm.unwrap_or(&"")), |p| format!("pid {p}")));
                if comm.is_some_and(|c| c.starts_with("cronjob")) {
                    job_series += 1;
                }
            }
        }
    }
    let go_total: usize = per_go.values().sum();
    let go_max = per_go.values().copied().max().unwrap_or(0);
    let budget = GO_BUDGET * pids.len() + OTHER_BUDGET * other_ids.len() + CONSTANT;

    let mut rows: Vec<(String, String)> = Vec::new();
    let cpu = 100.0 * (c1 - c0) / elapsed;
    rows.push(("daemon CPU over the window (utime + stime), % of one core (target ≤ 1)".into(), format!("{cpu:.3}")));
    let mut by_thread: Vec<(String, f64)> = threads1
        .iter()
        .map(|(n, v)| (n.clone(), v - threads0.get(n).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    by_thread.sort_by(|x, y| y.1.partial_cmp(&x.1).unwrap_or(std::cmp::Ordering::Equal));
    let thread_text: Vec<String> = by_thread.iter().take(6).map(|(n, v)| format!("{n} {:.3}", 100.0 * v / elapsed)).collect();
    rows.push(("  by thread (% of one core)".into(), thread_text.join(", ")));
    // On a VM the hypervisor's other guests slow every instruction down: a run with much CPU
    // stolen is not comparable with a quiet one.
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    rows.push(("  CPU stolen by the hypervisor meanwhile, % of the machine (compare runs only when low)".into(), format!("{:.1}", 100.0 * (steal1 - steal0) / (elapsed * cpus))));
    rows.push(("peak RSS (VmHWM, start-up included), MiB (target ≤ 64)".into(), format!("{:.1}", hwm as f64 / 1024.0)));
    let half = elapsed / 2.0;
    let mib = |f: fn(&Rss) -> u64| -> Vec<(f64, f64)> { rss.iter().map(|(t, r)| (*t, f(r) as f64 / 1024.0)).collect() };
    let total = mib(|r| r.total);
    let (h1, h2): (Vec<(f64, f64)>, Vec<(f64, f64)>) = total.iter().copied().partition(|(t, _)| *t < half);
    rows.push((
        format!("RSS every 5 s ({} samples), MiB: first half mean / max, second half mean / max", rss.len()),
        format!("{:.1} / {:.1}, {:.1} / {:.1}", mean(&h1), max(&h1), mean(&h2), max(&h2)),
    ));
    rows.push(("RSS slope over the second half, MiB per minute".into(), format!("{:+.3}", second_half_slope(&total, half))));
    let parts: Vec<String> = [("anon", mib(|r| r.anon)), ("file", mib(|r| r.file)), ("shmem", mib(|r| r.shmem))]
        .iter()
        .map(|(n, v)| format!("{n} {:.1} MiB {:+.4}", v.last().map_or(0.0, |(_, m)| *m), second_half_slope(v, half)))
        .collect();
    rows.push(("  RSS by kind at the end, and slope over the second half (MiB per minute)".into(), parts.join(", ")));
    let heap = heap_in_use(&log, day0);
    if heap.len() >= 4 {
        let h2: Vec<(f64, f64)> = heap.iter().copied().filter(|(t, _)| *t >= half).collect();
        rows.push((
            format!("heap in use (glibc mallinfo2, every 5 s, {} samples), MiB: second half mean / min / max; slope, KiB per minute", heap.len()),
            format!("{:.2} / {:.2} / {:.2}; {:+.1}", mean(&h2), h2.iter().map(|(_, m)| *m).fold(f64::INFINITY, f64::min), max(&h2), 1024.0 * second_half_slope(&heap, half)),
        ));
    }
    for (om, name) in [(true, "OpenMetrics (Prometheus's Accept)"), (false, "text 0.0.4 (no Accept)")] {
        let mut t: Vec<f64> = scrapes.iter().filter(|s| s.openmetrics == om).map(|s| 1000.0 * s.seconds).collect();
        let n = t.len();
        let worst = t.iter().copied().fold(0.0, f64::max);
        let bytes = scrapes.iter().filter(|s| s.openmetrics == om).map(|s| s.bytes).max().unwrap_or(0);
        let sc = scrapes.iter().filter(|s| s.openmetrics == om).map(|s| s.series).max().unwrap_or(0);
        rows.push((format!("scrape, {name}: median / max ms of {n} (target ≤ 100); largest (series, bytes)"), format!("{:.1} / {worst:.1}; {sc}, {bytes}", median(&mut t))));
    }
    rows.push(("events lost (chainprobe_events_lost_total, since the start; target 0)".into(), format!("{lost_events}")));
    for (name, v) in others {
        rows.push((format!("  {name}"), format!("{v}")));
    }
    rows.push((
        format!("series at the end: {} Go processes (max per process; budget {GO_BUDGET})", per_go.len()),
        format!("{go_total} ({go_max})"),
    ));
    rows.push((
        format!("  other processes and folds with series (budget {OTHER_BUDGET} each): identities, series (of which the jobs')"),
        format!("{}, {other_series} ({job_series})", other_ids.len()),
    ));
    rows.push(("  chainprobe's own (no pid, no comm)".into(), format!("{constant}")));
    rows.push((format!("  all, against the budget {GO_BUDGET}·N + {OTHER_BUDGET}·others + {CONSTANT}"), format!("{} ≤ {budget}: {}", series.len(), series.len() <= budget)));
    rows.push(("series created during the window (distinct series seen − those of the first scrape)".into(), format!("{}", seen.len().saturating_sub(first_series.unwrap_or(0)))));
    rows.push(("execs of short-lived jobs (spawn failures)".into(), format!("{execs} ({spawn_failures})")));
    rows.push(("HTTP requests to the servers: ok, failed".into(), format!("{}, {}", ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))));
    rows.push(("Go processes alive at the end".into(), format!("{alive} of {}", pids.len())));
    rows.push(("all tracked and read after the daemon's start, s".into(), format!("{tracked_after:.1}")));

    let names: Vec<&str> = bins.iter().map(|b| b.label.as_str()).collect();
    println!(
        "| {} Go processes ({}), {} execs/s of short-lived jobs, {:.0} s, scraped every {} s | |",
        pids.len(),
        names.join(", "),
        a.churn,
        elapsed,
        a.scrape
    );
    println!("|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    // The log also has the trim timer's debug lines: only its warnings and errors are shown.
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    if !warnings.is_empty() {
        eprintln!("daemon log: {} warnings/errors, the last ones:\n{}", warnings.len(), warnings[warnings.len().saturating_sub(10)..].join("\n"));
    }
    Ok(())
}

/// Resident memory of a process by kind (KiB, from /proc/PID/status).
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
    shmem: u64,
}

impl Rss {
    fn of(pid: u32) -> Result<Rss> {
        Ok(Rss { total: status_kib(pid, "VmRSS:")?, anon: status_kib(pid, "RssAnon:")?, file: status_kib(pid, "RssFile:")?, shmem: status_kib(pid, "RssShmem:")? })
    }
}

fn mean(v: &[(f64, f64)]) -> f64 {
    v.iter().map(|(_, m)| m).sum::<f64>() / v.len().max(1) as f64
}

fn max(v: &[(f64, f64)]) -> f64 {
    v.iter().map(|(_, m)| *m).fold(0.0, f64::max)
}

/// Least-squares slope of the samples at or after `half` seconds, per minute.
fn second_half_slope(v: &[(f64, f64)], half: f64) -> f64 {
    let h: Vec<&(f64, f64)> = v.iter().filter(|(t, _)| *t >= half).collect();
    let n = h.len().max(1) as f64;
    let (mt, mv) = (h.iter().map(|(t, _)| *t).sum::<f64>() / n, h.iter().map(|(_, m)| *m).sum::<f64>() / n);
    let cov: f64 = h.iter().map(|(t, m)| (t - mt) * (m - mv)).sum();
    let var: f64 = h.iter().map(|(t, _)| (t - mt).powi(2)).sum();
    if var > 0.0 { 60.0 * cov / var } else { 0.0 }
}

/// The trim timer's `in_use=` values in the daemon's log within the window that began at `t0`
/// (UTC seconds of the day), as (seconds since `t0`, MiB).
fn heap_in_use(log: &str, t0: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for l in log.lines().filter(|l| l.contains("allocator trimmed")) {
        let Some(bytes) = l.split_whitespace().find_map(|w| w.strip_prefix("in_use=")?.parse::<f64>().ok()) else { continue };
        let Some(at) = l.split_whitespace().next().and_then(day_seconds) else { continue };
        // A window that crosses midnight: what looks half a day early is the next day.
        let t = if at - t0 < -43_200.0 { at + 86_400.0 - t0 } else { at - t0 };
        if t >= 0.0 {
            out.push((t, bytes / (1024.0 * 1024.0)));
        }
    }
    out
}

/// UTC seconds of the day now.
fn day_seconds_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() % 86_400.0)
}

/// UTC seconds of the day of a tracing timestamp (`2026-12-07T13:51:43.647857Z`).
fn day_seconds(ts: &str) -> Option<f64> {
    let time = ts.split_once('T')?.1.trim_end_matches('Z');
    let mut it = time.split(':');
    let (h, m, s): (f64, f64, f64) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_samples_are_read_from_the_trim_lines_of_the_window_across_midnight() {
        let log = "2026-12-07T23:59:50.000000Z DEBUG chainprobe::procfs: allocator trimmed (bytes) in_use=1048576 free_before=1 free_after=1 mapped=0\n\
                   2026-12-07T23:59:58.500000Z  WARN chainprobe::attach: something else in_use=5\n\
                   2026-12-07T23:59:59.000000Z DEBUG chainprobe::procfs: allocator trimmed (bytes) in_use=2097152 free_before=1 free_after=1 mapped=0\n\
                   2026-12-08T00:00:04.000000Z DEBUG chainprobe::procfs: allocator trimmed (bytes) in_use=3145728 free_before=1 free_after=1 mapped=0\n\
                   2026-12-08T00:00:09.000000Z DEBUG chainprobe::procfs: allocator trimmed (bytes) in_use=garbage\n";
        let heap = heap_in_use(log, day_seconds("2026-12-07T23:59:55Z").unwrap());
        assert_eq!(heap, vec![(4.0, 2.0), (9.0, 3.0)]);
    }

    #[test]
    fn the_slope_is_of_the_second_half_per_minute() {
        // Flat for the first minute, then +1 MiB a minute.
        let v: Vec<(f64, f64)> = (0..=24).map(|i| (5.0 * i as f64, if i < 12 { 0.0 } else { (5.0 * i as f64 - 60.0) / 60.0 })).collect();
        assert!((second_half_slope(&v, 60.0) - 1.0).abs() < 1e-9);
        assert_eq!(second_half_slope(&[], 60.0), 0.0);
    }
}
