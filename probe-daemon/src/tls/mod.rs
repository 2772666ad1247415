//! TLS handshake health: Go crypto/tls and OpenSSL.
//!
//! - Go: [`GoTls`] attaches the handshake uprobes to each Go binary (the entry of
//!   `(*Conn).clientHandshake` / `serverHandshake`; the result where `handshakeContext` gets it
//!   back from `c.handshakeFn`, or every RET of both functions; never uretprobes) and writes each
//!   tracked process's `tls.Conn` offsets to the kernel (`GO_TLS_CONFIG`, per pid).
//! - OpenSSL: [`OpenSsl`] finds libssl (`libssl.so.3`, `libssl.so.1.1`, …) in each process's
//!   mappings (through `/proc/PID/map_files`, so container paths and replaced files work) and
//!   attaches once per library file: uprobes + uretprobes on SSL_do_handshake / SSL_connect /
//!   SSL_accept, uprobes on SSL_set_connect_state / SSL_set_accept_state (role) and SSL_free (ends
//!   failed handshakes), and uprobes on its PLT stubs of libcrypto's error functions
//!   (`ERR_set_error` / `ERR_vset_error`, 1.1.1: `ERR_put_error`) for the failure reason; [`libssl`] learns where that build keeps version,
//!   ALPN and role. The system's own libssl files (the usual library directories) are attached
//!   at start, before the daemon is ready, so that the first handshakes of the first process
//!   using one are seen (the exec of a process is noticed only after its loader mapped libssl).
//!   Any other libssl file (a container's, an application's own copy): the kernel stops the
//!   first process that maps it (`LIBSSL_FILES` does not know it), [`OpenSsl::held`] probes it
//!   and [`hold::Holds`] resumes the process, within a bound.
//! - [`TlsState`] is the per-process outcome (metrics and the health engine read it).
pub mod hold;
pub mod libssl;
pub mod state;

use crate::sync::lock;
use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId},
};
use probe_common::{
    LibsslFileKey, LibsslHeldEvent, LIBSSL_FILE_PROBED,
    GoTlsConfig, ProgId, SslLibConfig, GO_TLS_FUNCTIONS, OFFSET_NONE, SSL_COOKIE_SET_STATE, SSL_HANDSHAKE_FUNCTIONS,
    SSL_LIB_ERRORS, TLS_ROLE_CLIENT, TLS_ROLE_SERVER, TLS_ROLE_UNKNOWN,
};
use serde::Serialize;
use tracing::{debug, info, warn};

pub use state::{TlsKey, TlsState, TlsTotals};

use goinspect::{GoBinary, TLS_HANDSHAKE_CALLER};
use crate::attach::{attach_sites, ProbeState, Probes};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlsError {
    #[error("the binary's crypto/tls offsets are unknown ({0}); its handshakes cannot be read")]
    MissingOffset(String),
    #[error("writing the TLS settings of process {pid} to the kernel failed: {message}")]
    Map { pid: u32, message: String },
}

/// The per-process kernel settings for one Go binary (offsets of its Go version).
pub fn go_tls_config(bin: &GoBinary) -> Result<GoTlsConfig, TlsError> {
    let need = |k: &str| -> Result<u32, TlsError> {
        bin.offset(k).map(|v| v as u32).ok_or_else(|| TlsError::MissingOffset(k.to_string()))
    };
    let opt = |k: &str| bin.offset(k).map(|v| v as u32);
    // Alerts: c.in.err / c.out.err hold *net.OpError{Op, Err: alert}. Without those offsets the
    // handshakes are still counted; failures are then reason="other".
    let half_err = opt("crypto/tls.halfConn.err");
    let (op, err) = (opt("net.OpError.Op"), opt("net.OpError.Err"));
    let alerts = half_err.is_some() && op.is_some() && err.is_some();
    let field = |k: &str| match (alerts, opt(k), half_err) {
        (true, Some(base), Some(e)) => base + e,
        _ => OFFSET_NONE,
    };
    // With the nearest table (a Go version without its own), Conn's fields are a guess: Conn's
    // layout moved in four of the last six releases, and no invariant of the live process can
    // check it before the first handshake is counted. Handshakes are then counted with their role
    // (isClient has been Conn's first field after the net.Conn since Go 1.0), result and duration;
    // version, ALPN and the failure reason are "unknown"/"other", never a wrong value.
    let guess = matches!(bin.offsets_origin, goinspect::tables::Origin::Nearest { .. });
    let conn = |k: &str| if guess { Ok(OFFSET_NONE) } else { need(k) };
    Ok(GoTlsConfig {
        conn_is_client: need("crypto/tls.Conn.isClient")?,
        conn_vers: conn("crypto/tls.Conn.vers")?,
        conn_cipher_suite: conn("crypto/tls.Conn.cipherSuite")?,
        conn_client_protocol: conn("crypto/tls.Conn.clientProtocol")?,
        conn_in_err: if guess { OFFSET_NONE } else { field("crypto/tls.Conn.in") },
        conn_out_err: if guess { OFFSET_NONE } else { field("crypto/tls.Conn.out") },
        op_error_op: op.unwrap_or(OFFSET_NONE),
        op_error_err: err.unwrap_or(OFFSET_NONE),
        permanent_error_err: opt("crypto/tls.permanentError.err").unwrap_or(OFFSET_NONE),
        _pad: 0,
    })
}

