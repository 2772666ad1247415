//! `chainprobe`: the thin binary over the chainprobe library.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context;
use chainprobe::{
    api::client::{Client, Target},
    config::{Config, LogFormat, DEFAULT_TOML},
    kernel::{self, Status},
};
use clap::{Parser, Subcommand};

/// eBPF health probe for the Go services on this node: TCP, memory-mapping and process-exit
/// signals per process, and the Go runtime of every Go process (GC, stop-the-world pauses,
/// goroutines, heap), exported as Prometheus metrics and through an on-call API.
#[derive(Parser)]
#[command(name = "chainprobe", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel programs, track Go processes, and serve /metrics, /healthz, /readyz and
    /// /api/v1/ until SIGTERM/SIGINT.
    ///
    /// The API needs `Authorization: Bearer $CHAINPROBE_API_TOKEN` when that variable (or
    /// [api] token_file) sets a token; without one the API answers only on a loopback listen
    /// address. Health rules take heap and goroutine snapshots into [snapshot] dir.
    /// Needs root (or CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_SYS_RESOURCE, and CAP_KILL to resume
    /// the processes it holds). Without --config the built-in defaults apply (print them with
    /// `chainprobe config`).
    Run {
        /// TOML configuration file; settings it omits keep their defaults.
        #[arg(long, short = 'c', value_name = "FILE", env = "CHAINPROBE_CONFIG")]
        config: Option<PathBuf>,
        /// Address to serve HTTP on (overrides [server] listen; default 0.0.0.0:9479).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Log format: text or json (overrides [log] format).
        #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
        log_format: Option<String>,
    },
    /// Report, line by line, what this kernel and process provide; exits 1 if chainprobe cannot run.
    Check,
    /// Print the default configuration file, with every setting documented.
    Config,
    /// Take a heap and goroutine snapshot of a Go process through a running chainprobe's API,
    /// wait for it, and download its files (gzipped pprof: open them with `go tool pprof FILE`).
    ///
    /// Examples:
    ///   chainprobe snapshot --pid 4242
    ///   chainprobe snapshot --pod shop/cart-7d9f --container app --kind goroutine -o /tmp
    ///   chainprobe snapshot --list
    /// The token comes from $CHAINPROBE_API_TOKEN or --token-file.
    #[command(verbatim_doc_comment)]
    Snapshot {
        /// Process id (as seen by chainprobe, i.e. the host's pid namespace).
        #[arg(long, conflicts_with = "pod", required_unless_present_any = ["pod", "list"])]
        pid: Option<u32>,
        /// Pod as NAMESPACE/NAME (its Go process; add --container when it has several).
        #[arg(long, value_name = "NAMESPACE/NAME")]
        pod: Option<String>,
        /// Container of the pod (needed when the pod has several Go processes).
        #[arg(long, requires = "pod")]
        container: Option<String>,
        /// heap or goroutine; repeat for both (default: both).
        #[arg(long = "kind", value_parser = ["heap", "goroutine"])]
        kinds: Vec<String>,
        /// chainprobe's HTTP address.
        #[arg(long, env = "CHAINPROBE_SERVER", default_value = "http://127.0.0.1:9479")]
        server: String,
        /// File holding the API token (else $CHAINPROBE_API_TOKEN).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Where to write the files.
        #[arg(long, short = 'o', value_name = "DIR", default_value = ".")]
        output: PathBuf,
        /// Only queue it and print its id.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// List the snapshots chainprobe holds instead.
        #[arg(long)]
        list: bool,
    },
    /// Inspect a Go binary: version, build mode, probe sites, struct offsets, data symbols.
    Inspect {
        /// Path of the executable (for a process in a container: /proc/PID/exe).
        binary: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::{fmt, prelude::*, EnvFilter};
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry.with(fmt::layer().json().with_current_span(false).with_writer(std::io::stderr)).init(),
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            registry.with(fmt::layer().with_writer(std::io::stderr).with_ansi(ansi)).init()
        }
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chainprobe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives every thread that allocates its own arena (up to 8 per core); the daemon's threads
/// (collector, discovery, the HTTP workers, snapshot and crash workers) each kept megabytes of
/// freed memory in theirs. Two arenas are plenty for its allocation rate. `MALLOC_ARENA_MAX` in
/// the environment still wins (glibc reads it at the first allocation, before this).
///
/// Large blocks (an exposition of a busy node is a megabyte, a profile more) are mapped and
/// unmapped on their own from 256 KiB on: glibc's default raises that threshold to whatever was
/// last freed, and the heap then keeps those blocks' pages after each scrape. (What the heap
/// still keeps is handed back every few seconds: `procfs::release_free_memory`.)
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
            }
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, listen, log_format } => {
            let mut cfg = Config::load(config.as_deref())?;
            if let Some(l) = listen {
                cfg.server.listen = l;
            }
            if let Some(f) = log_format {
                cfg.log.format = if f == "json" { LogFormat::Json } else { LogFormat::Text };
            }
            init_logging(cfg.log.format, &cfg.log.level);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(chainprobe::daemon::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            let mut items = kernel::check();
            items.push(chainprobe::attach::fexit_check());
            for i in &items {
                println!("{i}");
            }
            let failed = items.iter().filter(|i| i.status == Status::Fail).count();
            if failed > 0 {
                println!("\n{failed} requirement(s) missing: chainprobe cannot run here (see FAIL lines for the fix).");
                Ok(ExitCode::FAILURE)
            } else {
                println!("\nchainprobe can run here.");
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Config => {
            print!("{DEFAULT_TOML}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { binary, json } => inspect(&binary, json),
        Command::Snapshot { pid, pod, container, kinds, server, token_file, output, no_wait, timeout, list } => {
            let target = match (pid, pod) {
                (Some(pid), _) => Some(Target::Pid(pid)),
                (None, Some(p)) => {
                    let (namespace, pod) = p.split_once('/').context("--pod takes NAMESPACE/NAME")?;
                    Some(Target::Pod { namespace: namespace.into(), pod: pod.into(), container })
                }
                (None, None) => None,
            };
            let token = match token_file {
                Some(f) => Some(std::fs::read_to_string(&f).with_context(|| format!("reading the token file {}", f.display()))?.trim().to_string()),
                None => std::env::var("CHAINPROBE_API_TOKEN").ok().filter(|t| !t.trim().is_empty()),
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
            rt.block_on(snapshot(Client::new(&server, token)?, target, kinds, output, no_wait, timeout, list))
        }
    }
}

async fn snapshot(c: Client, target: Option<Target>, kinds: Vec<String>, output: PathBuf, no_wait: bool, timeout: u64, list: bool) -> anyhow::Result<ExitCode> {
    let Some(target) = target.filter(|_| !list) else {
        let v = c.list().await?;
        if v["circuit"]["open"].as_bool() == Some(true) {
            println!("snapshots are stopped: {}", v["circuit"]["reason"].as_str().unwrap_or(""));
        }
        println!("{:<16}  {:<24}  {:>7}  {:<16}  {:<7}  {:<8}  FILES / REASON", "ID", "CREATED", "PID", "POD/COMM", "TRIGGER", "STATUS");
        for s in v["snapshots"].as_array().into_iter().flatten() {
            let who = s["pod"].as_str().or(s["comm"].as_str()).unwrap_or("");
            let files: Vec<&str> = s["files"].as_object().map(|f| f.keys().map(String::as_str).collect()).unwrap_or_default();
            let detail = if s["status"] == "failed" { s["reason"].as_str().unwrap_or("").to_string() } else { files.join(",") };
            let trig = match s["rule"].as_str() {
                Some(r) => format!("rule:{r}"),
                None => s["trigger"].as_str().unwrap_or("").to_string(),
            };
            println!("{:<16}  {:<24}  {:>7}  {:<16}  {:<7}  {:<8}  {}", s["id"].as_str().unwrap_or(""), s["created"].as_str().unwrap_or(""), s["pid"], who, trig, s["status"].as_str().unwrap_or(""), detail);
        }
        return Ok(ExitCode::SUCCESS);
    };
    let id = c.request(&target, &kinds).await?;
    if no_wait {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("snapshot {id} queued; waiting…");
    let meta = c.wait(&id, std::time::Duration::from_secs(timeout)).await?;
    std::fs::create_dir_all(&output).with_context(|| format!("creating {}", output.display()))?;
    for p in c.download(&meta, &output).await? {
        println!("{}", p.display());
    }
    if let Some(errors) = meta["errors"].as_object() {
        for (kind, why) in errors {
            eprintln!("no {kind} profile: {}", why.as_str().unwrap_or(""));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(binary: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let info = goinspect::inspect_path(binary)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&info).context("encoding JSON")?);
    } else {
        print!("{}", goinspect::render_text(&info));
    }
    Ok(ExitCode::SUCCESS)
}
