//! Go binary inspection: everything needed to place Go runtime and TLS probes.
//!
//! Given an ELF executable (possibly stripped, PIE or externally linked) this module reports the Go
//! version and build settings (`.go.buildinfo`), the ABI, the entry and every RET instruction of each
//! probe-target function (uprobes at RETs instead of uretprobes, which crash Go), the file offsets
//! uprobes attach to, struct field offsets (DWARF, else generated per-version tables) and the
//! addresses of runtime data symbols (`.symtab`, else the code-reference method).
//!
//! Entry points:
//! - [`inspect_path`] – one-shot inspection of a file.
//! - [`Inspector`] – process-wide cache keyed by (device, inode, mtime, size); [`Inspector::inspect_pid`]
//!   reads a (containerised) process's executable through `/proc/PID/exe`.
//! - [`render_text`] – human-readable report; [`GoBinary`] is `serde::Serialize` for `--json`.
//!
//! Its own crate (no eBPF, no daemon): the daemon, `cargo xtask codegen go-offsets` and the fuzz
//! targets (goinspect/fuzz) all depend on it.

pub mod abi;
pub mod buildinfo;
mod buildversion;
pub mod disasm;
pub mod heap;
mod dwarf;
mod elf;
mod error;
pub mod pclntab;
pub mod tables;
pub mod types;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use abi::{Abi, RegisterAbi};
pub use buildinfo::{BuildInfo, GoVersion};
pub use error::GoInspectError;
pub use tables::CodeRef;

use elf::ElfImage;

/// Probe targets reported for every binary (absent ones are listed in `absent_functions`).
pub const PROBE_TARGETS: &[&str] = &[
    "runtime.gcStart",
    "runtime.gcMarkDone",
    "runtime.gcMarkTermination",
    "runtime.stopTheWorldWithSema",
    "runtime.startTheWorldWithSema",
    "runtime.newproc1",
    "runtime.goexit1",
    "runtime.goexit0",
    "runtime.gdestroy",
    "runtime.casgstatus",
    "crypto/tls.(*Conn).clientHandshake",
    "crypto/tls.(*Conn).serverHandshake",
    "crypto/tls.(*Conn).handshakeContext",
];

/// Crash paths (probe_common::CRASH_FUNCTIONS), probed at their entries only (most never return,
/// so they may have no RET); the linkname'd copies exist from some Go versions on.
pub const CRASH_TARGETS: &[&str] = &[
    "runtime.fatalpanic",
    "runtime.throw",
    "runtime.fatal",
    "sync.throw",
    "sync.fatal",
    "internal/sync.throw",
    "internal/sync.fatal",
    "internal/runtime/maps.fatal",
    "internal/runtime/cgroup.throw",
    "os.Exit",
];

/// HTTP/2 control-frame writers and parsers (probe_common::HTTP2_FUNCTIONS in each of
/// probe_common::HTTP2_PACKAGES): std's bundled copy (Go ≤ 1.26), std's package (Go 1.27+) and
/// golang.org/x/net/http2. A binary has at most the ones it links; absent ones are not news.
pub const HTTP2_TARGETS: &[&str] = &[
    "net/http.(*http2Framer).WriteGoAway",
    "net/http.(*http2Framer).WriteRSTStream",
    "net/http.http2parseGoAwayFrame",
    "net/http.http2parseRSTStreamFrame",
    "net/http/internal/http2.(*Framer).WriteGoAway",
    "net/http/internal/http2.(*Framer).WriteRSTStream",
    "net/http/internal/http2.parseGoAwayFrame",
    "net/http/internal/http2.parseRSTStreamFrame",
    "golang.org/x/net/http2.(*Framer).WriteGoAway",
    "golang.org/x/net/http2.(*Framer).WriteRSTStream",
    "golang.org/x/net/http2.parseGoAwayFrame",
    "golang.org/x/net/http2.parseRSTStreamFrame",
];

/// Runtime data symbols located in every binary.
pub const DATA_SYMBOLS: &[&str] = &[
    "runtime.allgs",
    "runtime.allglen",
    "runtime.sched",
    "runtime.memstats",
    "runtime.gcController",
    "runtime.mheap_",
    // Heap profiles out of process (goinspect heap.rs).
    "runtime.mbuckets",
    "runtime.mProfCycle",
    "runtime.MemProfileRate",
    // The goroutine count as runtime.gcount computes it: each P's free g list.
    "runtime.allp",
];