/// The Go side: the kernel's per-process settings map and the probes of each binary.
pub struct GoTls {
    config: Mutex<BpfHashMap<MapData, u32, GoTlsConfig>>,
    result_site: GoResultSite,
}

/// Where a Go handshake's result is read (`[tls] go_result_site`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GoResultSite {
    /// goinspect's site in `handshakeContext` where there is one (amd64), else every RET.
    Auto,
    /// Every RET of clientHandshake and serverHandshake.
    Rets,
}

impl GoTls {
    pub fn new(config: BpfHashMap<MapData, u32, GoTlsConfig>, result_site: GoResultSite) -> Self {
        GoTls { config: Mutex::new(config), result_site }
    }

    /// Reports the handshakes of `pid` from now on (its binary's probes must be attached).
    pub fn enable(&self, pid: u32, bin: &GoBinary) -> Result<(), TlsError> {
        let cfg = go_tls_config(bin)?;
        lock(&self.config)
            .insert(pid, cfg, 0)
            .map_err(|e| TlsError::Map { pid, message: e.to_string() })
    }

    pub fn disable(&self, pid: u32) {
        let _ = lock(&self.config).remove(&pid);
    }

    /// Attaches the handshake probes to the binary run by `pid`, for every process of that file:
    /// the entry of clientHandshake and serverHandshake, and where the result is read — on amd64
    /// the one site in `handshakeContext` right after its call of `c.handshakeFn` (an emulated
    /// jump: ~1.2 µs a hit instead of ~4.7 µs for a single-stepped RET), else every RET of both.
    /// `[tls] go_result_site = "rets"` forces the RETs.
    pub fn attach_binary(&self, probes: &mut Probes, pid: u32, bin: &GoBinary) -> (Vec<(ProgId, UProbeLinkId)>, Vec<ProbeState>) {
        let present: Vec<(&'static str, &goinspect::Function)> =
            GO_TLS_FUNCTIONS.iter().filter_map(|&name| bin.function(name).map(|f| (name, f))).collect();
        // No crypto/tls in this binary: nothing to probe, not an error.
        let mut sites: Vec<(ProgId, &'static str, Vec<u64>)> =
            present.iter().map(|(name, f)| (ProgId::GoTlsEnter, *name, vec![f.entry_probe_file_offset])).collect();
        let site = bin.tls_result_site.as_ref().filter(|_| self.result_site == GoResultSite::Auto);
        match (site, present.is_empty()) {
            (_, true) => {}
            (Some(site), false) => sites.push((ProgId::GoTlsReturn, TLS_HANDSHAKE_CALLER, vec![site.file_offset])),
            (None, false) => sites.extend(present.iter().map(|(name, f)| (ProgId::GoTlsReturn, *name, f.ret_file_offsets.clone()))),
        }
        let mut links = Vec::new();
        let states = sites.into_iter().map(|(prog, function, offsets)| attach_sites(probes, pid, prog, function, offsets, &mut links)).collect();
        (links, states)
    }
}

/// One libssl file with probes attached.
#[derive(Debug, Clone, Serialize)]
pub struct SslLibrary {
    /// Path inside the process's mount namespace (as /proc/PID/maps shows it).
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    /// Live processes seen mapping it (the probes fire for every process using the file).
    pub pids: usize,
    pub probes: Vec<ProbeState>,
    /// Which fields of an SSL this build lets chainprobe read (learned from its accessors).
    pub reads: SslReads,
    /// The file was probed while the kernel held its first process (a libssl outside the system
    /// directories): that process and how long it waited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_process_held: Option<FirstHeld>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FirstHeld {
    pub pid: u32,
    pub held_seconds: f64,
}

/// What is read from this libssl's SSL objects, and why not where not.
#[derive(Debug, Clone, Serialize)]
pub struct SslReads {
    pub version: bool,
    pub alpn: bool,
    pub role: bool,
    /// Failure reasons (from the errors libssl raises).
    pub reasons: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

struct AttachedLib {
    view: SslLibrary,
    pid_set: HashSet<u32>,
}

/// The OpenSSL side: libraries found in process mappings, attached once per file and kept until
/// the daemon stops. (Detaching when the last process seen using a file exits would lose the
/// first handshakes of the next short-lived process — a curl — whose exec is noticed only after
/// the dynamic loader mapped libssl and the handshake may already be over.) Processes whose
/// mappings had no libssl yet at exec are looked at once more shortly after.
pub struct OpenSsl {
    probes: Arc<Mutex<Probes>>,
    /// SSL_LIBS: offsets per library, by attach cookie.
    configs: BpfHashMap<MapData, u32, SslLibConfig>,
    next_index: u32,
    libs: HashMap<(u64, u64), AttachedLib>,
    by_pid: HashMap<u32, (u64, u64)>,
    recheck: std::collections::VecDeque<(std::time::Instant, u32)>,
    /// LIBSSL_FILES (the files the kernel does not hold processes for) and the hold keeper:
    /// None when `[tls] hold_new_libssl` is off.
    holds: Option<(BpfHashMap<MapData, LibsslFileKey, u32>, Arc<hold::Holds>)>,
}

/// A file's (device, inode) as the kernel's `super_block.s_dev` and `i_ino` name it (stat's
/// st_dev encodes the device differently).
pub fn kernel_file_key(st_dev: u64, ino: u64) -> LibsslFileKey {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    LibsslFileKey { dev: (major << 20) | (minor & 0xf_ffff), _pad: 0, ino }
}

/// Delay before a process without libssl at exec is looked at again, and how many wait at once.
const RECHECK_AFTER: std::time::Duration = std::time::Duration::from_millis(200);
const MAX_RECHECK: usize = 4096;

/// Functions probed in libssl: (name, program, cookie).
const SSL_SITES: &[(&str, ProgId, u64)] = &[
    (SSL_HANDSHAKE_FUNCTIONS[0], ProgId::SslHandshakeEnter, TLS_ROLE_UNKNOWN as u64),
    (SSL_HANDSHAKE_FUNCTIONS[0], ProgId::SslHandshakeReturn, 0),
    (SSL_HANDSHAKE_FUNCTIONS[1], ProgId::SslHandshakeEnter, TLS_ROLE_CLIENT as u64),
    (SSL_HANDSHAKE_FUNCTIONS[1], ProgId::SslHandshakeReturn, 0),
    (SSL_HANDSHAKE_FUNCTIONS[2], ProgId::SslHandshakeEnter, TLS_ROLE_SERVER as u64),
    (SSL_HANDSHAKE_FUNCTIONS[2], ProgId::SslHandshakeReturn, 0),
    ("SSL_set_connect_state", ProgId::SslHandshakeEnter, SSL_COOKIE_SET_STATE | TLS_ROLE_CLIENT as u64),
    ("SSL_set_accept_state", ProgId::SslHandshakeEnter, SSL_COOKIE_SET_STATE | TLS_ROLE_SERVER as u64),
    ("SSL_free", ProgId::SslFree, 0),
];

/// True for a libssl file name: libssl.so, libssl.so.3, libssl.so.1.1, libssl3.so is NSS (no).
pub fn is_libssl(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name == "libssl.so" || name.starts_with("libssl.so.")
}

/// The libssl mapped by `pid`, if any (first match in /proc/PID/maps): its path as the process
/// sees it, and its address range (the name of the mapping in /proc/PID/map_files).
pub fn libssl_of(pid: u32) -> Option<(String, String)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let range = f.next()?;
        let path = f.nth(4)?;
        (path.starts_with('/') && is_libssl(path)).then(|| (path.to_string(), range.to_string()))
    })
}

