//! `chainprobe`: the thin binary over the chainprobe library.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context;
use chainprobe::{
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
    /// [api] token_file) sets a token; without one it answers only on a loopback listen address.
    /// Needs root (or CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_SYS_RESOURCE). Without --config the
    /// built-in defaults apply (print them with `chainprobe config`).
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
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chainprobe: {e:#}");
            ExitCode::FAILURE
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
            let items = kernel::check();
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
    }
}

fn inspect(binary: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let info = chainprobe::goinspect::inspect_path(binary)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&info).context("encoding JSON")?);
    } else {
        print!("{}", chainprobe::goinspect::render_text(&info));
    }
    Ok(ExitCode::SUCCESS)
}