/// Functions in which the code-reference learner looks for references to each data symbol.
pub const CODE_REF_CANDIDATES: &[(&str, &[&str])] = &[
    (
        "runtime.allgs",
        &["runtime.forEachG", "runtime.allgadd", "runtime.checkdead"],
    ),
    (
        "runtime.allglen",
        &["runtime.allgadd", "runtime.forEachG", "runtime.atomicAllG"],
    ),
    (
        "runtime.sched",
        &[
            "runtime.gcStart",
            "runtime.newproc1",
            "runtime.goexit0",
            "runtime.stopTheWorldWithSema",
        ],
    ),
    (
        "runtime.memstats",
        &[
            "runtime.gcMarkTermination",
            "runtime.gcStart",
            "runtime.readmemstats_m",
        ],
    ),
    (
        "runtime.gcController",
        &[
            "runtime.gcStart",
            "runtime.gcMarkDone",
            "runtime.gcMarkTermination",
        ],
    ),
    (
        "runtime.mheap_",
        &[
            "runtime.gcStart",
            "runtime.gcMarkTermination",
            "runtime.mallocinit",
        ],
    ),
    (
        "runtime.mbuckets",
        &["runtime.stkbucket", "runtime.mProf_FlushLocked", "runtime.memProfileInternal", "runtime.MemProfile"],
    ),
    (
        "runtime.mProfCycle",
        &["runtime.mProf_Malloc", "runtime.mProf_Flush", "runtime.mProf_Free", "runtime.gcMarkTermination"],
    ),
    (
        "runtime.MemProfileRate",
        &["runtime.nextSample", "runtime.profilealloc", "runtime.mallocgc", "runtime.schedinit"],
    ),
    (
        "runtime.allp",
        &["runtime.procresize", "runtime.checkdead", "runtime.retake"],
    ),
];

/// Offsets every supported binary must have (others such as g.parentGoid are optional).
pub const REQUIRED_OFFSETS: &[&str] = &[
    "g.goid",
    "g.atomicstatus",
    "g.waitreason",
    "g.gopc",
    "g.startpc",
    "g.stack",
    "g.m",
    "g.sched",
    "stack.lo",
    "stack.hi",
    "schedt.goidgen",
    "schedt.ngsys",
    "schedt.gFree",
    "mstats.numgc",
    "mstats.pause_ns",
    "mstats.pause_total_ns",
    "gcControllerState.heapLive",
    "gcControllerState.gcPercentHeapGoal",
    "gcControllerState.heapInUse",
    "gcControllerState.heapMarked",
    "gcControllerState.memoryLimit",
];

/// CPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn as_str(&self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

/// How the binary was linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    Internal,
    External,
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// DWARF debug info of this binary.
    Dwarf,
    /// Generated per-version table (binary has no DWARF).
    Table,
    /// ELF `.symtab`.
    Symtab,
    /// Go pclntab (function table).
    Pclntab,
    /// Decoded PC-relative reference inside a known runtime function.
    CodeRef,
}

/// A struct field offset (or `sizeof(...)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FieldOffset {
    pub value: u64,
    pub source: Source,
}

/// A runtime data symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DataSymbol {
    /// Link-time virtual address (add the load bias of the running process).
    pub vaddr: u64,
    pub source: Source,
}

/// A probe-target function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Function {
    pub name: String,
    /// Link-time virtual address of the entry.
    pub entry: u64,
    /// File offset of the entry.
    pub file_offset: u64,
    /// File offset where an entry uprobe attaches: the entry, or the stack check's conditional
    /// jump right after it, which the kernel emulates instead of single-stepping (4× cheaper a hit;
    /// see [`disasm::cheap_entry_offset`]).
    pub entry_probe_file_offset: u64,
    /// File offset of the body's first instruction, after the stack check (see
    /// [`disasm::after_stack_check_offset`]): where a probe fires once per call.
    pub after_stack_check_file_offset: u64,
    /// Size in bytes (symtab size, else distance to the next pclntab entry).
    pub size: u64,
    /// RET instructions, relative to `entry`.
    pub ret_offsets: Vec<u64>,
    /// RET instructions as file offsets (uprobe attach points replacing a uretprobe).
    pub ret_file_offsets: Vec<u64>,
    pub source: Source,
}

/// A probe site inside a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeSite {
    pub function: String,
    /// Relative to the function's entry.
    pub offset: u64,
    /// Where the uprobe attaches.
    pub file_offset: u64,
}

/// The function running each real TLS handshake, and the field its result is stored in.
pub const TLS_HANDSHAKE_CALLER: &str = "crypto/tls.(*Conn).handshakeContext";
const TLS_HANDSHAKE_ERR_FIELD: &str = "crypto/tls.Conn.handshakeErr";

/// pclntab facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PclntabInfo {
    pub vaddr: u64,
    /// "1.16", "1.18" or "1.20"
    pub format: &'static str,
    /// "section", "symtab" or "magic scan"
    pub found_by: &'static str,
    pub nfunc: usize,
    /// moduledata.text (entries are text + entryOff)
    pub text: u64,
    pub moduledata: Option<u64>,
}