/// Where distributions install libssl (merged-/usr systems make several the same directory:
/// files are attached once per inode).
pub const SYSTEM_LIB_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
    "/usr/local/lib64",
    "/usr/local/lib",
];

/// The libssl files (no symlinks: their targets are listed themselves) in `dirs` under `root`:
/// (path as the system sees it, path to open).
pub fn system_libssl(root: &std::path::Path, dirs: &[&str]) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(root.join(dir.trim_start_matches('/'))) else { continue };
        let mut names: Vec<String> = rd.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| is_libssl(n)).collect();
        names.sort();
        for n in names {
            let open = root.join(dir.trim_start_matches('/')).join(&n);
            if std::fs::symlink_metadata(&open).is_ok_and(|m| m.file_type().is_file()) {
                out.push((format!("{dir}/{n}"), open));
            }
        }
    }
    out
}

impl OpenSsl {
    pub fn new(probes: Arc<Mutex<Probes>>, configs: BpfHashMap<MapData, u32, SslLibConfig>) -> Self {
        OpenSsl { probes, configs, next_index: 1, libs: HashMap::new(), by_pid: HashMap::new(), recheck: Default::default(), holds: None }
    }

    /// Holds on: the kernel stops the first process of a libssl file not in `files`; every file
    /// probed from now on goes in (call before [`Self::attach_system`]).
    pub fn with_holds(mut self, files: BpfHashMap<MapData, LibsslFileKey, u32>, holds: Arc<hold::Holds>) -> Self {
        self.holds = Some((files, holds));
        self
    }

