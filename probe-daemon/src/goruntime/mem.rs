//! Reads a Go process's runtime state from its memory (/proc/PID/mem), with the addresses and
//! offsets goinspect found: no probe on the target's hot path, no stop of the target.
use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    os::unix::fs::FileExt,
    path::Path,
};

use goinspect::GoBinary;

#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("process {pid} is gone")]
    Gone { pid: u32 },
    #[error("cannot read memory of process {pid}: {source} (chainprobe needs CAP_SYS_PTRACE to read other processes)")]
    Read { pid: u32, source: std::io::Error },
    #[error("{0} is unknown for this binary ({1}): runtime reads are off for it")]
    Missing(&'static str, String),
    #[error("cannot find where {0} is mapped in process {1}")]
    NoMapping(String, u32),
    #[error("implausible runtime state in process {pid}: {what}")]
    Implausible { pid: u32, what: String },
}

/// Addresses (already relocated for this process) and offsets of what the reader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub allgs: u64,
    pub allglen: u64,
    pub sched: u64,
    pub memstats: u64,
    pub gc_controller: u64,
    pub g_status: u64,
    pub g_waitreason: u64,
    pub g_m: u64,
    pub sched_goidgen: u64,
    pub sched_ngsys: u64,
    pub numgc: u64,
    pub heap_live: u64,
    pub heap_goal: u64,
    pub minor: u32,
    /// waitReason strings of the release (see [`Layout::wait_reason`]).
    pub wait_reasons: &'static [String],
    /// False when they are the nearest release's: names are then not reported.
    pub wait_reasons_exact: bool,
    /// Load bias of the executable (runtime address − link-time address).
    pub bias: u64,
    /// Where runtime.gcount's inputs are, for the goroutine count in O(P); Err says why this
    /// binary's goroutines are counted by reading every g instead.
    pub count: Result<CountLayout, String>,
}

/// What the goroutine count needs beyond the [`Layout`]'s addresses, as `runtime.gcount` computes
/// it (Go 1.19–1.27): `allglen − sched.gFree counts − sched.ngsys − Σ over allp of p.gFree count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountLayout {
    /// runtime.allp (a `[]*p`), relocated.
    pub allp: u64,
    /// Offsets in schedt of the int32 free-list counts: `gFree.n` (Go ≤ 1.24), or
    /// `gFree.stack.size` and `gFree.noStack.size` (1.25+).
    pub sched_free: Vec<u64>,
    /// Offset in p of its free list's int32 count: `gFree.n` (≤ 1.24) or `gFree.size` (1.25+).
    pub p_free: u64,
}

impl CountLayout {
    /// The count layout of `bin` loaded with `bias`, or what it lacks.
    pub fn new(bin: &GoBinary, bias: u64) -> Result<CountLayout, String> {
        let allp = bin.data_symbol("runtime.allp").ok_or("runtime.allp not found in the binary")?;
        let off = |k: &str| bin.offset(k);
        let sched_free = match (off("schedt.gFree.n"), off("schedt.gFree.stack.size"), off("schedt.gFree.noStack.size")) {
            (Some(n), _, _) => vec![n],
            (None, Some(a), Some(b)) => vec![a, b],
            _ => return Err("the offset of sched.gFree's count (schedt.gFree.n or gFree.stack.size/noStack.size) is unknown".into()),
        };
        let p_free = off("p.gFree.n").or_else(|| off("p.gFree.size")).ok_or("the offset of p.gFree's count (p.gFree.n or p.gFree.size) is unknown")?;
        Ok(CountLayout { allp: allp + bias, sched_free, p_free })
    }
}