/// Everything known about one Go binary.
#[derive(Debug, Clone, Serialize)]
pub struct GoBinary {
    pub path: PathBuf,
    /// As recorded in the binary, e.g. "go1.21.13".
    pub go_version: String,
    pub version: Option<GoVersion>,
    /// Where the version was read: "buildinfo" (`.go.buildinfo`) or "runtime.buildVersion" (the
    /// runtime's own string, for binaries whose build info was removed).
    pub version_from: &'static str,
    pub module_path: Option<String>,
    pub module_version: Option<String>,
    pub build_settings: Vec<(String, String)>,
    pub arch: Arch,
    /// ET_DYN: addresses are link-time; uprobes use file offsets, which need no bias.
    pub pie: bool,
    /// No `.symtab` (e.g. `-ldflags=-s`).
    pub stripped: bool,
    pub has_dwarf: bool,
    pub link_mode: LinkMode,
    pub abi: Abi,
    /// Register mapping of the register ABI (for reading arguments/results in probes).
    pub registers: RegisterAbi,
    pub pclntab: PclntabInfo,
    /// Probe targets that were found, by name.
    pub functions: BTreeMap<String, Function>,
    /// Probe targets not linked into this binary (not an error).
    pub absent_functions: Vec<String>,
    pub offsets: BTreeMap<String, FieldOffset>,
    /// Set when offsets could not be determined (e.g. stripped binary of an unknown Go minor).
    pub offsets_error: Option<String>,
    /// Where the struct offsets and code references come from (DWARF, this minor's table, the
    /// nearest table, or nowhere).
    pub offsets_origin: tables::Origin,
    /// waitReason strings of the table chosen for this binary (its own minor's, or the nearest's:
    /// see `wait_reasons_exact`), indexed by g.waitreason.
    #[serde(skip)]
    pub wait_reasons: &'static [String],
    /// Whether `wait_reasons` are this binary's own release's (not the nearest table's guess).
    pub wait_reasons_exact: bool,
    /// Goroutine statuses the chosen table's release defines (0 = unknown).
    pub g_statuses: usize,
    pub data_symbols: BTreeMap<String, DataSymbol>,
    /// Set when data symbols could not be determined.
    pub data_symbols_error: Option<String>,
    /// amd64: where a handshake's result is read, once per handshake of either role: in
    /// `handshakeContext`, the emulated jump right after its call `c.handshakeFn(ctx)` (see
    /// [`disasm::call_result_probe_offset`]), a quarter of the cost of a RET site. None: the
    /// RETs of clientHandshake / serverHandshake are probed instead (arm64, whose uprobes emulate
    /// RET; no crypto/tls; or code of an unexpected shape, then a warning says why).
    pub tls_result_site: Option<ProbeSite>,
    /// Non-fatal observations (e.g. a code reference that disagrees with .symtab).
    pub warnings: Vec<String>,
}

impl GoBinary {
    pub fn function(&self, name: &str) -> Option<&Function> {
        self.functions.get(name)
    }
    pub fn offset(&self, key: &str) -> Option<u64> {
        self.offsets.get(key).map(|o| o.value)
    }
    pub fn data_symbol(&self, name: &str) -> Option<u64> {
        self.data_symbols.get(name).map(|d| d.vaddr)
    }
    /// Whether probes can be placed (register ABI).
    pub fn supported(&self) -> bool {
        self.abi == Abi::Register
    }
}

/// Metadata of `path`, which must be a regular file.
fn regular_file(path: &Path) -> Result<std::fs::Metadata, GoInspectError> {
    let meta = std::fs::metadata(path).map_err(|source| GoInspectError::Io { path: path.to_path_buf(), source })?;
    if !meta.is_file() {
        return Err(GoInspectError::NotAFile { path: path.to_path_buf() });
    }
    Ok(meta)
}

/// Inspect the file at `path` (no caching).
pub fn inspect_path(path: &Path) -> Result<GoBinary, GoInspectError> {
    regular_file(path)?;
    let data = std::fs::read(path).map_err(|source| GoInspectError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    inspect_bytes(path, &data)
}

/// Inspect an in-memory image; `path` is only used in messages and the report.
pub fn inspect_bytes(path: &Path, data: &[u8]) -> Result<GoBinary, GoInspectError> {
    if data.is_empty() {
        return Err(GoInspectError::Empty {
            path: path.to_path_buf(),
        });
    }
    let img = ElfImage::parse(path, data)?;
    let core = analyze(path, &img)?;
    Ok(core)
}

fn find_buildinfo<'a>(img: &ElfImage<'a>) -> Option<&'a [u8]> {
    if let Some(s) = img.section(".go.buildinfo") {
        if let Some(d) = img.section_data(s) {
            if d.starts_with(buildinfo::MAGIC) {
                return Some(d);
            }
        }
    }
    // Section headers may be gone: scan (the header is 16-byte aligned).
    memchr::memmem::find_iter(img.data, buildinfo::MAGIC)
        .find(|p| p % 16 == 0)
        .and_then(|p| img.data.get(p..))
}

struct Resolved {
    entry: u64,
    size: u64,
    source: Source,
}