    /// The holds so far (None: holds are off).
    pub fn hold_stats(&self) -> Option<hold::HoldStats> {
        self.holds.as_ref().map(|(_, h)| h.stats())
    }

    /// The kernel needs no hold for this file any more.
    fn mark_known(&mut self, key: LibsslFileKey) {
        if let Some((files, _)) = &mut self.holds {
            if let Err(e) = files.insert(key, LIBSSL_FILE_PROBED, 0) {
                debug!(dev = key.dev, ino = key.ino, error = %e, "LIBSSL_FILES full: the kernel may hold another process for this file");
            }
        }
    }

    /// The kernel stopped `ev`'s process as it mapped a libssl file it did not know: probe the
    /// file (through the process's mapping of it, now in its maps), then resume the process.
    pub fn held(&mut self, ev: &LibsslHeldEvent) {
        let pid = ev.header.tgid;
        let since = crate::procfs::instant_of(ev.header.ktime_ns);
        let keeper = self.holds.as_ref().map(|(_, h)| Arc::clone(h));
        if ev.stopped != 0 {
            match &keeper {
                Some(h) => h.begin(pid, since),
                // Holds switched off after the kernel stopped it: never leave it stopped.
                None => {
                    crate::procfs::cont(pid);
                }
            }
        }
        // Its loader has mapped the file: it is in the process's maps.
        let probed = self.consider(pid);
        // Probed or not (it cannot be: not a usable libssl), the kernel holds nobody for it again.
        self.mark_known(ev.file);
        let held = keeper.filter(|_| ev.stopped != 0).and_then(|h| h.end(pid));
        if let (Some(held), Some(key)) = (held, self.by_pid.get(&pid).copied()) {
            if let Some(l) = self.libs.get_mut(&key) {
                if l.view.first_process_held.is_none() {
                    l.view.first_process_held = Some(FirstHeld { pid, held_seconds: held.as_secs_f64() });
                }
            }
        }
        info!(pid, probed, held_ms = held.map(|d| d.as_secs_f64() * 1e3), stopped = ev.stopped != 0, "process held at its first mapping of a new libssl file");
    }

    /// A process just exec'd: look now, and once more after [`RECHECK_AFTER`] when libssl is not
    /// mapped yet (the loader may still be at work, or it is dlopen'ed early).
    pub fn on_exec(&mut self, pid: u32, now: std::time::Instant) {
        if !self.consider(pid) && self.recheck.len() < MAX_RECHECK {
            self.recheck.push_back((now + RECHECK_AFTER, pid));
        }
    }

    /// Looks again at the processes whose recheck is due; returns when the next one is.
    pub fn recheck_due(&mut self, now: std::time::Instant) -> Option<std::time::Instant> {
        while let Some(&(due, pid)) = self.recheck.front() {
            if due > now {
                return Some(due);
            }
            self.recheck.pop_front();
            self.consider(pid);
        }
        None
    }