impl Layout {
    /// Builds the layout of `bin` as loaded with `bias` (0 for non-PIE).
    pub fn new(bin: &GoBinary, bias: u64) -> Result<Layout, MemError> {
        let why = || {
            bin.data_symbols_error
                .clone()
                .or_else(|| bin.offsets_error.clone())
                .unwrap_or_else(|| bin.go_version.clone())
        };
        let sym = |n: &'static str| bin.data_symbol(n).map(|a| a + bias).ok_or_else(|| MemError::Missing(n, why()));
        let off = |n: &'static str| bin.offset(n).ok_or_else(|| MemError::Missing(n, why()));
        Ok(Layout {
            allgs: sym("runtime.allgs")?,
            allglen: sym("runtime.allglen")?,
            sched: sym("runtime.sched")?,
            memstats: sym("runtime.memstats")?,
            gc_controller: sym("runtime.gcController")?,
            g_status: off("g.atomicstatus")?,
            g_waitreason: off("g.waitreason")?,
            g_m: off("g.m")?,
            sched_goidgen: off("schedt.goidgen")?,
            sched_ngsys: off("schedt.ngsys")?,
            numgc: off("mstats.numgc")?,
            heap_live: off("gcControllerState.heapLive")?,
            heap_goal: off("gcControllerState.gcPercentHeapGoal")?,
            minor: bin.version.as_ref().map(|v| v.minor).unwrap_or(0),
            wait_reasons: bin.wait_reasons,
            wait_reasons_exact: bin.wait_reasons_exact,
            bias,
            count: CountLayout::new(bin, bias),
        })
    }

    /// The name of wait reason `r` as Go's tracebacks print it; "unknown" where this release's
    /// names are not known (a Go version read with the nearest table: releases renumber them),
    /// "reason N" for a value beyond the release's list.
    pub fn wait_reason(&self, r: u8) -> String {
        if !self.wait_reasons_exact {
            return "unknown".into();
        }
        match self.wait_reasons.get(usize::from(r)) {
            Some(s) if s.is_empty() => "none".into(),
            Some(s) => s.clone(),
            None => format!("reason {r}"),
        }
    }
}

/// Load bias of the executable in process `pid`: where its first PT_LOAD landed minus where it was
/// linked. 0 for position-dependent executables.
pub fn load_bias(pid: u32, exe: &Path) -> Result<u64, MemError> {
    let first_vaddr = first_load_vaddr(exe).map_err(|source| MemError::Read { pid, source })?;
    let exe_target = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|_| MemError::Gone { pid })?;
    let target = exe_target.to_string_lossy().trim_end_matches(" (deleted)").to_string();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|_| MemError::Gone { pid })?;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(_perms), Some(offset), Some(_dev), Some(_inode)) = (f.next(), f.next(), f.next(), f.next(), f.next()) else {
            continue;
        };
        let path: Vec<&str> = f.collect();
        let path = path.join(" ");
        if path.trim_end_matches(" (deleted)") != target || u64::from_str_radix(offset, 16).ok() != Some(0) {
            continue;
        }
        let start = range.split('-').next().and_then(|s| u64::from_str_radix(s, 16).ok());
        if let Some(start) = start {
            return Ok(start.wrapping_sub(first_vaddr & !0xfff));
        }
    }
    Err(MemError::NoMapping(target, pid))
}

/// The executable mapping of the process's main binary: (start, end, file offset).
pub fn exe_mapping(pid: u32) -> Result<(u64, u64, u64), MemError> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|_| MemError::Gone { pid })?;
    let target = exe.to_string_lossy().trim_end_matches(" (deleted)").to_string();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|_| MemError::Gone { pid })?;
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[1].contains('x') || f[5..].join(" ").trim_end_matches(" (deleted)") != target {
            continue;
        }
        let mut r = f[0].split('-').map(|x| u64::from_str_radix(x, 16));
        if let (Some(Ok(a)), Some(Ok(b)), Ok(off)) = (r.next(), r.next(), u64::from_str_radix(f[2], 16)) {
            return Ok((a, b, off));
        }
    }
    Err(MemError::NoMapping(target, pid))
}