/// Resolve function names: `.symtab` first, then pclntab (ABIInternal entry: funcID == 0).
fn resolve_functions(
    img: &ElfImage<'_>,
    tab: &pclntab::PclnTab<'_>,
    text: u64,
    names: &[&str],
) -> HashMap<String, Resolved> {
    let mut out = HashMap::new();
    for (name, s) in img.symbols(names) {
        if s.addr != 0 {
            out.insert(
                name,
                Resolved {
                    entry: s.addr,
                    size: s.size,
                    source: Source::Symtab,
                },
            );
        }
    }
    let missing: HashSet<&str> = names
        .iter()
        .copied()
        .filter(|n| !out.contains_key(*n))
        .collect();
    let need_sizes: HashSet<&str> = out
        .iter()
        .filter(|(_, r)| r.size == 0)
        .map(|(n, _)| n.as_str())
        .collect();
    if missing.is_empty() && need_sizes.is_empty() {
        return out;
    }
    let base = if tab.relative_entries() { text } else { 0 };
    let mut found: HashMap<&str, (u64, u64, u8)> = HashMap::new();
    for f in tab.iter() {
        let name = f.name;
        if !missing.contains(name) && !need_sizes.contains(name) {
            continue;
        }
        let (Some(entry), Some(end)) = (base.checked_add(f.entry), base.checked_add(f.end)) else {
            continue;
        };
        let size = end.saturating_sub(entry);
        match found.get(name) {
            Some((_, _, id)) if *id == 0 => {}
            _ => {
                found.insert(name, (entry, size, f.func_id));
            }
        }
    }
    for (name, (entry, size, _)) in found {
        if let Some(r) = out.get_mut(name) {
            if r.size == 0 && r.entry == entry {
                r.size = size;
            }
        } else {
            out.insert(
                name.to_string(),
                Resolved {
                    entry,
                    size,
                    source: Source::Pclntab,
                },
            );
        }
    }
    out
}

/// Parses the build info at `bytes`. `Ok(None)`: the magic is there but nothing parses and there
/// is no Go pclntab either (the magic appears as plain data in non-Go programs: chainprobe itself
/// holds it as a constant), so this is not a Go binary.
fn parse_buildinfo(path: &Path, img: &ElfImage<'_>, bytes: &[u8], has_pclntab: bool) -> Result<Option<BuildInfo>, GoInspectError> {
    let read_string = |p: u64, _ps: u8| -> Option<String> {
        let ptr = img.read_ptr(p)?;
        let len = img.read_ptr(p.checked_add(8)?)?;
        if len > 1 << 20 {
            return None;
        }
        Some(String::from_utf8_lossy(img.bytes_at(ptr, len)?).into_owned())
    };
    match buildinfo::parse(bytes, &read_string) {
        Ok(bi) => Ok(Some(bi)),
        Err(_) if !has_pclntab => Ok(None),
        Err(e) => Err(GoInspectError::malformed(path, "build info", e.0)),
    }
}

fn pcln_format(v: pclntab::PclnVersion) -> &'static str {
    match v {
        pclntab::PclnVersion::V116 => "1.16",
        pclntab::PclnVersion::V118 => "1.18",
        pclntab::PclnVersion::V120 => "1.20",
    }
}

