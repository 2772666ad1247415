//! `cargo xtask …`: build, run, test, bench and codegen for chainprobe.
//!
//!   cargo xtask run [-- ARGS]        build (release) and run `chainprobe run ARGS` (needs root)
//!   cargo xtask test [-- ARGS]       install Go toolchains, build Go fixtures, check the offset
//!                                    tables against the generator, run every test
//!   cargo xtask fixtures             only install Go toolchains and build the Go fixtures
//!   cargo xtask bench syscalls       loopback connect and mmap rates with and without chainprobe
//!   cargo xtask bench goinspect      Go binary inspection time and memory
//!   cargo xtask bench goruntime      goroutine-spawn and HTTP cost of the Go runtime probes
//!   cargo xtask bench goread         daemon CPU of the periodic runtime read of a big Go process
//!   cargo xtask bench node --scenario goroutines   daemon CPU with one 500k-goroutine process
//!   cargo xtask bench node --scenario fleet        500 Go processes + 100 execs/s for 10 minutes
//!   cargo xtask bench tls            TLS handshakes/s and bulk throughput with and without chainprobe
//!   cargo xtask bench http2          HTTP/2 requests/s and the cost per GOAWAY/RST_STREAM with and without chainprobe
//!   cargo xtask bench fleet          series created by short-lived processes (50 execs/s), folded and per pid
//!   cargo xtask bench crash          how long a crashing Go process is held for its capsule
//!   cargo xtask bench libssl-hold    what holding a new libssl file's first process costs execs
//!   cargo xtask codegen go-offsets   regenerate the per-Go-version offset tables
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

mod bench_crash;
mod bench_fleet;
mod bench_goinspect;
mod bench_goread;
mod bench_goruntime;
mod bench_http2;
mod bench_libssl_hold;
mod bench_node;
mod bench_snapshot;
mod bench_syscalls;
mod bench_tls;
mod bench_util;
mod codegen;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn usage() -> &'static str {
    "usage: cargo xtask <command>\n\n\
     commands:\n  \
       run [-- ARGS]        build chainprobe (release) and run `chainprobe run ARGS` as root\n  \
       test [-- ARGS]       install Go toolchains, build the Go fixtures, check the Go offset tables\n                            (codegen go-offsets --check), run all tests (ARGS go to cargo test)\n  \
       fixtures             install Go toolchains and build the Go fixtures only\n  \
       build                build chainprobe (release): target/release/chainprobe\n  \
       bench syscalls       loopback connect and mmap rates with and without chainprobe\n  \
       bench goinspect      Go binary inspection time and peak memory\n  \
       bench goruntime      goroutine-spawn and HTTP throughput with and without the Go probes\n  \
       bench goread         daemon CPU reading one process of 500k goroutines (--baseline BIN: side by side)\n  \
       bench node --scenario goroutines\n                            daemon CPU with one 500k-goroutine process at the default read interval:\n                            idle, O(P) count + budgeted breakdown, every g each interval (side by side)\n  \
       bench node --scenario fleet\n                            500 Go processes (10 binaries, 7 Go versions) + 100 execs/s of short-lived\n                            processes for 10 min: daemon CPU, peak RSS, RSS over time, scrape time (both\n                            encodings), events lost, series against the budget (--seconds S, --processes N,\n                            --churn-per-second R, --scrape-interval I)\n  \
       bench snapshot       breach → snapshot files; goroutine-profile time and target pause (10k, 100k);\n                            heap profile out of process vs the process's own (1k, 10k, 100k buckets; --heap-only)\n  \
       bench tls            TLS handshakes/s and bulk TLS throughput with and without chainprobe\n  \
       bench http2          HTTP/2 requests/s and the cost per GOAWAY/RST_STREAM event with and without chainprobe\n  \
       bench fleet          series created per hour by 50 execs/s of short-lived processes, folded and\n                            per pid (--seconds S, --rate R, --comms C, --scrape-interval I)\n  \
       bench crash          a crashing Go process's exit time with and without chainprobe, how long it is\n                            held, fatal call → capsule on disk (--goroutines 1000,10000,100000 --rounds R)\n  \
       bench libssl-hold    exec time of curl and /bin/true without chainprobe, with holds of new libssl\n                            files off and on (the page-fault programs' cost), and of a curl through a new\n                            libssl file (held once) (--rounds R --execs N --new-files K)\n  \
       codegen go-offsets   regenerate the per-Go-version offset tables from real toolchains\n"
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = dispatch(&args) {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(args: &[String]) -> Result<()> {
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => {
            eprint!("{}", usage());
            bail!("no command given");
        }
    };
    let rest_after_dashes = |r: &[String]| -> Vec<String> {
        r.iter().skip_while(|a| a.as_str() == "--").cloned().collect()
    };
    match cmd {
        "build" => build_release(),
        "run" => {
            build_release()?;
            require_root("chainprobe loads eBPF programs")?;
            let bin = repo_root().join("target/release/chainprobe");
            let status = Command::new(&bin)
                .arg("run")
                .args(rest_after_dashes(rest))
                .status()
                .with_context(|| format!("starting {}", bin.display()))?;
            if !status.success() {
                bail!("chainprobe exited with {status}");
            }
            Ok(())
        }
        "fixtures" => fixtures(),
        "test" => {
            require_root("the integration tests load eBPF programs")?;
            fixtures()?;
            // The checked-in offset tables are what the generator makes from the real toolchains.
            codegen::run(&["go-offsets".to_string(), "--check".to_string()])?;
            // The workspace's default members (everything but the BPF-target crate), with the
            // system tier of the integration tests.
            cargo(&[&["test", "--features", "probe-daemon/system-tests"][..], &rest_after_dashes(rest).iter().map(String::as_str).collect::<Vec<_>>()].concat())
        }
        "bench" => match rest.first().map(String::as_str) {
            Some("syscalls") => bench_syscalls::run(&rest[1..]),
            Some("goinspect") => bench_goinspect::run(&rest[1..]),
            Some("goruntime") => bench_goruntime::run(&rest[1..]),
            Some("goread") => bench_goread::run(&rest[1..]),
            Some("node") => bench_node::run(&rest[1..]),
            Some("snapshot") => bench_snapshot::run(&rest[1..]),
            Some("tls") => bench_tls::run(&rest[1..]),
            Some("http2") => bench_http2::run(&rest[1..]),
            Some("fleet") => bench_fleet::run(&rest[1..]),
            Some("crash") => bench_crash::run(&rest[1..]),
            Some("libssl-hold") => bench_libssl_hold::run(&rest[1..]),
            _ => bail!("bench what? `cargo xtask bench syscalls`, `goinspect`, `goruntime`, `goread`, `node`, `snapshot`, `tls`, `http2`, `fleet`, `crash` or `libssl-hold`"),
        },
        "codegen" => codegen::run(rest),
        "-h" | "--help" | "help" => {
            print!("{}", usage());
            Ok(())
        }
        other => {
            eprint!("{}", usage());
            bail!("unknown command {other:?}")
        }
    }
}

fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{why}: run as root (e.g. `sudo -E cargo xtask ...`)");
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(repo_root())
        .status()
        .with_context(|| format!("starting {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn build_release() -> Result<()> {
    cargo(&["build", "--release", "-p", "probe-daemon", "--bin", "chainprobe"])
}

/// Installs the test tools and Go toolchains and builds the Go fixture matrix (all idempotent).
fn fixtures() -> Result<()> {
    let root = repo_root();
    for path in [root.join("tests/tools/install.sh"), root.join("tests/fixtures/go/install-go.sh"), root.join("tests/fixtures/go/build.sh")] {
        let mut cmd = Command::new("bash");
        cmd.arg(&path).current_dir(repo_root());
        // The test matrix needs `hello` (inspection), `gorun` (runtime tests), `leaky` (health
        // rules and snapshots) , `tlsprobe` (TLS handshakes) and `heapprof` (heap profiles); the benchmark programs are built
        // by their benchmarks.
        if std::env::var_os("CHAINPROBE_GO_PROGRAMS").is_none() {
            cmd.env("CHAINPROBE_GO_PROGRAMS", "hello gorun leaky tlsprobe heapprof");
        }
        let status = cmd
            .status()
            .with_context(|| format!("running {}", path.display()))?;
        if !status.success() {
            bail!("{} failed ({status})", path.display());
        }
    }
    // `crasher` (crash capsules) and `h2probe` (HTTP/2 control frames) run on amd64 only, as a
    // plain and a stripped build (the stripped one's ground truth is the plain twin): what they
    // test does not depend on how they were linked, and 2 variants × 8 toolchains keep CI short.
    if std::env::var_os("CHAINPROBE_GO_PROGRAMS").is_none() {
        let build = root.join("tests/fixtures/go/build.sh");
        let status = Command::new("bash")
            .arg(&build)
            .current_dir(&root)
            .env("CHAINPROBE_GO_PROGRAMS", "crasher h2probe")
            .env("CHAINPROBE_GO_VARIANTS", "default stripped")
            .status()
            .with_context(|| format!("running {}", build.display()))?;
        if !status.success() {
            bail!("{} (crasher, h2probe) failed ({status})", build.display());
        }
        // `grpcprobe` (gRPC-go, whose HTTP/2 is golang.org/x/net/http2): GOPATH mode, from Debian's
        // Go library packages (the script installs them), with Go 1.19 and 1.27 by default.
        let gopath = root.join("tests/fixtures/go/build-gopath.sh");
        let status = Command::new("bash").arg(&gopath).current_dir(&root).status().with_context(|| format!("running {}", gopath.display()))?;
        if !status.success() {
            bail!("{} failed ({status})", gopath.display());
        }
    }
    Ok(())
}