/// p_vaddr of the first PT_LOAD of a 64-bit little-endian ELF file.
fn first_load_vaddr(path: &Path) -> std::io::Result<u64> {
    let f = File::open(path)?;
    let mut hdr = [0u8; 64];
    f.read_exact_at(&mut hdr, 0)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not a 64-bit little-endian ELF file");
    if &hdr[..4] != b"\x7fELF" || hdr[4] != 2 || hdr[5] != 1 {
        return Err(bad());
    }
    let u16_at = |o: usize| u16::from_le_bytes([hdr[o], hdr[o + 1]]);
    let phoff = u64::from_le_bytes(hdr[0x20..0x28].try_into().map_err(|_| bad())?);
    let (phentsize, phnum) = (u64::from(u16_at(0x36)), u64::from(u16_at(0x38)));
    if phentsize < 56 || phnum == 0 || phnum > 512 {
        return Err(bad());
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    f.read_exact_at(&mut ph, phoff)?;
    for i in 0..phnum as usize {
        let e = &ph[i * phentsize as usize..];
        let p_type = u32::from_le_bytes(e[0..4].try_into().map_err(|_| bad())?);
        if p_type == 1 {
            return Ok(u64::from_le_bytes(e[0x10..0x18].try_into().map_err(|_| bad())?));
        }
    }
    Err(bad())
}

/// One reading of a Go process's runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoSample {
    /// As runtime.NumGoroutine counts.
    pub goroutines: i64,
    /// Live g's (system ones included) by (status, wait reason), as of the last breakdown read
    /// (`breakdown`): read less often than the rest for big processes.
    /// Shared: the same breakdown is handed on at every read until the next one (copies of the
    /// collector's view of hundreds of processes share it).
    pub by_state: std::sync::Arc<BTreeMap<(&'static str, String), u64>>,
    /// When `by_state` was read, what that read cost, and when the next is due.
    pub breakdown: Option<BreakdownRead>,
    /// Goroutine ids handed out so far (sched.goidgen): goroutines created, within the per-P id
    /// cache slack (16 per P).
    pub goidgen: u64,
    /// Completed GC cycles (memstats.numgc).
    pub numgc: u32,
    pub heap_live: u64,
    pub heap_goal: u64,
    /// When this was read, and the interval between reads as scheduled (the configured one, or
    /// longer when many processes share the read budget).
    pub read_at: Option<std::time::Instant>,
    pub read_interval: std::time::Duration,
}

/// The last read of the goroutines' states of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakdownRead {
    pub at: std::time::Instant,
    /// CPU time of the reading thread for the read (CLOCK_THREAD_CPUTIME_ID).
    pub cpu: std::time::Duration,
    /// The time between two reads of this process's states, as scheduled now.
    pub period: std::time::Duration,
}

/// The figures read every interval, in O(P): no g is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// runtime.gcount's result; None when the binary's layout has no [`CountLayout`] or the
    /// count could not be read (`count_error`).
    pub goroutines: Option<i64>,
    pub count_error: Option<String>,
    pub goidgen: u64,
    pub numgc: u32,
    pub heap_live: u64,
    pub heap_goal: u64,
}

/// Every g read (O(goroutines)): the goroutine count and its breakdown by state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Breakdown {
    /// As runtime.NumGoroutine counts: live g's minus system goroutines (ngsys read after them).
    pub goroutines: i64,
    pub by_state: BTreeMap<(&'static str, String), u64>,
}

/// Ps at most (GOMAXPROCS is capped far below).
const MAX_P: u64 = 1 << 16;

const G_DEAD: u32 = 6;
const G_DEAD_EXTRA: u32 = 11; // _Gdeadextra, Go 1.26+
const G_SCAN: u32 = 0x1000;
/// Goroutines read at most (beyond it the count is still exact; states are sampled).
const MAX_G: u64 = 4_000_000;

pub fn status_name(status: u32) -> &'static str {
    match status & !G_SCAN {
        0 => "idle",
        1 => "runnable",
        2 => "running",
        3 => "syscall",
        4 => "waiting",
        6 | 11 => "dead",
        8 => "copystack",
        9 => "preempted",
        10 => "leaked",
        _ => "other",
    }
}

/// Open /proc/PID/mem of one process.
pub struct ProcMem {
    pid: u32,
    /// /proc/PID/mem, for what process_vm_readv refuses (opened on first use by [`ProcMem::lazy`]).
    file: std::sync::OnceLock<Result<File, std::io::ErrorKind>>,
}