fn analyze(path: &Path, img: &ElfImage<'_>) -> Result<GoBinary, GoInspectError> {
    let bi_bytes = find_buildinfo(img);
    let located = pclntab::locate(img);
    let mut warnings = Vec::new();
    let (bi, version_from) = match (bi_bytes, &located) {
        (Some(b), _) => match parse_buildinfo(path, img, b, located.is_ok())? {
            Some(bi) => (bi, "buildinfo"),
            None => return Err(GoInspectError::NotGo { path: path.to_path_buf() }),
        },
        (None, Err(_)) => {
            return Err(GoInspectError::NotGo {
                path: path.to_path_buf(),
            })
        }
        (None, Ok(l)) => {
            let unsupported = |version: String, reason: String| GoInspectError::UnsupportedGoVersion {
                path: path.to_path_buf(),
                version,
                arch: img.arch.as_str().into(),
                reason,
            };
            let v = buildversion::find(img).map_err(|e| {
                unsupported("unknown".into(), format!("Go pclntab present but no build info, and the runtime's version string was not found either ({e})"))
            })?;
            let format = pcln_format(l.tab.version);
            let parsed = GoVersion::parse(&v);
            let expect = parsed.and_then(|p| tables::pclntab_format_of(p.major, p.minor));
            if expect != Some(format) {
                return Err(unsupported(v.clone(), format!("no build info; runtime.buildVersion says {v}, but the pclntab has the Go {format} format: the version cannot be trusted")));
            }
            warnings.push(format!("no build info (.go.buildinfo removed?): Go version {v} read from runtime.buildVersion, consistent with the pclntab format {format}"));
            (BuildInfo { go_version: v, ..BuildInfo::default() }, "runtime.buildVersion")
        }
    };
    let version = GoVersion::parse(&bi.go_version);
    let abi = match version {
        Some(v) => abi::detect_abi(img.arch, v),
        None => Abi::Register, // devel toolchains are new
    };
    let located = located.map_err(|e| GoInspectError::malformed(path, "pclntab", e))?;
    let tab = &located.tab;
    let pcln_format = pcln_format(tab.version);
    let md = pclntab::find_moduledata(img, located.vaddr, tab);
    let text = match (md, tab.relative_entries()) {
        (Some(m), _) => m.text,
        (None, false) => 0,
        (None, true) => {
            let sym = img
                .symbols(&["runtime.text"])
                .get("runtime.text")
                .map(|s| s.addr);
            match sym.or(if tab.text_start != 0 {
                Some(tab.text_start)
            } else {
                None
            }) {
                Some(t) => t,
                None => {
                    return Err(GoInspectError::malformed(
                        path,
                        "module data",
                        "firstmoduledata (text base) not found in writable segments",
                    ))
                }
            }
        }
    };

    // Offsets and code-reference table: this minor's, else the nearest one of the same pclntab
    // format (validated against the live process before the daemon reads with it).
    let choice = match version {
        None => Err(tables::Origin::None { reason: format!("unparseable Go version {:?}", bi.go_version) }),
        Some(v) => tables::choose(v, img.arch, pcln_format),
    };
    let (table, table_origin): (Result<&'static tables::VersionTable, String>, tables::Origin) = match choice {
        Ok(c) => (Ok(c.table), c.origin),
        Err(o) => (Err(match &o { tables::Origin::None { reason } => reason.clone(), other => other.describe() }), o),
    };

    let mut wanted: Vec<&str> = PROBE_TARGETS.iter().chain(CRASH_TARGETS).chain(HTTP2_TARGETS).copied().collect();
    if let Ok(t) = &table {
        for r in t.code_refs.values() {
            if !wanted.contains(&r.function.as_str()) {
                wanted.push(r.function.as_str());
            }
        }
    }
    let resolved = resolve_functions(img, tab, text, &wanted);

    let mut functions = BTreeMap::new();
    let mut absent = Vec::new();
    for &name in PROBE_TARGETS.iter().chain(CRASH_TARGETS).chain(HTTP2_TARGETS) {
        let Some(r) = resolved.get(name) else {
            // The crash family's linkname'd copies are missing from most versions, and most
            // programs link no HTTP/2: not news.
            if !CRASH_TARGETS.contains(&name) && !HTTP2_TARGETS.contains(&name) {
                absent.push(name.to_string());
            }
            continue;
        };
        let code = img.bytes_at(r.entry, r.size).ok_or_else(|| {
            GoInspectError::malformed(
                path,
                "function table",
                format!("{name} at {:#x}+{} is outside the file", r.entry, r.size),
            )
        })?;
        let file_offset = img.vaddr_to_offset(r.entry).ok_or_else(|| {
            GoInspectError::malformed(
                path,
                "function table",
                format!("{name} entry {:#x} not in a PT_LOAD segment", r.entry),
            )
        })?;
        let rets = disasm::ret_offsets(img.arch, code, r.entry);
        let cheap = disasm::cheap_entry_offset(img.arch, code, r.entry);
        let body = disasm::after_stack_check_offset(img.arch, code, r.entry);
        functions.insert(
            name.to_string(),
            Function {
                name: name.to_string(),
                entry: r.entry,
                file_offset,
                entry_probe_file_offset: file_offset.saturating_add(cheap),
                after_stack_check_file_offset: file_offset.saturating_add(body),
                size: r.size,
                ret_file_offsets: rets
                    .iter()
                    .map(|o| file_offset.saturating_add(*o))
                    .collect(),
                ret_offsets: rets,
                source: r.source,
            },
        );
    }
    let has_tls = functions.keys().any(|k| k.starts_with("crypto/tls."));

    // Struct offsets.
    let mut offsets = BTreeMap::new();
    let mut offsets_error = None;
    if img.has_dwarf {
        match dwarf::struct_offsets(img) {
            Ok(m) => {
                for (k, v) in m {
                    offsets.insert(
                        k,
                        FieldOffset {
                            value: v,
                            source: Source::Dwarf,
                        },
                    );
                }
            }
            Err(e) => warnings.push(format!("DWARF unreadable ({e}); using tables")),
        }
    }
    if offsets.is_empty() {
        match &table {
            Ok(t) => {
                for (k, v) in &t.offsets {
                    if k.starts_with("crypto/tls.") && !has_tls {
                        continue;
                    }
                    offsets.insert(
                        k.clone(),
                        FieldOffset {
                            value: *v,
                            source: Source::Table,
                        },
                    );
                }
            }
            Err(e) => offsets_error = Some(e.clone()),
        }
    }
    let wait_reasons_exact = matches!(table_origin, tables::Origin::Table { .. });
    let wait_reasons: &'static [String] = table.as_ref().map(|t| t.wait_reasons.as_slice()).unwrap_or(&[]);
    let dwarf_offsets = offsets.values().any(|o| o.source == Source::Dwarf);
    let offsets_origin = if dwarf_offsets { tables::Origin::Dwarf } else { table_origin };
    if offsets_error.is_none() {
        let missing: Vec<&str> = REQUIRED_OFFSETS
            .iter()
            .copied()
            .filter(|k| !offsets.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            warnings.push(format!("missing struct offsets: {}", missing.join(", ")));
        }
    }

    // Data symbols.
    let mut data_symbols = BTreeMap::new();
    let mut data_symbols_error = None;
    let symtab = img.symbols(DATA_SYMBOLS);
    for (name, s) in &symtab {
        data_symbols.insert(
            name.clone(),
            DataSymbol {
                vaddr: s.addr,
                source: Source::Symtab,
            },
        );
    }
    match &table {
        Ok(t) => {
            for &name in DATA_SYMBOLS {
                let Some(cr) = t.code_refs.get(name) else {
                    continue;
                };
                let found = apply_code_ref(img, &resolved, cr);
                match (found, data_symbols.get(name)) {
                    (Ok(addr), Some(d)) if d.vaddr != addr => warnings.push(format!(
                        "code reference for {name} gives {addr:#x} but .symtab says {:#x}; using .symtab",
                        d.vaddr
                    )),
                    (Ok(_), Some(_)) => {}
                    (Ok(addr), None) => {
                        data_symbols.insert(name.to_string(), DataSymbol { vaddr: addr, source: Source::CodeRef });
                    }
                    (Err(e), Some(_)) => warnings.push(format!("code reference for {name}: {e}")),
                    (Err(e), None) => warnings.push(format!("{name} not found: {e}")),
                }
            }
        }
        Err(e) if data_symbols.len() < DATA_SYMBOLS.len() => data_symbols_error = Some(e.clone()),
        Err(_) => {}
    }

    let tls_result_site = match (functions.get(TLS_HANDSHAKE_CALLER), offsets.get(TLS_HANDSHAKE_ERR_FIELD)) {
        (Some(f), Some(field)) if img.arch == Arch::Amd64 => {
            let code = img.bytes_at(f.entry, f.size).unwrap_or_default();
            match disasm::call_result_probe_offset(img.arch, code, f.entry, field.value) {
                Ok(offset) => Some(ProbeSite { function: f.name.clone(), offset, file_offset: f.file_offset.saturating_add(offset) }),
                Err(why) => {
                    warnings.push(format!("{TLS_HANDSHAKE_CALLER}: {why}; TLS handshake results are read at the RETs of clientHandshake/serverHandshake instead (a costlier probe)"));
                    None
                }
            }
        }
        _ => None,
    };

    let link_mode = link_mode(img, &bi);
    Ok(GoBinary {
        path: path.to_path_buf(),
        go_version: bi.go_version.clone(),
        version,
        version_from,
        module_path: bi.path.clone().or_else(|| bi.main_module.clone()),
        module_version: bi.main_version.clone(),
        build_settings: bi.settings.clone(),
        arch: img.arch,
        pie: img.pie,
        stripped: !img.has_symtab,
        has_dwarf: img.has_dwarf,
        link_mode,
        abi,
        registers: abi::register_abi(img.arch),
        pclntab: PclntabInfo {
            vaddr: located.vaddr,
            format: pcln_format,
            found_by: located.how,
            nfunc: tab.nfunc,
            text,
            moduledata: md.map(|m| m.vaddr),
        },
        functions,
        absent_functions: absent,
        offsets,
        offsets_error,
        offsets_origin,
        wait_reasons,
        wait_reasons_exact,
        g_statuses: table.as_ref().map(|t| t.g_statuses.len()).unwrap_or(0),
        data_symbols,
        data_symbols_error,
        tls_result_site,
        warnings,
    })
}

