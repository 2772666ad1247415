//! `cargo xtask bench goinspect` — time and peak memory of Go binary inspection.
//!
//! Targets (override with `--binary PATH`, repeatable): the Go 1.27.3 `go` command and its
//! `pkg/tool/linux_amd64/compile` (largest Go binaries on the machine; from install-go.sh) and
//! the largest fixture under ${CHAINPROBE_FIXTURES:-target/go-fixtures}.
//! For each target: `--runs N` (default 5) fresh child processes each do one cold inspection
//! (new process, new cache; the file itself is in the page cache) followed by `--cached N`
//! (default 1000) cached lookups through the same `Inspector`. Children are the release build of
//! this xtask (built on demand), so numbers are optimised code. Peak memory is the child's
//! VmHWM after the cold inspection minus its VmHWM before (the bytes inspection added), plus the total.
//!
//! Usage: cargo xtask bench goinspect [--runs N] [--cached N] [--binary PATH]...
//! Child mode (internal): ... bench goinspect --child PATH CACHED_N

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::bench_util::median;
use anyhow::{bail, Context, Result};



fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn child(path: &Path, cached_n: u32) -> Result<()> {
    let before = vm_hwm_kb();
    let insp = goinspect::Inspector::new();
    let t0 = Instant::now();
    let b = insp
        .inspect_path(path)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cold = t0.elapsed();
    let after = vm_hwm_kb();
    let t1 = Instant::now();
    for _ in 0..cached_n {
        let _ = insp
            .inspect_path(path)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let cached = t1.elapsed() / cached_n.max(1);
    println!(
        "{}",
        serde_json::json!({
            "cold_ms": cold.as_secs_f64() * 1e3,
            "cached_us": cached.as_secs_f64() * 1e6,
            "hwm_before_kb": before,
            "hwm_after_kb": after,
            "functions": b.functions.len(),
            "stripped": b.stripped,
            "dwarf": b.has_dwarf,
            "go_version": b.go_version,
        })
    );
    Ok(())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn default_targets() -> Vec<PathBuf> {
    let cache = std::env::var_os("CHAINPROBE_GO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/chainprobe/go")
        });
    let goroot = cache.join("1.27.3/go");
    let mut v = vec![
        goroot.join("bin/go"),
        goroot.join("pkg/tool/linux_amd64/compile"),
    ];
    let fix = std::env::var_os("CHAINPROBE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/go-fixtures"));
    let mut largest: Option<(u64, PathBuf)> = None;
    if let Ok(vers) = std::fs::read_dir(&fix) {
        for ver in vers.filter_map(|e| e.ok()) {
            let Ok(vars) = std::fs::read_dir(ver.path()) else {
                continue;
            };
            for var in vars.filter_map(|e| e.ok()) {
                let Ok(files) = std::fs::read_dir(var.path()) else {
                    continue;
                };
                for f in files.filter_map(|e| e.ok()) {
                    let name = f.file_name().to_string_lossy().into_owned();
                    let Ok(m) = f.metadata() else { continue };
                    if !name.contains('.')
                        && m.is_file()
                        && largest.as_ref().is_none_or(|(s, _)| m.len() > *s)
                    {
                        largest = Some((m.len(), f.path()));
                    }
                }
            }
        }
    }
    v.extend(largest.map(|(_, p)| p));
    v
}

/// Release build of the running xtask, to run children with optimised code.
fn release_exe() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    if me.components().any(|c| c.as_os_str() == "release") {
        return Ok(me);
    }
    eprintln!("building xtask in release mode for the benchmark children ...");
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "xtask"])
        .current_dir(repo_root())
        .status()?;
    if !st.success() {
        bail!("cargo build --release -p xtask failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    Ok(target.join("release/xtask"))
}

/// Entry point: `args` are the words after `bench goinspect`.
pub fn run(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) == Some("--child") {
        let path = args.get(1).context("--child PATH N")?;
        let n: u32 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1000);
        return child(Path::new(path), n);
    }
    let mut runs = 5usize;
    let mut cached = 1000u32;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().context("--runs N")?.parse()?,
            "--cached" => cached = it.next().context("--cached N")?.parse()?,
            "--binary" => targets.push(PathBuf::from(it.next().context("--binary PATH")?)),
            other => bail!("unknown argument {other:?}"),
        }
    }
    if targets.is_empty() {
        targets = default_targets();
    }
    // The words before our own args select this benchmark in the child (wiring-independent).
    let all: Vec<String> = std::env::args().collect();
    let prefix: Vec<String> = all
        .get(1..all.len().saturating_sub(args.len()))
        .unwrap_or(&[])
        .to_vec();
    let exe = release_exe()?;
    println!("| binary | size | stripped | DWARF | cold median (min–max) | cached | peak RSS added / total |");
    println!("|---|---|---|---|---|---|---|");
    for t in &targets {
        if !t.is_file() {
            eprintln!(
                "skipping {} (missing; run tests/fixtures/go/install-go.sh / build.sh)",
                t.display()
            );
            continue;
        }
        let size = std::fs::metadata(t)?.len();
        let mut colds = Vec::new();
        let mut cacheds = Vec::new();
        let mut added = 0u64;
        let mut total = 0u64;
        let mut info = serde_json::Value::Null;
        for _ in 0..runs {
            let out = Command::new(&exe)
                .args(&prefix)
                .arg("--child")
                .arg(t)
                .arg(cached.to_string())
                .output()
                .with_context(|| format!("running {}", exe.display()))?;
            if !out.status.success() {
                bail!(
                    "child failed on {}: {}",
                    t.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).context("child output")?;
            colds.push(v["cold_ms"].as_f64().unwrap_or(f64::NAN));
            cacheds.push(v["cached_us"].as_f64().unwrap_or(f64::NAN));
            let (b, a) = (
                v["hwm_before_kb"].as_u64().unwrap_or(0),
                v["hwm_after_kb"].as_u64().unwrap_or(0),
            );
            added = added.max(a.saturating_sub(b));
            total = total.max(a);
            info = v;
        }
        let min = colds.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = colds.iter().cloned().fold(0.0, f64::max);
        println!(
            "| {} ({}) | {:.1} MB | {} | {} | {:.1} ms ({:.1}–{:.1}) | {:.2} µs | {:.1} MB / {:.1} MB |",
            t.display(),
            info["go_version"].as_str().unwrap_or("?"),
            size as f64 / 1e6,
            info["stripped"],
            info["dwarf"],
            median(&mut colds),
            min,
            max,
            median(&mut cacheds),
            added as f64 / 1024.0,
            total as f64 / 1024.0
        );
    }
    Ok(())
}