impl ProcMem {
    /// Opens /proc/PID/mem now: a process that is gone is an error here.
    pub fn open(pid: u32) -> Result<ProcMem, MemError> {
        let file = Self::open_file(pid)?;
        Ok(ProcMem { pid, file: std::sync::OnceLock::from(Ok(file)) })
    }

    /// Reads with process_vm_readv, opening /proc/PID/mem only if a read needs it: the periodic
    /// reads of hundreds of processes skip an open and a close each.
    pub fn lazy(pid: u32) -> ProcMem {
        ProcMem { pid, file: std::sync::OnceLock::new() }
    }

    fn open_file(pid: u32) -> Result<File, MemError> {
        File::open(format!("/proc/{pid}/mem")).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                MemError::Gone { pid }
            } else {
                MemError::Read { pid, source }
            }
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn read_exact(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let pid = self.pid;
        let file = self.file.get_or_init(|| Self::open_file(pid).map_err(|e| match e {
            MemError::Read { source, .. } => source.kind(),
            _ => std::io::ErrorKind::NotFound,
        }));
        match file {
            Ok(f) => f.read_exact_at(buf, addr).map_err(|source| MemError::Read { pid, source }),
            Err(std::io::ErrorKind::NotFound) => Err(MemError::Gone { pid }),
            Err(kind) => Err(MemError::Read { pid, source: (*kind).into() }),
        }
    }

    /// Reads `buf.len()` bytes at `addr` with one process_vm_readv (no open of /proc/PID/mem),
    /// else through /proc/PID/mem.
    pub fn read_vm(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
        // SAFETY: the local iovec points into `buf`; the kernel checks the remote one.
        let got = unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if got >= 0 && got as usize == buf.len() {
            return Ok(());
        }
        self.read_exact(addr, buf)
    }

    /// Reads `len` bytes at each of `addrs` into one buffer (range `i` at `i * len`), with few
    /// system calls (process_vm_readv, 1024 ranges a call) and no allocation per range; the flags
    /// say which ranges were read. For the periodic read of every g of a big process.
    pub fn read_same_len(&self, addrs: &[u64], len: usize) -> (Vec<u8>, Vec<bool>) {
        let mut buf = vec![0u8; addrs.len() * len];
        let mut ok = vec![false; addrs.len()];
        let mut i = 0;
        while i < addrs.len() {
            let n = (addrs.len() - i).min(1024);
            let base = buf[i * len..].as_mut_ptr();
            // SAFETY: range k of this call is buf[(i + k) * len..][..len], inside buf.
            let local: Vec<libc::iovec> = (0..n).map(|k| libc::iovec { iov_base: unsafe { base.add(k * len) }.cast(), iov_len: len }).collect();
            let remote: Vec<libc::iovec> = addrs[i..i + n].iter().map(|&a| libc::iovec { iov_base: a as *mut libc::c_void, iov_len: len }).collect();
            // SAFETY: the local iovecs point into `buf`; the kernel checks the remote ones.
            let got = unsafe { libc::process_vm_readv(self.pid as libc::pid_t, local.as_ptr(), n as libc::c_ulong, remote.as_ptr(), n as libc::c_ulong, 0) };
            // The call stops at the first range it cannot read in full: read that one alone.
            let done = if got < 0 { 0 } else { (got as usize / len).min(n) };
            ok[i..i + done].iter_mut().for_each(|o| *o = true);
            if done < n {
                let k = i + done;
                ok[k] = self.read_exact(addrs[k], &mut buf[k * len..(k + 1) * len]).is_ok();
                i = k + 1;
            } else {
                i += n;
            }
        }
        (buf, ok)
    }