    /// Attaches the system's libssl files (see [`SYSTEM_LIB_DIRS`]) under `root` (the host's
    /// root as seen from the daemon: `/proc/1/root`), whether or not a process uses them yet:
    /// the first handshakes of the first process that loads one are then seen. Returns how many
    /// files are probed.
    pub fn attach_system(&mut self, root: &std::path::Path) -> usize {
        let mut files = HashSet::new();
        for (shown, open) in system_libssl(root, SYSTEM_LIB_DIRS) {
            files.extend(self.attach_file(&shown, &open, None));
        }
        files.len()
    }

    /// Looks for libssl in `pid`'s mappings; attaches to the file the first time it is seen.
    /// Returns true when the process uses a probed libssl.
    pub fn consider(&mut self, pid: u32) -> bool {
        if pid == std::process::id() || self.by_pid.contains_key(&pid) {
            return self.by_pid.contains_key(&pid);
        }
        let Some((path, range)) = libssl_of(pid) else { return false };
        // The file the process really maps (a container's own, or one replaced on disk since it
        // was loaded): /proc/PID/map_files, else the same path under the process's root.
        let mapped = |path: &str, range: &str| {
            let by_mapping = PathBuf::from(format!("/proc/{pid}/map_files/{range}"));
            if std::fs::metadata(&by_mapping).is_ok() { by_mapping } else { PathBuf::from(format!("/proc/{pid}/root{path}")) }
        };
        let target = mapped(&path, &range);
        let Some(key) = self.attach_file(&path, &target, Some(pid)) else { return false };
        let Some(lib) = self.libs.get_mut(&key) else { return false };
        lib.pid_set.insert(pid);
        lib.view.pids = lib.pid_set.len();
        self.by_pid.insert(pid, key);
        true
    }

    /// Attaches the probes to the libssl file at `target` (shown as `path`) unless done before;
    /// returns its (device, inode).
    fn attach_file(&mut self, path: &str, target: &std::path::Path, pid: Option<u32>) -> Option<(u64, u64)> {
        let Ok(meta) = std::fs::metadata(target) else {
            debug!(pid, path, "libssl vanished before it could be probed");
            return None;
        };
        let key = (meta.dev(), meta.ino());
        if self.libs.contains_key(&key) {
            return Some(key);
        }
        let kernel_key = kernel_file_key(meta.dev(), meta.ino());
        // Hold the files open and work through our own descriptors: the process (and with it
        // its /proc entries) may be gone before the probes are attached.
        let Ok(file) = std::fs::File::open(target) else {
            debug!(pid, path, "libssl vanished before it could be probed");
            return None;
        };
        let fd_path = |f: &std::fs::File| PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(f)));
        let target = fd_path(&file);
        let index = self.next_index;
        self.next_index += 1;
        let (mut cfg, mut notes) = libssl::learn(&target);
        // Failure reasons: libssl's calls of libcrypto's error functions (its PLT stubs).
        let stubs = libssl::err_stubs(&target);
        let mut err_states = Vec::new();
        for &(offset, function, cookie) in &stubs {
            let prog = ProgId::SslError;
            let point = UProbeAttachPoint { location: UProbeAttachLocation::AbsoluteOffset(offset), cookie: Some(cookie) };
            err_states.push(match lock(&self.probes).attach_uprobe_point(prog, &target, point, None) {
                Ok(_) => ProbeState { name: prog.program_name(), function, state: "attached", sites: 1, error: None },
                Err(e) => {
                    warn!(probe = prog.program_name(), function, error = %e, "OpenSSL probe not attached");
                    ProbeState { name: prog.program_name(), function, state: "failed", sites: 0, error: Some(e) }
                }
            });
        }
        if stubs.is_empty() {
            notes.push("no PLT stub of ERR_set_error / ERR_vset_error / ERR_put_error found: failure reasons not read".into());
        } else if err_states.iter().all(|s| s.state == "attached") {
            cfg.flags |= SSL_LIB_ERRORS;
        } else {
            notes.push("an error probe is not attached: failure reasons not read".into());
        }
        if let Err(e) = self.configs.insert(index, cfg, 0) {
            notes.push(format!("offsets not handed to the kernel ({e}): version/ALPN not read"));
        }
        let reads = SslReads {
            version: cfg.version != OFFSET_NONE,
            alpn: cfg.alpn_ptr != OFFSET_NONE,
            role: cfg.is_server != OFFSET_NONE,
            reasons: cfg.flags & SSL_LIB_ERRORS != 0,
            notes,
        };
        // A library's probes stay for the daemon's life (a file mapped once is mapped again);
        // dropping the programs at exit detaches them.
        let (_links, mut states) = attach_libssl(&mut lock(&self.probes), &target, index as u64);
        drop(file);
        let ok = states.iter().filter(|s| s.state == "attached").count();
        if ok == 0 {
            // Nothing attached: not remembered, so the next process using it tries again
            // (with a new index: free this one's slot in SSL_LIBS).
            let _ = self.configs.remove(&index);
            warn!(pid, path, errors = ?states.iter().filter_map(|s| s.error.as_deref()).collect::<Vec<_>>(), "OpenSSL library could not be probed");
            return None;
        }
        info!(pid, path, attached = ok, of = states.len(), version = reads.version, alpn = reads.alpn, reasons = reads.reasons, "OpenSSL library probed");
        for n in &reads.notes {
            info!(path, note = %n, "OpenSSL library: field not read");
        }
        states.extend(err_states);
        self.mark_known(kernel_key);
        self.libs.insert(
            key,
            AttachedLib { view: SslLibrary { path: path.to_string(), dev: key.0, ino: key.1, pids: 0, probes: states, reads, first_process_held: None }, pid_set: HashSet::new() },
        );
        Some(key)
    }

    /// The process exited (the library's probes stay: see [`OpenSsl`]).
    pub fn forget(&mut self, pid: u32) {
        // A process gone before its recheck: nothing to look at (a short queue, see MAX_RECHECK).
        self.recheck.retain(|(_, p)| *p != pid);
        let Some(key) = self.by_pid.remove(&pid) else { return };
        if let Some(l) = self.libs.get_mut(&key) {
            l.pid_set.remove(&pid);
            l.view.pids = l.pid_set.len();
        }
    }

    /// The probed libraries (for /api/v1/targets).
    pub fn libraries(&self) -> Vec<SslLibrary> {
        let mut v: Vec<SslLibrary> = self.libs.values().map(|l| l.view.clone()).collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }
}