fn link_mode(img: &ElfImage<'_>, bi: &BuildInfo) -> LinkMode {
    if let Some(ld) = bi.setting("-ldflags") {
        if ld.contains("-linkmode=external") || ld.contains("-linkmode external") {
            return LinkMode::External;
        }
        if ld.contains("-linkmode=internal") || ld.contains("-linkmode internal") {
            return LinkMode::Internal;
        }
    }
    // External linkers (gcc/clang + ld) leave a .comment section; Go's internal linker does not.
    if img.has_comment_section()
        || (bi.setting("CGO_ENABLED") == Some("1")
            && img.has_interp
            && img.section(".gopclntab").is_none()
            && img.section(".data.rel.ro.gopclntab").is_none())
    {
        LinkMode::External
    } else {
        LinkMode::Internal
    }
}

fn apply_code_ref(
    img: &ElfImage<'_>,
    resolved: &HashMap<String, Resolved>,
    cr: &CodeRef,
) -> Result<u64, String> {
    let f = resolved
        .get(&cr.function)
        .ok_or_else(|| format!("function {} not found", cr.function))?;
    let code = img
        .bytes_at(f.entry, f.size)
        .ok_or_else(|| format!("{} is outside the file", cr.function))?;
    let refs = disasm::pcrel_refs(img.arch, code, f.entry);
    let target = refs.get(cr.ordinal).ok_or_else(|| {
        format!(
            "{} has {} PC-relative references, table expects #{}",
            cr.function,
            refs.len(),
            cr.ordinal
        )
    })?;
    let addr = target.wrapping_sub(cr.addend);
    // Must land in a writable segment (data/bss).
    let ok = img.segments.iter().any(|s| {
        s.flags & object::elf::PF_W != 0
            && addr >= s.vaddr
            && addr < s.vaddr.saturating_add(s.memsz)
    });
    if !ok {
        return Err(format!(
            "reference #{} in {} points at {addr:#x}, outside the data segments",
            cr.ordinal, cr.function
        ));
    }
    Ok(addr)
}

