//! Maps shared by the program families, and the small helpers every program uses.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use probe_common::{
    FailureKey, InflightCall, KernelConfig, ListenKey, ProcCounters, ProgId, ProgStats, OFFSET_NONE,
    EVENTS_RING_BYTES, MAX_FAILURE_KEYS, MAX_INFLIGHT, MAX_LISTENERS, MAX_PROCS, MAX_SOCKETS,
};

/// Kernel-specific offsets written by the daemon before attaching (index 0).
#[map]
pub static CONFIG: Array<KernelConfig> = Array::with_max_entries(1, 0);

/// Per-program self statistics, indexed by ProgId.
#[map]
pub static PROG_STATS: PerCpuArray<ProgStats> = PerCpuArray::with_max_entries(ProgId::COUNT, 0);

/// Hot-path counters per process (tgid).
#[map]
pub static PROC_COUNTERS: PerCpuHashMap<u32, ProcCounters> =
    PerCpuHashMap::with_max_entries(MAX_PROCS, 0);

/// Memory syscall failures per (tgid, syscall, errno).
#[map]
pub static FAILURES: PerCpuHashMap<FailureKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_FAILURE_KEYS, 0);

/// Arguments of memory syscalls between enter and exit, per thread (pid_tgid).
#[map]
pub static INFLIGHT: HashMap<u64, InflightCall> = HashMap::with_max_entries(MAX_INFLIGHT, 0);

/// Socket (struct sock address) → owning tgid, for events that fire in softirq context.
#[map]
pub static SOCK_OWNERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// Listening (netns, family, port) → owning tgid, for passive opens.
#[map]
pub static LISTENERS: HashMap<ListenKey, u32> = HashMap::with_max_entries(MAX_LISTENERS, 0);

/// Rare events: exec, exit, OOM kill.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// `bpf_map_update_elem` flag: only if the key is not there yet.
pub const BPF_NOEXIST: u64 = 1;

/// The signal the kernel programs stop a process with (a crash pause, a libssl hold).
pub const SIGSTOP: u32 = 19;

/// A `T` at kernel address `base + off`; None for a null base, an offset this kernel does not
/// have, or a failed read.
#[inline(always)]
pub fn read_kernel<T>(base: u64, off: u32) -> Option<T> {
    if off == OFFSET_NONE || base == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

#[inline(always)]
pub fn config() -> KernelConfig {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => KernelConfig::UNKNOWN,
    }
}

#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
fn stats(prog: ProgId) -> Option<&'static mut ProgStats> {
    PROG_STATS.get_ptr_mut(prog as u32).map(|p| unsafe { &mut *p })
}

/// Counts one handled event for `prog`.
#[inline(always)]
pub fn count_event(prog: ProgId) {
    if let Some(s) = stats(prog) {
        s.events += 1;
    }
}

#[inline(always)]
pub fn count_lost_ringbuf(prog: ProgId) {
    if let Some(s) = stats(prog) {
        s.lost_ringbuf += 1;
    }
}

#[inline(always)]
pub fn count_lost_map_full(prog: ProgId) {
    if let Some(s) = stats(prog) {
        s.lost_map_full += 1;
    }
}

/// The counters of `tgid` on this CPU, created on first use. None (and a lost event counted) when
/// the map is full.
#[inline(always)]
pub fn proc_counters(prog: ProgId, tgid: u32) -> Option<&'static mut ProcCounters> {
    if let Some(p) = PROC_COUNTERS.get_ptr_mut(&tgid) {
        return Some(unsafe { &mut *p });
    }
    let zero = ProcCounters::default();
    // EEXIST means another CPU created it meanwhile: fine, look it up again.
    let _ = PROC_COUNTERS.insert(&tgid, &zero, BPF_NOEXIST);
    match PROC_COUNTERS.get_ptr_mut(&tgid) {
        Some(p) => Some(unsafe { &mut *p }),
        None => {
            count_lost_map_full(prog);
            None
        }
    }
}

/// Adds one failure of `syscall` with `errno` for `tgid`.
#[inline(always)]
pub fn count_failure(prog: ProgId, key: FailureKey) {
    if let Some(p) = FAILURES.get_ptr_mut(&key) {
        unsafe { *p += 1 };
        return;
    }
    if FAILURES.insert(&key, &1u64, BPF_NOEXIST).is_err() {
        if let Some(p) = FAILURES.get_ptr_mut(&key) {
            unsafe { *p += 1 };
        } else {
            count_lost_map_full(prog);
        }
    }
}