/// Attaches every OpenSSL probe to the library file `target`; the return and SSL_free programs
/// get the library's `index` in SSL_LIBS as their cookie.
fn attach_libssl(probes: &mut Probes, target: &std::path::Path, index: u64) -> (Vec<(ProgId, UProbeLinkId)>, Vec<ProbeState>) {
    let mut links = Vec::new();
    let mut states = Vec::new();
    for &(function, prog, cookie) in SSL_SITES {
        let cookie = if prog == ProgId::SslHandshakeEnter { cookie } else { index };
        let point = UProbeAttachPoint { location: UProbeAttachLocation::Symbol(function), cookie: Some(cookie) };
        let (state, sites, error) = match probes.attach_uprobe_point(prog, target, point, None) {
            Ok(link) => {
                links.push((prog, link));
                ("attached", 1, None)
            }
            Err(e) => {
                warn!(probe = prog.program_name(), function, error = %e, "OpenSSL probe not attached");
                ("failed", 0, Some(e))
            }
        };
        states.push(ProbeState { name: prog.program_name(), function, state, sites, error });
    }
    (links, states)
}

/// TLS alert codes → failure reason (RFC 8446 §6.2).
pub fn alert_reason(alert: u16) -> &'static str {
    match alert {
        // bad_certificate, unsupported_certificate, certificate_revoked, certificate_expired,
        // certificate_unknown, unknown_ca, bad_certificate_status_response, certificate_required
        42 | 43 | 44 | 45 | 46 | 48 | 113 | 116 => "certificate",
        120 => "alpn",
        70 => "version",
        _ => "other",
    }
}

/// Failure reason of a failed handshake: the alert this side sent, else the one it received;
/// no alert either way (the connection closed, was reset, or timed out) → "timeout_eof"; alerts
/// not readable (OpenSSL, unknown offsets) → "other".
pub fn failure_reason(alert_sent: u16, alert_received: u16) -> &'static str {
    use probe_common::{TLS_ALERT_UNREAD, TLS_NO_ALERT};
    match (alert_sent, alert_received) {
        (TLS_ALERT_UNREAD, _) | (_, TLS_ALERT_UNREAD) => "other",
        (TLS_NO_ALERT, TLS_NO_ALERT) => "timeout_eof",
        (TLS_NO_ALERT, a) => alert_reason(a),
        (a, _) => alert_reason(a),
    }
}