/// What `cargo xtask codegen go-offsets` learns from one DWARF+symtab build.
pub fn learn_table(path: &Path) -> Result<tables::VersionTable, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let img = ElfImage::parse(path, &data).map_err(|e| e.to_string())?;
    if !img.has_dwarf || !img.has_symtab {
        return Err(format!(
            "{}: need a build with DWARF and .symtab",
            path.display()
        ));
    }
    let bin = inspect_bytes(path, &data).map_err(|e| e.to_string())?;
    let offsets = dwarf::struct_offsets(&img)?;
    let syms = img.symbols(DATA_SYMBOLS);
    let funcs: Vec<&str> = CODE_REF_CANDIDATES
        .iter()
        .flat_map(|(_, f)| f.iter().copied())
        .collect();
    let fsyms = img.symbols(&funcs);
    let mut code_refs = BTreeMap::new();
    for (sym, cands) in CODE_REF_CANDIDATES {
        let s = syms
            .get(*sym)
            .ok_or_else(|| format!("{sym} not in .symtab"))?;
        let mut best: Option<CodeRef> = None;
        'outer: for f in *cands {
            let Some(fi) = fsyms.get(*f) else { continue };
            let Some(code) = img.bytes_at(fi.addr, fi.size) else {
                continue;
            };
            for (i, t) in disasm::pcrel_refs(img.arch, code, fi.addr)
                .iter()
                .enumerate()
            {
                let size = s.size.max(1);
                if *t >= s.addr && *t < s.addr.saturating_add(size) {
                    let cr = CodeRef {
                        function: f.to_string(),
                        ordinal: i,
                        addend: t - s.addr,
                    };
                    if cr.addend == 0 {
                        best = Some(cr);
                        break 'outer;
                    }
                    if best.is_none() {
                        best = Some(cr);
                    }
                }
            }
        }
        let cr = best.ok_or_else(|| format!("no PC-relative reference to {sym} in {cands:?}"))?;
        code_refs.insert(sym.to_string(), cr);
    }
    Ok(tables::VersionTable {
        wait_reasons: Vec::new(),
        g_statuses: Vec::new(),
        verified: vec![bin.go_version.clone()],
        go_version: bin.go_version,
        from_patch: 0,
        offsets,
        code_refs,
    })
}

/// Cache key: identity of the file's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    size: u64,
}

/// Process-wide inspector with a cache keyed by (device, inode, mtime, size).
#[derive(Debug, Default)]
pub struct Inspector {
    cache: Mutex<HashMap<FileKey, Arc<GoBinary>>>,
}

impl Inspector {
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide instance.
    pub fn global() -> &'static Inspector {
        static G: std::sync::OnceLock<Inspector> = std::sync::OnceLock::new();
        G.get_or_init(Inspector::new)
    }

    /// Inspect `path`, reusing a cached result for an unchanged file (same dev/inode/mtime/size).
    pub fn inspect_path(&self, path: &Path) -> Result<Arc<GoBinary>, GoInspectError> {
        let meta = regular_file(path)?;
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            size: meta.len(),
        };
        if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(hit);
        }
        let bin = Arc::new(inspect_path(path)?);
        if let Ok(mut c) = self.cache.lock() {
            c.insert(key, bin.clone());
        }
        Ok(bin)
    }

    /// Inspect the executable of process `pid` through `/proc/PID/exe` (works for containers: the
    /// link opens the file in the process's own mount namespace).
    pub fn inspect_pid(&self, pid: u32) -> Result<Arc<GoBinary>, GoInspectError> {
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        match std::fs::metadata(&exe) {
            Ok(_) => self.inspect_path(&exe),
            Err(e) => {
                // Fall back to /proc/PID/root/<exe path> (e.g. when exe was replaced).
                let target = std::fs::read_link(&exe).map_err(|_| GoInspectError::Process {
                    pid,
                    reason: format!("cannot open /proc/{pid}/exe: {e}"),
                })?;
                let rel = target.strip_prefix("/").unwrap_or(&target);
                let alt = PathBuf::from(format!("/proc/{pid}/root")).join(rel);
                self.inspect_path(&alt)
                    .map_err(|e2| GoInspectError::Process {
                        pid,
                        reason: format!(
                            "cannot open /proc/{pid}/exe ({e}) nor {} ({e2})",
                            alt.display()
                        ),
                    })
            }
        }
    }

    /// Number of cached binaries.
    pub fn cached(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    pub fn clear(&self) {
        if let Ok(mut c) = self.cache.lock() {
            c.clear();
        }
    }
}

/// Inspect the executable of a running process (global cache).
pub fn inspect_pid(pid: u32) -> Result<Arc<GoBinary>, GoInspectError> {
    Inspector::global().inspect_pid(pid)
}

fn src(s: Source) -> &'static str {
    match s {
        Source::Dwarf => "dwarf",
        Source::Table => "table",
        Source::Symtab => "symtab",
        Source::Pclntab => "pclntab",
        Source::CodeRef => "coderef",
    }
}