    /// Reads many (address, length) ranges with few system calls (process_vm_readv, 1024 ranges
    /// a call); `None` for a range that cannot be read. Falls back to /proc/PID/mem reads where
    /// process_vm_readv is refused.
    pub fn read_batch(&self, reqs: &[(u64, usize)]) -> Vec<Option<Vec<u8>>> {
        let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(reqs.len());
        let single = |(addr, len): (u64, usize)| {
            let mut b = vec![0u8; len];
            self.read_exact(addr, &mut b).ok().map(|_| b)
        };
        let mut i = 0;
        while i < reqs.len() {
            let n = (reqs.len() - i).min(1024);
            let batch = &reqs[i..i + n];
            let mut bufs: Vec<Vec<u8>> = batch.iter().map(|r| vec![0u8; r.1]).collect();
            let local: Vec<libc::iovec> = bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
            let remote: Vec<libc::iovec> = batch.iter().map(|r| libc::iovec { iov_base: r.0 as *mut libc::c_void, iov_len: r.1 }).collect();
            // SAFETY: every local iovec points into a live buffer of its length; the remote ones
            // are only read by the kernel, which checks them against the target's mappings.
            let got = unsafe { libc::process_vm_readv(self.pid as libc::pid_t, local.as_ptr(), n as libc::c_ulong, remote.as_ptr(), n as libc::c_ulong, 0) };
            if got < 0 {
                out.extend(batch.iter().map(|r| single(*r)));
                i += n;
                continue;
            }
            // The call stops at the first range it cannot read in full.
            let mut left = got as usize;
            let done = bufs.iter().take_while(|b| {
                let fits = left >= b.len();
                if fits {
                    left -= b.len();
                }
                fits
            })
            .count();
            out.extend(bufs.drain(..done).map(Some));
            if done < n {
                out.push(single(batch[done]));
                i += done + 1;
            } else {
                i += n;
            }
        }
        out
    }