/// Failure reason of a failed OpenSSL handshake, from the first libssl error reason raised
/// during it (`SSL_R_*`, as in OpenSSL's sslerr.h; the same numbers in 1.1.1 and 3.x) and the
/// fatal alert it received. An error that names the certificate, the ALPN protocol or the
/// version classifies the failure whichever side raised it; else the alert received does; no
/// libssl error at all, or an unexpected EOF, is a closed or reset connection ("timeout_eof").
/// Errors not read (no libcrypto probe) → "other".
pub fn openssl_failure_reason(ssl_reason: u32, alert_sent: u16, alert_received: u16) -> &'static str {
    use probe_common::{TLS_ALERT_UNREAD, TLS_NO_ALERT};
    if alert_sent == TLS_ALERT_UNREAD || alert_received == TLS_ALERT_UNREAD {
        return "other";
    }
    let by_error = match ssl_reason {
        // CERTIFICATE_VERIFY_FAILED, NO_CERTIFICATES_RETURNED, PEER_DID_NOT_RETURN_A_CERTIFICATE,
        // DANE_TLSA_BAD_CERTIFICATE(_USAGE), WRONG_CERTIFICATE_TYPE
        134 | 176 | 199 | 180 | 184 | 383 => Some("certificate"),
        // NO_APPLICATION_PROTOCOL (the server found no common protocol)
        235 => Some("alpn"),
        // BAD_PROTOCOL_VERSION_NUMBER, VERSION_TOO_HIGH, NO_PROTOCOLS_AVAILABLE, UNSUPPORTED_PROTOCOL,
        // UNSUPPORTED_SSL_VERSION, BAD_HRR_VERSION, WRONG_SSL_VERSION, WRONG_VERSION_NUMBER,
        // BAD_LEGACY_VERSION, VERSION_TOO_LOW
        116 | 166 | 191 | 258 | 259 | 263 | 266 | 267 | 292 | 396 => Some("version"),
        _ => None,
    };
    match (by_error, alert_received) {
        (Some(r), _) => r,
        (None, a) if a != TLS_NO_ALERT => alert_reason(a),
        // UNEXPECTED_EOF_WHILE_READING, or nothing raised (a reset, a timeout, SSL_free of an
        // unfinished non-blocking handshake)
        (None, _) if ssl_reason == 0 || ssl_reason == 294 => "timeout_eof",
        _ => "other",
    }
}

/// `version` label: "1.0" … "1.3", "unknown" (not read: OpenSSL, or failed before negotiation).
pub fn version_label(v: u16) -> &'static str {
    match v {
        0x0301 => "1.0",
        0x0302 => "1.1",
        0x0303 => "1.2",
        0x0304 => "1.3",
        0 => "unknown",
        _ => "other",
    }
}

/// Negotiated ALPN protocols kept as label values; anything else is "other" (label values stay
/// bounded whatever peers send). "none": no ALPN negotiated; "unknown": not read (OpenSSL).
pub const ALPN_LABELS: &[&str] = &[
    "h2", "http/1.1", "http/1.0", "h3", "grpc-exp", "spdy/3.1", "acme-tls/1", "dot", "doq", "imap", "pop3",
    "ftp", "smb", "mqtt", "postgresql", "xmpp-client", "xmpp-server", "managesieve", "coap", "webrtc",
];

pub fn alpn_label(alpn: &[u8], full_len: usize) -> &'static str {
    if full_len == 0 {
        return "none";
    }
    if full_len != alpn.len() {
        return "other";
    }
    ALPN_LABELS.iter().find(|l| l.as_bytes() == alpn).copied().unwrap_or("other")
}

pub fn role_label(role: u8) -> &'static str {
    match role {
        TLS_ROLE_CLIENT => "client",
        TLS_ROLE_SERVER => "server",
        _ => "unknown",
    }
}