/// Human-readable report.
pub fn render_text(b: &GoBinary) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "binary:      {}", b.path.display());
    let from = if b.version_from == "buildinfo" { String::new() } else { format!(" (read from {}: no build info)", b.version_from) };
    let _ = writeln!(s, "go version:  {}{from}", b.go_version);
    let _ = writeln!(
        s,
        "module:      {} {}",
        b.module_path.as_deref().unwrap_or("-"),
        b.module_version.as_deref().unwrap_or("")
    );
    let _ = writeln!(
        s,
        "arch:        {}  pie: {}  stripped: {}  dwarf: {}  link: {:?}",
        b.arch.as_str(),
        b.pie,
        b.stripped,
        b.has_dwarf,
        b.link_mode
    );
    let _ = writeln!(
        s,
        "abi:         {:?}{}  args: {}",
        b.abi,
        if b.supported() {
            ""
        } else {
            " (UNSUPPORTED for probing: Go too old)"
        },
        b.registers.int_args.join(",")
    );
    let _ = writeln!(
        s,
        "pclntab:     {:#x} (format {}, found by {}, {} funcs, text {:#x})",
        b.pclntab.vaddr, b.pclntab.format, b.pclntab.found_by, b.pclntab.nfunc, b.pclntab.text
    );
    if !b.build_settings.is_empty() {
        let _ = writeln!(s, "build:");
        for (k, v) in &b.build_settings {
            let _ = writeln!(s, "  {k}={v}");
        }
    }
    let _ = writeln!(s, "functions:");
    for f in b.functions.values() {
        let rets: Vec<String> = f.ret_offsets.iter().map(|o| format!("+{o:#x}")).collect();
        let _ = writeln!(
            s,
            "  {:<42} entry {:#x} file_off {:#x} size {:<5} rets [{}] ({})",
            f.name,
            f.entry,
            f.file_offset,
            f.size,
            rets.join(" "),
            src(f.source)
        );
    }
    for a in &b.absent_functions {
        let _ = writeln!(s, "  {a:<42} absent");
    }
    if let Some(site) = &b.tls_result_site {
        let _ = writeln!(s, "tls result:  {}+{:#x} file_off {:#x} (after the call of c.handshakeFn)", site.function, site.offset, site.file_offset);
    }
    let _ = writeln!(s, "data symbols:");
    for (k, d) in &b.data_symbols {
        let _ = writeln!(s, "  {k:<24} {:#x} ({})", d.vaddr, src(d.source));
    }
    if let Some(e) = &b.data_symbols_error {
        let _ = writeln!(s, "  error: {e}");
    }
    let _ = writeln!(s, "offsets from: {}", b.offsets_origin.describe());
    let _ = writeln!(s, "struct offsets:");
    for (k, o) in &b.offsets {
        let _ = writeln!(s, "  {k:<40} {:<6} ({})", o.value, src(o.source));
    }
    if let Some(e) = &b.offsets_error {
        let _ = writeln!(s, "  error: {e}");
    }
    for w in &b.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_elf_and_empty() {
        let p = Path::new("x");
        assert!(matches!(
            inspect_bytes(p, b""),
            Err(GoInspectError::Empty { .. })
        ));
        assert!(matches!(
            inspect_bytes(p, b"#!/bin/sh\necho hi\n"),
            Err(GoInspectError::NotElf { .. })
        ));
        assert!(matches!(
            inspect_bytes(p, b"\x7fELF\x02\x01\x01"),
            Err(GoInspectError::NotElf { .. })
        ));
        assert!(matches!(
            inspect_bytes(p, b"\x7fELF\x01\x01\x01\0"),
            Err(GoInspectError::UnsupportedElf { .. })
        ));
    }

    #[test]
    fn own_test_binary_is_not_go() {
        let exe = std::env::current_exe().expect("exe");
        match inspect_path(&exe) {
            Err(GoInspectError::NotGo { .. }) => {}
            other => panic!("expected NotGo, got {other:?}"),
        }
    }

    #[test]
    fn directory_is_rejected() {
        let e = inspect_path(Path::new("/")).expect_err("dir");
        assert!(matches!(e, GoInspectError::NotAFile { .. }), "{e}");
        assert!(e.to_string().contains("not a regular file"));
    }
}

/// Every function of a Go binary (from its pclntab), to name code addresses such as a goroutine's
/// creation PC.
#[derive(Debug, Clone, Default)]
pub struct FuncTable {
    /// (start, end, name), sorted by start; link-time addresses.
    funcs: Vec<(u64, u64, String)>,
}

impl FuncTable {
    /// Reads the function table of the binary at `path`.
    pub fn load(path: &Path) -> Result<FuncTable, GoInspectError> {
        let data = std::fs::read(path).map_err(|source| GoInspectError::Io { path: path.to_path_buf(), source })?;
        let bin = inspect_bytes(path, &data)?;
        let img = ElfImage::parse(path, &data)?;
        let located = pclntab::locate(&img).map_err(|e| GoInspectError::malformed(path, "pclntab", e))?;
        let tab = &located.tab;
        let base = if tab.relative_entries() { bin.pclntab.text } else { 0 };
        let mut funcs: Vec<(u64, u64, String)> = tab
            .iter()
            .map(|f| (base.wrapping_add(f.entry), base.wrapping_add(f.end), f.name.to_string()))
            .collect();
        funcs.sort_by_key(|f| f.0);
        Ok(FuncTable { funcs })
    }

    /// The function containing link-time address `pc`.
    pub fn lookup(&self, pc: u64) -> Option<&str> {
        self.lookup_entry(pc).map(|(_, name)| name)
    }

    /// The entry (link-time) and name of the function containing link-time address `pc`.
    pub fn lookup_entry(&self, pc: u64) -> Option<(u64, &str)> {
        let i = self.funcs.partition_point(|f| f.0 <= pc);
        let (start, end, name) = self.funcs.get(i.checked_sub(1)?)?;
        (pc >= *start && pc < *end).then_some((*start, name.as_str()))
    }

    pub fn len(&self) -> usize {
        self.funcs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.funcs.is_empty()
    }
}