    pub fn u64(&self, addr: u64) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read_vm(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn u32(&self, addr: u64) -> Result<u32, MemError> {
        let mut b = [0u8; 4];
        self.read_vm(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads what is read every interval (O(P)): the goroutine count as runtime.gcount computes
    /// it (when the layout allows), goroutine ids, GC cycles, heap live and goal. Three system
    /// calls: the scalars and the allp slice header in one, the P pointers, each P's count.
    pub fn counters(&self, l: &Layout) -> Result<Counters, MemError> {
        self.counters_with(l, &mut AllpCache::default())
    }

    /// [`ProcMem::counters`] in one system call once `cache` holds this process's Ps (from an
    /// earlier read): the allp slice header, its P pointers and each P's free-list count are read
    /// together with the scalars, at the addresses cached, and used only when the header and the
    /// pointers read are the ones cached (the same Ps); otherwise they are read again as
    /// [`ProcMem::counters`] does, and cached.
    pub fn counters_with(&self, l: &Layout, cache: &mut AllpCache) -> Result<Counters, MemError> {
        let pid = self.pid;
        let count = l.count.as_ref().ok();
        // The schedt fields read (goidgen, ngsys, the free-list counts) lie within a few hundred
        // bytes: one range.
        let sched_offs: Vec<u64> = [l.sched_goidgen, l.sched_ngsys].into_iter().chain(count.iter().flat_map(|c| c.sched_free.iter().copied())).collect();
        let (s_lo, s_hi) = (sched_offs.iter().copied().min().unwrap_or(0), sched_offs.iter().copied().max().unwrap_or(0) + 8);
        let (h_lo, h_hi) = (l.heap_live.min(l.heap_goal), l.heap_live.max(l.heap_goal) + 8);
        let mut reqs = vec![(l.allglen, 8), (l.sched + s_lo, (s_hi - s_lo) as usize), (l.memstats + l.numgc, 4), (l.gc_controller + h_lo, (h_hi - h_lo) as usize)];
        let cached = match (count, cache.header) {
            (Some(c), Some((ptr, len))) if cache.p_free_addrs.len() <= len as usize => {
                reqs.push((c.allp, 16));
                reqs.push((ptr, len as usize * 8));
                reqs.extend(cache.p_free_addrs.iter().map(|&a| (a, 4)));
                true
            }
            (Some(c), _) => {
                reqs.push((c.allp, 16));
                false
            }
            _ => false,
        };
        let got = self.read_batch(&reqs);
        let part = |i: usize| batch_part(pid, &reqs, &got, i);
        let allglen = le_u64(part(0)?, 0);
        let sched = part(1)?;
        let heap = part(3)?;
        let mut out = Counters {
            goroutines: None,
            count_error: None,
            goidgen: le_u64(sched, l.sched_goidgen - s_lo),
            numgc: le_i32(part(2)?, 0) as u32,
            heap_live: le_u64(heap, l.heap_live - h_lo),
            heap_goal: le_u64(heap, l.heap_goal - h_lo),
        };
        if let Some(c) = count {
            // The Ps' counts read at the cached addresses, when the Ps are still those.
            let from_cache = || -> Option<i64> {
                let (hdr, ps) = (part(4).ok()?, part(5).ok()?);
                if cache.header != Some((le_u64(hdr, 0), le_u64(hdr, 8))) || cache.p_free_addrs != p_free_addrs(ps, c.p_free) {
                    return None;
                }
                (0..cache.p_free_addrs.len()).map(|k| part(6 + k).ok().map(|b| i64::from(le_i32(b, 0)))).sum()
            };
            let p_free = match cached.then(from_cache).flatten() {
                Some(n) => Ok(n),
                None => self.p_free_counts(c, part(4), cache),
            };
            match p_free.and_then(|p_free| gcount(pid, allglen, p_free, sched, s_lo, c, l.sched_ngsys)) {
                Ok(n) => out.goroutines = Some(n),
                Err(e) => {
                    *cache = AllpCache::default();
                    out.count_error = Some(e.to_string());
                }
            }
        }
        Ok(out)
    }

    /// The sum of the Ps' free-list counts from the allp slice header (two system calls: the P
    /// pointers, then each P's count); the Ps are cached for the next read.
    fn p_free_counts(&self, c: &CountLayout, allp: Result<&[u8], MemError>, cache: &mut AllpCache) -> Result<i64, MemError> {
        let pid = self.pid;
        *cache = AllpCache::default();
        let hdr = allp?;
        let (ptr, len) = (le_u64(hdr, 0), le_u64(hdr, 8));
        if len == 0 || len > MAX_P || ptr == 0 {
            return Err(MemError::Implausible { pid, what: format!("runtime.allp = {{ptr {ptr:#x}, len {len}}}") });
        }
        let mut ps = vec![0u8; len as usize * 8];
        self.read_vm(ptr, &mut ps)?;
        let addrs = p_free_addrs(&ps, c.p_free);
        let (buf, ok) = self.read_same_len(&addrs, 4);
        if ok.iter().any(|o| !o) {
            return Err(MemError::Implausible { pid, what: "a P listed in runtime.allp is not readable".into() });
        }
        *cache = AllpCache { header: Some((ptr, len)), p_free_addrs: addrs };
        Ok(buf.chunks_exact(4).map(|b| i64::from(le_i32(b, 0))).sum())
    }

    /// Reads every g (O(goroutines), batched): the goroutine count and the breakdown by status
    /// and wait reason.
    pub fn breakdown(&self, l: &Layout) -> Result<Breakdown, MemError> {
        let pid = self.pid;
        // allglen and allgs in one call (ngsys is read after the g's, as NumGoroutine does).
        let reqs = [(l.allglen, 8), (l.allgs, 8)];
        let got = self.read_batch(&reqs);
        let allglen = le_u64(batch_part(pid, &reqs, &got, 0)?, 0);
        let allgs_ptr = le_u64(batch_part(pid, &reqs, &got, 1)?, 0);
        if allglen > MAX_G * 4 {
            return Err(MemError::Implausible { pid, what: format!("allglen = {allglen}") });
        }
        let n = allglen.min(MAX_G) as usize;
        let mut ptrs = vec![0u8; n * 8];
        if n > 0 {
            self.read_vm(allgs_ptr, &mut ptrs)?;
        }
        // status (u32), waitreason (u8) and m (pointer) lie within a few dozen bytes: one range
        // per g, read in batches (process_vm_readv, 1024 ranges a call).
        let (lo, hi) = (l.g_status.min(l.g_waitreason).min(l.g_m), l.g_status.max(l.g_waitreason).max(l.g_m) + 8);
        let gs: Vec<u64> = ptrs.chunks_exact(8).map(|p| u64::from_le_bytes(p.try_into().unwrap_or([0; 8]))).filter(|&g| g != 0).collect();
        let mut out = Breakdown::default();
        let mut live = 0i64;
        // runtime.NumGoroutine counts every g not on a free list: besides the live ones, the g of
        // each idle extra M (cgo callbacks), which is dead (_Gdeadextra from 1.26) with g.m set,
        // where a freed g has g.m cleared.
        let mut extra_m = 0i64;
        // Counted by (status, wait reason) first: names only once per distinct pair.
        let mut counts: HashMap<(u32, u8), u64> = HashMap::new();
        let len = (hi - lo) as usize;
        let at = |off: u64| (off - lo) as usize;
        let (s, m, w) = (at(l.g_status), at(l.g_m), at(l.g_waitreason));
        for batch in gs.chunks(65536) {
            let addrs: Vec<u64> = batch.iter().map(|&g| g + lo).collect();
            let (buf, ok) = self.read_same_len(&addrs, len);
            for chunk in buf.chunks_exact(len).zip(&ok).filter(|(_, ok)| **ok).map(|(c, _)| c) {
                let status = u32::from_le_bytes([chunk[s], chunk[s + 1], chunk[s + 2], chunk[s + 3]]) & !G_SCAN;
                if status == G_DEAD || status == G_DEAD_EXTRA {
                    if status == G_DEAD_EXTRA || chunk[m..m + 8].iter().any(|&b| b != 0) {
                        extra_m += 1;
                    }
                    continue;
                }
                live += 1;
                let reason = if status == 4 { chunk[w] } else { 0 };
                *counts.entry((status, reason)).or_insert(0) += 1;
            }
        }
        for ((status, reason), n) in counts {
            let wait = if status == 4 { l.wait_reason(reason) } else { String::new() };
            *out.by_state.entry((status_name(status), wait)).or_insert(0) += n;
        }
        let ngsys = i64::from(self.u32(l.sched + l.sched_ngsys)?);
        out.goroutines = (live + extra_m - ngsys).max(0);
        Ok(out)
    }

    /// The goroutine count alone, as cheaply as the layout allows (runtime.gcount's counters,
    /// else every g): for a snapshot's metadata.
    pub fn goroutines(&self, l: &Layout) -> Result<i64, MemError> {
        match self.counters(l) {
            Ok(Counters { goroutines: Some(n), .. }) => Ok(n),
            _ => self.breakdown(l).map(|b| b.goroutines),
        }
    }
}

/// The little-endian u64 at `o` in `b` (0 beyond it).
fn le_u64(b: &[u8], o: u64) -> u64 {
    b.get(o as usize..o as usize + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
}

/// The little-endian i32 at `o` in `b` (0 beyond it).
fn le_i32(b: &[u8], o: u64) -> i32 {
    b.get(o as usize..o as usize + 4).and_then(|s| s.try_into().ok()).map(i32::from_le_bytes).unwrap_or(0)
}

/// Where a process's Ps are (the allp slice header and the address of each P's free-list count),
/// from its last read: lets the next [`ProcMem::counters_with`] read everything in one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllpCache {
    /// runtime.allp's (pointer, length) when read.
    header: Option<(u64, u64)>,
    p_free_addrs: Vec<u64>,
}

/// The address of each P's free-list count, from the allp array's P pointers (nil ones skipped).
fn p_free_addrs(ps: &[u8], p_free: u64) -> Vec<u64> {
    ps.chunks_exact(8).map(|p| le_u64(p, 0)).filter(|&p| p != 0).map(|p| p + p_free).collect()
}

/// runtime.gcount from allglen, the Ps' free counts and the schedt bytes read from `s_lo` on.
fn gcount(pid: u32, allglen: u64, p_free: i64, sched: &[u8], s_lo: u64, c: &CountLayout, ngsys_off: u64) -> Result<i64, MemError> {
    if allglen > MAX_G * 4 {
        return Err(MemError::Implausible { pid, what: format!("allglen = {allglen}") });
    }
    let s_free: i64 = c.sched_free.iter().map(|&o| i64::from(le_i32(sched, o - s_lo))).sum();
    let ngsys = i64::from(le_i32(sched, ngsys_off - s_lo));
    let g = allglen as i64;
    // The runtime reads these without a lock too; a free count below 0 or beyond every g is
    // not a race but a wrong offset.
    if !(0..=g).contains(&p_free) || !(0..=g).contains(&s_free) || !(0..=g).contains(&ngsys) {
        return Err(MemError::Implausible { pid, what: format!("free g counts (sched {s_free}, Ps {p_free}, ngsys {ngsys}) against allglen {allglen}") });
    }
    // As runtime.gcount: at least the goroutine that asks.
    Ok((g - s_free - p_free - ngsys).max(1))
}

/// Range `i` of a [`ProcMem::read_batch`] answer, or why not.
fn batch_part<'a>(pid: u32, reqs: &[(u64, usize)], got: &'a [Option<Vec<u8>>], i: usize) -> Result<&'a [u8], MemError> {
    got.get(i).and_then(|g| g.as_deref()).ok_or_else(|| {
        let (addr, len) = reqs.get(i).copied().unwrap_or_default();
        MemError::Read { pid, source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{addr:#x} (+{len} bytes) is not readable")) }
    })
}

/// CPU time the calling thread has used (user and system: the kernel's page walks of
/// process_vm_readv included).
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_load_of_this_test_binary_and_bias() {
        let exe = std::env::current_exe().unwrap();
        let v = first_load_vaddr(&exe).unwrap();
        assert_eq!(v & 0xfff, 0);
        // Our own mapping: the bias makes link-time addresses runtime addresses.
        let bias = load_bias(std::process::id(), &exe).unwrap();
        let f = first_load_of_this_test_binary_and_bias as *const () as u64;
        assert!(f > bias, "function address {f:#x} above the bias {bias:#x}");
    }

    #[test]
    fn non_elf_is_an_error() {
        assert!(first_load_vaddr(Path::new("/proc/self/status")).is_err());
        assert!(first_load_vaddr(Path::new("/nonexistent")).is_err());
    }

    #[test]
    fn batched_reads_of_our_own_memory() {
        let data: Vec<u64> = (0..5000u64).collect();
        let base = data.as_ptr() as u64;
        let mem = ProcMem::open(std::process::id()).unwrap();
        let mut reqs: Vec<(u64, usize)> = (0..3000).map(|i| (base + i * 8, 8)).collect();
        reqs.insert(1500, (8, 8)); // unmapped: None, and the rest still read
        let got = mem.read_batch(&reqs);
        assert_eq!(got.len(), reqs.len());
        assert!(got[1500].is_none());
        for (k, g) in got.iter().enumerate().filter(|(k, _)| *k != 1500) {
            let i = if k < 1500 { k } else { k - 1 } as u64;
            assert_eq!(g.as_deref(), Some(&i.to_le_bytes()[..]));
        }
    }

    #[test]
    fn same_length_reads_of_our_own_memory() {
        let data: Vec<u64> = (0..5000u64).collect();
        let base = data.as_ptr() as u64;
        let mem = ProcMem::open(std::process::id()).unwrap();
        let mut addrs: Vec<u64> = (0..3000).map(|i| base + i * 8).collect();
        addrs.insert(1500, 8); // unmapped: not read, and the rest still read
        let (buf, ok) = mem.read_same_len(&addrs, 8);
        assert_eq!(ok.iter().filter(|o| !**o).count(), 1);
        assert!(!ok[1500]);
        for (k, c) in buf.chunks_exact(8).enumerate().filter(|(k, _)| *k != 1500) {
            let i = if k < 1500 { k } else { k - 1 } as u64;
            assert_eq!(c, &i.to_le_bytes()[..]);
        }
    }

    #[test]
    fn status_names() {
        assert_eq!(status_name(0x1004), "waiting");
        assert_eq!(status_name(6), "dead");
        assert_eq!(status_name(10), "leaked");
    }
}