/// A Go handshake event of `pid` (tests of the modules that consume them): TLS 1.3, no ALPN,
/// a failure with alert 42 (bad certificate).
#[cfg(test)]
pub fn test_event(pid: u32, role: u8, failed: u8, duration_ns: u64) -> probe_common::TlsEvent {
    use probe_common::{EventHeader, EventKind, TlsEvent, TLS_NO_ALERT};
    TlsEvent {
        header: EventHeader { kind: EventKind::Tls as u32, tgid: pid, ktime_ns: 1 },
        duration_ns,
        library: probe_common::TLS_LIBRARY_GO,
        role,
        failed,
        alpn_len: 0,
        version: 0x0304,
        cipher_suite: 0x1301,
        alert_sent: TLS_NO_ALERT,
        alert_received: if failed != 0 { 42 } else { TLS_NO_ALERT },
        ret: 0,
        alpn: [0; probe_common::TLS_ALPN_LEN],
        ssl_reason: 0,
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::{TLS_ALERT_UNREAD, TLS_NO_ALERT};

    #[test]
    fn reasons_from_alerts() {
        assert_eq!(failure_reason(42, TLS_NO_ALERT), "certificate");
        assert_eq!(failure_reason(TLS_NO_ALERT, 48), "certificate");
        assert_eq!(failure_reason(120, TLS_NO_ALERT), "alpn");
        assert_eq!(failure_reason(TLS_NO_ALERT, 70), "version");
        assert_eq!(failure_reason(TLS_NO_ALERT, TLS_NO_ALERT), "timeout_eof");
        assert_eq!(failure_reason(40, TLS_NO_ALERT), "other");
        assert_eq!(failure_reason(TLS_ALERT_UNREAD, TLS_ALERT_UNREAD), "other");
    }

    #[test]
    fn openssl_reasons_from_errors_and_alerts() {
        // A client rejecting the server's certificate; the server receiving its unknown_ca.
        assert_eq!(openssl_failure_reason(134, TLS_NO_ALERT, TLS_NO_ALERT), "certificate");
        assert_eq!(openssl_failure_reason(0, TLS_NO_ALERT, 48), "certificate");
        // ALPN: the server finds no common protocol; the client receives no_application_protocol.
        assert_eq!(openssl_failure_reason(235, TLS_NO_ALERT, TLS_NO_ALERT), "alpn");
        assert_eq!(openssl_failure_reason(0, TLS_NO_ALERT, 120), "alpn");
        // Versions: the server supports none the client offers; the client receives protocol_version.
        assert_eq!(openssl_failure_reason(258, TLS_NO_ALERT, TLS_NO_ALERT), "version");
        assert_eq!(openssl_failure_reason(0, TLS_NO_ALERT, 70), "version");
        assert_eq!(openssl_failure_reason(0, TLS_NO_ALERT, 40), "other");
        assert_eq!(openssl_failure_reason(294, TLS_NO_ALERT, TLS_NO_ALERT), "timeout_eof");
        assert_eq!(openssl_failure_reason(0, TLS_NO_ALERT, TLS_NO_ALERT), "timeout_eof");
        assert_eq!(openssl_failure_reason(1, TLS_NO_ALERT, TLS_NO_ALERT), "other");
        // Not read.
        assert_eq!(openssl_failure_reason(0, TLS_ALERT_UNREAD, TLS_ALERT_UNREAD), "other");
    }

    #[test]
    fn system_libraries_are_found_once_per_file() {
        let root = std::env::temp_dir().join(format!("chainprobe-syslib-{}", std::process::id()));
        let dir = root.join("usr/lib/x86_64-linux-gnu");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("libssl.so.3"), b"x").unwrap();
        std::fs::write(dir.join("libcrypto.so.3"), b"x").unwrap();
        std::fs::write(dir.join("libssl3.so"), b"x").unwrap();
        std::os::unix::fs::symlink("libssl.so.3", dir.join("libssl.so")).unwrap();
        let found = system_libssl(&root, &["/usr/lib/x86_64-linux-gnu", "/lib64"]);
        assert_eq!(found, vec![("/usr/lib/x86_64-linux-gnu/libssl.so.3".to_string(), dir.join("libssl.so.3"))]);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(version_label(0x0304), "1.3");
        assert_eq!(version_label(0), "unknown");
        assert_eq!(version_label(0x7f00), "other");
        assert_eq!(alpn_label(b"h2", 2), "h2");
        assert_eq!(alpn_label(b"", 0), "none");
        assert_eq!(alpn_label(b"my-own-protocol", 15), "other");
        assert_eq!(alpn_label(b"http/1.1", 40), "other", "truncated");
        assert!(is_libssl("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert!(is_libssl("/lib/libssl.so.1.1"));
        assert!(!is_libssl("/usr/lib/libssl3.so"));
        assert!(!is_libssl("/usr/lib/libcrypto.so.3"));
    }
}
